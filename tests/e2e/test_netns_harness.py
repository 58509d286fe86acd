"""tests/support/netns.py does what the tunnel tests rely on: from the hub's side nothing inside
the agent's namespace can be reached, while the agent's side reaches the hub."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.netns import NetNs, _subnet, agent_namespace, needs_netns

pytestmark = [pytest.mark.subprocess, needs_netns]


@pytest.fixture
def harness_ns() -> Iterator[NetNs]:
    with agent_namespace() as ns:
        yield ns


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def listener(host: str) -> socket.socket:
    sock = socket.create_server((host, 0))
    sock.settimeout(5)
    return sock


def test_the_hub_side_cannot_connect_into_the_namespace(harness_ns: NetNs) -> None:
    inside = harness_ns.inside(lambda: listener(harness_ns.agent_address))
    with inside, pytest.raises(OSError) as err:
        socket.create_connection(inside.getsockname(), timeout=1).close()
    assert isinstance(err.value, TimeoutError | ConnectionRefusedError), err.value


def test_the_agent_side_reaches_the_hub(harness_ns: NetNs) -> None:
    with listener(harness_ns.hub_address) as hub:
        host, port = hub.getsockname()
        # A process run inside, as the agent is, connects and is answered.
        code = (
            f"import socket; s = socket.create_connection(({host!r}, {port}), timeout=5); "
            "print(s.recv(5).decode())"
        )
        proc = harness_ns.popen(sys.executable, "-c", code)
        conn, _ = hub.accept()
        with conn:
            conn.sendall(b"hello")
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.strip() == "hello"


def test_the_namespace_and_its_link_are_removed() -> None:
    with agent_namespace() as ns:
        assert ns.name in ip("netns", "list")
    assert ns.name not in ip("netns", "list")
    assert f"{ns.host_link}@" not in ip("-o", "link")


def test_a_subnet_in_use_is_passed_over(harness_ns: NetNs) -> None:
    # What another process whose pid maps to the same /30 would be given now.
    n = int(harness_ns.name.rsplit("-", 1)[1])
    assert ipaddress.ip_address(harness_ns.hub_address) not in _subnet(n)
