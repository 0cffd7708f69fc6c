"""Rich renderings of the service's answers for `ragsvc` (tables only; no requests here)."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .cli_common import fmt_size, fmt_time, status_text


def result_row(name: str, view: dict | None, accepted: dict | None, error: str | None) -> dict:
    """One submitted document's line of the upload / insert-text report."""
    view = view or {}
    accepted = accepted or {}
    return {
        "filename": name,
        "task_id": view.get("task_id") or accepted.get("task_id"),
        "doc_id": view.get("doc_id") or accepted.get("doc_id"),
        "status": view.get("status") or accepted.get("status"),
        "stage": view.get("stage"),
        "progress": view.get("progress"),
        "chunks": (view.get("result") or {}).get("chunks_count"),
        "error": error or view.get("error"),
    }


def results_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("file", "task id", "doc id", "status", "chunks", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            Text(row["filename"]),
            Text(row["task_id"] or ""),
            Text(row["doc_id"] or ""),
            status_text(row["status"] or ""),
            "" if row.get("chunks") is None else str(row["chunks"]),
            Text(row.get("error") or "", style="red"),
        )
    return table


def fields_table(title: str, fields: list[tuple[str, Text | str]]) -> Table:
    """A two-column "field: value" table."""
    table = Table(show_header=False, title=title, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in fields:
        table.add_row(name, value if isinstance(value, Text) else Text(value))
    return table


def task_table(view: dict) -> Table:
    fields: list[tuple[str, Text | str]] = [
        ("status", status_text(view.get("status", ""))),
        ("stage", str(view.get("stage", ""))),
        ("progress", f"{float(view.get('progress') or 0):.0f}%"),
        ("priority", str(view.get("priority", ""))),
        ("doc id", str(view.get("doc_id", ""))),
        ("file", f"{view.get('filename', '')} ({fmt_size(view.get('file_size'))}, {view.get('kind')})"),
        ("attempt", str(view.get("attempt", ""))),
        ("created", fmt_time(view.get("created_at"))),
        ("started", fmt_time(view.get("started_at"))),
        ("finished", fmt_time(view.get("finished_at"))),
        ("expires", fmt_time(view.get("expires_at"))),
    ]
    if view.get("callback_url"):
        fields.append(("callback", f"{view['callback_url']} {json.dumps(view.get('webhook') or {})}"))
    if view.get("result"):
        fields.append(("result", json.dumps(view["result"])))
    if view.get("error"):
        fields.append(("error", Text(str(view["error"]), style="red")))
    return fields_table(f"Task {view.get('task_id', '')}", fields)


def tasks_table(listing: dict, status_filter: str | None) -> Table:
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
        table.add_row(
            Text(view.get("task_id", "")),
            Text(view.get("filename", "")),
            status_text(view.get("status", "")),
            Text(view.get("stage", "")),
            _progress_cell(float(view.get("progress") or 0)),
            str(view.get("attempt", "")),
            Text(fmt_time(view.get("updated_at")).rpartition(" ")[2]),
        )
    return table


def documents_table(listing: dict, status_filter: str | None) -> Table:
    docs = listing.get("documents", [])
    offset = int(listing.get("offset") or 0)
    scope = f" {status_filter}" if status_filter else ""
    counts = " · ".join(f"{name}: {n}" for name, n in (listing.get("counts") or {}).items() if n)
    span = f"{offset + 1}-{offset + len(docs)}" if docs else "none"
    title = f"Documents{scope}: {span} of {listing.get('total', len(docs))}"
    title += f" ({counts})" if counts else ""
    table = Table(title=title, title_justify="left")
    table.add_column("doc id", overflow="fold", min_width=12)
    table.add_column("file", overflow="fold")
    table.add_column("status")
    table.add_column("chunks", justify="right")
    table.add_column("length", justify="right")
    table.add_column("created (UTC)")
    table.add_column("updated (UTC)")
    table.add_column("error", overflow="fold")
    for doc in docs:
        table.add_row(
            Text(str(doc.get("doc_id", ""))),
            Text(str(doc.get("file_path") or "")),
            status_text(str(doc.get("status", ""))),
            "" if doc.get("chunks_count") is None else str(doc["chunks_count"]),
            "" if doc.get("content_length") is None else str(doc["content_length"]),
            Text(fmt_time(doc.get("created_at"))),
            Text(fmt_time(doc.get("updated_at"))),
            Text(str(doc.get("error_msg") or ""), style="red"),
        )
    return table


def health_table(body: dict, url: str) -> Table:
    healthy = body.get("status") == "ok"
    if "redis" not in body:  # the public answer: ok/degraded only
        return fields_table(
            f"Health of {url}",
            [
                ("status", Text(str(body.get("status")), style="green" if healthy else "red")),
                ("details", Text("need the admin token (--admin-token / RAGSVC_ADMIN_TOKEN)", style="dim")),
            ],
        )
    redis = body.get("redis", {})
    storage = body.get("storage", {})
    tasks = body.get("tasks", {})
    healthy = body.get("status") == "ok"
    redis_text = f"ok, {redis.get('latency_ms')} ms" if redis.get("ok") else f"DOWN: {redis.get('error', '')}"
    redis_text += " (embedded)" if redis.get("embedded") else ""
    loaded = ", ".join(storage.get("loaded_tenants") or []) or "none"
    writable = "writable" if storage.get("ok") else "NOT writable"
    return fields_table(
        f"Health of {url}",
        [
            ("status", Text(str(body.get("status")), style="green" if healthy else "red")),
            ("instance", str(body.get("instance_id", ""))),
            ("redis", Text(redis_text, style="" if redis.get("ok") else "red")),
            ("storage", f"{writable}, knowledge bases loaded: {loaded}"),
            ("llm", str(body.get("llm", ""))),
            ("embedding", str(body.get("embedding", ""))),
            ("tasks", f"{tasks.get('running_here', 0)} running of {tasks.get('capacity', '?')}"),
        ],
    )


def stats_table(body: dict) -> Table:
    title = f"Queue of tenant {body.get('tenant', '')} on {body.get('instance_id', '')}"
    table = Table(title=title, title_justify="left")
    table.add_column("status")
    table.add_column("tasks", justify="right")
    for name, count in sorted(body.get("counts", {}).items()):
        table.add_row(status_text(name), str(count))
    table.add_section()
    table.add_row("pending queue", str(body.get("pending", 0)))
    table.add_row("running (all instances)", str(body.get("running", 0)))
    table.add_row("running here", f"{body.get('running_here', 0)} / {body.get('capacity', '?')}")
    return table


def rows_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Rows of dicts with the same keys (tenants, keys) as a table."""
    table = Table(title=title, title_justify="left")
    for column in rows[0] if rows else ["(none)"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


def document_table(body: dict) -> Table:
    fields = [(name, "" if value is None else str(value)) for name, value in body.items() if name != "status"]
    style = {"processed": "green", "failed": "red"}.get(str(body.get("status")), "")
    status = ("status", Text(str(body.get("status")), style=style))
    return fields_table(f"Document {body.get('doc_id', '')}", [status, *fields])


def _progress_cell(pct: float) -> Table:
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=100, completed=pct, width=10), Text(f"{pct:3.0f}%"))
    return bar


def batch_table(view: dict) -> Table:
    """A batch: overall progress and counts in the title, one line per file (refused ones too)."""
    counts = ", ".join(f"{n} {status}" for status, n in view.get("counts", {}).items() if n)
    state = "done" if view.get("done") else "running"
    title = f"Batch {view.get('batch_id', '')}: {float(view.get('progress') or 0):.0f}% {state} · {counts}"
    table = Table(title=title, title_justify="left")
    for column in ("file", "task id", "status", "stage", "progress", "detail"):
        table.add_column(column, overflow="fold", min_width=16 if column == "progress" else None)
    for task in view.get("tasks", []):
        table.add_row(
            Text(task.get("filename", "")),
            Text(task.get("task_id", "") + (" (duplicate)" if task.get("duplicate") else "")),
            status_text(task.get("status", "")),
            Text(task.get("stage") or ""),
            _progress_cell(float(task.get("progress") or 0)),
            Text(task.get("error") or "", style="red"),
        )
    for error in view.get("errors", []):
        detail = f"{error.get('status_code')} {error.get('error')}: {error.get('detail')}"
        name = Text(error.get("filename", ""))
        table.add_row(name, "", status_text("rejected"), "", "", Text(detail, style="red"))
    return table


def batch_cancel_table(body: dict) -> Table:
    table = Table(title=f"Batch {body.get('batch_id', '')}: {body.get('message', '')}", title_justify="left")
    for column in ("file", "task id", "outcome"):
        table.add_column(column, overflow="fold")
    for task in body.get("tasks", []):
        name, task_id = Text(task.get("filename", "")), Text(task.get("task_id", ""))
        table.add_row(name, task_id, status_text(task["outcome"]))
    return table
