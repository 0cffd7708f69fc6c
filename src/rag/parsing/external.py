"""RAG-Anything's own parsers (``PARSER=mineru|docling|paddleocr``): checked at start-up.

They need model weights that their tools download from model hubs; this service never downloads
anything at run time, so a configured parser whose command, package or models are missing is
refused when the service starts, with what to install, instead of failing the first upload.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE = "offline"
EXTERNAL_PARSERS = ("mineru", "docling", "paddleocr")


class ParserUnavailable(RuntimeError):
    """The configured parser cannot run here (start-up refuses to continue)."""


def _mineru_models_ready() -> bool:
    """MinerU ≥ 4 knows whether its model repos are complete; older ones are trusted when told
    ``MINERU_MODEL_SOURCE=local`` (models downloaded beforehand)."""
    try:
        from mineru.model.download import verify_model_repo
        from mineru.model.registry import MODEL_REPOS
    except ImportError:
        return os.environ.get("MINERU_MODEL_SOURCE", "").lower() == "local"
    return any(verify_model_repo(repo).ready for repo in MODEL_REPOS)


def _docling_models_ready() -> bool:
    artifacts = os.environ.get("DOCLING_ARTIFACTS_PATH")
    if artifacts:
        return Path(artifacts).is_dir() and any(Path(artifacts).iterdir())
    hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    return hub.is_dir() and any("docling" in p.name for p in hub.iterdir())


def _paddle_models_ready() -> bool:
    home = Path(os.environ.get("PADDLE_PDX_CACHE_HOME", Path.home() / ".paddlex"))
    models = home / "official_models"
    return models.is_dir() and any(models.iterdir())


def check_parser(name: str) -> str:
    """A one-line description of the parser ``name`` if it can run here; else ParserUnavailable
    saying what is missing. Blocking (may run ``mineru --version``): call it in a thread."""
    if name == OFFLINE:
        return "offline (built in: text layers, tables, pictures, equations; OCR for scans and photos)"
    if name not in EXTERNAL_PARSERS:
        raise ParserUnavailable(f"PARSER={name!r} is not one of offline, {', '.join(EXTERNAL_PARSERS)}")
    from raganything.parser import get_parser

    install = {
        "mineru": "pip install -U 'mineru[core]', then mineru-models-download (see README, Parsers)",
        "docling": "pip install docling, then docling-tools models download (see README, Parsers)",
        "paddleocr": "pip install paddleocr paddlepaddle, then fetch its models once (see README, Parsers)",
    }[name]
    if not get_parser(name).check_installation():
        raise ParserUnavailable(f"PARSER={name}: {name} is not installed or does not run here; {install}")
    ready = {
        "mineru": _mineru_models_ready,
        "docling": _docling_models_ready,
        "paddleocr": _paddle_models_ready,
    }
    if not ready[name]():
        raise ParserUnavailable(
            f"PARSER={name}: its model weights are not on this machine and this service downloads "
            f"nothing at run time; {install}"
        )
    return f"{name} (RAG-Anything's parser; pictures and scans by its models)"
