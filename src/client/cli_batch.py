"""`ragsvc upload` of several files: one ``POST /batch`` per BATCH_SIZE files, then (with --wait) one
overall progress bar plus a line per file, fed by polling ``GET /batch/{id}`` (one request per
batch, however many files it holds)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.text import Text

from .aio import AsyncRagClient
from .cli_common import EXIT_CLIENT_ERROR, err, error_text, exit_code
from .core import FINAL_STATUSES, RagApiError
from .render import result_row

#: Files per request: the service's default MAX_BATCH_FILES.
BATCH_SIZE = 100
#: Polling of the batches' status: first interval, growth, ceiling (seconds).
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.25, 1.5, 2.0


@dataclass
class BatchUpload:
    """Several files submitted as batches; ``rows`` (by position in ``paths``) is the report."""

    paths: list[Path]
    options: dict[str, Any]
    rows: dict[int, dict] = field(default_factory=dict)
    #: (batch id, positions of its accepted files in the order of the batch's ``tasks``).
    batches: list[tuple[str, list[int]]] = field(default_factory=list)
    code: int = 0

    async def submit(self, rag: AsyncRagClient) -> None:
        for start in range(0, len(self.paths), BATCH_SIZE):
            chunk = list(range(start, min(start + BATCH_SIZE, len(self.paths))))
            try:
                body = await rag.batch_upload([self.paths[i] for i in chunk], **self.options)
            except RagApiError as exc:
                errors = (exc.body or {}).get("errors") if exc.code == "batch_rejected" else None
                if errors is None:  # the whole request was refused: every file of it
                    for i in chunk:
                        self._reject(i, error_text(exc), exit_code(exc))
                    continue
                body = {"batch_id": None, "tasks": [], "errors": errors}
            self._record(chunk, body)

    def _record(self, chunk: list[int], body: dict) -> None:
        """Match the answer's entries to our files by name (entries come in the order of the parts,
        accepted and refused ones in separate lists)."""
        free = list(chunk)

        def claim(filename: str) -> int:
            index = next((i for i in free if self.paths[i].name == filename), free[0])
            free.remove(index)
            return index

        accepted = []
        for task in body["tasks"]:
            index = claim(task["filename"])
            accepted.append(index)
            row = result_row(self.paths[index].name, None, task, None) | {"batch_id": body["batch_id"]}
            self.rows[index] = row | {"file_size": self.paths[index].stat().st_size}
        for error in body["errors"]:
            detail = f"Error {error['status_code']} ({error['error']}): {error['detail']}"
            self._reject(claim(error["filename"]), detail, EXIT_CLIENT_ERROR)
        if body["batch_id"]:
            self.batches.append((body["batch_id"], accepted))

    def _reject(self, index: int, detail: str, code: int) -> None:
        name = self.paths[index].name
        self.rows[index] = {**result_row(name, None, None, detail), "status": "rejected"}
        self.code = max(self.code, code)
        err().print(Text(f"{name}: {detail}", style="red"), soft_wrap=True)

    async def follow(self, rag: AsyncRagClient, progress: Progress, wait_timeout: float | None) -> None:
        """Poll every batch until all are done (or ``wait_timeout``): the overall bar shows the mean
        progress of the accepted files, each file its own line."""
        accepted = [i for _, indexes in self.batches for i in indexes]
        if not accepted:
            return
        overall = progress.add_task(f"[bold]{len(accepted)} files[/]", total=100, stage="")
        names = {i: escape(self.paths[i].name) for i in accepted}
        bars = {i: progress.add_task(name, total=100, stage="pending") for i, name in names.items()}
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        pending = list(self.batches)
        interval = POLL_FIRST
        while pending:
            for batch in list(pending):
                view = await rag.batch_status(batch[0])
                for index, task in zip(batch[1], view["tasks"], strict=False):
                    self._show(progress, bars[index], index, task)
                if view["done"]:
                    pending.remove(batch)
            finished = sum(1 for i in accepted if self.rows[i]["status"] in FINAL_STATUSES | {"expired"})
            mean = sum(float(self.rows[i].get("progress") or 0) for i in accepted) / len(accepted)
            progress.update(overall, completed=mean, stage=f"{finished}/{len(accepted)} finished")
            if pending and deadline is not None and time.monotonic() > deadline:
                for _, indexes in pending:
                    for i in indexes:
                        if self.rows[i]["status"] not in FINAL_STATUSES:
                            self.rows[i] = {**self.rows[i], "status": "timeout", "error": "still running"}
                return
            if pending:
                await asyncio.sleep(interval)
                interval = min(POLL_MAX, interval * POLL_GROWTH)

    def _show(self, progress: Progress, bar: TaskID, index: int, task: dict) -> None:
        name = self.paths[index].name
        status = task["status"]
        final = status in FINAL_STATUSES or status == "expired"
        done = 100.0 if final else float(task.get("progress") or 0)
        progress.update(bar, completed=done, stage=status if final else task.get("stage") or status)
        if final:
            style = "green" if status == "completed" else "red"
            progress.update(bar, description=f"[{style}]{escape(name)}[/]")
        batch_id = self.rows[index].get("batch_id")
        self.rows[index] = {**result_row(name, task, None, None), "batch_id": batch_id}

    def ordered_rows(self) -> list[dict]:
        return [self.rows[i] for i in sorted(self.rows)]
