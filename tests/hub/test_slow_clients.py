"""Clients that send their headers or body slower than the timeouts are disconnected (issue 9),
on a real hub process (the HTTP server's settings are the contract)."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from inferclub.hub.app import _Deadlines
from tests.support.hubapp import running_hub
from tests.support.hubproc import start_hub
from tests.support.rawhttp import closed_within, slow_body_is_cut

pytestmark = pytest.mark.subprocess


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
        with socket.create_connection(addr):
            pass  # closed by the client before its deadline
        time.sleep(1.5)
        # Only the slow client is logged: an idle connection is no attack, and a closed one
        # ended its deadline.
        assert hub.log().count("its request headers took longer than 1 s") == 1


def answer(sock: socket.socket, request: bytes) -> bytes:
    """One request on a kept-alive connection; its status line."""
    sock.sendall(request)
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the hub closed the connection; got {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))[15:]
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head.split(b"\r\n")[0]


def test_the_body_deadline_covers_every_route_and_ends_with_its_request(tmp_path: Path) -> None:
    """A slow body is cut on the browser routes and on a static file's route too, while a
    kept-alive connection whose bodies came in time outlives the body timeout."""
    with start_hub(tmp_path, env={"INFERCLUB_BODY_TIMEOUT": "1"}) as hub:
        key = hub.user_with_key("keeps")
        parts = urlsplit(hub.url)
        addr = (parts.hostname, parts.port)
        for path in ("/logout", "/favicon.ico"):
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
            assert slow_body_is_cut(addr, head), path
        body = b'{"model": "nobody-serves-this", "messages": []}'
        chat = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(addr) as kept:
            assert answer(kept, chat) == b"HTTP/1.1 404 Not Found"
            time.sleep(2.5)  # past the body timeout: the first request's deadline is gone
            assert answer(kept, chat) == b"HTTP/1.1 404 Not Found"
        assert "its request body took longer than 1 s" in hub.log()


def test_the_header_deadline_restarts_with_each_request(tmp_path: Path) -> None:
    """A kept-alive connection lives as long as its requests come within ``header_timeout`` of
    each other, and is closed once it sits idle for longer; a body is not held to it."""
    with start_hub(tmp_path, env={"INFERCLUB_HEADER_TIMEOUT": "2"}) as hub:
        key = hub.user_with_key("keeps")
        parts = urlsplit(hub.url)
        models = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
        with socket.create_connection((parts.hostname, parts.port)) as kept:
            for _ in range(4):  # 6 s in all, past the deadline of the connection's start
                assert answer(kept, models.encode()) == b"HTTP/1.1 200 OK"
                time.sleep(1.5)
            assert closed_within(kept, 10)
        # The headers' deadline ends with them: a body may take longer (up to body_timeout).
        body = b'{"model": "nobody-serves-this", "messages": []}'
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection((parts.hostname, parts.port)) as slow:
            slow.sendall(head)
            for piece in (body[:10], body[10:20]):
                time.sleep(1.5)
                slow.sendall(piece)
            assert answer(slow, body[20:]) == b"HTTP/1.1 404 Not Found"
        assert "its request headers took longer" not in hub.log()


async def test_a_connection_closed_after_its_answer_leaves_no_deadline_behind(
    tmp_path: Path,
) -> None:
    """Tornado begins one more request on a connection it closed after an answer
    (``Connection: close``, HTTP/1.0, a body refused with a 401): its header deadline must not
    outlive the connection, holding it for ``header_timeout`` (a minute by default)."""
    async with running_hub(tmp_path) as hub:
        parts = urlsplit(hub.url)
        body = b'{"model": "m1", "messages": []}'
        requests = [
            b"GET /v1/models HTTP/1.0\r\n\r\n",
            b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        ]
        for request in requests * 5:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(request)
            assert (await reader.read()).startswith(b"HTTP/1.1 ")  # answered, then closed
            writer.close()
        await asyncio.sleep(0.2)
        gc.collect()
        assert [o for o in gc.get_objects() if isinstance(o, _Deadlines)] == []
