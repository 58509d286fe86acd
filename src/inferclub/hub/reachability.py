"""What kind of failure a connection attempt to an agent had, and nothing more.

The heartbeat reply tells an agent whether the hub can reach it. Echoing the error text would
turn that into a port scanner that reads banners (``SSH-2.0-OpenSSH...``), so the hub reports
only a kind, with a fixed sentence per kind.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from inferclub.hub.callback_policy import CallbackRefused

#: The kind when the hub did not try: the user's probe budget for this minute is spent.
NOT_CHECKED = "not_checked"

REACHABILITY_TEXT = {
    NOT_CHECKED: (
        "not checked yet: this user's providers brought more new callback addresses this "
        "minute than the hub checks (max_probe_targets_per_user); a later heartbeat checks it"
    ),
    "policy": "the callback address is not in the networks this hub calls (callback_networks)",
    "dns": "the callback host name does not resolve",
    "timeout": "no answer in time (a firewall may drop the packets, or the agent is stuck)",
    "refused": "the connection was refused (nothing listens on that port)",
    "unreachable": "the network or host is unreachable, or the connection was reset",
    "tls": "the TLS handshake failed (certificate or protocol)",
    "not_http": "something answered, but not with HTTP",
}


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [getattr(item, "os_error", None), item.__cause__, item.__context__]


_ORDER: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    ("policy", (CallbackRefused,)),
    ("tls", (aiohttp.ClientSSLError, ssl.SSLError)),
    ("dns", (aiohttp.ClientConnectorDNSError, socket.gaierror)),
    ("timeout", (TimeoutError, aiohttp.ServerTimeoutError)),
    ("refused", (ConnectionRefusedError,)),
    ("not_http", (HttpProcessingError, aiohttp.ServerDisconnectedError)),
)


def reachability_kind(outcome: BaseException | int) -> str:
    """What kind of result a connection attempt had: an HTTP status (``http_404``) or one
    of :data:`REACHABILITY_TEXT`'s keys. Never includes anything the remote side sent."""
    if isinstance(outcome, int):
        return f"http_{outcome}" if 100 <= outcome <= 599 else "not_http"
    chain = list(_chain(outcome))
    for kind, types in _ORDER:
        if any(isinstance(exc, types) for exc in chain):
            return kind
    for exc in chain:
        # raise_for_status(): a real HTTP answer; parse errors were caught above.
        if isinstance(exc, aiohttp.ClientResponseError):
            return reachability_kind(exc.status)
    return "unreachable"


def reply_fields(kind: str | None) -> tuple[bool | None, str | None]:
    """``callback_reachable`` and ``callback_error`` of a heartbeat reply for a check's
    outcome: reachable; unreachable and why; or not checked (None) and why."""
    if kind is None:
        return True, None
    return (None if kind == NOT_CHECKED else False), describe_reachability(kind)


def describe_reachability(kind: str) -> str:
    """A fixed sentence for a kind from :func:`reachability_kind`."""
    if kind.startswith("http_"):
        return f"the agent answered with HTTP {kind[5:]}"
    return REACHABILITY_TEXT.get(kind, REACHABILITY_TEXT["unreachable"])
