"""Takeover of a workspace whose owner is killed (kill -9) or stalled (SIGSTOP) with every one of its
documents running and nothing waiting: seconds from the signal until the surviving instance runs
every task again. Two service processes on one Redis and one PostgreSQL, the default ownership and
lease settings (OWNER_LOCK_TIMEOUT_SECONDS=5, OWNER_PING_SECONDS=1, LEASE_SECONDS=30,
SWEEP_SECONDS=15), the mock LLM holding every extraction call (tests/test_failover.py runs the same
scenario as a test, with its own settings and assertions).

    python -m benchmarks.failover [--runs 3]

Prints each run and the medians (docs/scaling.md, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
from pathlib import Path

DEFAULTS = dict(
    OWNER_LOCK_TIMEOUT_SECONDS="5",
    OWNER_PING_SECONDS="1",
    OWNER_IDLE_RELEASE_SECONDS="30",
    LEASE_SECONDS="30",
    SWEEP_SECONDS="15",
)


def main() -> None:
    from tests.conftest import start_redis_server
    from tests.helpers import release_llm
    from tests.pg import acquire_server, release_server
    from tests.procs import start_mock_llm, stop_process
    from tests.test_failover import run_takeover

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="failover-"))
    (root / "redis").mkdir()
    redis_proc, redis_url = start_redis_server(root / "redis")
    pg = acquire_server()
    results: dict[str, list[float]] = {"kill -9": [], "SIGSTOP": []}
    try:
        for run in range(args.runs):
            for name, sig in (("kill -9", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
                mock = start_mock_llm(0.05)
                out: dict = {}
                try:
                    workdir = root / f"{run}-{int(sig)}"
                    workdir.mkdir()
                    out = run_takeover(workdir, redis_url, pg, mock, sig, DEFAULTS)
                    results[name].append(out["takeover"])
                    print(f"run {run + 1} {name}: takeover {out['takeover']:.2f} s", flush=True)
                finally:
                    fleet = out.get("fleet")
                    if fleet is not None:
                        for proc in fleet.procs.values():
                            proc.send_signal(signal.SIGCONT)
                        release_llm(mock)
                        fleet.stop()
                    stop_process(mock)
    finally:
        release_server()
        stop_process(redis_proc)
    for name, values in results.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name}: median {statistics.median(values):.2f} s over {len(values)} runs ({shown})")


if __name__ == "__main__":
    main()
