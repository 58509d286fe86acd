"""Which addresses the hub may call back: the ``callback_networks`` policy.

A heartbeat names the URL where the hub reaches the agent. On a public hub that URL comes from
a stranger, so it is checked twice: when the heartbeat arrives (:func:`check_callback_url`,
a 400 naming the resolved address) and again on every connection (:func:`policy_connector`),
because a name can resolve to a public address at the first check and to ``127.0.0.1`` a
second later (DNS rebinding). The connection then goes to the address that was checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from inferclub.hub.config import ConfigError

SETTING = "callback_networks"
ENV_VAR = "INFERCLUB_CALLBACK_NETWORKS"
WORDS = ("public", "private", "loopback")
LOCAL_DEFAULT = "public, private, loopback"
PUBLIC_DEFAULT = "public"
#: Seconds a name may take to resolve, at registration and before each connection.
RESOLVE_TIMEOUT = 5.0
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# First match wins. Cloud metadata endpoints come first so the refusal says what they are,
# and so fd00:ec2::254 (AWS) and 100.100.100.200 (Alibaba) are not admitted by `private`.
_TABLE: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = tuple(
    (name, tuple(ipaddress.ip_network(c) for c in cidrs.split()))
    for name, cidrs in (
        # 0.0.0.0 reaches the local host on Linux, so the whole "this network" block is out.
        ("unspecified", "0.0.0.0/8 ::/128"),
        ("loopback", "127.0.0.0/8 ::1/128"),
        ("metadata", "169.254.169.254/32 100.100.100.200/32 168.63.129.16/32 fd00:ec2::254/128"),
        ("link-local", "169.254.0.0/16 fe80::/10"),
        ("multicast", "224.0.0.0/4 ff00::/8"),
        ("private", "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 100.64.0.0/10 fc00::/7"),
        # IANA special-purpose blocks (documentation, benchmarking, future use ...).
        (
            "reserved",
            "192.0.0.0/24 192.0.2.0/24 192.88.99.0/24 198.18.0.0/15 198.51.100.0/24 "
            "203.0.113.0/24 240.0.0.0/4 fec0::/10 100::/64 2001::/23 2001:db8::/32 3fff::/20",
        ),
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = ipaddress.ip_network("::/96")
#: ``::`` and ``::1`` sit inside ``::/96`` but are IPv6's own unspecified and loopback.
_V6_OWN = ipaddress.ip_network("::/127")


class CallbackNetworksError(ConfigError):
    """The ``callback_networks`` setting has an item that is neither a CIDR nor a known word."""


class CallbackRefused(OSError):
    """A callback URL or address the hub will not call.

    An ``OSError`` so that, raised inside aiohttp's resolver or socket factory, it travels out
    as the cause of aiohttp's connection error (see :mod:`inferclub.hub.reachability`). For the
    heartbeat handler it maps to a 400 with ``param`` = :attr:`param` and ``code`` = :attr:`code`.
    """

    param = "callback_url"

    def __init__(self, message: str, code: str, address: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: ``invalid_callback_url``, ``callback_unresolvable`` or ``callback_address_refused``.
        self.code = code
        #: The resolved address that was refused, if the refusal is about one.
        self.address = address

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Judgement:
    """What one resolved address is, judged by the IPv4 address it embeds, if any."""

    address: IPAddress
    category: str
    embedded: ipaddress.IPv4Address | None = None

    def describe(self) -> str:
        inner = f", IPv4 {self.embedded}" if self.embedded is not None else ""
        return f"{self.address} ({self.category}{inner})"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 spelling carries: mapped, compatible, NAT64 or 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _V4_COMPAT or ip in _NAT64:
        return ipaddress.IPv4Address(ip.packed[12:])
    return ip.sixtofour


def _category(ip: IPAddress) -> str:
    for name, networks in _TABLE:
        if any(ip.version == net.version and ip in net for net in networks):
            return name
    if ip.version == 6 and ip not in _GLOBAL_UNICAST_V6:
        return "reserved"
    # The explicit table above keeps the answer stable across Python versions; is_global
    # catches special-purpose blocks it does not list.
    return "public" if ip.is_global else "reserved"


def _parse(address: str) -> IPAddress:
    text = address.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        # inet_aton's legacy spellings (127.1, 0x7f.1, 2130706433) name an address too, and
        # the socket layer would connect to it; an unknown spelling raises OSError.
        return ipaddress.IPv4Address(socket.inet_aton(text))


def judge(address: str | IPAddress) -> Judgement:
    """Classify an address: loopback, private, public, link-local, metadata, multicast,
    unspecified or reserved. ``::ffff:127.0.0.1`` is loopback like ``127.0.0.1``."""
    ip = _parse(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _V6_OWN:
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return Judgement(ip, _category(inner), inner)
    return Judgement(ip, _category(ip))


@dataclass(frozen=True)
class CallbackPolicy:
    """The networks the hub may call back, from the ``callback_networks`` setting."""

    words: frozenset[str]
    networks: tuple[IPNetwork, ...]
    #: The setting as it reads, for messages.
    text: str

    def admits(self, verdict: Judgement) -> bool:
        if verdict.category in self.words:
            return True
        candidates = (
            [verdict.address] if verdict.embedded is None else [verdict.address, verdict.embedded]
        )
        return any(
            ip.version == net.version and ip in net for ip in candidates for net in self.networks
        )

    def check(self, address: str | IPAddress, url: str | None = None) -> Judgement:
        """The judgement of ``address``; raises :class:`CallbackRefused` unless admitted."""
        verdict = judge(address)
        if self.admits(verdict):
            return verdict
        what = f"callback_url {url} resolves to" if url else "the callback address is"
        raise CallbackRefused(
            f"{what} {verdict.describe()}, which this hub does not call: the setting "
            f"`{SETTING}` ({ENV_VAR}) is {self.text!r}.",
            "callback_address_refused",
            str(verdict.address),
        )


def parse_networks(raw: str) -> CallbackPolicy:
    """Parse a ``callback_networks`` value: comma-separated CIDRs and the words
    ``public``, ``private`` and ``loopback``. A bare address is a /32 (or /128)."""
    words: set[str] = set()
    networks: list[IPNetwork] = []
    items = [item.strip() for item in raw.split(",")]
    for item in filter(None, items):
        if item.lower() in WORDS:
            words.add(item.lower())
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise CallbackNetworksError(
                f"setting `{SETTING}` ({ENV_VAR}): {item!r} is neither a CIDR such as "
                f"100.64.0.0/10 nor one of {', '.join(WORDS)}"
            ) from None
    if not words and not networks:
        raise CallbackNetworksError(f"setting `{SETTING}` ({ENV_VAR}) lists no networks")
    return CallbackPolicy(frozenset(words), tuple(networks), ", ".join(filter(None, items)))


def default_networks(public_url: str) -> str:
    """``public`` for a hub served over https (reachable by strangers), else every
    network a home install may use."""
    return PUBLIC_DEFAULT if public_url.lower().startswith("https://") else LOCAL_DEFAULT


def policy_for(public_url: str, raw: str) -> CallbackPolicy:
    """The policy from the settings: ``raw`` if set, else the default for ``public_url``."""
    return parse_networks(raw if raw.strip() else default_networks(public_url))


@dataclass(frozen=True)
class CallbackTarget:
    url: str
    host: str
    port: int


def _text_problem(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    # urlsplit silently drops tabs and newlines, and other URL parsers read a backslash as a
    # slash: refuse them so every parser sees the same host.
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        return "contains whitespace, control characters or a backslash"
    if "?" in url or "#" in url:
        return "must not contain a query (?) or a fragment (#)"
    return None


def parse_callback_url(url: str) -> CallbackTarget:
    """Check a callback URL's shape (no lookup). Raises :class:`CallbackRefused`."""

    def refuse(why: str) -> CallbackRefused:
        return CallbackRefused(f"callback_url {why}.", "invalid_callback_url")

    if problem := _text_problem(url):
        raise refuse(problem)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise refuse("must start with http:// or https://")
    if "@" in parts.netloc:
        raise refuse("must not contain a user name or password")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise refuse("has an invalid port")
    host = parts.hostname
    if not host:
        raise refuse("has no host")
    if "%" in host:
        # An IPv6 zone names one of the agent's interfaces, which means nothing to the hub;
        # a percent-encoded name (%31%32%37.0.0.1) reads differently to different parsers.
        raise refuse("must not have a % in its host (a percent-encoded name or an IPv6 zone)")
    return CallbackTarget(url, host, port or (443 if parts.scheme.lower() == "https" else 80))


AddrInfo = tuple[Any, Any, Any, Any, Any]


class GetAddrInfo(Protocol):
    """``loop.getaddrinfo``'s shape; tests pass a fake DNS."""

    async def __call__(
        self,
        host: str,
        port: int,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> Sequence[AddrInfo]: ...


def _is_localhost_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


async def resolve(
    host: str,
    port: int,
    *,
    family: int = 0,
    timeout: float = RESOLVE_TIMEOUT,
    getaddrinfo: GetAddrInfo | None = None,
) -> list[AddrInfo]:
    """Every A/AAAA answer for ``host``, as getaddrinfo tuples.

    ``localhost`` and ``*.localhost`` (with or without the final dot) are loopback without
    asking DNS, as RFC 6761 asks: a resolver that sent ``localhost.`` elsewhere would let the
    name mean different things to the check and to the connection.
    """
    if _is_localhost_name(host):
        answers: list[AddrInfo] = [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0)),
        ]
        return [a for a in answers if family in (0, a[0])]
    lookup = getaddrinfo or asyncio.get_running_loop().getaddrinfo
    async with asyncio.timeout(timeout):
        infos = await lookup(host, port, family=family, type=socket.SOCK_STREAM)
    return [info for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


@dataclass(frozen=True)
class CheckedCallback:
    target: CallbackTarget
    judgements: tuple[Judgement, ...]


async def check_callback_url(
    url: str,
    policy: CallbackPolicy,
    *,
    timeout: float = RESOLVE_TIMEOUT,
    getaddrinfo: GetAddrInfo | None = None,
) -> CheckedCallback:
    """Check a heartbeat's callback URL: its shape, then every address its host resolves to.

    Raises :class:`CallbackRefused` (a 400 with ``param: callback_url``) for a bad shape, a
    name that does not resolve within ``timeout``, or any address the policy does not admit.
    """
    target = parse_callback_url(url)
    try:
        infos = await resolve(target.host, target.port, timeout=timeout, getaddrinfo=getaddrinfo)
    except TimeoutError:
        raise CallbackRefused(
            f"callback_url {url}: {target.host} did not resolve within {timeout:g} s.",
            "callback_unresolvable",
        ) from None
    except OSError:
        raise CallbackRefused(
            f"callback_url {url}: {target.host} does not resolve.", "callback_unresolvable"
        ) from None
    if not infos:
        raise CallbackRefused(
            f"callback_url {url}: {target.host} has no IPv4 or IPv6 address.",
            "callback_unresolvable",
        )
    judgements = tuple(policy.check(info[4][0], url) for info in infos)
    return CheckedCallback(target, judgements)


class PolicyResolver(AbstractResolver):
    """An aiohttp resolver that refuses a name when any of its addresses is not admitted.

    aiohttp connects to exactly the addresses a resolver returns, so what was checked is what
    is connected to; TLS SNI and the Host header still use the name from the URL.
    """

    def __init__(
        self,
        policy: CallbackPolicy,
        *,
        timeout: float = RESOLVE_TIMEOUT,
        getaddrinfo: GetAddrInfo | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self._getaddrinfo = getaddrinfo

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            infos = await resolve(
                host, port, family=family, timeout=self.timeout, getaddrinfo=self._getaddrinfo
            )
        except TimeoutError:
            # A gaierror makes aiohttp report a DNS failure rather than a connect timeout.
            raise socket.gaierror(socket.EAI_AGAIN, f"{host} did not resolve in time") from None
        if not infos:
            raise OSError(f"{host} has no IPv4 or IPv6 address")
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            self.policy.check(str(sockaddr[0]))
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(sockaddr[0]),
                    port=int(sockaddr[1]),
                    family=int(fam),
                    proto=int(proto),
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        return results

    async def close(self) -> None:
        pass


def _checked_socket(policy: CallbackPolicy, addr_info: AddrInfo) -> socket.socket:
    # aiohttp never passes an IP-literal host (``http://[::ffff:127.0.0.1]/``) to the
    # resolver; the socket factory sees every address right before the connect.
    family, type_, proto, _, sockaddr = addr_info
    policy.check(str(sockaddr[0]))
    return socket.socket(family=family, type=type_, proto=proto)


def policy_connector(
    policy: CallbackPolicy,
    *,
    resolve_timeout: float = RESOLVE_TIMEOUT,
    getaddrinfo: GetAddrInfo | None = None,
    **kwargs: Any,
) -> aiohttp.TCPConnector:
    """A connector for calls to agents: names and literal addresses are both checked.

    ``kwargs`` go to :class:`aiohttp.TCPConnector` (``limit``, ``ttl_dns_cache`` ...).
    """
    return aiohttp.TCPConnector(
        resolver=PolicyResolver(policy, timeout=resolve_timeout, getaddrinfo=getaddrinfo),
        socket_factory=partial(_checked_socket, policy),
        **kwargs,
    )
