"""Raw HTTP/1.1 on a socket, for tests that act as clients no library would be: slow,
leaving, pipelining."""

from __future__ import annotations

import json
import socket
import time


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
