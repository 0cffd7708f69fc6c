"""What every `ragsvc` command shares: global options, consoles, error reporting and exit codes.

Exit codes: 0 ok; 1 a task failed / the service is degraded / a server-side error (5xx) / a wait
timed out; 2 the server rejected the request (4xx, its detail is printed in red) or bad usage;
3 the service could not be reached.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from .aio import AsyncRagClient
from .core import RagApiError, RagConnectionError, RagError
from .sync import RagClient

EXIT_FAILED = 1
EXIT_CLIENT_ERROR = 2
EXIT_UNREACHABLE = 3
PIPE_WIDTH = 200

STATUS_STYLE = {
    "pending": "yellow",
    "processing": "cyan",
    "cancelling": "magenta",
    "completed": "green",
    "processed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "rejected": "red",
    "expired": "dim",
    "finished": "dim",
    "timeout": "red",
}


class Mode(StrEnum):
    naive = "naive"
    local = "local"
    global_ = "global"
    hybrid = "hybrid"
    mix = "mix"


class StatusFilter(StrEnum):
    pending = "pending"
    processing = "processing"
    cancelling = "cancelling"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class DocStatusFilter(StrEnum):
    """LightRAG's document statuses (`GET /documents?status=`)."""

    pending = "pending"
    processing = "processing"
    preprocessed = "preprocessed"
    processed = "processed"
    failed = "failed"


@dataclass
class State:
    """The global options, kept on typer's context."""

    url: str
    api_key: str | None
    json: bool
    timeout: float

    def client(self, admin_token: str | None = None) -> RagClient:
        return RagClient(self.url, self.api_key, self.timeout, admin_token=admin_token)

    def async_client(self) -> AsyncRagClient:
        return AsyncRagClient(self.url, self.api_key, self.timeout)


def console(stderr: bool = False) -> Console:
    """Built per call so that output follows sys.stdout (typer's CliRunner swaps it). Piped output
    gets a wide page instead of rich's 80 columns so that ids are not folded (unless $COLUMNS says)."""
    made = Console(stderr=stderr, highlight=False)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made.width = PIPE_WIDTH
    return made


def out() -> Console:
    return console()


def err() -> Console:
    return console(stderr=True)


def state_of(ctx: typer.Context) -> State:
    return ctx.ensure_object(State)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def error_text(exc: RagError) -> str:
    if isinstance(exc, RagApiError):
        return f"Error {exc.status_code} ({exc.code}): {exc.detail}"
    return f"Error: {exc}"


def exit_code(exc: RagError) -> int:
    if isinstance(exc, RagApiError):
        return EXIT_CLIENT_ERROR if 400 <= exc.status_code < 500 else EXIT_FAILED
    return EXIT_UNREACHABLE if isinstance(exc, RagConnectionError) else EXIT_FAILED


@contextlib.contextmanager
def errors(state: State) -> Iterator[None]:
    """Print the service's error in red (and as JSON with --json) and exit with the matching code."""
    try:
        yield
    except RagError as exc:
        err().print(Text(error_text(exc), style="bold red"), soft_wrap=True)
        if state.json:
            error: dict[str, Any] = {"type": type(exc).__name__, "detail": str(exc)}
            if isinstance(exc, RagApiError):
                error.update(status_code=exc.status_code, code=exc.code, detail=exc.detail)
            emit_json({"error": error})
        raise typer.Exit(exit_code(exc)) from None
    except ValueError as exc:  # the client refused the arguments before sending anything
        if isinstance(exc, json.JSONDecodeError):
            raise  # a malformed answer is not a usage error
        raise typer.BadParameter(str(exc)) from None


def request(
    ctx: typer.Context,
    operation: Callable[[RagClient], Any],
    show: Callable[[Any], Any] | None = None,
    *,
    admin_token: str | None = None,
) -> Any:
    """Run one client operation: its answer is printed as JSON with --json, else by ``show``;
    its error is reported by `errors`."""
    state = state_of(ctx)
    with errors(state), state.client(admin_token) as rag:
        body = operation(rag)
    if state.json:
        emit_json(body)
    elif show is not None:
        show(body)
    return body


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def fmt_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def fmt_time(iso: str | None) -> str:
    return (iso or "").replace("T", " ").split(".")[0].rstrip("Z")
