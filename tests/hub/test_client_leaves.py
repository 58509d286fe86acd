"""A client that sends its whole request and leaves at once is recorded as cancelled (499), on
a real hub process."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.rawhttp import chat_request, serving_m1

pytestmark = pytest.mark.subprocess


def test_a_client_that_leaves_right_after_its_body_is_recorded_as_cancelled(
    tmp_path: Path,
) -> None:
    """Send a whole chat request and reset the connection at once: the hub must record the
    request as cancelled by its client, not as a 400 for an empty body (the dropped chunks)."""
    with serving_m1(tmp_path, "leaver") as served:
        hub, key, addr = served.hub, served.key, served.addr
        for _ in range(40):
            with socket.create_connection(addr) as s:
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                s.sendall(chat_request(key))
        rows = hub.wait_for_request_rows(40)
        statuses = [(r["status"], r["cancelled"]) for r in rows]
        assert len(rows) <= 40
        assert all(s == 200 or c for s, c in statuses), statuses
        assert "body is empty" not in hub.log()
