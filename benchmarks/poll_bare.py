"""The bare baseline of benchmarks/poll.py: a Starlette endpoint that reads a task's hash from the
same Redis as the service (one HGETALL) and answers it as JSON, with nothing else: no
authentication, no ownership check, no view. ``uvicorn benchmarks.poll_bare:app`` with REDIS_URL
and REDIS_PREFIX set as the service's."""

from __future__ import annotations

import json
import os

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_redis = aioredis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
_prefix = os.environ.get("REDIS_PREFIX", "ragsvc:") + "task:"


async def task(request: Request) -> Response:
    raw = await _redis.hgetall(_prefix + request.path_params["task_id"])
    if not raw:
        return Response('{"detail":"not found"}', status_code=404, media_type="application/json")
    return Response(json.dumps(raw), media_type="application/json")


app = Starlette(routes=[Route("/task/{task_id}", task)])
