"""Read the service's own Prometheus metrics (/metrics) for benchmarks: counters and the loop-lag histogram.

Counters are compared before/after a run; a histogram's p99 is estimated from the bucket deltas
(linear inside the bucket that holds the 99th percentile, as Prometheus' histogram_quantile does).
"""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

ADMIN_TOKEN = "bench-admin-token"


def scrape(base: str) -> dict:
    """{sample name + sorted labels: value} for every sample on /metrics (admin token sent: if /metrics
    ever requires it, benchmarks still read it; today it is public)."""
    r = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    r.raise_for_status()
    out: dict[tuple, float] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap: dict, name: str, **labels: str) -> float | None:
    return snap.get((name, tuple(sorted(labels.items()))))


def delta(before: dict, after: dict, name: str, **labels: str) -> float | None:
    a, b = value(after, name, **labels), value(before, name, **labels)
    if a is None:
        return None
    return a - (b or 0.0)


def histogram_quantile(before: dict, after: dict, name: str, q: float) -> tuple[float, int]:
    """(quantile in seconds, observations) of histogram ``name`` between two scrapes."""
    buckets: list[tuple[float, float]] = []
    for (sample, labels), v in after.items():
        if sample != f"{name}_bucket":
            continue
        le = dict(labels)["le"]
        bound = math.inf if le in ("+Inf", "inf") else float(le)
        buckets.append((bound, v - before.get((sample, labels), 0.0)))
    buckets.sort()
    if not buckets:
        return float("nan"), 0
    total = buckets[-1][1]
    if total <= 0:
        return float("nan"), 0
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound, int(total)  # beyond the last finite bucket: its bound is a floor
            width = count - prev_count
            frac = (rank - prev_count) / width if width > 0 else 1.0
            return prev_bound + (bound - prev_bound) * frac, int(total)
        prev_bound, prev_count = bound, count
    return prev_bound, int(total)


def loop_lag_p99_ms(before: dict, after: dict) -> tuple[float, int]:
    """p99 of the service's own event-loop lag sampler (ragsvc_event_loop_lag_seconds) in ms."""
    p99, n = histogram_quantile(before, after, "ragsvc_event_loop_lag_seconds", 0.99)
    return p99 * 1000, n
