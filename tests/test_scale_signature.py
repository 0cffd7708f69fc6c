"""An instance configured with another embedding model than the one a shared (PostgreSQL)
knowledge base was built with is refused when it opens it, whichever instance recorded the model."""

from __future__ import annotations

import pytest

from tests.pg import pg_env  # noqa: F401  (session fixture)
from tests.test_scale_instances import fleet_factory, mock_llm  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(600)]


def test_another_embedding_model_on_a_shared_workspace_is_refused(fleet_factory) -> None:  # noqa: F811
    """Catches: the signature kept per instance (in its own DATA_DIR): the second instance would
    start, make vector tables of its own model and answer from an empty knowledge base."""
    fleet = fleet_factory()
    fleet.start(1)  # records the fleet's model (EMBEDDING_PROVIDER=hash) for the default workspace
    fleet.common["EMBEDDING_PROVIDER"] = "onnx"
    with pytest.raises(AssertionError, match="exited"):
        fleet.start_one("inst-other")
    log = (fleet.tmp / "inst-other.log").read_text(errors="replace")
    assert "was indexed with embedding model" in log and "all-MiniLM" in log, log[-3000:]
    fleet.procs.pop("inst-other", None)
