"""Tenants and API keys, stored in Redis.

A tenant owns its tasks and its own LightRAG workspace. API keys map to tenants; only the
SHA-256 of a key is stored (keys are 32 random bytes, so a fast hash is enough), and a key is
shown once, when it is created. Keys look like ``rsk_<key id>_<secret>``: the id names the key
in listings and revocations without revealing it.

Every authenticated request needs "are there any keys?", the key's tenant and the tenant's quota.
Those answers are cached in process for AUTH_CACHE_SECONDS (default 2 s), which takes three Redis
round trips off the GET /task hot path. Changes made through this instance invalidate its cache
at once; other instances see a revocation or quota change within that many seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from cachetools import TTLCache

from src.tasks.keys import Keys

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT = re.compile(TENANT_PATTERN)


def valid_tenant(name: str) -> bool:
    return bool(_TENANT.match(name))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class TenantQuota:
    max_running: int | None = None
    max_pending: int | None = None
    requests_per_minute: int | None = None
    #: Token budgets (LLM + vision + embedding tokens per UTC day / month; src/tenancy/usage.py).
    daily_tokens: int | None = None
    monthly_tokens: int | None = None


class TenantRegistry:
    def __init__(self, redis: aioredis.Redis, prefix: str, cache_seconds: float = 2.0):
        self.redis = redis
        self.prefix = prefix
        self.keys = Keys(prefix)  # the quota hash is also read by the task store's Lua scripts
        # Bounded: only valid keys and known tenants enter (a flood of made-up keys is not cached).
        self._cache: TTLCache | None = None
        if cache_seconds > 0:
            self._cache = TTLCache(maxsize=10_000, ttl=cache_seconds)

    def _cached(self, key: tuple) -> object | None:
        return self._cache.get(key) if self._cache is not None else None

    def _remember(self, key: tuple, value: object) -> None:
        if self._cache is not None:
            self._cache[key] = value

    def invalidate(self) -> None:
        """Forget cached answers (after a change made through this instance)."""
        if self._cache is not None:
            self._cache.clear()

    # ---------------------------------------------------------------- tenants
    async def create_tenant(self, name: str, quota: TenantQuota) -> None:
        fields = {"created_at": f"{time.time():.3f}"}
        for field, value in (
            ("max_running", quota.max_running),
            ("max_pending", quota.max_pending),
            ("rpm", quota.requests_per_minute),
            ("daily_tokens", quota.daily_tokens),
            ("monthly_tokens", quota.monthly_tokens),
        ):
            if value is not None:
                fields[field] = str(value)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.tenant_quota(name), mapping=fields)
            pipe.sadd(f"{self.prefix}tenants", name)
            await pipe.execute()
        self.invalidate()

    async def exists(self, name: str) -> bool:
        return bool(await self.redis.sismember(f"{self.prefix}tenants", name))

    async def quota(self, name: str) -> TenantQuota:
        cached = self._cached(("quota", name))
        if isinstance(cached, TenantQuota):
            return cached
        raw = await self.redis.hgetall(self.keys.tenant_quota(name))

        def num(field: str) -> int | None:
            return int(raw[field]) if raw.get(field) not in (None, "") else None

        quota = TenantQuota(
            num("max_running"), num("max_pending"), num("rpm"), num("daily_tokens"), num("monthly_tokens")
        )
        self._remember(("quota", name), quota)
        return quota

    async def list_tenants(self) -> list[dict]:
        names = sorted(await self.redis.smembers(f"{self.prefix}tenants"))
        out = []
        for name in names:
            quota = await self.quota(name)
            keys = await self.redis.scard(f"{self.prefix}keys:{name}")
            out.append({"tenant": name, "keys": int(keys), **quota.__dict__})
        return out

    # ---------------------------------------------------------------- keys
    async def create_key(self, tenant: str, label: str = "") -> tuple[str, str]:
        """Returns (key_id, plaintext key). The plaintext is not stored anywhere."""
        key_id = secrets.token_hex(6)
        key = f"rsk_{key_id}_{secrets.token_urlsafe(32)}"
        digest = _digest(key)
        record = {"tenant": tenant, "key_id": key_id, "label": label, "created_at": f"{time.time():.3f}"}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.prefix}apikey:{digest}", mapping=record)
            pipe.hset(f"{self.prefix}keyid:{key_id}", mapping={**record, "digest": digest})
            pipe.sadd(f"{self.prefix}keys:{tenant}", key_id)
            pipe.incr(f"{self.prefix}keys:total")
            await pipe.execute()
        self.invalidate()
        return key_id, key

    async def list_keys(self, tenant: str) -> list[dict]:
        out = []
        for key_id in sorted(await self.redis.smembers(f"{self.prefix}keys:{tenant}")):
            raw = await self.redis.hgetall(f"{self.prefix}keyid:{key_id}")
            if raw:
                out.append({k: raw[k] for k in ("key_id", "tenant", "label", "created_at")})
        return out

    async def revoke_key(self, key_id: str) -> bool:
        raw = await self.redis.hgetall(f"{self.prefix}keyid:{key_id}")
        if not raw:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.prefix}apikey:{raw['digest']}", f"{self.prefix}keyid:{key_id}")
            pipe.srem(f"{self.prefix}keys:{raw['tenant']}", key_id)
            pipe.decr(f"{self.prefix}keys:total")
            await pipe.execute()
        self.invalidate()
        return True

    async def any_keys(self) -> bool:
        cached = self._cached(("any_keys",))
        if isinstance(cached, bool):
            return cached
        answer = int(await self.redis.get(f"{self.prefix}keys:total") or 0) > 0
        self._remember(("any_keys",), answer)
        return answer

    async def resolve(self, key: str) -> str | None:
        """The tenant of an API key, or None. Lookup is by digest; the stored digest is compared
        in constant time as well, so no timing depends on the key's bytes."""
        if not key.startswith("rsk_") or len(key) > 200:
            return None
        digest = _digest(key)
        cached = self._cached(("key", digest))
        if isinstance(cached, str):
            return cached
        raw = await self.redis.hgetall(f"{self.prefix}apikey:{digest}")
        if not raw:
            return None
        stored = await self.redis.hget(f"{self.prefix}keyid:{raw['key_id']}", "digest") or ""
        if not hmac.compare_digest(stored, digest):
            return None
        self._remember(("key", digest), raw["tenant"])
        return raw["tenant"]
