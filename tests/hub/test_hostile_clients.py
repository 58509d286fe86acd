"""Hostile clients against a real hub process: disconnects at every stage of a request, racing
disconnects, slow bodies on every kind of route, pipelined and long kept-alive connections, and
a SIGTERM drain with requests in flight. The upstream is cancelled at once, the hub keeps
serving, and its log has no traceback."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.hubproc import start_hub
from tests.support.rawhttp import chat_request, closed_within, serving_m1, slow_body_is_cut

pytestmark = pytest.mark.subprocess


def test_disconnects_at_every_stage(tmp_path: Path) -> None:
    with serving_m1(tmp_path, "hostile", {"INFERCLUB_BODY_TIMEOUT": "3"}) as served:
        hub, agent, key, addr = served.hub, served.agent, served.key, served.addr
        req = chat_request(key)
        # 1. before the body is complete
        with socket.create_connection(addr) as s:
            s.sendall(req[:-5])
            time.sleep(0.3)
        # 2. while the hub waits for the agent's headers
        agent.hold()
        with socket.create_connection(addr) as s:
            s.sendall(req)
            deadline = time.monotonic() + 5
            while not agent.posts("/v1/chat/completions") and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
            closed_at = time.monotonic()
        waited = agent.seconds_until_disconnect(closed_at)
        agent.release()
        assert waited is not None and waited < 1, waited
        # 3. mid-stream
        agent.stall_after = 2
        agent.disconnects.clear()
        with socket.create_connection(addr) as s:
            s.sendall(chat_request(key, stream=True))
            s.settimeout(5)
            got = b""
            while got.count(b"data:") < 2:
                got += s.recv(65536)
            closed_at = time.monotonic()
        waited = agent.seconds_until_disconnect(closed_at)
        assert waited is not None and waited < 1, waited
        agent.stall_after = None
        # 4. right after/around the answer: many racing closes
        for i in range(60):
            with socket.create_connection(addr) as s:
                s.sendall(req)
                if i % 3 == 1:
                    time.sleep(0.001 * (i % 10))
                elif i % 3 == 2:
                    s.settimeout(5)
                    s.recv(10)
        # still serving
        status, body = hub.post_json(
            "/v1/chat/completions",
            {"model": "m1", "messages": [{"role": "user", "content": "x"}]},
            key,
        )
        assert status == 200, body
        time.sleep(1.5)
        rows = hub.wait_for_request_rows(64)
        log = hub.log()
        assert "Traceback" not in log
        assert "CancelledError" not in log
        assert "Task was destroyed" not in log
        cancelled = [r for r in rows if r["cancelled"]]
        assert len(cancelled) >= 2


def test_slow_bodies_everywhere(tmp_path: Path) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_BODY_TIMEOUT": "1"}) as hub:
        key = hub.user_with_key("slow")
        parts = urlsplit(hub.url)
        addr = (parts.hostname, parts.port)
        results = {}
        for path in ("/v1/agent/heartbeat", "/nope/at/all", "/static/x.css", "/v1/models", "/"):
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Content-Length: 1000\r\n\r\n"
            ).encode()
            results[path] = slow_body_is_cut(addr, head)
        chunked = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        results["chunked"] = slow_body_is_cut(addr, chunked, b"1\r\n \r\n")
        expect = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        with socket.create_connection(addr) as s:
            s.sendall(expect)
            results["expect-silent"] = closed_within(s, 6)
        assert all(results.values()), results
        # pipelined: two chats on one send, both answered
        body = b'{"model": "nobody", "messages": []}'
        one = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(addr) as s:
            s.sendall(one * 3)
            s.settimeout(5)
            got = b""
            deadline = time.monotonic() + 5
            while got.count(b"HTTP/1.1 404") < 3 and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            assert got.count(b"HTTP/1.1 404") == 3, got
            # kept alive, many bodies over 4 s (> body timeout)
            for _ in range(8):
                time.sleep(0.5)
                s.sendall(one)
                got = b""
                while b"HTTP/1.1 404" not in got or not got.endswith(b"}"):
                    chunk = s.recv(65536)
                    assert chunk, "closed"
                    got += chunk
        # too large
        with socket.create_connection(addr) as s:
            s.sendall(
                (
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {key}\r\nContent-Length: 99999999999\r\n\r\n"
                ).encode()
            )
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 413"), "refused from its Content-Length"
            assert closed_within(s, 5)
        log = hub.log()
        assert "Traceback" not in log, log[-3000:]


def test_sigterm_drain_cut_with_requests_in_flight(tmp_path: Path) -> None:
    with serving_m1(tmp_path, "drain", {"INFERCLUB_DRAIN_TIMEOUT": "1"}) as served:
        hub, agent, key, addr = served.hub, served.agent, served.key, served.addr
        agent.stall_after = 2
        stream = socket.create_connection(addr)
        stream.sendall(chat_request(key, stream=True))
        stream.settimeout(5)
        got = b""
        while got.count(b"data:") < 2:
            got += stream.recv(65536)
        agent.hold()
        held = socket.create_connection(addr)
        held.sendall(chat_request(key))
        time.sleep(0.5)
        code: list[int] = []
        t = threading.Thread(target=lambda: code.append(hub.stop(signal.SIGTERM)))
        t.start()
        held.settimeout(10)
        answer = b""
        try:
            while True:
                c = held.recv(65536)
                if not c:
                    break
                answer += c
        except OSError:
            pass
        rest = b""
        try:
            while True:
                c = stream.recv(65536)
                if not c:
                    break
                rest += c
        except OSError:
            pass
        t.join(30)
        stream.close()
        held.close()
        agent.release()
        log = hub.log()
        rows = hub.query("SELECT status, error_code, cancelled FROM requests")
        assert code == [0]
        # Both cut at the drain deadline, recorded as such (not as clients that left).
        assert sorted(tuple(r) for r in rows) == [(503, "server_shutting_down", 0)] * 2, rows
        assert b"503" in answer.split(b"\r\n")[0], answer
        assert b"server" in rest or b"shutting down" in rest, rest
        assert "Traceback" not in log and "CancelledError" not in log
        assert "Task was destroyed" not in log


def test_racing_disconnects_stress(tmp_path: Path) -> None:
    with serving_m1(tmp_path, "racer") as served:
        hub, agent, key, addr = served.hub, served.agent, served.key, served.addr
        agent.chunks = 5
        reqs = [chat_request(key), chat_request(key, stream=True)]
        n = 0

        def worker(seed: int) -> None:
            nonlocal n
            rnd = random.Random(seed)
            for _ in range(60):
                with socket.create_connection(addr) as s:
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    s.sendall(rnd.choice(reqs))
                    mode = rnd.randrange(4)
                    if mode == 1:
                        time.sleep(rnd.random() * 0.01)
                    elif mode == 2:
                        s.settimeout(5)
                        with contextlib.suppress(OSError):
                            s.recv(rnd.randrange(1, 400))
                    elif mode == 3:
                        s.settimeout(5)
                        try:
                            s.recv(65536)
                            time.sleep(rnd.random() * 0.003)
                        except OSError:
                            pass
                n += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        status, body = hub.post_json("/v1/chat/completions", {"model": "m1", "messages": []}, key)
        assert status == 200, body
        time.sleep(1.5)
        log = hub.log()
        bad = [
            ln
            for ln in log.splitlines()
            if "aiosqlite" not in ln
            and any(
                w in ln
                for w in ("Traceback", "CancelledError", "destroyed", "ERROR", "Exception in")
            )
        ]
        rows = hub.query("SELECT status, cancelled, error_code FROM requests")
        assert not bad
        # A client that left after its body was sent is cancelled, never a 400 "empty body".
        assert not [tuple(r) for r in rows if r["status"] == 400], rows
        assert hub.stop() == 0


def test_a_stream_longer_than_the_body_timeout_is_not_cut(tmp_path: Path) -> None:
    with serving_m1(tmp_path, "long", {"INFERCLUB_BODY_TIMEOUT": "1"}) as served:
        hub, agent, key = served.hub, served.agent, served.key
        agent.chunks, agent.chunk_delay = 10, 0.3
        with socket.create_connection(served.addr) as s:
            s.settimeout(10)
            for _ in range(2):
                s.sendall(chat_request(key, stream=True))
                got = b""
                while not got.endswith(b"0\r\n\r\n"):
                    chunk = s.recv(65536)
                    assert chunk, got
                    got += chunk
                assert b"[DONE]" in got and b"tok9" in got, got
        assert "took longer than" not in hub.log()
