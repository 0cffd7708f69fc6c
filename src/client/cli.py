"""`ragsvc`: command-line client of the RAG ingestion service (typer + rich).

    ragsvc upload report.pdf notes.md --wait      # live progress per file, results table
    ragsvc status <task_id>
    ragsvc watch --status processing              # live table; Ctrl-C stops; --once for one snapshot
    ragsvc cancel <task_id>
    ragsvc query "What about costs?" --mode mix --stream
    ragsvc delete-doc doc_001
    ragsvc health | ragsvc stats

Global options (before the command): --url (or $RAGSVC_URL), --api-key (or $RAGSVC_API_KEY),
--json (machine-readable output on stdout). Exit codes: 0 ok; 1 a task failed / the service is
degraded / a server-side error (5xx) / a wait timed out; 2 the server rejected the request (4xx,
its detail is printed in red) or bad usage; 3 the service could not be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from src.client.client import (
    DEFAULT_URL,
    AsyncRagClient,
    RagApiError,
    RagClient,
    RagConnectionError,
    RagError,
    RagTimeoutError,
)

EXIT_FAILED = 1
EXIT_CLIENT_ERROR = 2
EXIT_UNREACHABLE = 3
PIPE_WIDTH = 200

STATUS_STYLE = {
    "pending": "yellow",
    "processing": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "rejected": "red",
    "timeout": "red",
}

app = typer.Typer(
    name="ragsvc",
    help="Client of the RAG ingestion service: upload documents, follow tasks, query the knowledge base.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Mode(StrEnum):
    naive = "naive"
    local = "local"
    global_ = "global"
    hybrid = "hybrid"
    mix = "mix"


class StatusFilter(StrEnum):
    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


@dataclass
class State:
    url: str
    api_key: str | None
    json: bool
    timeout: float

    def client(self) -> RagClient:
        return RagClient(self.url, self.api_key, self.timeout)

    def async_client(self) -> AsyncRagClient:
        return AsyncRagClient(self.url, self.api_key, self.timeout)


def _console(stderr: bool = False) -> Console:
    # Built per call so that output follows sys.stdout (typer's CliRunner swaps it). Piped output
    # gets a wide page instead of rich's 80 columns so that ids are not folded (unless $COLUMNS says).
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def _out() -> Console:
    return _console()


def _err() -> Console:
    return _console(stderr=True)


def _state(ctx: typer.Context) -> State:
    return ctx.ensure_object(State)


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _error_text(exc: RagError) -> str:
    if isinstance(exc, RagApiError):
        return f"Error {exc.status_code} ({exc.code}): {exc.detail}"
    return f"Error: {exc}"


@contextlib.contextmanager
def _errors(state: State) -> Iterator[None]:
    """Print the service's error in red (and as JSON with --json) and exit with the matching code."""
    try:
        yield
    except RagError as exc:
        _err().print(Text(_error_text(exc), style="bold red"), soft_wrap=True)
        if state.json:
            error: dict[str, Any] = {"type": type(exc).__name__, "detail": str(exc)}
            if isinstance(exc, RagApiError):
                error.update(status_code=exc.status_code, code=exc.code, detail=exc.detail)
            _emit_json({"error": error})
        if isinstance(exc, RagApiError):
            raise typer.Exit(EXIT_CLIENT_ERROR if 400 <= exc.status_code < 500 else EXIT_FAILED) from None
        if isinstance(exc, RagConnectionError):
            raise typer.Exit(EXIT_UNREACHABLE) from None
        raise typer.Exit(EXIT_FAILED) from None


def _status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _fmt_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def _fmt_time(iso: str | None) -> str:
    return (iso or "").replace("T", " ").split(".")[0].rstrip("Z")


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="RAGSVC_URL", help="Service base URL.", show_envvar=True)
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="RAGSVC_API_KEY", help="Bearer token.", show_envvar=True),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-request timeout (seconds).")] = 60.0,
) -> None:
    """Client of the RAG ingestion service."""
    ctx.obj = State(url=url, api_key=api_key, json=json_output, timeout=timeout)


# --- upload ---------------------------------------------------------------------------------------


def _result_row(filename: str, view: dict | None, accepted: dict | None, error: str | None) -> dict:
    view = view or {}
    accepted = accepted or {}
    return {
        "filename": filename,
        "task_id": view.get("task_id") or accepted.get("task_id"),
        "doc_id": view.get("doc_id") or accepted.get("doc_id"),
        "status": view.get("status") or accepted.get("status"),
        "stage": view.get("stage"),
        "progress": view.get("progress"),
        "chunks": (view.get("result") or {}).get("chunks_count"),
        "error": error or view.get("error"),
    }


def _results_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("file", "task id", "doc id", "status", "chunks", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            Text(row["filename"]),
            Text(row["task_id"] or ""),
            Text(row["doc_id"] or ""),
            _status_text(row["status"] or ""),
            "" if row.get("chunks") is None else str(row["chunks"]),
            Text(row.get("error") or "", style="red"),
        )
    return table


async def _upload_and_wait(
    state: State, files: list[Path], doc_id: str | None, wait_timeout: float | None
) -> tuple[list[dict], int]:
    """Upload every file, then follow all accepted tasks concurrently with one progress bar each."""
    rows: dict[int, dict] = {}
    code = 0
    show = not state.json
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        console=_out(),
        disable=not show,
    )
    async with state.async_client() as rag:
        with progress:
            accepted: dict[int, tuple[dict, Any]] = {}
            for index, path in enumerate(files):
                try:
                    body = await rag.upload(path, doc_id=doc_id)
                except RagApiError as exc:
                    rows[index] = _result_row(path.name, None, None, _error_text(exc))
                    rows[index]["status"] = "rejected"
                    code = max(code, EXIT_CLIENT_ERROR if exc.status_code < 500 else EXIT_FAILED)
                    progress.console.print(
                        Text(f"{path.name}: {_error_text(exc)}", style="red"), soft_wrap=True
                    )
                    continue
                bar = progress.add_task(escape(path.name), total=100, stage="pending")
                accepted[index] = (body, bar)

            async def follow(index: int, body: dict, bar: Any) -> None:
                def update(view: dict) -> None:
                    status = view.get("status", "")
                    stage = view.get("stage", "")
                    label = stage if status in ("pending", "processing") else status
                    progress.update(bar, completed=float(view.get("progress") or 0), stage=label)

                name = files[index].name
                try:
                    view = await rag.wait_for(body["task_id"], timeout=wait_timeout, on_update=update)
                except RagTimeoutError as exc:
                    rows[index] = _result_row(name, exc.task, body, str(exc))
                    rows[index]["status"] = "timeout"
                    return
                except RagApiError as exc:
                    rows[index] = _result_row(name, None, body, _error_text(exc))
                    rows[index]["status"] = "failed"
                    return
                style = "green" if view["status"] == "completed" else "red"
                progress.update(bar, description=f"[{style}]{escape(name)}[/]", stage=view["status"])
                rows[index] = _result_row(name, view, body, None)

            await asyncio.gather(*(follow(i, body, bar) for i, (body, bar) in accepted.items()))
    ordered = [rows[i] for i in sorted(rows)]
    if code == 0 and any(row["status"] != "completed" for row in ordered):
        code = EXIT_FAILED
    return ordered, code


@app.command()
def upload(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(help="Documents to upload.", exists=True, dir_okay=False, readable=True),
    ],
    doc_id: Annotated[
        str | None, typer.Option("--doc-id", help="Document id (only with a single file).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow each task to its end with a progress bar.")
    ] = False,
    wait_timeout: Annotated[
        float | None, typer.Option("--wait-timeout", help="Give up waiting after this many seconds.")
    ] = None,
) -> None:
    """Upload documents (202: each becomes an indexing task)."""
    state = _state(ctx)
    if doc_id and len(files) > 1:
        raise typer.BadParameter("--doc-id can only be used with a single file", param_hint="--doc-id")
    with _errors(state):
        if wait:
            rows, code = asyncio.run(_upload_and_wait(state, files, doc_id, wait_timeout))
            if state.json:
                _emit_json(rows)
            else:
                _out().print(_results_table(rows, "Results"))
            raise typer.Exit(code)
        rows, code = [], 0
        with state.client() as rag:
            for path in files:
                try:
                    body = rag.upload(path, doc_id=doc_id)
                except RagApiError as exc:
                    row = _result_row(path.name, None, None, _error_text(exc))
                    row["status"] = "rejected"
                    rows.append(row)
                    code = max(code, EXIT_CLIENT_ERROR if exc.status_code < 500 else EXIT_FAILED)
                    _err().print(Text(f"{path.name}: {_error_text(exc)}", style="red"), soft_wrap=True)
                    continue
                rows.append({**_result_row(path.name, None, body, None), "file_size": body.get("file_size")})
        if state.json:
            _emit_json(rows)
        else:
            _out().print(_results_table(rows, "Uploaded"))
        raise typer.Exit(code)


# --- tasks ----------------------------------------------------------------------------------------


def _task_table(view: dict) -> Table:
    table = Table(show_header=False, title=f"Task {view.get('task_id', '')}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    fields = [
        ("status", _status_text(view.get("status", ""))),
        ("stage", Text(str(view.get("stage", "")))),
        ("progress", Text(f"{float(view.get('progress') or 0):.0f}%")),
        ("doc id", Text(str(view.get("doc_id", "")))),
        (
            "file",
            Text(f"{view.get('filename', '')} ({_fmt_size(view.get('file_size'))}, {view.get('kind')})"),
        ),
        ("attempt", Text(str(view.get("attempt", "")))),
        ("created", Text(_fmt_time(view.get("created_at")))),
        ("started", Text(_fmt_time(view.get("started_at")))),
        ("finished", Text(_fmt_time(view.get("finished_at")))),
        ("expires", Text(_fmt_time(view.get("expires_at")))),
    ]
    if view.get("result"):
        fields.append(("result", Text(json.dumps(view["result"]))))
    if view.get("error"):
        fields.append(("error", Text(str(view["error"]), style="red")))
    for name, value in fields:
        table.add_row(name, value)
    return table


@app.command()
def status(ctx: typer.Context, task_id: Annotated[str, typer.Argument(help="Task id.")]) -> None:
    """Show one task: status, stage, progress, timestamps, result or error."""
    state = _state(ctx)
    with _errors(state), state.client() as rag:
        view = rag.task(task_id)
    if state.json:
        _emit_json(view)
    else:
        _out().print(_task_table(view))


def _tasks_table(listing: dict, status_filter: str | None) -> Table:
    shown = len(listing.get("tasks", []))
    scope = f" {status_filter}" if status_filter else ""
    title = f"Recent{scope} tasks: {shown} of {listing.get('total', shown)} · {time.strftime('%H:%M:%S')}"
    table = Table(title=title, title_justify="left")
    table.add_column("task id", overflow="fold", min_width=12)
    table.add_column("file", overflow="fold")
    table.add_column("status")
    table.add_column("stage")
    table.add_column("progress", min_width=16)
    table.add_column("attempt", justify="right")
    table.add_column("updated (UTC)")
    for view in listing.get("tasks", []):
        pct = float(view.get("progress") or 0)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=100, completed=pct, width=10), Text(f"{pct:3.0f}%"))
        table.add_row(
            Text(view.get("task_id", "")),
            Text(view.get("filename", "")),
            _status_text(view.get("status", "")),
            Text(view.get("stage", "")),
            bar,
            str(view.get("attempt", "")),
            Text(_fmt_time(view.get("updated_at")).rpartition(" ")[2]),
        )
    return table


@app.command()
def watch(
    ctx: typer.Context,
    status_filter: Annotated[
        StatusFilter | None, typer.Option("--status", help="Only tasks with this status.")
    ] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Refresh period (seconds).")] = 2.0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="Tasks shown.")] = 20,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
) -> None:
    """Live table of recent tasks with their progress (Ctrl-C to stop)."""
    state = _state(ctx)
    status_value = status_filter.value if status_filter else None
    with _errors(state), state.client() as rag:
        if once or state.json:
            listing = rag.tasks(status=status_value, limit=limit)
            if state.json:
                _emit_json(listing)
            else:
                _out().print(_tasks_table(listing, status_value))
            return
        console = _out()
        hint = Text("Ctrl-C to stop", style="dim")
        try:
            first = _tasks_table(rag.tasks(status=status_value, limit=limit), status_value)
            with Live(Group(first, hint), console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    table = _tasks_table(rag.tasks(status=status_value, limit=limit), status_value)
                    live.update(Group(table, hint))
        except KeyboardInterrupt:
            pass


@app.command()
def cancel(ctx: typer.Context, task_id: Annotated[str, typer.Argument(help="Task id.")]) -> None:
    """Cancel a pending task (running or finished tasks cannot be cancelled)."""
    state = _state(ctx)
    with _errors(state), state.client() as rag:
        body = rag.cancel(task_id)
    if state.json:
        _emit_json(body)
    else:
        _out().print(Text(f"{body.get('message', 'Task cancelled')}: {task_id}", style="green"))


# --- query and documents --------------------------------------------------------------------------


@app.command()
def query(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(metavar="QUERY", help="The question.")],
    mode: Annotated[Mode, typer.Option("--mode", help="Retrieval mode.")] = Mode.hybrid,
    context_only: Annotated[
        bool, typer.Option("--context-only", help="Return the retrieved context, no answer.")
    ] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, max=200)] = None,
) -> None:
    """Ask the knowledge base."""
    state = _state(ctx)
    with _errors(state), state.client() as rag:
        if stream:
            for piece in rag.query_stream(text, mode=mode.value, only_need_context=context_only, top_k=top_k):
                if state.json:
                    typer.echo(json.dumps({"response": piece}, ensure_ascii=False))
                else:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            if not state.json:
                sys.stdout.write("\n")
            return
        body = rag.query(text, mode=mode.value, only_need_context=context_only, top_k=top_k)
    if state.json:
        _emit_json(body)
    else:
        typer.echo(body.get("response", ""))


@app.command("delete-doc")
def delete_doc(ctx: typer.Context, doc_id: Annotated[str, typer.Argument(help="Document id.")]) -> None:
    """Remove a document (chunks, entities, relations) from the knowledge base."""
    state = _state(ctx)
    with _errors(state), state.client() as rag:
        body = rag.delete_document(doc_id)
    if state.json:
        _emit_json(body)
    else:
        _out().print(Text(f"Deleted {doc_id}: {body.get('message', body.get('status', ''))}", style="green"))


# --- service --------------------------------------------------------------------------------------


@app.command()
def health(
    ctx: typer.Context,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token", envvar="RAGSVC_ADMIN_TOKEN", help="The service's ADMIN_TOKEN (for the details)."
        ),
    ] = None,
) -> None:
    """Service health: ok/degraded; with the admin token also Redis, storage, model bindings
    (exit 1 when degraded)."""
    state = _state(ctx)
    with _errors(state), state.client() as rag:
        body = rag.health(admin_token=admin_token)
    healthy = body.get("status") == "ok"
    if state.json:
        _emit_json(body)
    elif "redis" not in body:  # the public answer: status only
        _out().print(Text(f"{state.url}: {body.get('status')}", style="green" if healthy else "red"))
        _out().print(Text("details need the admin token (--admin-token / RAGSVC_ADMIN_TOKEN)", style="dim"))
    else:
        redis = body.get("redis", {})
        storage = body.get("storage", {})
        tasks = body.get("tasks", {})
        table = Table(show_header=False, title=f"Health of {state.url}", title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("status", Text(str(body.get("status")), style="green" if healthy else "red"))
        table.add_row("instance", Text(str(body.get("instance_id", ""))))
        redis_text = (
            f"ok, {redis.get('latency_ms')} ms" if redis.get("ok") else f"DOWN: {redis.get('error', '')}"
        )
        redis_text += " (embedded)" if redis.get("embedded") else ""
        table.add_row("redis", Text(redis_text, style="" if redis.get("ok") else "red"))
        loaded = ", ".join(storage.get("loaded_tenants") or []) or "none"
        storage_text = (
            f"{'writable' if storage.get('ok') else 'NOT writable'}, knowledge bases loaded: {loaded}"
        )
        table.add_row("storage", Text(storage_text))
        table.add_row("llm", Text(str(body.get("llm", ""))))
        table.add_row("embedding", Text(str(body.get("embedding", ""))))
        table.add_row(
            "tasks", Text(f"{tasks.get('running_here', 0)} running of {tasks.get('capacity', '?')}")
        )
        _out().print(table)
    if not healthy:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def stats(ctx: typer.Context) -> None:
    """Task counts per status, queue length and capacity."""
    state = _state(ctx)
    with _errors(state), state.client() as rag:
        body = rag.stats()
    if state.json:
        _emit_json(body)
        return
    table = Table(title=f"Queue of {body.get('instance_id', '')}", title_justify="left")
    table.add_column("status")
    table.add_column("tasks", justify="right")
    for name, count in sorted(body.get("counts", {}).items()):
        table.add_row(_status_text(name), str(count))
    table.add_section()
    table.add_row("pending queue", str(body.get("pending", 0)))
    table.add_row("running here", f"{body.get('running_here', 0)} / {body.get('capacity', '?')}")
    _out().print(table)


# --- admin: tenants and API keys -------------------------------------------------------------

admin = typer.Typer(help="Tenants and API keys (needs the service's ADMIN_TOKEN).", no_args_is_help=True)
app.add_typer(admin, name="admin")
AdminToken = Annotated[
    str, typer.Option("--admin-token", envvar="RAGSVC_ADMIN_TOKEN", help="The service's ADMIN_TOKEN.")
]


def _admin_call(state: State, token: str, method: str, path: str, **kwargs: Any) -> Any:
    """One admin request; errors are reported like every other command's."""
    headers = {"Authorization": f"Bearer {token}"}
    with _errors(state):
        try:
            response = httpx.request(
                method, f"{state.url.rstrip('/')}{path}", headers=headers, timeout=state.timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise RagConnectionError(f"cannot reach {state.url}: {exc}") from exc
        if response.status_code >= 400:
            raise RagApiError.from_response(response)
        return response.json()


def _print_rows(state: State, body: Any, rows: list[dict], title: str) -> None:
    if state.json:
        _emit_json(body)
        return
    table = Table(title=title, title_justify="left")
    for column in rows[0] if rows else ["(none)"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    _out().print(table)


@admin.command("create-tenant")
def admin_create_tenant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Tenant name (a-z, 0-9, '-', '_').")],
    token: AdminToken,
    max_running: Annotated[int | None, typer.Option(help="Tasks of this tenant running at once.")] = None,
    max_pending: Annotated[int | None, typer.Option(help="Tasks of this tenant waiting at once.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
) -> None:
    """Create a tenant (or update its quotas)."""
    state = _state(ctx)
    body = {"name": name, "max_running": max_running, "max_pending": max_pending, "requests_per_minute": rpm}
    result = _admin_call(state, token, "POST", "/admin/tenants", json=body)
    _print_rows(state, result, [result], "Tenant")


@admin.command("tenants")
def admin_tenants(ctx: typer.Context, token: AdminToken) -> None:
    """List tenants, their quotas and key counts."""
    state = _state(ctx)
    result = _admin_call(state, token, "GET", "/admin/tenants")
    _print_rows(state, result, result["tenants"], "Tenants")


@admin.command("create-key")
def admin_create_key(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="Tenant that the key acts as.")],
    token: AdminToken,
    label: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create an API key for a tenant. The key is printed once; store it."""
    state = _state(ctx)
    result = _admin_call(state, token, "POST", f"/admin/tenants/{tenant}/keys", json={"label": label})
    if state.json:
        _emit_json(result)
        return
    _out().print(f"key id [bold]{result['key_id']}[/] for tenant [bold]{tenant}[/]:")
    _out().print(result["api_key"], markup=False, highlight=False)
    _err().print("Store this key now: it is not shown again.")


@admin.command("keys")
def admin_keys(
    ctx: typer.Context, tenant: Annotated[str, typer.Argument(help="Tenant.")], token: AdminToken
) -> None:
    """List a tenant's keys (ids and labels only)."""
    state = _state(ctx)
    result = _admin_call(state, token, "GET", f"/admin/tenants/{tenant}/keys")
    _print_rows(state, result, result["keys"], f"Keys of {tenant}")


@admin.command("revoke-key")
def admin_revoke_key(
    ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="Key id.")], token: AdminToken
) -> None:
    """Revoke an API key at once."""
    state = _state(ctx)
    result = _admin_call(state, token, "DELETE", f"/admin/keys/{key_id}")
    _print_rows(state, result, [result], "Revoked")


if __name__ == "__main__":
    app(prog_name="ragsvc")
