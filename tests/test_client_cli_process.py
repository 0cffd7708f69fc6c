"""The sync client and the `ragsvc` CLI against the real service running under uvicorn in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from src.client import RagApiError, RagClient
from src.client.cli import app as cli_app
from tests.helpers import free_port, make_pdf, scrubbed_env, story
from tests.procs import ROOT, service_env, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]




class LiveService:
    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[LiveService]:
    workdir = tmp_path_factory.mktemp("live")
    port = free_port()
    env = service_env(
        workdir / "data",
        port,
        REDIS_URL=redis_url,
        WORKSPACE=f"cli{uuid.uuid4().hex[:8]}",
        EMBEDDING_PROVIDER="hash",
        LLM_PROVIDER="offline",
        LOG_LEVEL="WARNING",
        REDIS_PREFIX=f"cli{uuid.uuid4().hex[:8]}:",
        ADMIN_TOKEN="cli-admin-token",
    )
    proc = start_service(env, workdir / "service.log")
    try:
        yield LiveService(f"http://127.0.0.1:{port}", workdir)
    finally:
        stop_process(proc)


def ragsvc(live: LiveService, *args: str):
    result = CliRunner().invoke(cli_app, ["--url", live.url, *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_upload_wait_status_watch_query(live: LiveService) -> None:
    doc = live.workdir / "harbour.txt"
    doc.write_text(story("harbours", "Vextrolamy"))
    uploaded = ragsvc(live, "upload", str(doc), "--doc-id", "harbour", "--wait", "--wait-timeout", "120")
    assert uploaded.exit_code == 0, uploaded.output
    assert "completed" in uploaded.stdout and "harbour.txt" in uploaded.stdout

    listing = json.loads(ragsvc(live, "--json", "watch", "--once", "--status", "completed").stdout)
    task = next(t for t in listing["tasks"] if t["doc_id"] == "harbour")
    assert task["status"] == "completed"

    status = ragsvc(live, "status", task["task_id"])
    assert status.exit_code == 0 and "completed" in status.stdout and "harbour" in status.stdout
    assert json.loads(ragsvc(live, "--json", "status", task["task_id"]).stdout)["progress"] == 100

    watched = ragsvc(live, "watch", "--once")
    assert watched.exit_code == 0 and task["task_id"] in watched.stdout

    answer = ragsvc(live, "query", "Where is Vextrolamy?", "--mode", "naive", "--context-only")
    assert answer.exit_code == 0 and "Vextrolamy" in answer.stdout
    streamed = ragsvc(live, "query", "Vextrolamy", "--mode", "hybrid", "--stream")
    assert streamed.exit_code == 0 and "Vextrolamy" in streamed.stdout

    changed = doc.with_name("harbour-v2.txt")
    changed.write_text(doc.read_text() + " A later revision.")
    again = ragsvc(live, "upload", str(changed), "--doc-id", "harbour")
    assert again.exit_code == 2 and "doc_exists" in again.stderr

    assert ragsvc(live, "delete-doc", "harbour").exit_code == 0
    missing = ragsvc(live, "delete-doc", "harbour")
    assert missing.exit_code == 2 and "not in the knowledge base" in missing.stderr

    health = ragsvc(live, "health")
    assert health.exit_code == 0 and "offline-extractive" in health.stdout
    stats = json.loads(ragsvc(live, "--json", "stats").stdout)
    assert stats["counts"]["completed"] >= 1


def test_cli_upload_wait_reports_failed_tasks_with_exit_1(live: LiveService) -> None:
    good = live.workdir / "good.md"
    good.write_text(story("forests", "Pellinquor"))
    broken = live.workdir / "broken.pdf"
    broken.write_bytes(make_pdf(["Some text"])[:200])  # header intact, body cut: the task fails
    result = ragsvc(live, "--json", "upload", str(good), str(broken), "--wait", "--wait-timeout", "120")
    assert result.exit_code == 1, result.output
    rows = {row["filename"]: row for row in json.loads(result.stdout)}
    assert rows["good.md"]["status"] == "completed"
    assert rows["broken.pdf"]["status"] == "failed" and rows["broken.pdf"]["error"]


def test_cli_cancel_unknown_task_exits_2_with_the_server_message(live: LiveService) -> None:
    result = ragsvc(live, "cancel", "no-such-task")
    assert result.exit_code == 2
    assert "task no-such-task not found" in result.stderr and "task_not_found" in result.stderr
    machine = ragsvc(live, "--json", "cancel", "no-such-task")
    assert machine.exit_code == 2
    assert json.loads(machine.stdout)["error"]["code"] == "task_not_found"


def test_sync_client_against_live_service(live: LiveService) -> None:
    doc = live.workdir / "orchard.txt"
    doc.write_text(story("orchards", "Trombelisk"))
    with RagClient(live.url, timeout=30) as client:
        accepted = client.upload(doc)
        seen: list[str] = []
        final = client.wait_for(accepted["task_id"], timeout=120, on_update=lambda v: seen.append(v["stage"]))
        assert final["status"] == "completed" and seen[-1] == "done"
        assert client.task(accepted["task_id"])["result"]["doc_id"] == accepted["doc_id"]
        text = "".join(client.query_stream("Trombelisk", mode="naive", only_need_context=True))
        assert "Trombelisk" in text
        with pytest.raises(RagApiError) as finished:
            client.cancel(accepted["task_id"])
        assert finished.value.code == "task_finished"


def test_python_m_cli_connection_refused_exits_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = scrubbed_env(RAGSVC_URL=url)
    result = subprocess.run(
        [sys.executable, "-m", "src.client.cli", "health"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result
    assert "cannot reach" in result.stderr and url in result.stderr


def test_cli_admin_manages_tenants_and_keys(live: LiveService) -> None:
    token = ["--admin-token", "cli-admin-token"]
    assert ragsvc(live, "admin", "tenants", "--admin-token", "wrong").exit_code == 2
    created = ragsvc(live, "admin", "create-tenant", "acme", "--max-running", "2", *token)
    assert created.exit_code == 0, created.output
    made = ragsvc(live, "--json", "admin", "create-key", "acme", "--label", "ci", *token)
    assert made.exit_code == 0, made.output
    key = json.loads(made.stdout)["api_key"]
    try:
        refused = ragsvc(live, "stats")
        assert refused.exit_code == 2 and "missing_api_key" in refused.stderr
        scoped = ragsvc(live, "--api-key", key, "--json", "stats")
        assert scoped.exit_code == 0 and json.loads(scoped.stdout)["tenant"] == "acme"
        listed = ragsvc(live, "--json", "admin", "keys", "acme", *token)
        keys = json.loads(listed.stdout)["keys"]
        assert len(keys) == 1 and keys[0]["label"] == "ci" and key not in listed.stdout
        tenants = json.loads(ragsvc(live, "--json", "admin", "tenants", *token).stdout)["tenants"]
        assert {"tenant": "acme", "keys": 1, "max_running": 2} == {
            k: tenants[0][k] for k in ("tenant", "keys", "max_running")
        }
    finally:
        key_id = key.split("_")[1]
        assert ragsvc(live, "admin", "revoke-key", key_id, *token).exit_code == 0
    assert ragsvc(live, "--api-key", key, "stats").exit_code == 2  # revoked key is refused
    assert ragsvc(live, "stats").exit_code == 0  # no keys left: open mode again


def test_cli_text_submission_options_list_and_document(live: LiveService) -> None:
    """Catches the CLI dropping --priority / --idempotency-key / --text, or `list` and `document`
    not reaching their endpoints."""
    args = ["upload", "--text", "-", "--doc-id", "cli-note", "--filename", "note.md", "--priority", "7"]
    body = story("meadows", "Fennoraque")
    submitted = CliRunner().invoke(
        cli_app, ["--url", live.url, "--json", *args, "--idempotency-key", "cli-k", "--wait"], input=body
    )
    assert submitted.exit_code == 0, submitted.output
    row = json.loads(submitted.stdout)[0]
    assert row["status"] == "completed" and row["doc_id"] == "cli-note" and row["filename"] == "note.md"
    again = ragsvc(live, "--json", "upload", "--text", "another text", "--idempotency-key", "cli-k")
    assert again.exit_code == 0 and json.loads(again.stdout)[0]["task_id"] == row["task_id"]
    assert json.loads(ragsvc(live, "--json", "status", row["task_id"]).stdout)["priority"] == 7

    listed = json.loads(ragsvc(live, "--json", "list", "--status", "completed", "--limit", "500").stdout)
    assert row["task_id"] in [t["task_id"] for t in listed["tasks"]]
    shown = ragsvc(live, "list", "--limit", "5")
    assert shown.exit_code == 0 and "Recent tasks" in shown.stdout

    document = ragsvc(live, "document", "cli-note")
    assert document.exit_code == 0 and "processed" in document.stdout
    assert json.loads(ragsvc(live, "--json", "document", "cli-note").stdout)["status"] == "processed"
    assert ragsvc(live, "document", "no-such-doc").exit_code == 2

    answer = ragsvc(
        live, "query", "Fennoraque", "--mode", "naive", "--context-only", "--chunk-top-k", "2",
        "--response-type", "Bullet Points",
    )
    assert answer.exit_code == 0 and "Fennoraque" in answer.stdout
    assert ragsvc(live, "cancel", row["task_id"]).exit_code == 2  # finished: nothing to cancel


def test_cli_upload_usage_errors_exit_2(live: LiveService) -> None:
    """Catches a command that sends nothing (or one key for several documents) exiting 0."""
    assert ragsvc(live, "upload").exit_code == 2
    one, two = live.workdir / "one.txt", live.workdir / "two.txt"
    one.write_text("one")
    two.write_text("two")
    assert ragsvc(live, "upload", str(one), str(two), "--idempotency-key", "k").exit_code == 2
    assert ragsvc(live, "upload", str(one), "--priority", "12").exit_code == 2
