"""Authentication promises of docs/security.md that had no test: API keys are stored only as their
SHA-256, and AUTH_MODE=open / AUTH_MODE=required behave as documented."""

from __future__ import annotations

import hashlib

import pytest

from tests.helpers import ADMIN_TOKEN, make_settings, make_tenant, start_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_api_keys_are_stored_only_as_their_sha256(tmp_path, redis_url) -> None:
    """Catches a plaintext API key written to Redis (anyone reading a backup or the AOF could then
    act as the tenant): the key must appear only as its SHA-256 digest."""
    async with start_service(make_settings(tmp_path, redis_url, admin_token=ADMIN_TOKEN)) as svc:
        headers = await make_tenant(svc, "vault")
        plaintext = headers["Authorization"].removeprefix("Bearer ")
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        redis = svc.services.redis.client
        dump: list = []
        async for key in redis.scan_iter(match="*"):
            dump.append(key)
            kind = await redis.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                dump.append(await redis.get(key) or "")
            elif kind == "hash":
                for field, value in (await redis.hgetall(key)).items():
                    dump += [field, value]
            elif kind == "set":
                dump += list(await redis.smembers(key))
            elif kind == "zset":
                dump += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
            elif kind == "list":
                dump += await redis.lrange(key, 0, -1)
        blob = "\n".join(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in dump)
        # Keys are "rsk_<key id>_<secret>"; the secret (token_urlsafe) may itself contain "_".
        prefix, key_id, secret_part = plaintext.split("_", 2)
        assert prefix == "rsk" and len(secret_part) >= 40, plaintext
        assert secret_part not in blob, "the API key's secret is stored in Redis"
        assert digest in blob, "the key's SHA-256 is not where the service keeps keys"
        assert (await svc.client.get("/tasks", headers=headers)).status_code == 200


async def test_auth_mode_required_asks_for_a_key_even_before_any_exists(tmp_path, redis_url) -> None:
    """Catches AUTH_MODE=required behaving like auto (open until the first key exists)."""
    async with start_service(make_settings(tmp_path, redis_url, auth_mode="required")) as svc:
        response = await svc.client.get("/tasks")
        assert response.status_code == 401 and response.json()["code"] == "missing_api_key"


async def test_auth_mode_open_never_asks_for_a_key(tmp_path, redis_url) -> None:
    """Catches AUTH_MODE=open starting to require keys once one exists (as auto does)."""
    settings = make_settings(tmp_path, redis_url, auth_mode="open", admin_token=ADMIN_TOKEN)
    async with start_service(settings) as svc:
        keyed = await make_tenant(svc, "someone")
        theirs = await svc.client.post("/insert/text", json={"text": "the tenant's note"}, headers=keyed)
        assert theirs.status_code == 202, theirs.text
        # Without a key: accepted and served as the default tenant, who sees only its own tasks.
        mine = await svc.client.post("/insert/text", json={"text": "an anonymous note"})
        assert mine.status_code == 202, mine.text
        response = await svc.client.get("/tasks")
        assert response.status_code == 200, response.text
        assert [t["task_id"] for t in response.json()["tasks"]] == [mine.json()["task_id"]]
        assert (await svc.client.get(f"/task/{theirs.json()['task_id']}")).status_code == 404
