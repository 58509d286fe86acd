"""Raw HTTP/1.1 on a socket, for tests that act as clients no library would be: slow,
leaving, pipelining."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubproc import HubProcess, start_hub


@dataclass
class Served:
    """A real hub with one user whose provider (a fake agent) serves ``m1``."""

    hub: HubProcess
    agent: FakeAgent
    key: str
    #: The hub's (host, port), for raw sockets.
    addr: tuple[str, int]


@contextlib.contextmanager
def serving_m1(workdir: Path, login: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    with FakeAgent(["m1"]) as agent, start_hub(workdir, env=env) as hub:
        key = hub.user_with_key(login)
        assert hub.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        parts = urlsplit(hub.url)
        assert parts.hostname is not None and parts.port is not None
        yield Served(hub, agent, key, (parts.hostname, parts.port))


def chat_request(key: str, stream: bool = False) -> bytes:
    """A whole chat request for model ``m1`` with ``key``, as bytes on the wire."""
    body = json.dumps(
        {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """The hub closed ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def slow_body_is_cut(addr: tuple[str | None, int | None], head: bytes, step: bytes = b" ") -> bool:
    """Send ``head`` (headers announcing a body) and then ``step`` every 0.5 s: the hub
    closes the connection within 15 s."""
    with socket.create_connection(addr) as sock:  # type: ignore[arg-type]
        sock.sendall(head)
        started = time.monotonic()
        while time.monotonic() - started < 15:
            try:
                sock.sendall(step)
            except OSError:
                return True
            if closed_within(sock, 0.5):
                return True
    return False
