"""The callback address policy: which callback URLs a heartbeat may name, and which addresses
the hub connects to (checked again at connect time, so DNS rebinding gets nowhere)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferclub.hub.callback_policy import (
    AddrInfo,
    CallbackNetworksError,
    CallbackRefused,
    check_callback_url,
    judge,
    parse_networks,
    policy_connector,
    policy_for,
)
from inferclub.hub.reachability import describe_reachability, reachability_kind

DOC = (Path(__file__).resolve().parents[2] / "docs" / "callback-networks.md").read_text()
HOME = parse_networks("public, private, loopback")
PUBLIC = parse_networks("public")
LOOPBACK = parse_networks("loopback")
EVERYTHING = parse_networks("0.0.0.0/0, ::/0")


async def refused(url: str, policy: Any, **kwargs: Any) -> CallbackRefused:
    with pytest.raises(CallbackRefused) as info:
        await check_callback_url(url, policy, **kwargs)
    assert info.value.param == "callback_url"
    return info.value


# -- the setting ---------------------------------------------------------------------------


def test_words_and_cidrs() -> None:
    policy = parse_networks(" Public ,100.64.0.0/10, 10.1.2.3,fd00::/8 ,")
    assert policy.words == {"public"}
    assert [str(n) for n in policy.networks] == ["100.64.0.0/10", "10.1.2.3/32", "fd00::/8"]


@pytest.mark.parametrize("item", ["publik", "10.0.0.0/33", "lan", "192.168.1.300", "::/129"])
def test_a_bad_item_is_named_with_the_setting(item: str) -> None:
    with pytest.raises(CallbackNetworksError) as info:
        parse_networks(f"public, {item}")
    message = str(info.value)
    assert repr(item) in message
    assert "callback_networks" in message and "INFERCLUB_CALLBACK_NETWORKS" in message


def test_an_empty_list_is_an_error() -> None:
    with pytest.raises(CallbackNetworksError):
        parse_networks(" , ")


def test_defaults_follow_public_url() -> None:
    assert policy_for("", "").words == {"public", "private", "loopback"}
    assert policy_for("http://192.168.1.5:8321", "").words == {"public", "private", "loopback"}
    assert policy_for("https://hub.example.org", "").words == {"public"}
    assert policy_for("HTTPS://hub.example.org", "  ").words == {"public"}
    explicit = policy_for("https://hub.example.org", "public, 100.64.0.0/10")
    assert explicit.words == {"public"} and len(explicit.networks) == 1


# -- the URL's shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://8.8.8.8/v1",
        "file:///etc/passwd",
        "8.8.8.8:8000/v1",
        "http://user:secret@8.8.8.8/v1",
        "http://user@8.8.8.8/v1",
        "http://8.8.8.8/v1?x=/admin",
        "http://8.8.8.8/v1?",
        "http://8.8.8.8/v1#frag",
        "http://8.8.8.8:99999/v1",
        "http://8.8.8.8:0/v1",
        "http://8.8.8.8:http/v1",
        "http:///v1",
        "http://8.8.8.8/v1\r\nX-Evil: 1",
        "http://8.8.8.8\t/v1",
        "http://127.0.0.1\\@8.8.8.8/v1",
        "http://[fe80::1%25lo]:8000/v1",
        "http://%31%32%37.0.0.1:8000/v1",
        "http://ex%61mple.com/v1",
        "http://8.8.8.8/" + "a" * 3000,
    ],
)
async def test_bad_shapes_are_refused_before_any_lookup(url: str) -> None:
    async def no_dns(*args: Any, **kwargs: Any) -> Sequence[AddrInfo]:
        raise AssertionError("looked up a malformed URL")

    exc = await refused(url, EVERYTHING, getaddrinfo=no_dns)
    assert exc.code == "invalid_callback_url"
    assert exc.message.startswith("callback_url ")


# -- addresses ---------------------------------------------------------------------------------


LOOPBACK_SPELLINGS = [
    ("http://127.0.0.1:8000/v1", "127.0.0.1"),
    ("http://127.9.8.7/v1", "127.9.8.7"),
    ("http://0x7f.1:8000/v1", "127.0.0.1"),
    ("http://127.1/v1", "127.0.0.1"),
    ("http://2130706433/v1", "127.0.0.1"),
    ("http://0177.0.0.1/v1", "127.0.0.1"),
    ("http://[::1]:8000/v1", "::1"),
    ("http://[::ffff:127.0.0.1]:8000/v1", "127.0.0.1"),
    ("http://[::ffff:7f00:1]/v1", "127.0.0.1"),
    ("http://[::127.0.0.1]/v1", "127.0.0.1"),
    ("http://[64:ff9b::7f00:1]/v1", "127.0.0.1"),
    ("http://[2002:7f00:1::1]/v1", "127.0.0.1"),
    ("http://localhost:8000/v1", "127.0.0.1"),
    ("http://localhost.:8000/v1", "127.0.0.1"),
    ("http://LocalHost../v1", "127.0.0.1"),
    ("http://agent.localhost/v1", "127.0.0.1"),
]


@pytest.mark.parametrize(("url", "address"), LOOPBACK_SPELLINGS)
async def test_loopback_in_any_spelling_is_refused_under_public(url: str, address: str) -> None:
    exc = await refused(url, parse_networks("public, private"))
    assert exc.code == "callback_address_refused"
    assert address in exc.message and "loopback" in exc.message
    assert "callback_networks" in exc.message and "INFERCLUB_CALLBACK_NETWORKS" in exc.message
    assert url in exc.message


async def test_the_documented_refusal_is_what_a_user_gets() -> None:
    documented = json.loads(re.findall(r"```json\n(.*?)\n```", DOC, re.S)[0])["error"]
    exc = await refused("http://0x7f.1:8000/v1", PUBLIC)
    assert (exc.message, exc.param, exc.code) == (
        documented["message"],
        documented["param"],
        documented["code"],
    )


@pytest.mark.parametrize(("url", "address"), LOOPBACK_SPELLINGS)
async def test_loopback_in_any_spelling_is_admitted_by_loopback(url: str, address: str) -> None:
    checked = await check_callback_url(url, LOOPBACK)
    assert {j.category for j in checked.judgements} == {"loopback"}


NEVER_BY_WORD = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.1.1/",
    "http://[fe80::1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://168.63.129.16/",
    "http://0.0.0.0:8000/",
    "http://0:8000/",
    "http://[::]:8000/",
    "http://[::ffff:0.0.0.0]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://192.0.2.10/",
    "http://198.18.0.1/",
    "http://[2001:db8::1]/",
    "http://[fec0::1]/",
]


@pytest.mark.parametrize("url", NEVER_BY_WORD)
async def test_link_local_metadata_multicast_reserved_are_refused_by_every_word(url: str) -> None:
    exc = await refused(url, HOME)
    assert exc.code == "callback_address_refused"
    assert exc.address is not None and exc.address in exc.message


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("169.254.0.0/16", "http://169.254.169.254/"),
        ("fe80::/10", "http://[fe80::1]/"),
        ("127.0.0.0/8", "http://[::ffff:127.0.0.1]/"),
        ("192.0.2.0/24", "http://192.0.2.10/"),
        ("100.64.0.0/10", "http://100.101.102.103:8000/v1"),
        ("public, 192.168.0.0/16", "http://192.168.5.173:8002/v1"),
    ],
)
async def test_a_listed_cidr_admits_what_it_covers(setting: str, url: str) -> None:
    await check_callback_url(url, parse_networks(setting))


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/", "http://169.254.169.254/", "http://172.16.0.1/", "http://[::1]/"]
)
async def test_a_listed_cidr_admits_nothing_else(url: str) -> None:
    await refused(url, parse_networks("public, 192.168.0.0/16"))


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/v1",
        "http://172.31.255.1/v1",
        "http://192.168.5.173:8002/v1",
        "http://100.64.0.1/v1",
        "http://[fd12:3456::1]/v1",
    ],
)
async def test_private_admits_rfc1918_cgnat_and_unique_local(url: str) -> None:
    await check_callback_url(url, parse_networks("private"))
    exc = await refused(url, PUBLIC)
    assert "private" in exc.message


@pytest.mark.parametrize(
    "url",
    ["https://8.8.8.8/v1", "http://[2606:4700::1111]:8000/v1", "http://[::ffff:8.8.8.8]/v1"],
)
async def test_public_admits_global_addresses(url: str) -> None:
    checked = await check_callback_url(url, PUBLIC)
    assert {j.category for j in checked.judgements} == {"public"}
    await refused(url, parse_networks("private, loopback"))


# -- name resolution -------------------------------------------------------------------------


def answers(*addresses: str, port: int = 80) -> list[AddrInfo]:
    return [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
        if ":" in a
        else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
        for a in addresses
    ]


@dataclass
class FakeDNS:
    """A DNS that gives each lookup of a name the next answer in its list (the last repeats)."""

    names: dict[str, list[list[str]]]
    #: Names whose lookup never returns.
    hang: frozenset[str] = frozenset()
    lookups: list[str] = field(default_factory=list)

    async def __call__(
        self,
        host: str,
        port: int,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> Sequence[AddrInfo]:
        self.lookups.append(host)
        if host in self.hang:
            await asyncio.Event().wait()
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        queue = self.names[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return answers(*addresses, port=port)


async def test_every_answer_is_checked() -> None:
    dns = FakeDNS({"agent.example": [["93.184.215.14", "2606:2800::1", "10.0.0.7"]]})
    exc = await refused("http://agent.example:8000/v1", PUBLIC, getaddrinfo=dns)
    assert "10.0.0.7" in exc.message and "agent.example" in exc.message
    checked = await check_callback_url("http://agent.example:8000/v1", HOME, getaddrinfo=dns)
    assert len(checked.judgements) == 3


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    exc = await refused("http://nowhere.example/v1", HOME, getaddrinfo=FakeDNS({}))
    assert exc.code == "callback_unresolvable" and "nowhere.example" in exc.message


async def test_a_lookup_that_hangs_is_refused() -> None:
    dns = FakeDNS({}, hang=frozenset({"slow.example"}))
    exc = await refused("http://slow.example/v1", HOME, getaddrinfo=dns, timeout=0.05)
    assert exc.code == "callback_unresolvable"


# -- connecting --------------------------------------------------------------------------------


@dataclass
class TinyServer:
    """An HTTP server on 127.0.0.1 that counts connections and keeps each request's head."""

    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    reply: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    #: Speak first, like an SSH server (and unlike anything a TLS client expects).
    eager: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if not self.eager:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(self.reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def tiny_server(reply: bytes | None = None, eager: bool = False) -> AsyncIterator[TinyServer]:
    state = TinyServer(eager=eager) if reply is None else TinyServer(reply=reply, eager=eager)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def session(
    policy: Any, dns: FakeDNS | None = None, resolve_timeout: float = 5.0
) -> AsyncIterator[aiohttp.ClientSession]:
    connector = policy_connector(policy, getaddrinfo=dns, resolve_timeout=resolve_timeout)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        yield s


async def fetch(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url, allow_redirects=False) as resp:
        resp.raise_for_status()
        return await resp.text()


async def test_admitted_loopback_is_reached_by_name() -> None:
    async with tiny_server() as srv, session(LOOPBACK) as s:
        assert await fetch(s, f"http://localhost.:{srv.port}/v1/models") == "ok"
        assert await fetch(s, f"http://127.0.0.1:{srv.port}/v1/models") == "ok"
    assert srv.connections == 2


@pytest.mark.parametrize(
    "spelling", ["127.0.0.1", "localhost", "localhost.", "0x7f.1", "[::ffff:127.0.0.1]", "[::1]"]
)
async def test_refused_loopback_is_never_connected_to(spelling: str) -> None:
    async with tiny_server() as srv, session(PUBLIC) as s:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await fetch(s, f"http://{spelling}:{srv.port}/v1/models")
    assert reachability_kind(info.value) == "policy"
    assert srv.connections == 0


async def test_aiohttp_itself_refuses_legacy_numeric_literals() -> None:
    # aiohttp refuses these itself; judge() reads them as inet_aton does in case it did not.
    assert judge("127.1").category == judge("2130706433").category == "loopback"
    async with tiny_server() as srv, session(LOOPBACK) as s:
        for spelling in ("127.1", "2130706433"):
            with pytest.raises(aiohttp.InvalidUrlClientError):
                await fetch(s, f"http://{spelling}:{srv.port}/v1/models")
    assert srv.connections == 0


async def test_the_connection_goes_to_the_checked_address_with_the_name_as_host() -> None:
    async with tiny_server() as srv:
        dns = FakeDNS({"agent.test": [["127.0.0.1"]]})
        async with session(LOOPBACK, dns) as s:
            assert await fetch(s, f"http://agent.test:{srv.port}/v1/models") == "ok"
    assert srv.connections == 1
    assert f"\r\nHost: agent.test:{srv.port}\r\n".encode() in srv.heads[0]


async def test_dns_rebinding_after_the_check_reaches_nothing() -> None:
    """The name is public when the heartbeat is checked and loopback when the hub connects."""
    async with tiny_server() as srv:
        dns = FakeDNS({"rebind.test": [["93.184.215.14"], ["127.0.0.1"]]})
        url = f"http://rebind.test:{srv.port}/v1"
        await check_callback_url(url, PUBLIC, getaddrinfo=dns)
        async with session(PUBLIC, dns) as s:
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                await fetch(s, url + "/models")
    assert reachability_kind(info.value) == "policy"
    assert dns.lookups == ["rebind.test", "rebind.test"]
    assert srv.connections == 0


# -- what a failed probe reports -----------------------------------------------------------


async def kind_of(url: str, policy: Any = LOOPBACK, dns: FakeDNS | None = None) -> str:
    async with session(policy, dns, resolve_timeout=0.05) as s:
        try:
            await fetch(s, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return reachability_kind(exc)
    return "ok"


async def test_a_banner_is_reported_as_not_http_without_its_bytes() -> None:
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
    async with tiny_server(reply=banner, eager=True) as srv:
        kind = await kind_of(f"http://127.0.0.1:{srv.port}/v1/models")
    assert kind == "not_http"
    assert "SSH" not in kind and "SSH" not in describe_reachability(kind)


async def test_kinds_of_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    assert await kind_of(f"http://127.0.0.1:{closed_port}/") == "refused"
    assert await kind_of("http://nowhere.test/", dns=FakeDNS({})) == "dns"
    assert (
        await kind_of("http://slow.test/", dns=FakeDNS({}, hang=frozenset({"slow.test"}))) == "dns"
    )
    assert await kind_of("http://127.0.0.1:9/", policy=PUBLIC) == "policy"
    async with tiny_server(eager=True) as srv:
        assert await kind_of(f"https://127.0.0.1:{srv.port}/") == "tls"
    async with tiny_server(reply=b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") as srv:
        assert await kind_of(f"http://127.0.0.1:{srv.port}/") == "http_404"
    assert reachability_kind(TimeoutError()) == "timeout"
    assert reachability_kind(ConnectionResetError(104, "reset")) == "unreachable"
    assert reachability_kind(503) == "http_503"
    assert describe_reachability("http_503") == "the agent answered with HTTP 503"
