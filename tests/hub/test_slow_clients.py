"""Clients that send their headers or body slower than the timeouts are disconnected (issue 9),
on a real hub process (the HTTP server's settings are the contract)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.hubproc import start_hub

pytestmark = pytest.mark.subprocess


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


def test_slow_headers_and_slow_bodies_are_cut(tmp_path: Path) -> None:
    env = {"INFERCLUB_HEADER_TIMEOUT": "1", "INFERCLUB_BODY_TIMEOUT": "1"}
    with start_hub(tmp_path, env=env) as hub:
        key = hub.user_with_key("slow")
        parts = urlsplit(hub.url)
        addr = (parts.hostname, parts.port)
        with socket.create_connection(addr) as slow_headers:
            slow_headers.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert closed_within(slow_headers, 15)
        with socket.create_connection(addr) as slow_body:
            slow_body.sendall(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n{{".encode()
            )
            started = time.monotonic()
            closed = False
            while not closed and time.monotonic() - started < 15:
                try:
                    slow_body.sendall(b" ")
                except OSError:
                    closed = True
                    break
                closed = closed_within(slow_body, 0.5)
            assert closed
        with socket.create_connection(addr) as idle:
            assert closed_within(idle, 15)
