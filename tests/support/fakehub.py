"""A tiny stand-in for the hub's agent protocol: `POST /v1/agent/heartbeat`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.support.fakes.base import FakeHandler, FakeServer

KEY = "hub_TestKey0123456789abcdefghijkl"
CALLBACK_TOKEN = "cbt_0123456789abcdefghijklmnopqrstuv"


class FakeHub(FakeServer):
    def __init__(self, key: str = KEY, token: str = CALLBACK_TOKEN) -> None:
        super().__init__()
        self.key = key
        self.token = token
        self.interval = 30
        self.window = 60
        #: Heartbeat payloads accepted, with their arrival time.
        self.beats: list[tuple[float, dict[str, Any]]] = []
        #: Answer this many heartbeats with a 503 before accepting again.
        self.fail_next = 0

    def routes(self) -> list[Any]:
        return [(r"/v1/agent/heartbeat", HeartbeatHandler, {"fake": self})]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10, after: int = 0
    ) -> dict[str, Any]:
        """The first accepted beat (from index `after`) matching `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, beat in self.beats[after:]:
                if predicate(beat):
                    return beat
            time.sleep(0.02)
        raise AssertionError(f"no matching heartbeat within {timeout}s; got {self.beats[after:]}")

    def last(self) -> dict[str, Any]:
        return self.beats[-1][1] if self.beats else self.wait_for(lambda b: True)


def advertised(beat: dict[str, Any]) -> dict[str, list[str]]:
    return {s["name"]: s["models"] for s in beat["services"]}


class HeartbeatHandler(FakeHandler):
    fake: FakeHub

    def post(self) -> None:
        hub = self.fake
        if self.request.headers.get("Authorization") != f"Bearer {hub.key}":
            self.send_json(
                {
                    "error": {
                        "message": "invalid API key",
                        "type": "authentication_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                401,
            )
            return
        if hub.fail_next > 0:
            hub.fail_next -= 1
            self.send_json(
                {
                    "error": {
                        "message": "hub is busy",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                503,
            )
            return
        body = self.json_body()
        for field, kind in (
            ("name", str),
            ("callback_url", str),
            ("version", str),
            ("services", list),
            ("health", dict),
        ):
            if not isinstance(body.get(field), kind):
                self.send_json(
                    {
                        "error": {
                            "message": f"bad field {field}",
                            "type": "invalid_request_error",
                            "param": field,
                            "code": None,
                        }
                    },
                    400,
                )
                return
        hub.beats.append((time.monotonic(), body))
        self.send_json(
            {
                "provider_id": 7,
                "heartbeat_interval": hub.interval,
                "online_window": hub.window,
                "callback_token": hub.token,
            }
        )
