"""A tenant with nothing but a key tries to hurt the hub or other tenants (issue 9): each
attempt gets a clear OpenAI-shaped error with an ``X-Request-Id``, and nothing is stored."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.ioloop import IOLoop

from inferclub.hub.limits import RequestRate
from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp, running_hub, wait_until
from tests.support.rawhttp import chat_request

CALLBACK = "http://127.0.0.1:9/v1"
MIB = 1024 * 1024


def _post(url: str, path: str, body: bytes, key: str) -> tuple[int, dict[str, str], Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(
            "POST",
            path,
            body,
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


async def post(hub: HubApp, path: str, body: bytes, key: str) -> tuple[int, Any]:
    """Status and JSON answer; every answer carries a request id."""
    status, headers, data = await asyncio.to_thread(_post, hub.url, path, body, key)
    assert headers.get("X-Request-Id", "").startswith("req_"), headers
    return status, data


def beat(name: str = "rig", services: Any = None, **extra: Any) -> bytes:
    payload = {"name": name, "callback_url": CALLBACK, "services": services or LLM, **extra}
    return json.dumps(payload).encode()


def providers(hub: HubApp) -> list[str]:
    return [r["name"] for r in hub.query("SELECT name FROM providers")]


def error(data: Any) -> dict[str, Any]:
    assert set(data["error"]) >= {"message", "type", "param", "code"}
    return data["error"]  # type: ignore[no-any-return]


# -- heartbeats -------------------------------------------------------------------------------


def _headers_only(url: str, path: str, length: int, key: str) -> tuple[int, bytes]:
    """Announce a ``length``-byte body, send none of it, and read the answer."""
    parts = urlsplit(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert b"X-Request-Id: req_" in head_part, head_part
    return int(head_part.split()[1]), body


async def test_a_9_mib_heartbeat_is_refused_before_it_is_read(hub_app: HubApp) -> None:
    key = await hub_app.user_with_key("mallory")
    status, body = await asyncio.to_thread(
        _headers_only, hub_app.url, "/v1/agent/heartbeat", 9 * MIB, key
    )
    assert status == 413 and error(json.loads(body))["code"] == "request_too_large"
    assert providers(hub_app) == []


async def test_a_heartbeat_over_256_kib_is_refused(hub_app: HubApp) -> None:
    key = await hub_app.user_with_key("mallory")
    services = [{"name": "s", "models": ["x" * 250 for _ in range(1100)]}]
    status, data = await post(hub_app, "/v1/agent/heartbeat", beat(services=services), key)
    assert status == 413 and error(data)["code"] == "request_too_large"
    assert providers(hub_app) == []


@pytest.mark.parametrize(
    ("services", "field"),
    [
        ([{"name": f"s{i}", "models": ["m"]} for i in range(65)], "services"),
        (
            [{"name": f"s{i}", "models": [f"m{j}" for j in range(300)]} for i in range(4)],
            "services",
        ),
        ([{"name": "a", "models": ["m" * 257]}], "services[0].models[0]"),
        ([{"name": "a b", "models": ["m"]}], "services[0].name"),
        ([{"name": "a/../b", "models": ["m"]}], "services[0].name"),
        ([{"name": "a", "models": ["a\ud800b"]}], None),
    ],
)
async def test_oversize_or_odd_heartbeats_are_a_400_naming_the_field(
    hub_app: HubApp, services: list[dict[str, Any]], field: str | None
) -> None:
    key = await hub_app.user_with_key("mallory")
    body = json.dumps({"name": "rig", "callback_url": CALLBACK, "services": services}).encode()
    status, data = await post(hub_app, "/v1/agent/heartbeat", body, key)
    assert status == 400, data
    err = error(data)
    assert err["type"] == "invalid_request_error"
    if field is not None:
        assert err["param"] == field and field in err["message"]
    assert providers(hub_app) == []


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
async def test_numbers_json_does_not_have_are_a_400(hub_app: HubApp, number: bytes) -> None:
    # Stored as health, NaN came back on the dashboard as `NaN`, which no browser parses.
    key = await hub_app.user_with_key("mallory")
    body = beat()[:-1] + b', "health": {"load_avg": [' + number + b"]}}"
    status, data = await post(hub_app, "/v1/agent/heartbeat", body, key)
    assert status == 400, data
    assert error(data)["type"] == "invalid_request_error" and "JSON" in error(data)["message"]
    assert providers(hub_app) == []


@pytest.mark.parametrize("name", ["my rig", "x" * 65, "-rig", "rig\ud800"])
async def test_provider_names_follow_the_manifest_rules(hub_app: HubApp, name: str) -> None:
    key = await hub_app.user_with_key("mallory")
    status, data = await post(hub_app, "/v1/agent/heartbeat", beat(name), key)
    assert status == 400, data
    assert providers(hub_app) == []


# -- inference requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (json.dumps({"model": "m" * (9 * 1024 * 1024), "messages": []}).encode(), "model"),
        (json.dumps({"model": "m" * 257, "messages": []}).encode(), "model"),
        (b'{"model": "m1", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        (b"[" * 100_000, None),
        # 10 MB of empty arrays: 3.3 million lists, a second of the event loop to decode.
        (b'{"model": "m1", "messages": [' + b",".join([b"[]"] * 3_300_000) + b"]}", None),
        (b'{"model": "a\\ud800b", "messages": []}', None),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "\\udfff"}]}', None),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', None),
        (b'{"model": "m1", "messages": [], "temperature": NaN}', None),
    ],
    ids=[
        "9MiB-model",
        "257-model",
        "nested",
        "unbalanced",
        "3.3M-arrays",
        "lone-model",
        "lone-content",
        "utf8",
        "nan",
    ],
)
async def test_hostile_inference_bodies_are_a_400_and_never_reach_the_agent(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent, body: bytes, param: str | None
) -> None:
    # Room for the 9 MiB model id (the JSON limit is 10 MiB by default).
    hub_app.hub.settings = dataclasses.replace(hub_app.hub.settings, max_json_body=20 * MIB)
    status, data = await post(hub_app, "/v1/chat/completions", body, alice)
    assert status == 400, data
    err = error(data)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fake_agent.posts("/v1/chat/completions") == []
    rows = await hub_app.wait_for_request_rows(1)
    assert all(len(r["model"] or "") <= 256 for r in rows)


async def test_emoji_as_escaped_surrogate_pairs_still_work(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    body = b'{"model": "m1", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    status, _ = await post(hub_app, "/v1/chat/completions", body, alice)
    assert status == 200
    assert len(fake_agent.posts("/v1/chat/completions")) == 1


# -- one tenant's share -----------------------------------------------------------------------


@pytest.fixture
def strict_hub(tmp_path: Path, io_loop: IOLoop) -> Iterator[HubApp]:
    """A hub with small per-tenant limits and heartbeat pacing on."""
    hub = running_hub(
        tmp_path,
        heartbeat_min_interval=1.0,
        max_providers_per_user=3,
        max_concurrent_requests_per_user=2,
    )
    app = io_loop.run_sync(hub.__aenter__)
    try:
        yield app
    finally:
        io_loop.run_sync(lambda: hub.__aexit__(None, None, None))


async def test_a_provider_flood_stops_at_max_providers_per_user(strict_hub: HubApp) -> None:
    key = await strict_hub.user_with_key("mallory")
    for i in range(3):
        status, _ = await post(strict_hub, "/v1/agent/heartbeat", beat(f"rig{i}"), key)
        assert status == 200
    status, data = await post(strict_hub, "/v1/agent/heartbeat", beat("rig3"), key)
    assert status == 429 and error(data)["code"] == "provider_limit_reached"
    assert sorted(providers(strict_hub)) == ["rig0", "rig1", "rig2"]
    # Another user is not affected.
    other = await strict_hub.user_with_key("bob")
    status, _ = await post(strict_hub, "/v1/agent/heartbeat", beat("rig3"), other)
    assert status == 200


def _beat_with_headers(url: str, key: str, body: bytes) -> tuple[int, dict[str, str], Any]:
    return _post(url, "/v1/agent/heartbeat", body, key)


async def test_heartbeats_faster_than_one_a_second_get_429_retry_after(
    strict_hub: HubApp,
) -> None:
    key = await strict_hub.user_with_key("mallory")
    status, _ = await post(strict_hub, "/v1/agent/heartbeat", beat(), key)
    assert status == 200
    status, headers, data = await asyncio.to_thread(
        _beat_with_headers, strict_hub.url, key, beat(version="second")
    )
    assert status == 429 and error(data)["code"] == "rate_limit_exceeded"
    assert headers["Retry-After"] == "1" and headers["X-Request-Id"].startswith("req_")
    assert [
        r["agent_version"] for r in strict_hub.query("SELECT agent_version FROM providers")
    ] == [""]


async def test_an_over_rate_beat_gets_its_429_before_its_description_is_checked(
    strict_hub: HubApp,
) -> None:
    """The rate is checked on the name alone, so a flood of beats costs their JSON only: one
    with a description the hub would refuse still gets the 429, and the provider is as its
    accepted beat left it."""
    key = await strict_hub.user_with_key("mallory")
    status, _ = await post(strict_hub, "/v1/agent/heartbeat", beat(), key)
    assert status == 200
    bad = [{"name": "s", "models": ["m"] * 1025}]
    status, data = await post(strict_hub, "/v1/agent/heartbeat", beat(" rig ", bad), key)
    assert status == 429 and error(data)["code"] == "rate_limit_exceeded"
    status, data = await post(strict_hub, "/v1/agent/heartbeat", beat("other", bad), key)
    assert status == 400 and error(data)["param"] == "services[0].models"
    assert providers(strict_hub) == ["rig"]


async def test_concurrent_requests_stop_at_the_per_user_limit(
    strict_hub: HubApp, fake_agent: FakeAgent
) -> None:
    key = await strict_hub.user_with_key("mallory")
    status, _ = await strict_hub.heartbeat(key, "rig", fake_agent.url, LLM)
    assert status == 200
    fake_agent.hold()
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).encode()
    slow = [
        asyncio.create_task(post(strict_hub, "/v1/chat/completions", body, key)) for _ in range(2)
    ]
    assert await wait_until(lambda: strict_hub.hub.inflight == 2)
    status, headers, data = await asyncio.to_thread(
        _post, strict_hub.url, "/v1/chat/completions", body, key
    )
    assert status == 429 and error(data)["code"] == "rate_limit_exceeded"
    assert headers["Retry-After"] == "1"
    fake_agent.release()
    assert [s for s, _ in await asyncio.gather(*slow)] == [200, 200]
    assert len(fake_agent.posts("/v1/chat/completions")) == 2


SCRAPE_TOKEN = "scrape"
CHAT = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def paced_hub(tmp_path: Path, io_loop: IOLoop) -> Iterator[HubApp]:
    """A hub where each user, while it shares the hub, may begin one inference request at
    once, then one every 100 s, and have two in flight."""
    hub = running_hub(
        tmp_path,
        max_requests_per_second_per_user=0.01,
        request_burst_per_user=1,
        max_concurrent_requests_per_user=2,
        metrics_token=SCRAPE_TOKEN,
    )
    app = io_loop.run_sync(hub.__aenter__)
    try:
        yield app
    finally:
        io_loop.run_sync(lambda: hub.__aexit__(None, None, None))


async def sharing(hub: HubApp, agent: FakeAgent) -> tuple[str, str]:
    """Keys of mallory and bob, each with a provider of ``m1`` (their heartbeats make them
    share the hub)."""
    mallory = await hub.user_with_key("mallory")
    bob = await hub.user_with_key("bob")
    for key, rig in ((mallory, "rig"), (bob, "bobs-rig")):
        status, _ = await hub.heartbeat(key, rig, agent.url, LLM)
        assert status == 200
    return mallory, bob


def _chat_on_a_socket(url: str, key: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(chat_request(key))
    return sock


def _paced_total(url: str) -> float:
    """``inferclub_requests_paced_total`` as an operator's scrape shows it."""
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": "Bearer scrape"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    return next(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "inferclub_requests_paced_total"
    )


async def test_a_request_past_the_per_user_rate_waits_for_its_slot_and_may_be_abandoned(
    paced_hub: HubApp, fake_agent: FakeAgent
) -> None:
    """Past its rate, a tenant's request is neither refused (a refusal costs the hub CPU, and
    the tenant asks again at once) nor forwarded: it waits for its slot. Another user's
    request goes meanwhile, and a client that gives up frees its place in flight without
    anything reaching the agent."""
    mallory, bob = await sharing(paced_hub, fake_agent)
    chats = lambda: len(fake_agent.posts("/v1/chat/completions"))  # noqa: E731
    status, _ = await post(paced_hub, "/v1/chat/completions", CHAT, mallory)
    assert status == 200 and chats() == 1
    assert await asyncio.to_thread(_paced_total, paced_hub.url) == 0
    with _chat_on_a_socket(paced_hub.url, mallory):
        assert await wait_until(lambda: asyncio.to_thread(_paced_total, paced_hub.url))
        assert paced_hub.hub.inflight == 1 and chats() == 1
        status, _ = await post(paced_hub, "/v1/chat/completions", CHAT, bob)
        assert status == 200 and chats() == 2
    assert await wait_until(lambda: paced_hub.hub.inflight == 0)
    assert chats() == 2
    assert await wait_until(lambda: len(paced_hub.query("SELECT 1 FROM requests")) == 3)
    rows = paced_hub.query("SELECT status, cancelled FROM requests")
    assert sorted((r["status"], r["cancelled"]) for r in rows) == [(200, 0), (200, 0), (499, 1)]


async def test_a_user_alone_on_the_hub_is_never_paced(
    paced_hub: HubApp, fake_agent: FakeAgent
) -> None:
    """The home case: one user's batch goes as fast as its engines take it, whatever the rate;
    once another user's agent beats, the same user is paced."""
    mallory = await paced_hub.user_with_key("mallory")
    status, _ = await paced_hub.heartbeat(mallory, "rig", fake_agent.url, LLM)
    assert status == 200
    for _ in range(3):
        status, _ = await post(paced_hub, "/v1/chat/completions", CHAT, mallory)
        assert status == 200
    assert await asyncio.to_thread(_paced_total, paced_hub.url) == 0
    bob = await paced_hub.user_with_key("bob")
    status, _ = await paced_hub.heartbeat(bob, "bobs-rig", fake_agent.url, LLM)
    assert status == 200
    status, _ = await post(paced_hub, "/v1/chat/completions", CHAT, mallory)  # its burst
    assert status == 200
    with _chat_on_a_socket(paced_hub.url, mallory):
        assert await wait_until(lambda: asyncio.to_thread(_paced_total, paced_hub.url))
        assert len(fake_agent.posts("/v1/chat/completions")) == 4


async def test_a_request_waiting_when_its_key_is_revoked_gets_a_401(
    tmp_path: Path, io_loop: IOLoop, fake_agent: FakeAgent
) -> None:
    async with running_hub(
        tmp_path, max_requests_per_second_per_user=0.2, request_burst_per_user=1
    ) as hub:
        mallory, _ = await sharing(hub, fake_agent)
        status, _ = await post(hub, "/v1/chat/completions", CHAT, mallory)
        assert status == 200
        waiting = asyncio.create_task(post(hub, "/v1/chat/completions", CHAT, mallory))
        assert await wait_until(lambda: hub.hub.request_rate.paced == 1)
        await hub.revoke_elsewhere(mallory)  # the store; this hub's key cache learns of it
        status, data = await waiting
        assert status == 401 and error(data)["code"] == "invalid_api_key"
        assert len(fake_agent.posts("/v1/chat/completions")) == 1


async def test_a_client_that_sends_and_closes_at_once_while_paced_reaches_nothing(
    paced_hub: HubApp, fake_agent: FakeAgent
) -> None:
    """Tornado tells a handler of a close only if the handler exists when it happens: a
    request whose client closed right after sending must not wait out its slot and then be
    forwarded to nobody."""
    mallory, _ = await sharing(paced_hub, fake_agent)
    status, _ = await post(paced_hub, "/v1/chat/completions", CHAT, mallory)
    assert status == 200
    for _ in range(3):
        _chat_on_a_socket(paced_hub.url, mallory).close()
    assert await wait_until(lambda: len(paced_hub.query("SELECT 1 FROM requests")) == 4)
    assert paced_hub.hub.inflight == 0
    rows = paced_hub.query("SELECT status FROM requests")
    assert sorted(r["status"] for r in rows) == [200, 499, 499, 499]
    assert len(fake_agent.posts("/v1/chat/completions")) == 1


async def test_past_its_cap_a_user_sharing_the_hub_gets_its_429_when_retry_after_says(
    paced_hub: HubApp, fake_agent: FakeAgent
) -> None:
    """Refusals answered at once let a client that ignores Retry-After spin the hub's CPU;
    while users share the hub, the 429 comes no sooner than the second it names."""
    mallory, bob = await sharing(paced_hub, fake_agent)
    fake_agent.hold()
    at_agent = asyncio.create_task(post(paced_hub, "/v1/chat/completions", CHAT, mallory))
    assert await wait_until(lambda: fake_agent.posts("/v1/chat/completions"))
    with _chat_on_a_socket(paced_hub.url, mallory):  # waits for its slot: the cap is reached
        assert await wait_until(lambda: paced_hub.hub.request_rate.paced == 1)
        began = time.monotonic()
        status, headers, data = await asyncio.to_thread(
            _post, paced_hub.url, "/v1/chat/completions", CHAT, mallory
        )
        assert time.monotonic() - began >= 1.0
    assert status == 429 and error(data)["code"] == "rate_limit_exceeded"
    assert headers["Retry-After"] == "1"
    fake_agent.release()
    assert (await at_agent)[0] == 200


async def test_past_its_cap_a_request_gets_a_place_that_frees_within_the_second(
    tmp_path: Path, io_loop: IOLoop, fake_agent: FakeAgent
) -> None:
    """A legitimate burst past the cap is not refused for a place that freed while it waited:
    it tries again after its second."""
    async with running_hub(tmp_path, max_concurrent_requests_per_user=1) as hub:
        mallory, _ = await sharing(hub, fake_agent)
        fake_agent.hold()
        first = asyncio.create_task(post(hub, "/v1/chat/completions", CHAT, mallory))
        assert await wait_until(lambda: fake_agent.posts("/v1/chat/completions"))
        second = asyncio.create_task(post(hub, "/v1/chat/completions", CHAT, mallory))
        assert await wait_until(lambda: hub.hub.inflight == 2)  # past the cap: it waits
        fake_agent.release()
        assert [(await t)[0] for t in (first, second)] == [200, 200]
        assert len(fake_agent.posts("/v1/chat/completions")) == 2


@pytest.mark.parametrize("meanwhile", ["revoked", "draining"])
async def test_a_request_waiting_past_the_cap_is_not_served_after_a_revocation_or_drain(
    tmp_path: Path, io_loop: IOLoop, fake_agent: FakeAgent, meanwhile: str
) -> None:
    async with running_hub(tmp_path, max_concurrent_requests_per_user=1) as hub:
        mallory, _ = await sharing(hub, fake_agent)
        # Its wait past the cap, five seconds here: long enough for the revocation to reach
        # this hub's key cache on any machine.
        hub.hub.refusal_rate = RequestRate(100.0, 1, not_before=5.0)
        fake_agent.hold()
        first = asyncio.create_task(post(hub, "/v1/chat/completions", CHAT, mallory))
        assert await wait_until(lambda: fake_agent.posts("/v1/chat/completions"))
        second = asyncio.create_task(post(hub, "/v1/chat/completions", CHAT, mallory))
        assert await wait_until(lambda: hub.hub.inflight == 2)
        fake_agent.release()
        assert (await first)[0] == 200  # a place is free now: only the wait holds it back
        if meanwhile == "revoked":
            await hub.revoke_elsewhere(mallory)
            expected = (401, "invalid_api_key")
        else:
            hub.hub.draining = True
            expected = (503, "server_shutting_down")
        status, data = await second
        assert (status, error(data)["code"]) == expected
        assert len(fake_agent.posts("/v1/chat/completions")) == 1
        hub.hub.draining = False


# -- web hygiene ------------------------------------------------------------------------------


def _get(url: str, path: str, cookie: str = "") -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "target",
    [
        "/%09/evil.example",
        "//evil.example",
        "/\\evil.example",
        "/\\t/evil.example",
        "/%5Cevil.example",
        "/x%0d%0aSet-Cookie:%20a=b",
        "https://evil.example",
        "/%E3%80%80/x",
        # Not off-site, but kept with every GitHub sign-in started (no key needed to start one).
        "/" + "a" * 3000,
    ],
)
async def test_sign_in_redirects_stay_on_the_site(hub_app: HubApp, target: str) -> None:
    user_id = await hub_app.create_user("alice")
    link = await hub_app.hub.accounts.create_login_link(user_id, hub_app.url, 60)
    status, headers, _ = await asyncio.to_thread(
        _get, hub_app.url, urlsplit(link).path + "?" + urlsplit(link).query
    )
    assert status == 302
    cookie = headers["Set-Cookie"].split(";")[0]
    status, headers, _ = await asyncio.to_thread(_get, hub_app.url, f"/login?next={target}", cookie)
    assert status == 302 and headers["Location"] == "/dashboard"


async def test_same_site_next_paths_are_kept(hub_app: HubApp) -> None:
    user_id = await hub_app.create_user("alice")
    link = await hub_app.hub.accounts.create_login_link(user_id, hub_app.url, 60)
    parts = urlsplit(link)
    _, headers, _ = await asyncio.to_thread(_get, hub_app.url, f"{parts.path}?{parts.query}")
    cookie = headers["Set-Cookie"].split(";")[0]
    status, headers, _ = await asyncio.to_thread(
        _get, hub_app.url, "/login?next=/dashboard/requests%3Fpage%3D2", cookie
    )
    assert status == 302 and headers["Location"] == "/dashboard/requests?page=2"


@pytest.mark.parametrize("path", ["/login", "/v1/models"])
async def test_no_version_in_the_server_header(hub_app: HubApp, path: str) -> None:
    _, headers, _ = await asyncio.to_thread(_get, hub_app.url, path)
    assert headers["Server"] == "inferclub"
    assert "Strict-Transport-Security" not in headers  # plain http: HSTS would mislead


async def test_hsts_is_sent_when_the_public_url_is_https(tmp_path: Path) -> None:
    async with running_hub(tmp_path, public_url="https://hub.example") as hub:
        for path in ("/login", "/v1/models"):
            _, headers, _ = await asyncio.to_thread(_get, hub.url, path)
            assert headers["Strict-Transport-Security"] == "max-age=31536000"
            assert headers["Server"] == "inferclub"


async def test_a_model_id_over_the_limit_in_the_url_is_a_400(hub_app: HubApp) -> None:
    key = await hub_app.user_with_key("mallory")
    status, data = await hub_app.get_json("/v1/models/" + "m" * 60_000, key)
    assert status == 400
    assert error(data)["code"] == "model_too_long" and error(data)["param"] == "model"
    assert len(error(data)["message"]) < 100


async def test_remembered_reachability_checks_are_bounded(
    hub_app: HubApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Provider ids are never reused: a tenant registering (and deleting) provider after
    provider must not grow what the hub remembers of their callbacks without end."""
    from inferclub.hub import app as app_module

    monkeypatch.setattr(app_module, "MAX_REACHABILITY_ENTRIES", 3)
    key = await hub_app.user_with_key("mallory")
    for n in range(6):
        status, body = await hub_app.heartbeat(key, f"rig{n}", CALLBACK, LLM)
        assert status == 200, body
        assert body["callback_reachable"] is False  # nothing listens on port 9: checked
    remembered = hub_app.hub._reachability
    assert len(remembered) == 3
    assert sorted(remembered) == sorted(p.id for p in hub_app.hub.registry.all_providers())[-3:]
