"""The hub as an in-process Tornado application (pytest-tornasync), no sockets of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tornado.web

from inferclub.hub import keys
from inferclub.hub.app import Hub, make_app
from inferclub.hub.config import Secrets, Settings
from inferclub.hub.store import SQLiteStore


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    settings = Settings(db=str(tmp_path / "h.db"))
    return Hub(settings, SQLiteStore(settings.db_path), Secrets(b"pepper" * 6, "cookie"))


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    return make_app(hub)


async def test_inprocess_heartbeat_then_models(hub: Hub, http_server_client) -> None:  # type: ignore[no-untyped-def]
    await hub.store.open()
    await hub.start()
    try:
        user = await hub.store.create_user("alice")
        key = keys.generate()
        await hub.store.create_key(
            user.id, "", keys.display_prefix(key), keys.hash_key(hub.secrets.pepper, key)
        )
        auth = {"Authorization": f"Bearer {key}"}
        beat = {
            "name": "rig",
            "callback_url": "http://127.0.0.1:9/v1",
            "services": [{"name": "s", "type": "tts", "engine": "openai", "models": ["voice"]}],
        }
        resp = await http_server_client.fetch(
            "/v1/agent/heartbeat", method="POST", headers=auth, body=json.dumps(beat)
        )
        assert json.loads(resp.body)["provider_id"] == 1
        resp = await http_server_client.fetch("/v1/models", headers=auth)
        assert [(m["id"], m["type"]) for m in json.loads(resp.body)["data"]] == [("voice", "tts")]
        resp = await http_server_client.fetch("/v1/nothing-here", headers=auth, raise_error=False)
        assert resp.code == 404 and json.loads(resp.body)["error"]["code"] == "unknown_url"
        resp = await http_server_client.fetch("/v1/models", raise_error=False)
        assert resp.code == 401
    finally:
        await hub.stop()
        await hub.store.close()
