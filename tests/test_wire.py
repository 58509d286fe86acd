"""The hub<->agent contract: what the agent sends is what the hub parses, and back again."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import tornado.web

import inferclub
from inferclub import wire
from inferclub.agent import runner
from inferclub.agent.heartbeat import Heartbeat, hub_auth
from inferclub.agent.services import ServiceTable
from inferclub.engines import Model, Service, get_engines, get_plugin_manager
from inferclub.hub import keys
from inferclub.hub.app import Hub, make_app
from inferclub.hub.config import Secrets, Settings
from inferclub.hub.handlers import openai as openai_handlers
from inferclub.hub.store import SQLiteStore

#: A well-formed hub key (the test key of docs/signing.md).
HUB_KEY = "ed25519:A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"

UNREACHABLE = "http://127.0.0.1:9/v1"


def agent_table() -> ServiceTable:
    """Two services as a manifest gives them, both live (as a successful probe leaves them)."""
    table = ServiceTable(
        [
            Service("qwen", "vllm", UNREACHABLE, models=(Model("Qwen/Qwen3-8B", "qwen3"),)),
            Service(
                "ears",
                "whisper",
                UNREACHABLE,
                type="stt",
                features=("timestamps",),
                models=(Model("whisper-1"),),
            ),
        ],
        get_engines(get_plugin_manager(entrypoints=False)),
    )
    for state in table.states.values():
        state.up = True
    return table


def test_agent_heartbeat_round_trips_through_json() -> None:
    services = tuple(agent_table().advertised())
    sent = wire.Heartbeat("rig", UNREACHABLE, inferclub.__version__, services, {"uptime_s": 1})
    on_the_wire = json.loads(json.dumps(sent.to_json()))
    assert on_the_wire == {
        "name": "rig",
        "callback_url": UNREACHABLE,
        "version": inferclub.__version__,
        "services": [
            {
                "name": "qwen",
                "type": "llm",
                "engine": "vllm",
                "features": [],
                "models": ["qwen3"],
            },
            {
                "name": "ears",
                "type": "stt",
                "engine": "whisper",
                "features": ["timestamps"],
                "models": ["whisper-1"],
            },
        ],
        "health": {"uptime_s": 1},
    }
    assert wire.Heartbeat.parse(on_the_wire) == sent


def test_third_party_heartbeat_defaults() -> None:
    """The README's minimal heartbeat: type, engine, features, models, version may be left out."""
    hb = wire.Heartbeat.parse(
        {"name": " rig ", "callback_url": "https://rig.example/v1", "services": [{"name": "a"}]}
    )
    assert hb == wire.Heartbeat(
        "rig", "https://rig.example/v1", "", (wire.AdvertisedService("a", "llm", "openai"),), {}
    )
    again = wire.Heartbeat.parse(
        {
            "name": "r",
            "callback_url": "http://x/v1",
            "services": [{"name": "a", "models": ["m", "m"]}],
        }
    )
    assert again.services[0].models == ("m",)


def test_model_lists_are_stripped_and_deduplicated_in_order() -> None:
    """What the bulk check of a model list returns is what checking each id returns."""
    models = [" b ", "a", "b", "caf\u00e9", "del\x7f", "a "]
    hb = wire.Heartbeat.parse(with_services({"name": "s", "models": models}))
    assert hb.services[0].models == ("b", "a", "caf\u00e9", "del\x7f")


OK = {"name": "r", "callback_url": "http://x/v1"}
MANY = [f"model-{i}" for i in range(9)]


def with_services(*services: Any) -> dict[str, Any]:
    return {**OK, "services": list(services)}


@pytest.mark.parametrize(
    ("payload", "field", "problem"),
    [
        ([], "heartbeat", "must be a JSON object"),
        ({"callback_url": "http://x/v1"}, "name", "must be a string"),
        ({**OK, "name": "  "}, "name", "must not be empty"),
        ({**OK, "name": "r" * 65}, "name", "at most 64 characters"),
        ({**OK, "name": "a\nb"}, "name", "control characters"),
        ({**OK, "callback_url": "ftp://x/v1"}, "callback_url", "http:// or https://"),
        ({**OK, "callback_url": "http:///v1"}, "callback_url", "with a host"),
        ({**OK, "callback_url": "http://x:99999/v1"}, "callback_url", "invalid port"),
        ({**OK, "version": 1}, "version", "must be a string"),
        ({**OK, "services": {}}, "services", "must be a list"),
        ({**OK, "services": None}, "services", "must be a list"),
        (with_services(*[{"name": str(i)} for i in range(65)]), "services", "at most 64"),
        (with_services("a"), "services[0]", "must be an object"),
        (with_services({}), "services[0].name", "must be a string"),
        (with_services({"name": "a"}, {"name": "a"}), "services[1].name", "duplicate"),
        (with_services({"name": "a", "type": "video"}), "services[0].type", "not 'video'"),
        (with_services({"name": "a", "engine": None}), "services[0].engine", "must be a string"),
        (with_services({"name": "a", "features": "x"}), "services[0].features", "list of strings"),
        (with_services({"name": "a", "models": ["ok", 3]}), "services[0].models[1]", "string"),
        # A long model list is checked in bulk; the first bad item is still the one named.
        (
            with_services({"name": "a", "models": [*MANY, "x\ty"]}),
            "services[0].models[9]",
            "control",
        ),
        (
            with_services({"name": "a", "models": [*MANY, "\ud800"]}),
            "services[0].models[9]",
            "surrogate",
        ),
        (with_services({"name": "a", "models": [*MANY, " "]}), "services[0].models[9]", "empty"),
        (with_services({"name": "a", "models": [*MANY, None]}), "services[0].models[9]", "string"),
        (
            with_services({"name": "a", "models": [*MANY, "é" * 257]}),
            "services[0].models[9]",
            "at most 256 characters",
        ),
        (
            with_services({"name": "a", "models": ["m"] * 1025}),
            "services[0].models",
            "at most 1024",
        ),
        ({**OK, "health": []}, "health", "must be an object"),
        ({**OK, "health": {"x": "y" * 70000}}, "health", "at most 65536 bytes"),
    ],
)
def test_each_invalid_field_is_named_by_its_path(payload: Any, field: str, problem: str) -> None:
    with pytest.raises(wire.PayloadError) as info:
        wire.Heartbeat.parse(payload)
    assert info.value.field == field
    assert problem in str(info.value) and str(info.value).startswith(f"{field}: ")


def test_heartbeat_reply_round_trip() -> None:
    reply = wire.HeartbeatReply(7, HUB_KEY, 30.0, 60.0, False, "connection refused")
    assert wire.HeartbeatReply.parse(json.loads(json.dumps(reply.to_json()))) == reply
    reachable = wire.HeartbeatReply(7, HUB_KEY, 30.0, 60.0).to_json()
    assert "callback_error" not in reachable and reachable["callback_reachable"] is True
    # Not checked this time (the hub's probe budget): null, which is not "unreachable".
    unchecked = wire.HeartbeatReply(7, HUB_KEY, 30.0, 60.0, None, "not checked yet")
    assert unchecked.to_json()["callback_reachable"] is None
    assert wire.HeartbeatReply.parse(json.loads(json.dumps(unchecked.to_json()))) == unchecked
    # An agent reads what it understands and ignores what it does not.
    lenient = wire.HeartbeatReply.parse(
        {"provider_id": 3, "hub_key": "k", "heartbeat_interval": -1, "online_window": "60", "x": 1}
    )
    assert lenient == wire.HeartbeatReply(3, "k")
    # Without the key or the provider id no request could be checked.
    for reply_json, field in (
        ({"provider_id": 1, "callback_token": "t"}, "hub_key"),
        ({"hub_key": HUB_KEY}, "provider_id"),
        ({"hub_key": HUB_KEY, "provider_id": True}, "provider_id"),
    ):
        with pytest.raises(wire.PayloadError) as info:
            wire.HeartbeatReply.parse(reply_json)
        assert info.value.field == field


def test_hub_serves_exactly_the_endpoints_of_the_table() -> None:
    proxied = {
        pattern: handler.endpoint
        for pattern, handler in openai_handlers.routes
        if issubclass(handler, openai_handlers.ProxyHandler)
    }
    assert sorted(proxied.values()) == sorted(wire.ENDPOINT_TYPES)
    assert all(pattern == "/v1" + endpoint for pattern, endpoint in proxied.items())
    # Only what the hub routes: /responses (llm), but no /images/variations.
    assert wire.ENDPOINT_TYPES["/responses"] == "llm"
    assert "/images/variations" not in wire.ENDPOINT_TYPES
    assert set(wire.ENDPOINT_TYPES.values()) == set(wire.SERVICE_TYPES)


@pytest.mark.parametrize(
    "limits",
    [{}, {"max_image_body": 1000, "max_audio_body": 10**9}, {"max_json_body": 10**8}],
    ids=["defaults", "large-audio", "large-json"],
)
def test_the_body_ceiling_is_past_every_endpoint_limit(limits: dict[str, int]) -> None:
    """Tornado answers a body past its max_body_size with a bare 400: the servers' ceiling
    must stay above what any endpoint accepts, or an upload in between loses its OpenAI 413
    (once 16 images at the limit were accepted by the handler and not by the server)."""
    settings = Settings(**limits)  # type: ignore[arg-type]
    for handler in openai_handlers.PROXY_HANDLERS:
        fake = SimpleNamespace(hub=SimpleNamespace(settings=settings))
        fake.body_limit_setting = handler.body_limit_setting
        limit = handler.body_limit(fake)  # type: ignore[arg-type]
        assert limit < settings.body_ceiling, handler.__name__
    per_image = settings.max_image_body * (wire.MAX_EDIT_IMAGES + 1)
    assert per_image < settings.image_edit_body_limit < settings.body_ceiling
    # The agent takes whatever a hub with the default limits forwards.
    assert Settings().body_ceiling == runner.MAX_BODY_SIZE


# -- the agent's real heartbeat against the hub's real handler, in process ----------------------


@pytest.fixture
def wire_hub(tmp_path: Path) -> Hub:
    settings = Settings(db=str(tmp_path / "h.db"))
    return Hub(settings, SQLiteStore(settings.db_path), Secrets(b"pepper" * 6, "cookie"))


@pytest.fixture
def app(wire_hub: Hub) -> tornado.web.Application:
    return make_app(wire_hub)


async def test_agent_heartbeat_is_stored_and_answered(
    wire_hub: Hub, http_server_client: Any, tmp_path: Path
) -> None:
    await wire_hub.store.open()
    await wire_hub.start()
    try:
        user = await wire_hub.store.create_user("alice")
        key = keys.generate()
        await wire_hub.store.create_key(
            user.id, "", keys.display_prefix(key), keys.hash_key(wire_hub.secrets.pepper, key)
        )
        table, auth = agent_table(), hub_auth(tmp_path / "known_hubs", None)

        async def health() -> dict[str, Any]:
            return {"uptime_s": 1.5}

        async with aiohttp.ClientSession() as session:
            beat = Heartbeat(
                session,
                table,
                hub=http_server_client.get_url("/"),
                key=key,
                name="rig",
                callback_url=UNREACHABLE,
                auth=auth,
                health=health,
            )
            assert await beat.beat(table.advertised(), 1.0)

        # The agent learnt what the hub answered...
        assert beat.hub is not None and beat.hub.provider_id is not None
        assert auth.ready and auth.provider_id == str(beat.hub.provider_id)
        assert beat.hub.hub_key == wire_hub.signer.public_key
        # ...and pinned the hub's key on first sight.
        assert wire_hub.signer.public_key in (tmp_path / "known_hubs").read_text()
        assert beat.hub.heartbeat_interval == wire_hub.settings.heartbeat_interval
        assert beat.hub.callback_reachable is False and beat.hub.callback_error
        # ...and the hub stored what the agent advertised.
        [provider] = await wire_hub.store.list_providers()
        assert (provider.name, provider.agent_version) == ("rig", inferclub.__version__)
        assert provider.health == {"uptime_s": 1.5}
        assert [(s.name, s.type, s.engine, s.features, s.models) for s in provider.services] == [
            ("qwen", "llm", "vllm", (), ("qwen3",)),
            ("ears", "stt", "whisper", ("timestamps",), ("whisper-1",)),
        ]

        resp = await http_server_client.fetch(
            wire.HEARTBEAT_PATH,
            method="POST",
            headers={"Authorization": f"Bearer {key}"},
            body=json.dumps(with_services({"name": "a", "type": "video"})),
            raise_error=False,
        )
        assert resp.code == 400
        error = json.loads(resp.body)["error"]
        assert (error["param"], error["code"]) == ("services[0].type", "invalid_heartbeat")
        assert error["message"].startswith("Invalid heartbeat: services[0].type: must be one of")
    finally:
        await wire_hub.stop()
        await wire_hub.store.close()


def test_load_goodbye_and_down_services_are_optional_and_checked() -> None:
    """Fields older agents do not send: absent means "cannot tell"; bad ones name the field."""
    raw = {
        "name": "rig",
        "callback_url": UNREACHABLE,
        "leaving": True,
        "services": [
            {"name": "a", "models": ["m"], "max_concurrency": 2, "queue": 0, "loaded": ["m"]},
        ],
        "down": [{"name": "b", "models": ["n"], "detail": "cannot connect"}],
    }
    hb = wire.Heartbeat.parse(raw)
    assert hb.leaving and hb.services[0].loaded == ("m",)
    assert hb.down[0].detail == "cannot connect"
    assert wire.Heartbeat.parse(hb.to_json()) == hb
    plain = wire.Heartbeat.parse({"name": "rig", "callback_url": UNREACHABLE})
    assert "leaving" not in plain.to_json() and not plain.leaving
    for field_, value, where in [
        ("max_concurrency", 0, "services[0].max_concurrency"),
        ("queue", -1, "services[0].queue"),
        ("queue", True, "services[0].queue"),
        ("detail", 5, "services[0].detail"),
        ("loaded", "m", "services[0].loaded"),
    ]:
        bad = {**raw, "services": [{"name": "a", field_: value}]}
        with pytest.raises(wire.PayloadError) as exc:
            wire.Heartbeat.parse(bad)
        assert exc.value.field == where


def test_known_services_are_reused_only_for_an_equal_list() -> None:
    first = with_services({"name": "a", "models": ["m1", "m2"]})
    hb = wire.Heartbeat.parse(first)
    known = (first["services"], hb.services)
    again = wire.Heartbeat.parse(json.loads(json.dumps(first)), known)
    assert again.services is hb.services
    changed = with_services({"name": "a", "models": ["m1", 2]})
    with pytest.raises(wire.PayloadError) as info:
        wire.Heartbeat.parse(changed, known)
    assert info.value.field == "services[0].models[1]"
