"""LightRAG Server's Ollama-compatible API at /lightrag/api, driven by the official Ollama Python
client (the `ollama` package, as chat front-ends use it) and by Open WebUI's request shapes: the
tenant's knowledge base answers, streamed and not; bad requests are 4xx in our error shape.

Real Redis and LightRAG storages, the offline LLM; the app in-process (httpx ASGI transport).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import make_settings, make_tenant, start_service, story, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ollama = pytest.importorskip("ollama", reason="pip install ollama (test extra)")

L = "/lightrag"


def client_for(svc, headers: dict[str, str] | None = None, mount: str = L):  # noqa: ANN001, ANN201
    """The Ollama client pointed at our compatibility mount (or the root, ``mount=""``), through
    the in-process app."""
    return ollama.AsyncClient(
        host=f"http://svc{mount}", transport=httpx.ASGITransport(app=svc.app), headers=headers or {}
    )


async def index(svc, text: str, headers: dict[str, str] | None = None) -> None:  # noqa: ANN001
    accepted = await svc.client.post("/insert/text", json={"text": text}, headers=headers or {})
    assert accepted.status_code == 202, accepted.text
    await wait_for_task(svc.client, accepted.json()["task_id"], headers=headers, expect="completed")


@pytest.mark.parametrize("mount", [L, ""], ids=["lightrag-mount", "root"])
async def test_the_ollama_client_chats_with_the_knowledge_base(tmp_path, redis_url, mount) -> None:
    """Catches a route or shape the Ollama client cannot read: version, tags, ps, chat (streamed and
    not, with history and a mode prefix), generate (streamed and not) - under /lightrag and at the
    root, where LightRAG Server serves them."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        await index(svc, story("lighthouses", "Beaconmere"))
        client = client_for(svc, mount=mount)

        assert (await client._request_raw("GET", "/api/version")).json() == {"version": "0.9.3"}
        listed = await client.list()
        assert [m.model for m in listed.models] == ["lightrag:latest"]
        assert (await client.ps()).models[0].model == "lightrag:latest"

        history = [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi, ask me about the archive."},
        ]
        question = {"role": "user", "content": "/naive Who runs the Beaconmere project?"}
        answer = await client.chat(model="lightrag:latest", messages=[*history, question])
        assert answer.done and answer.message.role == "assistant"
        assert "Beaconmere" in answer.message.content, answer.message.content
        assert answer.eval_count and answer.eval_count > 0

        pieces = [
            part
            async for part in await client.chat(model="lightrag:latest", messages=[question], stream=True)
        ]
        assert pieces[-1].done and not any(p.done for p in pieces[:-1])
        assert "Beaconmere" in "".join(p.message.content for p in pieces)

        context = await client.chat(
            model="lightrag:latest", messages=[{"role": "user", "content": "/naivecontext Beaconmere"}]
        )
        assert "Beaconmere" in context.message.content

        generated = await client.generate(model="lightrag:latest", prompt="Say something about lamps.")
        assert generated.done and isinstance(generated.response, str)
        streamed = [
            p async for p in await client.generate(model="lightrag:latest", prompt="Lamps?", stream=True)
        ]
        assert streamed[-1].done


async def test_open_webui_request_shapes(tmp_path, redis_url) -> None:
    """Catches Open WebUI's requests going wrong: its chat body (options, keep_alive-free) streamed
    as NDJSON, and its title-generation task (a chat_history block) answered without retrieval."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        await index(svc, story("canals", "Lockwright"))
        body = {
            "model": "lightrag:latest",
            "messages": [{"role": "user", "content": "/naive What is Lockwright known for?"}],
            "stream": True,
            "options": {"temperature": 0.8},
        }
        async with svc.client.stream("POST", f"{L}/api/chat", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(x) async for x in response.aiter_lines() if x.strip()]
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
        assert "Lockwright" in "".join(x["message"]["content"] for x in lines)

        title = {
            "model": "lightrag:latest",
            "stream": False,
            "messages": [
                {
                    "role": "user",
                    "content": "Generate a concise title.\n<chat_history>\nUSER: What is Lockwright?\n"
                    "ASSISTANT: A canal firm.\n</chat_history>",
                }
            ],
        }
        titled = await svc.client.post(f"{L}/api/chat", json=title)
        assert titled.status_code == 200 and titled.json()["done"] is True, titled.text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "m", "messages": []}, 422),  # no message
        ({"model": "m", "messages": [{"role": "assistant", "content": "hi"}]}, 400),  # last not the user's
        (
            {
                "model": "m",
                "messages": [{"role": "robot", "content": "x"}, {"role": "user", "content": "q?"}],
            },
            400,
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "/local "}]}, 400),  # empty after the prefix
        ({"model": "m", "messages": [{"role": "user", "content": "x" * 20_001}]}, 422),  # too long
        ({"model": "m"}, 422),
    ],
)
async def test_bad_chat_requests_are_4xx_in_our_error_shape(tmp_path, redis_url, body, code) -> None:
    """Catches a malformed chat answered with a 500 (LightRAG Server's own answer to any error)."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        response = await svc.client.post(f"{L}/api/chat", json=body)
        assert response.status_code == code, response.text
        assert set(response.json()) >= {"detail", "code"}
        bad_generate = await svc.client.post(f"{L}/api/generate", json={"model": "m", "prompt": ""})
        assert bad_generate.status_code == 422


async def test_the_ollama_api_is_tenant_scoped(tmp_path, redis_url) -> None:
    """Catches a chat that reads another tenant's knowledge base, or that works without a key once
    keys exist."""
    async with start_service(make_settings(tmp_path, redis_url, admin_token="admin-secret")) as svc:
        acme = await make_tenant(svc, "acme")
        other = await make_tenant(svc, "other")
        await index(svc, story("orchards", "Acmepear"), acme)
        question = [{"role": "user", "content": "/naivecontext Acmepear orchards"}]
        mine = await client_for(svc, acme).chat(model="lightrag:latest", messages=question)
        assert "Acmepear" in mine.message.content
        theirs = await client_for(svc, other).chat(model="lightrag:latest", messages=question)
        assert "Acmepear" not in theirs.message.content
        x_api_key = {"X-API-Key": acme["Authorization"].split()[1]}
        assert (await svc.client.get(f"{L}/api/tags", headers=x_api_key)).status_code == 200
        for path in ("/api/version", "/api/tags", "/api/ps"):
            assert (await svc.client.get(f"{L}{path}")).status_code == 401
            assert (await svc.client.get(path)).status_code == 401
        root_theirs = await client_for(svc, other, mount="").chat(model="lightrag:latest", messages=question)
        assert "Acmepear" not in root_theirs.message.content
        with pytest.raises(ollama.ResponseError) as refused:
            await client_for(svc).chat(model="lightrag:latest", messages=question)
        assert refused.value.status_code == 401
