"""The fake hub shipped to plugin authors refuses what the real hub refuses."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from inferclub import wire
from inferclub.testing.hub import KEY, FakeHub


def post_beat(hub: FakeHub, beat: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        hub.root.rstrip("/") + wire.HEARTBEAT_PATH,
        data=json.dumps(beat).encode(),
        headers={wire.AUTH_HEADER: wire.bearer(KEY), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_heartbeat_the_hub_would_refuse_is_refused_by_the_fake_too() -> None:
    good = wire.Heartbeat(
        "rig",
        "http://127.0.0.1:9/v1",
        services=(wire.AdvertisedService("chat", "llm", "vllm", (), ("m1",)),),
    ).to_json()
    with FakeHub() as hub:
        status, reply = post_beat(hub, good)
        assert status == 200
        assert wire.HeartbeatReply.parse(reply).hub_key == hub.signer.public_key
        bad = {**good, "services": [{**good["services"][0], "type": "video"}]}
        status, body = post_beat(hub, bad)
        assert status == 400
        assert body["error"]["code"] == "invalid_heartbeat"
        assert body["error"]["param"] == "services[0].type"
        assert len(hub.beats) == 1, "the refused heartbeat was not recorded"
