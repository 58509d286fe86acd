"""A network namespace for an agent behind "NAT": it can reach the hub, the hub cannot reach it.

`agent_namespace()` creates a namespace and a veth pair to the root namespace, addressed from a
private /30 (`hub_address` on the root side, `agent_address` inside). Inside, an nftables rule
drops every NEW inbound connection that does not come from `lo`; conntrack still lets the
agent's own outbound connections (and their answers) through, as a home router's NAT does.

Processes go inside with `ip netns exec` (`NetNs.exec_prefix`); in-process servers (the fake
engines) bind inside with `NetNs.inside`, which runs a function on a thread that joined the
namespace, so the sockets it opens (and the threads it starts) live there.

Everything is removed on exit, also when the test fails. Names and addresses come from the
process id and a counter, so pytest-xdist workers never collide; a namespace left behind by a
killed process (its pid gone) is removed the next time one is created.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import pytest

T = TypeVar("T")

PREFIX = "icnet"
#: Each namespace gets one /30 of this block: 16384 of them.
BLOCK = ipaddress.ip_network("10.213.0.0/16")
CLONE_NEWNET = 0x40000000
#: The agent side's firewall: new connections only from the namespace itself.
NFT_RULES = """
table inet natlike {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "lo" accept
    ct state established,related accept
    ct state new drop
  }
}
"""
_counter = itertools.count()


def missing_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"no `{tool}` (make netns installs nftables)"
    return None


#: Put on tests that need a namespace: they skip, with the reason, where none can be made.
needs_netns = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@dataclass(frozen=True)
class NetNs:
    name: str
    hub_address: str
    agent_address: str
    #: The root namespace's end of the veth pair.
    host_link: str

    @property
    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return _run(*self.exec_prefix, *argv)

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.exec_prefix, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def inside(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread inside the namespace (threads it starts stay there)."""
        result: list[T] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                _join(self.name)
                result.append(fn())
            except BaseException as err:  # re-raised on the caller's thread
                errors.append(err)

        thread = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(30)
        if errors:
            raise errors[0]
        if not result:
            raise RuntimeError(f"{fn!r} did not finish inside {self.name} within 30 s")
        return result[0]


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


def _join(name: str) -> None:
    """This thread into namespace ``name`` (setns(2); the os module has it from 3.12 only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _subnet(n: int) -> ipaddress.IPv4Network:
    """A /30 from the pid and ``n``, moved on past any already on an interface (two pids
    that map to one /30 must not both use it while they run)."""
    taken = _run("ip", "-o", "-4", "addr", "show").stdout
    count = BLOCK.num_addresses // 4
    index = (os.getpid() * 8 + n) % count
    while True:
        net = ipaddress.ip_network(f"{BLOCK.network_address + index * 4}/30")
        if f" {net.network_address + 1}/" not in taken:
            return net
        index = (index + 1) % count


def _remove_orphans() -> None:
    """Namespaces of ours whose process is gone (killed before its cleanup ran)."""
    for line in _run("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        ours = len(parts) == 3 and parts[0] == PREFIX and parts[1].isdigit()
        if ours and not os.path.exists(f"/proc/{parts[1]}"):
            _run("ip", "netns", "del", name, check=False)


@contextmanager
def agent_namespace() -> Iterator[NetNs]:
    """A fresh namespace with its veth pair and firewall; removed on exit."""
    _remove_orphans()
    n = next(_counter)
    name = f"{PREFIX}-{os.getpid()}-{n}"
    # Interface names are at most 15 bytes.
    host_if, peer_if = f"ich{os.getpid()}x{n}"[-15:], f"ica{os.getpid()}x{n}"[-15:]
    net = _subnet(n)
    hub_ip, agent_ip = (str(a) for a in net.hosts())
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _run("ip", "link", "set", peer_if, "netns", name)
        _run("ip", "addr", "add", f"{hub_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", name, "addr", "add", f"{agent_ip}/30", "dev", peer_if)
        _run("ip", "-n", name, "link", "set", peer_if, "up")
        _run("ip", "-n", name, "link", "set", "lo", "up")
        ns = NetNs(name, hub_ip, agent_ip, host_if)
        _load_rules(ns)
        yield ns
    finally:
        # Deleting the namespace deletes its end of the pair, and with it the other end.
        _run("ip", "netns", "del", name, check=False)
        _run("ip", "link", "del", host_if, check=False)


def _load_rules(ns: NetNs) -> None:
    result = subprocess.run(
        [*ns.exec_prefix, "nft", "-f", "-"],
        input=NFT_RULES,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"nft in {ns.name} failed: {result.stderr}")
