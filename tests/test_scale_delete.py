"""DELETE /documents/{id} sent to an instance that does not own the workspace (shared PostgreSQL
storages): carried out by the owner, answered by the instance that received it."""

from __future__ import annotations

import httpx
import pytest

from tests.docs_factory import story
from tests.pg import pg_env  # noqa: F401  (session fixture)
from tests.test_scale_instances import (  # noqa: F401  (fixtures)
    context_for,
    fleet_factory,
    make_tenant,
    mock_llm,
    owners,
    upload,
    wait_final,
)

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(600)]


def test_delete_on_a_non_owner_is_carried_out_by_the_owner(fleet_factory) -> None:  # noqa: F811
    """Catches: 503 workspace_owned_elsewhere for a deletion that a non-owner received (the client
    cannot pick the owner behind a load balancer), and a forwarded deletion that leaves data."""
    fleet = fleet_factory()
    fleet.common["OWNER_IDLE_RELEASE_SECONDS"] = "600"  # the owner keeps the workspace throughout
    fleet.start(2)
    base = fleet.any_base()
    headers = make_tenant(base, "acme")
    bases = list(fleet.bases.values())
    kept = upload(bases[0], headers, "Keepmark.txt", story("harbours", "Keepmarkq", 8))
    gone = upload(bases[1], headers, "Gonemark.txt", story("orchards", "Gonemarkq", 8))
    wait_final(fleet, [(headers, kept["task_id"]), (headers, gone["task_id"])], timeout=300)
    owner = owners(fleet.pg)
    assert len(owner) == 1, owner
    other = next(name for name in fleet.bases if name != owner[0])
    response = httpx.delete(f"{fleet.bases[other]}/documents/{gone['doc_id']}", headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    assert owners(fleet.pg) == owner, "the deletion moved the workspace instead of being forwarded"
    for b in bases:
        assert httpx.get(f"{b}/documents/{gone['doc_id']}", headers=headers, timeout=30).status_code == 404
        assert httpx.get(f"{b}/documents/{kept['doc_id']}", headers=headers, timeout=30).status_code == 200
        assert "Gonemarkq" not in context_for(b, headers, "What did the Gonemarkq project study?")
    again = httpx.delete(f"{fleet.bases[other]}/documents/{gone['doc_id']}", headers=headers, timeout=120)
    assert again.status_code == 404, again.text
