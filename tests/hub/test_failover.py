"""Failover before the first byte, through the real hub in-process and fake agents: a dead or
refusing provider hands the request on; the client sees which provider served and after how
many attempts; the history row says so too; a failed provider is skipped while it cools down."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import openai
import pytest

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp, request_id_of, running_hub, wait_until


def dead_url() -> str:
    """A callback URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


async def chat(hub: HubApp, key: str) -> tuple[int, dict[str, str], str]:
    """A chat request through the SDK: (status, headers, the history row's id)."""
    raw = await hub.client(key).chat.completions.with_raw_response.create(model="m1", messages=[])
    return raw.status_code, dict(raw.headers), raw.headers["X-Request-Id"]


async def row(hub: HubApp, request_id: str) -> dict[str, object]:
    """The request's history row, once written (rows are written in batches)."""
    assert await wait_until(lambda: hub.query("SELECT 1 FROM requests WHERE id = ?", request_id))
    return dict(hub.query("SELECT * FROM requests WHERE id = ?", request_id)[0])


async def test_a_dead_provider_hands_the_request_on_then_cools_down(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as alive:
            await hub.heartbeat(key, "first", dead_url(), LLM)
            await hub.heartbeat(key, "second", alive.url, LLM)
            status, headers, rid = await chat(hub, key)
            assert status == 200
            assert headers["x-inferclub-provider"] == "second"
            assert headers["x-inferclub-attempts"] == "2"
            served = await row(hub, rid)
            assert (served["status"], served["attempts"]) == (200, 2)
            (second,) = hub.query("SELECT id FROM providers WHERE name = 'second'")
            assert served["provider_id"] == second["id"]
            # The dead one cools down, as the model list says, and the next request goes
            # straight to the live one.
            (listed,) = (await hub.client(key).models.list()).data
            assert (listed.model_extra or {})["cooling_down"] == ["first"]
            one = await hub.client(key).models.retrieve("m1")
            assert (one.model_extra or {})["cooling_down"] == ["first"]
            status, headers, _ = await chat(hub, key)
            assert (status, headers["x-inferclub-attempts"]) == (200, "1")
            assert len(alive.posts("/v1/chat/completions")) == 2


@pytest.mark.parametrize("status", [429, 502, 503])
async def test_busy_or_failing_agents_hand_on_and_other_4xx_do_not(
    tmp_path: Path, status: int
) -> None:
    refusal = json.dumps({"error": {"message": "no", "type": "x", "code": None}}).encode()
    async with running_hub(tmp_path) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as first, FakeAgent(["m1"]) as second:
            await hub.heartbeat(key, "first", first.url, LLM)
            await hub.heartbeat(key, "second", second.url, LLM)
            first.fail = (status, refusal, "application/json")
            got, headers, _ = await chat(hub, key)
            assert (got, headers["x-inferclub-provider"]) == (200, "second")
            first.fail = (400, refusal, "application/json")
            if status == 429:  # a busy provider is not cooled down: it is tried first again
                with pytest.raises(openai.BadRequestError) as exc:
                    await chat(hub, key)
                assert request_id_of(exc.value)
                assert exc.value.response.headers["X-InferClub-Provider"] == "first"
                assert exc.value.response.headers["X-InferClub-Attempts"] == "1"


async def test_when_every_attempt_fails_the_error_names_the_last_provider(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path, max_attempts=2) as hub:
        key = await hub.user_with_key("alice")
        for name in ("a", "b"):
            await hub.heartbeat(key, name, dead_url(), LLM)
        with pytest.raises(openai.InternalServerError) as exc:
            await chat(hub, key)
        assert request_id_of(exc.value)
        err = exc.value
        assert (err.status_code, err.code) == (502, "upstream_unreachable")
        # In words, naming the provider; no client library's class name.
        assert err.message.endswith(
            "The agent of provider `b` is unreachable (connection refused)."
        )
        headers = err.response.headers
        assert headers["X-Request-Id"].startswith("req_")
        assert (headers["X-InferClub-Provider"], headers["X-InferClub-Attempts"]) == ("b", "2")
        failed = await row(hub, headers["X-Request-Id"])
        assert (failed["status"], failed["attempts"]) == (502, 2)
        # Both cool down now: the next request is refused at once, naming them.
        with pytest.raises(openai.InternalServerError) as exc:
            await chat(hub, key)
        assert request_id_of(exc.value)
        assert (exc.value.status_code, exc.value.code) == (503, "model_unavailable")
        assert "a: cooling down" in exc.value.message and "b: cooling down" in exc.value.message
        assert exc.value.response.headers["Retry-After"]
        assert exc.value.response.headers["X-Request-Id"].startswith("req_")


async def test_a_goodbye_stops_new_requests_at_once_and_the_next_beat_takes_it_back(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path, heartbeat_min_interval=60) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as first, FakeAgent(["m1"]) as second:
            await hub.heartbeat(key, "first", first.url, LLM)
            await hub.heartbeat(key, "second", second.url, LLM)
            # Not paced (it follows a beat at once), and answered like a beat.
            status, reply = await hub.heartbeat(key, "first", first.url, LLM, leaving=True)
            assert status == 200 and reply["hub_key"]
            for _ in range(3):
                _, headers, _ = await chat(hub, key)
                assert (headers["x-inferclub-provider"], headers["x-inferclub-attempts"]) == (
                    "second",
                    "1",
                )
            assert not first.posts("/v1/chat/completions")
            # The model list names a provider that still serves it, never the leaving one.
            (listed,) = (await hub.client(key).models.list()).data
            assert listed.owned_by == "second"
            assert (await hub.client(key).models.retrieve("m1")).owned_by == "second"
            status, body = await hub.heartbeat(key, "nobody", first.url, LLM, leaving=True)
            assert (status, body["error"]["code"]) == (404, "provider_not_found")
    async with running_hub(tmp_path / "again") as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as only:
            await hub.heartbeat(key, "only", only.url, LLM)
            await hub.heartbeat(key, "only", only.url, LLM, leaving=True)
            with pytest.raises(openai.InternalServerError) as exc:
                await chat(hub, key)
            assert request_id_of(exc.value)
            assert exc.value.code == "model_unavailable"
            assert "only: agent shutting down" in exc.value.message
            # Like a provider gone offline, a leaving one's models leave the list.
            assert not (await hub.client(key).models.list()).data
            with pytest.raises(openai.NotFoundError) as missing:
                await hub.client(key).models.retrieve("m1")
            assert request_id_of(missing.value)
            await hub.heartbeat(key, "only", only.url, LLM)
            assert (await chat(hub, key))[0] == 200
            assert [m.id for m in (await hub.client(key).models.list()).data] == ["m1"]


async def test_a_goodbye_from_a_second_agent_with_the_same_name_leaves_the_live_one_serving(
    tmp_path: Path,
) -> None:
    # Two agents started by mistake with one name and key: the hub routes to the one that beat
    # last; the other one's goodbye (Ctrl-C) must not stop requests to it.
    async with running_hub(tmp_path, heartbeat_min_interval=0) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as stale, FakeAgent(["m1"]) as live:
            await hub.heartbeat(key, "twin", stale.url, LLM)
            await hub.heartbeat(key, "twin", live.url, LLM)
            status, _ = await hub.heartbeat(key, "twin", stale.url, LLM, leaving=True)
            assert status == 200
            got, headers, _ = await chat(hub, key)
            assert (got, headers["x-inferclub-provider"]) == (200, "twin")
            assert len(live.posts("/v1/chat/completions")) == 1
            assert [m.id for m in (await hub.client(key).models.list()).data] == ["m1"]
            # The live agent's own goodbye still takes it out at once.
            await hub.heartbeat(key, "twin", live.url, LLM, leaving=True)
            with pytest.raises(openai.InternalServerError) as exc:
                await chat(hub, key)
            assert "twin: agent shutting down" in exc.value.message


@pytest.mark.parametrize(
    ("status", "sent", "relayed"),
    [(429, "7", "7"), (429, None, "1"), (503, "soon", "1"), (503, "86400", "300")],
)
async def test_the_last_busy_answer_tells_the_client_when_to_retry(
    tmp_path: Path, status: int, sent: str | None, relayed: str
) -> None:
    refusal = json.dumps({"error": {"message": "busy", "type": "x", "code": None}}).encode()
    async with running_hub(tmp_path) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as only:
            await hub.heartbeat(key, "only", only.url, LLM)
            only.fail = (status, refusal, "application/json")
            only.fail_headers = {} if sent is None else {"Retry-After": sent}
            with pytest.raises(openai.APIStatusError) as exc:
                await chat(hub, key)
            assert request_id_of(exc.value)
            headers = exc.value.response.headers
            assert exc.value.status_code == status
            assert (headers["Retry-After"], headers["X-InferClub-Provider"]) == (relayed, "only")
