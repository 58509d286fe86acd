"""The agent protocol's heartbeat, as an agent sees it: validation that names the field, never a
partial update, and the hub telling an agent it cannot reach it (the hub in-process)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from inferclub.hub.reachability import REACHABILITY_TEXT
from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp

# ---------------------------------------------------------------------- heartbeat


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"callback_url": "http://x/v1"}, "name"),
        ({"name": "r"}, "callback_url"),
        ({"name": "r", "callback_url": "ftp://x"}, "callback_url"),
        ({"name": "r", "callback_url": "http://x:99999/v1"}, "callback_url"),
        ({"name": "r", "callback_url": "http://x/v1", "services": {}}, "services"),
        (
            {
                "name": "r",
                "callback_url": "http://x/v1",
                "services": [{"name": "a", "type": "video"}],
            },
            "services[0].type",
        ),
        (
            {
                "name": "r",
                "callback_url": "http://x/v1",
                "services": [{"name": "a"}, {"name": "a"}],
            },
            "services[1].name",
        ),
        (
            {
                "name": "r",
                "callback_url": "http://x/v1",
                "services": [{"name": "a", "models": ["ok", 3]}],
            },
            "services[0].models[1]",
        ),
        ({"name": "r", "callback_url": "http://x/v1", "health": []}, "health"),
    ],
)
async def test_malformed_heartbeat_names_the_field(
    hub_app: HubApp, payload: dict[str, Any], field: str
) -> None:
    key = await hub_app.user_with_key("carol")
    status, body = await hub_app.post_json("/v1/agent/heartbeat", payload, key)
    assert status == 400
    assert body["error"]["param"] == field and field in body["error"]["message"]


async def test_bad_heartbeat_never_partly_overwrites(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    bad = LLM + [{"name": "x", "type": "nope", "models": ["other"]}]
    status, _ = await hub_app.heartbeat(alice, "rig", "http://elsewhere:1/v1", bad)
    assert status == 400
    assert [m.id for m in (await hub_app.client(alice).models.list()).data] == ["m1"]
    assert [r["callback_url"] for r in hub_app.query("SELECT callback_url FROM providers")] == [
        fake_agent.url
    ]


async def test_a_services_list_is_reused_only_while_it_is_the_same(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    """A steady beat reuses its provider's last validated services; any change to the list is
    checked in full (the hub keeps the raw list of the last valid beat to compare with)."""
    for _ in range(2):
        status, _ = await hub_app.heartbeat(alice, "rig", fake_agent.url, LLM)
        assert status == 200
    bad = [{**LLM[0], "models": [*LLM[0]["models"], "m\n2"]}]
    status, body = await hub_app.heartbeat(alice, "rig", fake_agent.url, bad)
    assert status == 400 and body["error"]["param"] == "services[0].models[1]"
    bad = [{**LLM[0], "type": 1}]
    status, body = await hub_app.heartbeat(alice, "rig", fake_agent.url, bad)
    assert status == 400 and body["error"]["param"] == "services[0].type"
    assert [m.id for m in (await hub_app.client(alice).models.list()).data] == ["m1"]
    more = [{**LLM[0], "models": [*LLM[0]["models"], "m2"]}]
    status, _ = await hub_app.heartbeat(alice, "rig", fake_agent.url, more)
    assert status == 200
    assert [m.id for m in (await hub_app.client(alice).models.list()).data] == ["m1", "m2"]


async def test_heartbeat_tells_an_agent_the_hub_cannot_reach_it(
    hub_app: HubApp, alice: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    status, body = await hub_app.heartbeat(alice, "behind-nat", dead, LLM)
    assert status == 200 and body["callback_reachable"] is False
    assert body["callback_error"] == REACHABILITY_TEXT["refused"]
    assert "cannot reach" in hub_app.log()
    # The next beat within the minute gets the remembered answer, and the log no new line:
    # a fleet of unreachable agents must not cost a log write per heartbeat.
    status, body = await hub_app.heartbeat(alice, "behind-nat", dead, LLM)
    assert status == 200 and body["callback_error"] == REACHABILITY_TEXT["refused"]
    assert hub_app.log().count("cannot reach") == 1


async def test_heartbeat_response_and_not_json(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    status, body = await hub_app.heartbeat(alice, "rig", fake_agent.url, LLM)
    assert status == 200
    assert body["heartbeat_interval"] == 30 and body["online_window"] == 60
    assert body["provider_id"] == 1 and body["hub_key"] == hub_app.hub.signer.public_key
    assert "callback_token" not in body, "the bearer token is gone: requests are signed"
    assert body["callback_reachable"] is True and "callback_error" not in body
    probe = fake_agent.requests[0]
    assert (probe.method, probe.path) == ("GET", "/v1/models")
    # The reachability probe is signed like any request, and carries no bearer token.
    assert "Authorization" not in probe.headers
    assert probe.headers["X-Request-Id"].startswith("probe_")
    assert len(probe.headers["X-Inferclub-Signature"]) == 86
    status, body = await hub_app.post_json("/v1/agent/heartbeat", b"not json", alice)
    assert status == 400
