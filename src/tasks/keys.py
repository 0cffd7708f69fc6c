"""Every Redis key of the task queue, in one place (arq's constants.py is the model).

All keys live under one ``prefix`` (per deployment, per test); <t> is a tenant:

  task:<id>            hash, the TaskRecord (plus queue_score and attempt_started_at)
  q:<t>                zset id -> queue score (priority class, then age; lower runs first)
  dq:<t>               zset id -> not-before time of a retry (moved to q:<t> when due)
  active               set of tenants with queued work
  queued               zset of all waiting ids (queue-full check)
  running              zset id -> lease expiry (unix seconds)
  run:count            hash t -> running tasks
  served               hash t -> last time a task of t was started (round robin between tenants)
  idx:<t>:all          zset id -> created_at (listing, newest first)
  idx:<t>:<status>     zset id -> created_at (filters and counts)
  expiry               zset "<t>/<id>" -> expires_at (prunes the indexes when a record's TTL ends)
  doc:<t>:<doc_id>     string, the live or completed task that owns a doc id (duplicate detection),
                       or "!deleting:<token>" while DELETE /documents/<doc_id> runs
  idem:<t>:<key>       string "<task id>|<request fingerprint>" of an Idempotency-Key
  tenant:<t>           hash, per-tenant quotas (max_running, max_pending), written by src.tenancy
  tenants:seen         set of tenants that ever created a task
  prefetch:<id>        string, the instance extracting a waiting task's document ahead of its
                       workspace's owner (src/ingestion/prefetch.py); expires unless renewed
  batch:<id>           hash, a batch of uploads (tenant, created_at, its tasks and rejected files as
                       JSON); expires (src/tasks/batches.py)

Lanes: queries (tasks of kind "query") wait in a lane of their own, so they never queue behind
document ingestion. A lane's keys are the queue keys above with the lane's name in front of them
(q:<t>, dq:<t>, active, queued, run:count and served of the ingestion lane; qq:<t>, qdq:<t>,
qactive, qqueued, qrun:count and qserved of the query lane). Everything else is shared.

The Lua scripts cannot take all their keys as KEYS (they discover tenants and ids while running),
so they build them from the same names through :data:`LUA_KEYS`, generated here.
"""

from __future__ import annotations

# Key names (prefix-relative). A trailing ':' means "followed by an id or tenant".
TASK = "task:"
QUEUE = "q:"
DELAYED = "dq:"
ACTIVE = "active"
QUEUED = "queued"
RUNNING = "running"
RUN_COUNT = "run:count"
SERVED = "served"
INDEX = "idx:"
EXPIRY = "expiry"
DOC = "doc:"
IDEMPOTENCY = "idem:"
TENANT_QUOTA = "tenant:"
TENANTS_SEEN = "tenants:seen"
BATCH = "batch:"
PREFETCH = "prefetch:"

#: Index name listing every task of a tenant (the others are named after statuses).
INDEX_ALL = "all"

#: Lane names (a lane's keys start with its name); a task's lane follows from its kind.
INGEST_LANE = ""
QUERY_LANE = "q"
#: The task kind that runs in the query lane (src.tasks.models.TaskKind.QUERY).
QUERY_KIND = "query"


class Keys:
    """Key builder for one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.active = prefix + ACTIVE
        self.queued = prefix + QUEUED
        self.running = prefix + RUNNING
        self.run_count = prefix + RUN_COUNT
        self.served = prefix + SERVED
        self.expiry = prefix + EXPIRY
        self.tenants_seen = prefix + TENANTS_SEEN

    def lane(self, name: str) -> Keys:
        """The keys of lane ``name`` (only its queue keys are meaningful: queue, delayed, active,
        queued, run_count, served)."""
        return Keys(self.prefix + name)

    def task(self, task_id: str) -> str:
        return f"{self.prefix}{TASK}{task_id}"

    def queue(self, tenant: str) -> str:
        return f"{self.prefix}{QUEUE}{tenant}"

    def delayed(self, tenant: str) -> str:
        return f"{self.prefix}{DELAYED}{tenant}"

    def index(self, tenant: str, name: str) -> str:
        """``name`` is a status or :data:`INDEX_ALL`."""
        return f"{self.prefix}{INDEX}{tenant}:{name}"

    def doc(self, tenant: str, doc_id: str) -> str:
        return f"{self.prefix}{DOC}{tenant}:{doc_id}"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}{IDEMPOTENCY}{tenant}:{key}"

    def tenant_quota(self, tenant: str) -> str:
        return f"{self.prefix}{TENANT_QUOTA}{tenant}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}{BATCH}{batch_id}"

    def prefetch(self, task_id: str) -> str:
        return f"{self.prefix}{PREFETCH}{task_id}"


def _lua_keys() -> str:
    """Lua twins of :class:`Keys`; every script starts with them (``p`` is the prefix, ARGV[1]).

    The queue keys exist per lane: ``K.lane(name)`` returns them as a table (queue(t), delayed(t),
    active, queued, run_count, served)."""
    fixed = {
        "running": RUNNING,
        "expiry": EXPIRY,
        "tenants_seen": TENANTS_SEEN,
    }
    by_id = {
        "task": TASK,
        "tenant_quota": TENANT_QUOTA,
        "prefetch": PREFETCH,
    }
    by_pair = {"index": INDEX, "doc": DOC, "idem": IDEMPOTENCY}
    lines = ["local p = ARGV[1]", "local K = {}"]
    lines += [f"K.{name} = p..'{value}'" for name, value in fixed.items()]
    lines += [f"function K.{name}(x) return p..'{value}'..x end" for name, value in by_id.items()]
    lines += [
        f"function K.{name}(t, x) return p..'{value}'..t..':'..x end" for name, value in by_pair.items()
    ]
    lines.append(
        "function K.lane(name) local lp = p..name return {"
        f"queue = function(x) return lp..'{QUEUE}'..x end, "
        f"delayed = function(x) return lp..'{DELAYED}'..x end, "
        f"active = lp..'{ACTIVE}', queued = lp..'{QUEUED}', "
        f"run_count = lp..'{RUN_COUNT}', served = lp..'{SERVED}'"
        "} end"
    )
    lines.append(f"K.INDEX_ALL = '{INDEX_ALL}'")
    lines.append(f"K.INGEST_LANE = '{INGEST_LANE}'")
    lines.append(f"K.QUERY_LANE = '{QUERY_LANE}'")
    lines.append(f"K.QUERY_KIND = '{QUERY_KIND}'")
    return "\n".join(lines) + "\n"


LUA_KEYS = _lua_keys()
