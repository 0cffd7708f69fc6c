"""LightRAG Server's LLM_BINDING / EMBEDDING_BINDING, read so that its `.env` works here unchanged.

This service speaks OpenAI-compatible APIs only. A binding whose server speaks that API at the
configured host is served (``openai``; ``ollama`` through its ``/v1``); any other is refused at
start-up with one message naming the variable and what to set instead, rather than started on the
wrong protocol (or, worse, silently on the offline stand-in).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: Where LightRAG Server looks for Ollama when no host is given (lightrag/api/config.py).
OLLAMA_DEFAULT_ROOT = "http://localhost:11434"

#: Bindings served through the OpenAI-compatible client. ``openai-ollama`` is LightRAG Server's
#: shorthand for an OpenAI LLM with Ollama embeddings (it only exists as an LLM_BINDING).
SERVED_LLM_BINDINGS = frozenset({"openai", "ollama", "openai-ollama"})
SERVED_EMBEDDING_BINDINGS = frozenset({"openai", "ollama"})

#: What runs when a kind has no binding, host or key at all.
_OFFLINE = {"LLM": "the offline stand-in answers", "EMBEDDING": "the offline embedding model"}

_OPENAI_INSTEAD = "{kind}_BINDING=openai and {kind}_BINDING_HOST to an OpenAI-compatible endpoint"

#: Why a binding LightRAG Server knows cannot be served, and the OpenAI-compatible way to the same
#: provider where one exists.
_REFUSED = {
    "azure_openai": (
        "Azure OpenAI's own API needs an api-version and Azure authentication",
        "Azure's OpenAI-compatible v1 API is one: https://<resource>.openai.azure.com/openai/v1/",
    ),
    "aws_bedrock": (
        "Bedrock authenticates with AWS credentials, not an API key",
        "an OpenAI-compatible gateway in front of Bedrock (e.g. LiteLLM) is one",
    ),
    "gemini": (
        "LightRAG's gemini binding uses Google's own SDK",
        "Google's OpenAI-compatible endpoint is one: https://generativelanguage.googleapis.com/v1beta/openai/",
    ),
    "lollms": ("LoLLMs' generate/embed API is its own", "a LoLLMs server's OpenAI-compatible /v1 API is one"),
    "jina": ("Jina's embeddings API is its own", ""),
    "voyageai": ("Voyage AI's embeddings API is its own", ""),
}


class BindingError(ValueError):
    """A LightRAG Server binding this service cannot serve; the message says what to set instead."""


def served_binding(kind: str, binding: str | None) -> str | None:
    """``binding`` normalised (lower case), or None when unset; BindingError when not served.

    ``kind`` is "LLM" or "EMBEDDING" (the variable's prefix, used in the message)."""
    if binding is None or not binding.strip():
        return None
    name = binding.strip().lower()
    served = SERVED_LLM_BINDINGS if kind == "LLM" else SERVED_EMBEDDING_BINDINGS
    if name in served:
        return name
    instead = _OPENAI_INSTEAD.format(kind=kind)
    if name in _REFUSED:
        why, example = _REFUSED[name]
        hint = f" ({example})" if example else ""
        raise BindingError(
            f"{kind}_BINDING={binding} is not supported: this service speaks OpenAI-compatible APIs "
            f"only and {why}. Set {instead}{hint}, or remove the {kind}_BINDING* variables "
            f"({_OFFLINE[kind]})."
        )
    raise BindingError(
        f"{kind}_BINDING={binding} is not a binding this service knows (served: "
        f"{', '.join(sorted(served))}). Set {instead}, or remove the {kind}_BINDING* variables "
        f"({_OFFLINE[kind]})."
    )


def ollama_openai_url(base_url: str | None) -> str:
    """The OpenAI-compatible URL of an Ollama server given as LightRAG Server's binding host.

    LightRAG's ollama binding takes the server's root (``http://localhost:11434``); its
    OpenAI-compatible API lives under ``/v1``. A URL with a path already is kept as it is."""
    url = (base_url or OLLAMA_DEFAULT_ROOT).strip()
    parts = urlsplit(url)
    if parts.path.strip("/"):
        return url
    return urlunsplit((parts.scheme, parts.netloc, "/v1", "", ""))
