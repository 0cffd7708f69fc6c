"""How a request body must arrive: the one rule for uploads and JSON bodies.

A client that stops sending mid-body, or trickles it, would otherwise hold a connection (and, for
an upload, a partial file) for as long as it likes: each piece must come within the idle timeout,
and after a grace period the body must have averaged a minimum rate. `PaceClock.next` awaits one
piece under those bounds; the callers turn its `BodyTimeout` into their own answer (408).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    from src.core.config import Settings

_T = TypeVar("_T")


@dataclass(frozen=True)
class Pace:
    """``idle_timeout`` (0 = none) bounds the wait for each piece; after ``grace`` seconds the body
    must also have averaged ``min_rate`` bytes/s (0 = no floor)."""

    idle_timeout: float = 0.0
    min_rate: float = 0.0
    grace: float = 0.0

    @classmethod
    def of(cls, settings: Settings) -> Pace:
        return cls(
            settings.upload_idle_timeout_seconds,
            settings.upload_min_bytes_per_second,
            settings.upload_min_rate_grace_seconds,
        )


class BodyTimeout(Exception):
    """The body stalled (``slow`` False) or arrived slower than the minimum rate (``slow`` True)."""

    def __init__(self, message: str, *, slow: bool) -> None:
        super().__init__(message)
        self.message = message
        self.slow = slow


class PaceClock:
    """Times the pieces of one body against a `Pace`."""

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.start = time.monotonic()
        self.received = 0

    async def next(self, piece: Awaitable[_T]) -> _T:
        """Await ``piece`` within what the pace allows now (count its bytes with `add`)."""
        idle = self.pace.idle_timeout or None
        rate_left = None
        if self.pace.min_rate:
            # The moment the running average would fall below min_rate if nothing else arrived.
            rate_left = max(self.pace.grace, self.received / self.pace.min_rate) - (
                time.monotonic() - self.start
            )
        wait = min((t for t in (idle, rate_left) if t is not None), default=None)
        try:
            async with asyncio.timeout(None if wait is None else max(wait, 0.0)):
                return await piece
        except TimeoutError:
            if rate_left is not None and wait == rate_left:
                raise BodyTimeout(
                    f"the request body arrived slower than {self.pace.min_rate:g} bytes/s", slow=True
                ) from None
            raise BodyTimeout(f"no request body data for {self.pace.idle_timeout:g} s", slow=False) from None

    def add(self, nbytes: int) -> None:
        self.received += nbytes
