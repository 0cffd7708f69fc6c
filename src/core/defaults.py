"""Values several layers share: the task priority range and its default, and the tenant of an
open (single-tenant) service. One home, so the HTTP bounds, the task queue, the merge queue and the
provider scheduler cannot disagree."""

from __future__ import annotations

#: Task priorities run from MIN_PRIORITY (bulk) to MAX_PRIORITY (interactive); higher runs first.
MIN_PRIORITY = 0
MAX_PRIORITY = 9
#: The priority of a task whose client chose none, and of calls made outside any task.
DEFAULT_PRIORITY = 5
#: The tenant of requests without an API key while the service runs open.
DEFAULT_TENANT = "default"
