"""`ragsvc`: command-line client of the RAG ingestion service (typer + rich), over `RagClient` /
`AsyncRagClient` only (it never speaks HTTP itself).

    ragsvc upload report.pdf notes.md --wait      # one POST /batch; overall + per-file progress
    ragsvc batch <batch_id> | ragsvc batch-cancel <batch_id>
    ragsvc upload big.pdf --priority 9 --callback-url https://hooks.example/x --idempotency-key big-v1
    ragsvc upload --text "Some text" --doc-id note-1 --wait  # '-' reads the text from stdin
    ragsvc status <task_id> | ragsvc list --status failed | ragsvc watch
    ragsvc cancel <task_id> --wait                # pending: at once; running: stopped and cleaned up
    ragsvc query "What about costs?" --mode mix --stream
    ragsvc query "Summarise every report" --async --priority 2   # a query task, followed until done
    ragsvc upload small.md --server-wait 30       # one round trip: the final state if done in 30 s
    ragsvc documents --status failed --limit 20   # the knowledge base's documents, newest first
    ragsvc document doc_001 | ragsvc delete-doc doc_001
    ragsvc health | ragsvc stats
    ragsvc admin create-tenant acme --admin-token ...   # also tenants, create-key, keys, revoke-key

Global options (before the command): --url (or $RAGSVC_URL), --api-key (or $RAGSVC_API_KEY),
--json (machine-readable output on stdout), --timeout. Exit codes: see cli_common.py.

One module (~500 lines): the command table of `ragsvc`, one short command per API operation (the
admin and batch commands live in cli_admin.py and cli_batch.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from .aio import AsyncRagClient
from .cli_admin import admin
from .cli_batch import BatchUpload
from .cli_common import (
    EXIT_CLIENT_ERROR,
    EXIT_FAILED,
    DocStatusFilter,
    Mode,
    State,
    StatusFilter,
    emit_json,
    err,
    error_text,
    errors,
    exit_code,
    out,
    request,
    state_of,
)
from .core import DEFAULT_URL, FINAL_STATUSES, RagApiError, RagTimeoutError, drop_none
from .render import (
    batch_cancel_table,
    batch_table,
    document_table,
    documents_table,
    health_table,
    result_row,
    results_table,
    stats_table,
    task_table,
    tasks_table,
)

app = typer.Typer(
    name="ragsvc",
    help="Client of the RAG ingestion service: upload documents, follow tasks, query the knowledge base.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(admin, name="admin")


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


# --- submitting documents (files or text) ---------------------------------------------------------

DocId = Annotated[str | None, typer.Option("--doc-id", help="Document id (default: the content hash).")]
Priority = Annotated[
    int | None, typer.Option("--priority", min=0, max=9, help="0 (bulk) .. 9 (interactive); higher first.")
]
CallbackUrl = Annotated[
    str | None, typer.Option("--callback-url", help="POST a signed JSON event here when the task ends.")
]
IdempotencyKey = Annotated[
    str | None,
    typer.Option("--idempotency-key", help="Retries with the same key return the same task."),
]
Wait = Annotated[bool, typer.Option("--wait", help="Follow each task to its end with a progress bar.")]
WaitTimeout = Annotated[
    float | None, typer.Option("--wait-timeout", help="Give up waiting after this many seconds.")
]
ServerWait = Annotated[
    float | None,
    typer.Option(
        "--server-wait",
        min=0,
        max=60,
        help="The service holds each answer up to this many seconds until the task ends "
        "(small documents: the final state in one round trip).",
    ),
]


@dataclass
class Submission:
    """One document to submit: its name in the report, and the client call that submits it."""

    name: str
    submit: Callable[[AsyncRagClient], Awaitable[dict]]


async def _follow(
    rag: AsyncRagClient, progress: Progress, name: str, body: dict, wait_timeout: float | None
) -> dict:
    """Wait for one accepted task, moving its progress bar; its report row."""
    bar = progress.add_task(escape(name), total=100, stage="pending")

    def update(view: dict) -> None:
        status, stage = view.get("status", ""), view.get("stage", "")
        label = stage if status not in FINAL_STATUSES else status
        progress.update(bar, completed=float(view.get("progress") or 0), stage=label)

    try:
        view = await rag.wait_for(body["task_id"], timeout=wait_timeout, on_update=update)
    except RagTimeoutError as exc:
        return {**result_row(name, exc.task, body, str(exc)), "status": "timeout"}
    except RagApiError as exc:
        return {**result_row(name, None, body, error_text(exc)), "status": "failed"}
    style = "green" if view["status"] == "completed" else "red"
    progress.update(bar, description=f"[{style}]{escape(name)}[/]", stage=view["status"])
    return result_row(name, view, body, None)


async def _submit_all(
    state: State,
    items: list[Submission],
    wait: bool,
    wait_timeout: float | None,
    batch: BatchUpload | None = None,
) -> tuple[list[dict], int]:
    """Submit every document (``batch``: several files through POST /batch); with ``wait``, follow
    all accepted tasks concurrently."""
    rows: dict[int, dict] = {}
    followed: dict[int, Awaitable[dict]] = {}
    code = 0
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    stage = TextColumn("{task.fields[stage]}")
    progress = Progress(*columns, stage, TimeElapsedColumn(), console=out(), disable=state.json or not wait)
    async with state.async_client() as rag:
        with progress:
            if batch is not None:
                await batch.submit(rag)
                code = batch.code
            for index, item in enumerate(items):
                try:
                    body = await item.submit(rag)
                except RagApiError as exc:
                    rows[index] = {**result_row(item.name, None, None, error_text(exc)), "status": "rejected"}
                    code = max(code, exit_code(exc))
                    err().print(Text(f"{item.name}: {error_text(exc)}", style="red"), soft_wrap=True)
                    continue
                if body.get("status") in FINAL_STATUSES and "status_url" not in body:
                    rows[index] = result_row(item.name, body, body, None)  # ended within --server-wait
                elif wait:
                    followed[index] = _follow(rag, progress, item.name, body, wait_timeout)
                else:
                    row = result_row(item.name, None, body, None)
                    rows[index] = {**row, "file_size": body.get("file_size")}
            follow_batch = [batch.follow(rag, progress, wait_timeout)] if batch and wait else []
            views, *_ = await asyncio.gather(asyncio.gather(*followed.values()), *follow_batch)
            rows.update(zip(followed, views, strict=True))
    ordered = (batch.ordered_rows() if batch else []) + [rows[i] for i in sorted(rows)]
    if wait and code == 0 and any(row["status"] != "completed" for row in ordered):
        code = EXIT_FAILED
    return ordered, code


def _report(
    ctx: typer.Context,
    items: list[Submission],
    wait: bool,
    wait_timeout: float | None,
    batch: BatchUpload | None = None,
) -> None:
    state = state_of(ctx)
    with errors(state):
        rows, code = asyncio.run(_submit_all(state, items, wait, wait_timeout, batch))
    if state.json:
        emit_json(rows)
    else:
        out().print(results_table(rows, "Results" if wait else "Submitted"))
    raise typer.Exit(code)


@app.command()
def upload(
    ctx: typer.Context,
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Documents to upload.", exists=True, dir_okay=False, readable=True),
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", help="Raw text to index instead of a file; '-' reads stdin.")
    ] = None,
    filename: Annotated[str | None, typer.Option("--filename", help="With --text: citation label.")] = None,
    doc_id: DocId = None,
    priority: Priority = None,
    callback_url: CallbackUrl = None,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = False,
    wait_timeout: WaitTimeout = None,
    server_wait: ServerWait = None,
) -> None:
    """Upload documents, or raw text with --text (202: each becomes an indexing task).

    Several files go in one request (POST /batch, 100 files per request); with --wait one overall
    progress bar and a line per file follow them. --doc-id and --idempotency-key name one document,
    so they take a single one."""
    files = files or []
    if not files and text is None:
        raise typer.BadParameter("give documents to upload, or --text", param_hint="FILES")
    if len(files) + (text is not None) > 1 and (doc_id or idempotency_key):
        raise typer.BadParameter("--doc-id and --idempotency-key take a single document", param_hint="FILES")
    options = drop_none({"priority": priority, "callback_url": callback_url})
    options |= drop_none({"idempotency_key": idempotency_key, "wait": server_wait or None})

    def submit(path: Path) -> Callable[[AsyncRagClient], Awaitable[dict]]:
        return lambda rag: rag.upload(path, doc_id=doc_id, **options)

    batch = None
    if len(files) > 1:
        batch = BatchUpload(list(files), drop_none({"priority": priority, "callback_url": callback_url}))
        files = []
    items = [Submission(path.name, submit(path)) for path in files]
    if text is not None:
        body = sys.stdin.read() if text == "-" else text
        label = drop_none({"filename": filename})
        name = filename or doc_id or "text"
        items.append(Submission(name, lambda rag: rag.insert_text(body, doc_id, **options, **label)))
    _report(ctx, items, wait, wait_timeout, batch)


# --- tasks ----------------------------------------------------------------------------------------


@app.command()
def status(ctx: typer.Context, task_id: Annotated[str, typer.Argument(help="Task id.")]) -> None:
    """Show one task: status, stage, progress, timestamps, result or error."""
    request(ctx, lambda rag: rag.task(task_id), lambda view: out().print(task_table(view)))


StatusOption = Annotated[StatusFilter | None, typer.Option("--status", help="Only tasks with this status.")]
Limit = Annotated[int, typer.Option("--limit", min=1, max=500, help="Tasks shown.")]
Offset = Annotated[int, typer.Option("--offset", min=0, help="Skip this many (paging).")]


def _page(ctx: typer.Context, listing: str, status: StrEnum | None, limit: int, offset: int) -> None:
    """One page of ``rag.<listing>()`` (tasks or documents), shown as its table."""
    value = status.value if status else None
    table = tasks_table if listing == "tasks" else documents_table
    request(
        ctx,
        lambda rag: getattr(rag, listing)(status=value, limit=limit, offset=offset),
        lambda body: out().print(table(body, value)),
    )


@app.command("list")
def list_tasks(
    ctx: typer.Context, status_filter: StatusOption = None, limit: Limit = 50, offset: Offset = 0
) -> None:
    """Recent tasks, newest first."""
    _page(ctx, "tasks", status_filter, limit, offset)


@app.command()
def watch(
    ctx: typer.Context,
    status_filter: StatusOption = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Refresh period (seconds).")] = 2.0,
    limit: Limit = 20,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
) -> None:
    """Live table of recent tasks with their progress (Ctrl-C to stop)."""
    state = state_of(ctx)
    value = status_filter.value if status_filter else None
    if once or state.json:
        list_tasks(ctx, status_filter, limit, 0)
        return
    hint = Text("Ctrl-C to stop", style="dim")
    with errors(state), state.client() as rag:
        try:
            first = tasks_table(rag.tasks(status=value, limit=limit), value)
            with Live(Group(first, hint), console=out(), refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    live.update(Group(tasks_table(rag.tasks(status=value, limit=limit), value), hint))
        except KeyboardInterrupt:
            pass


@app.command()
def cancel(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until a running task is cancelled.")] = False,
    wait_timeout: WaitTimeout = None,
) -> None:
    """Cancel a pending or running task.

    A pending task is cancelled at once; a running one becomes `cancelling` while its LLM work is
    stopped and its partial data removed, then `cancelled` (--wait follows it). A finished task
    cannot be cancelled (exit 2)."""

    def cancel_and_wait(rag: Any) -> dict:
        body = rag.cancel(task_id)
        if wait and body.get("status") not in FINAL_STATUSES:
            view = rag.wait_for(task_id, timeout=wait_timeout)
            body = {**body, "status": view["status"], "message": f"Task {view['status']}"}
        return body

    def show(body: dict) -> None:
        style = "green" if body.get("status") == "cancelled" else "yellow"
        out().print(Text(f"{body.get('message', 'Task cancelled')}: {task_id}", style=style))

    request(ctx, cancel_and_wait, show)


@app.command("batch")
def batch_status(ctx: typer.Context, batch_id: Annotated[str, typer.Argument(help="Batch id.")]) -> None:
    """Show a batch: overall progress, counts per status, each file (and the files refused at upload)."""
    request(ctx, lambda rag: rag.batch_status(batch_id), lambda view: out().print(batch_table(view)))


@app.command("batch-cancel")
def batch_cancel(ctx: typer.Context, batch_id: Annotated[str, typer.Argument(help="Batch id.")]) -> None:
    """Cancel every task of a batch still pending or running; finished ones are left as they are."""
    request(ctx, lambda rag: rag.batch_cancel(batch_id), lambda body: out().print(batch_cancel_table(body)))


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
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, max=200, help="Entities/relations.")] = None,
    chunk_top_k: Annotated[int | None, typer.Option("--chunk-top-k", min=1, max=200, help="Chunks.")] = None,
    response_type: Annotated[
        str | None, typer.Option("--response-type", help="e.g. 'Bullet Points', 'Single Paragraph'.")
    ] = None,
    background: Annotated[
        bool,
        typer.Option(
            "--async",
            "--background",
            help="Run the query as a task (POST /query/async) and follow it until it ends.",
        ),
    ] = False,
    priority: Priority = None,
    callback_url: Annotated[
        str | None, typer.Option("--callback-url", help="With --async: POST the result here when done.")
    ] = None,
    wait_timeout: WaitTimeout = None,
) -> None:
    """Ask the knowledge base."""
    options: dict[str, Any] = {"mode": mode.value, "only_need_context": context_only}
    options |= drop_none({"top_k": top_k, "chunk_top_k": chunk_top_k, "response_type": response_type})
    state = state_of(ctx)
    if background:
        _query_task(ctx, text, options, priority, callback_url, wait_timeout)
        return
    if priority is not None or callback_url is not None:
        err().print("--priority and --callback-url need --async")
        raise typer.Exit(EXIT_CLIENT_ERROR)
    if not stream:
        answer = request(ctx, lambda rag: rag.query(text, **options))
        if not state.json:
            typer.echo(answer.get("response", ""))
        return
    with errors(state), state.client() as rag:
        for piece in rag.query_stream(text, **options):
            if state.json:
                typer.echo(json.dumps({"response": piece}, ensure_ascii=False))
            else:
                sys.stdout.write(piece)
                sys.stdout.flush()
    if not state.json:
        sys.stdout.write("\n")


def _query_task(
    ctx: typer.Context,
    text: str,
    options: dict[str, Any],
    priority: int | None,
    callback_url: str | None,
    wait_timeout: float | None,
) -> None:
    """``query --async``: submit a query task, follow it, print its answer (exit 1 unless completed)."""
    state = state_of(ctx)

    def submit_and_wait(rag: Any) -> dict:
        accepted = rag.query_async(text, priority=priority, callback_url=callback_url, **options)
        if not state.json:
            err().print(Text(f"query task {accepted['task_id']} accepted; waiting", style="dim"))
        return rag.wait_for(accepted["task_id"], timeout=wait_timeout)

    def show(view: dict) -> None:
        if view.get("status") == "completed":
            typer.echo((view.get("result") or {}).get("response", ""))
        else:
            err().print(Text(f"query task {view.get('status')}: {view.get('error') or ''}", style="red"))

    view = request(ctx, submit_and_wait, show)
    if view.get("status") != "completed":
        raise typer.Exit(EXIT_FAILED)


@app.command()
def documents(
    ctx: typer.Context,
    status_filter: Annotated[
        DocStatusFilter | None, typer.Option("--status", help="Only documents with this LightRAG status.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Documents shown.")] = 50,
    offset: Offset = 0,
) -> None:
    """The knowledge base's documents, newest first, with counts per status."""
    _page(ctx, "documents", status_filter, limit, offset)


@app.command()
def document(ctx: typer.Context, doc_id: Annotated[str, typer.Argument(help="Document id.")]) -> None:
    """Show a document's record in the knowledge base (status, chunks, length, error)."""
    request(ctx, lambda rag: rag.document(doc_id), lambda body: out().print(document_table(body)))


@app.command("delete-doc")
def delete_doc(ctx: typer.Context, doc_id: Annotated[str, typer.Argument(help="Document id.")]) -> None:
    """Remove a document (chunks, entities, relations) from the knowledge base."""

    def show(body: dict) -> None:
        out().print(Text(f"Deleted {doc_id}: {body.get('message', body.get('status', ''))}", style="green"))

    request(ctx, lambda rag: rag.delete_document(doc_id), show)


# --- service --------------------------------------------------------------------------------------


@app.command()
def health(
    ctx: typer.Context,
    admin_token: Annotated[
        str | None,
        typer.Option("--admin-token", envvar="RAGSVC_ADMIN_TOKEN", help="ADMIN_TOKEN: show the details."),
    ] = None,
) -> None:
    """Service health: ok/degraded; with the admin token also Redis, storage, model bindings
    (exit 1 when degraded)."""
    url = state_of(ctx).url
    show = lambda body: out().print(health_table(body, url))  # noqa: E731
    body = request(ctx, lambda rag: rag.health(), show, admin_token=admin_token)
    if body.get("status") != "ok":
        raise typer.Exit(EXIT_FAILED)


@app.command()
def stats(ctx: typer.Context) -> None:
    """Your tenant's task counts per status, queue length, running tasks and capacity."""
    request(ctx, lambda rag: rag.stats(), lambda body: out().print(stats_table(body)))


if __name__ == "__main__":
    app(prog_name="ragsvc")
