"""A LightRAG Server `.env` configures the service unchanged: its variable names are read (ours win
when both are set), its LLM_BINDING / EMBEDDING_BINDING select the OpenAI-compatible client (Ollama
through its /v1) or are refused at start-up with one message, never a traceback or, worse, a silent
fall-back to the offline stand-in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from src.core.config import Settings, get_settings, variable_names
from tests.helpers import scrubbed_env

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]

#: (LightRAG Server's variable, a value of it, our setting, the value it must give).
ALIASES = [
    ("LLM_BINDING_HOST", "http://llm.internal:8000/v1", "llm_base_url", "http://llm.internal:8000/v1"),
    ("LLM_BINDING_API_KEY", "sk-theirs", "llm_api_key", "sk-theirs"),
    ("LLM_TIMEOUT", "240", "llm_timeout_seconds", 240.0),
    ("MAX_ASYNC", "16", "llm_max_async", 16),
    (
        "EMBEDDING_BINDING_HOST",
        "http://emb.internal:8001/v1",
        "embedding_base_url",
        "http://emb.internal:8001/v1",
    ),
    ("EMBEDDING_BINDING_API_KEY", "sk-emb", "embedding_api_key", "sk-emb"),
    ("EMBEDDING_FUNC_MAX_ASYNC", "12", "embedding_max_async", 12),
    ("EMBEDDING_BATCH_NUM", "10", "embedding_batch_size", 10),
    ("MAX_GLEANING", "0", "entity_extract_max_gleaning", 0),
    ("MAX_UPLOAD_SIZE", "52428800", "max_upload_bytes", 52428800),
    ("CHUNK_SIZE", "800", "chunk_token_size", 800),
    ("CHUNK_OVERLAP_SIZE", "50", "chunk_overlap_token_size", 50),
]

#: LightRAG Server's variables whose name is ours too (read without an alias; listed so that a
#: rename of one of our settings cannot silently drop them).
SAME_NAMES = [
    ("LLM_MODEL", "qwen2.5:7b", "llm_model", "qwen2.5:7b"),
    ("EMBEDDING_MODEL", "bge-m3:latest", "embedding_model", "bge-m3:latest"),
    ("EMBEDDING_DIM", "1024", "embedding_dim", 1024),
    ("SUMMARY_LANGUAGE", "Chinese", "summary_language", "Chinese"),
    ("MAX_PARALLEL_INSERT", "3", "max_parallel_insert", 3),
    ("MIN_RERANK_SCORE", "0.3", "min_rerank_score", 0.3),
    ("TOKEN_EXPIRE_HOURS", "12", "token_expire_hours", 12.0),
    ("WORKSPACE", "kb1", "workspace", "kb1"),
]


def settings(**env: str) -> Settings:
    """Settings read from exactly ``env`` (the session fixture scrubbed the developer's own)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings(_env_file=None)


# --- each name is read --------------------------------------------------------------------------


@pytest.mark.parametrize(("theirs", "value", "field", "expected"), ALIASES + SAME_NAMES)
def test_lightrag_server_variable_is_read(theirs: str, value: str, field: str, expected: object) -> None:
    default = Settings.model_fields[field].default
    assert expected != default, "the test value must differ from the default to prove the read"
    assert getattr(settings(**{theirs: value}), field) == expected


@pytest.mark.parametrize(("theirs", "value", "field", "expected"), ALIASES)
def test_ours_wins_when_both_are_set(theirs: str, value: str, field: str, expected: object) -> None:
    ours = variable_names(field)[0]
    assert ours != theirs and theirs in variable_names(field)
    ours_value = {int: "700", float: "77", str: "ours"}[type(expected)]
    got = getattr(settings(**{theirs: value, ours: ours_value}), field)
    assert str(got).removesuffix(".0") == ours_value


def test_timeout_is_not_the_llm_timeout() -> None:
    """LightRAG Server's TIMEOUT is gunicorn's worker timeout, not a per-call LLM timeout."""
    assert settings(TIMEOUT="5").llm_timeout_seconds == Settings.model_fields["llm_timeout_seconds"].default


def test_lightrag_unlimited_upload_size_is_refused() -> None:
    """LightRAG Server reads MAX_UPLOAD_SIZE=0 as "no limit"; here it would refuse every upload."""
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        settings(MAX_UPLOAD_SIZE="0")


# --- provider selection ---------------------------------------------------------------------------


def test_nothing_set_means_offline() -> None:
    s = settings()
    assert (s.resolved_llm_provider, s.resolved_embedding_provider) == ("offline", "e5")


@pytest.mark.parametrize(
    "env",
    [
        {"EMBEDDING_BASE_URL": "http://emb.internal:8001/v1"},
        {"EMBEDDING_BINDING_HOST": "http://emb.internal:8001/v1"},
        {"EMBEDDING_BINDING_API_KEY": "sk-emb"},
        {"EMBEDDING_BINDING": "openai"},
    ],
)
def test_lightrag_embedding_variables_select_the_openai_compatible_provider(env: dict[str, str]) -> None:
    assert settings(**env).resolved_embedding_provider == "openai"


@pytest.mark.parametrize(
    "env",
    [
        {"LLM_BASE_URL": "http://llm.internal:8000/v1"},
        {"LLM_BINDING_HOST": "http://llm.internal:8000/v1"},
        {"LLM_BINDING_API_KEY": "sk-theirs"},
        {"LLM_BINDING": "openai"},
    ],
)
def test_lightrag_llm_variables_select_the_openai_compatible_provider(env: dict[str, str]) -> None:
    assert settings(**env).resolved_llm_provider == "openai"


def test_an_explicit_offline_provider_still_wins() -> None:
    s = settings(LLM_PROVIDER="offline", LLM_BINDING_HOST="http://x/v1", EMBEDDING_PROVIDER="onnx")
    assert (s.resolved_llm_provider, s.resolved_embedding_provider) == ("offline", "onnx")


# --- bindings ---------------------------------------------------------------------------------------


def test_openai_binding_keeps_the_host_as_given() -> None:
    s = settings(LLM_BINDING="openai", LLM_BINDING_HOST="https://openrouter.ai/api/v1")
    assert s.llm_base_url == "https://openrouter.ai/api/v1"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("http://localhost:11434", "http://localhost:11434/v1"),
        ("http://gpu-box:11434/", "http://gpu-box:11434/v1"),
        ("http://gpu-box:11434/v1", "http://gpu-box:11434/v1"),
        (None, "http://localhost:11434/v1"),  # LightRAG Server's default Ollama host
    ],
)
def test_ollama_binding_uses_ollamas_openai_compatible_api(host: str | None, expected: str) -> None:
    env = {"LLM_BINDING": "Ollama", "EMBEDDING_BINDING": "ollama"}
    if host is not None:
        env |= {"LLM_BINDING_HOST": host, "EMBEDDING_BINDING_HOST": host}
    s = settings(**env)
    assert (s.llm_base_url, s.embedding_base_url) == (expected, expected)
    assert (s.resolved_llm_provider, s.resolved_embedding_provider) == ("openai", "openai")


def test_openai_ollama_binding_means_ollama_embeddings() -> None:
    s = settings(
        LLM_BINDING="openai-ollama", LLM_BINDING_HOST="https://api.openai.com/v1", EMBEDDING_BINDING="openai"
    )
    assert s.llm_base_url == "https://api.openai.com/v1"
    assert (s.embedding_binding, s.embedding_base_url) == ("ollama", "http://localhost:11434/v1")


@pytest.mark.parametrize("binding", ["azure_openai", "aws_bedrock", "gemini", "lollms", "bogus"])
def test_llm_binding_we_cannot_serve_is_refused(binding: str) -> None:
    with pytest.raises(
        ValueError, match=rf"LLM_BINDING={binding} is not .*Set LLM_BINDING=openai and LLM_BINDING_HOST"
    ):
        settings(LLM_BINDING=binding, LLM_BINDING_HOST="https://example.invalid")


@pytest.mark.parametrize("binding", ["azure_openai", "aws_bedrock", "jina", "voyageai", "gemini", "lollms"])
def test_embedding_binding_we_cannot_serve_is_refused(binding: str) -> None:
    with pytest.raises(
        ValueError, match=rf"EMBEDDING_BINDING={binding} is not supported.*EMBEDDING_BINDING=openai"
    ):
        settings(EMBEDDING_BINDING=binding)


def test_unserved_binding_is_ignored_where_it_is_not_used() -> None:
    """An explicit offline LLM or local embedding model does not read the binding at all."""
    s = settings(
        LLM_PROVIDER="offline", LLM_BINDING="azure_openai", EMBEDDING_PROVIDER="e5", EMBEDDING_BINDING="jina"
    )
    assert (s.resolved_llm_provider, s.resolved_embedding_provider) == ("offline", "e5")


# --- start-up ---------------------------------------------------------------------------------------


def _start_up_refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """What `get_settings()` exits with under ``env`` (in a directory without a .env file)."""
    monkeypatch.chdir(Path(__file__).parent)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as refused:
            get_settings()
    finally:
        get_settings.cache_clear()
    return str(refused.value.code)


def test_start_up_refusal_is_one_message_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _start_up_refusal(monkeypatch, LLM_BINDING="azure_openai")
    assert message.startswith("invalid configuration:\n  LLM_BINDING=azure_openai is not supported")
    assert "validation error" not in message and "errors.pydantic.dev" not in message


def test_start_up_refusal_names_both_variables_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _start_up_refusal(monkeypatch, MAX_ASYNC="0", TOKEN_EXPIRE_HOURS="sekrit-looking")
    assert "LLM_MAX_ASYNC / MAX_ASYNC: Input should be greater than or equal to 1 (got '0')" in message
    assert "TOKEN_EXPIRE_HOURS: " in message and "sekrit-looking" not in message


def test_a_refused_binding_is_named_beside_a_refused_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a binding refusal hidden by any other bad setting (pydantic skips the model checks
    once a field failed): the operator fixed one line, restarted, and only then met the next."""
    message = _start_up_refusal(
        monkeypatch, MAX_ASYNC="0", LLM_BINDING="azure_openai", EMBEDDING_BINDING="jina"
    )
    assert "LLM_MAX_ASYNC / MAX_ASYNC: Input should be greater than or equal to 1" in message
    assert "LLM_BINDING=azure_openai is not supported" in message
    assert "EMBEDDING_BINDING=jina is not" in message


def test_the_process_prints_the_message_without_a_traceback(tmp_path: Path) -> None:
    """What `python main.py` / `uvicorn main:app` do first: read the settings."""
    env = scrubbed_env(LLM_BINDING="aws_bedrock", PYTHONPATH=str(REPO))
    code = "from src.core.config import get_settings; get_settings()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[1].strip().startswith("LLM_BINDING=aws_bedrock is not supported")
