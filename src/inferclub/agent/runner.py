"""Running the agent: callback server, heartbeat loop, signals and draining."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import tornado.httpserver
import tornado.netutil

from inferclub import signing, wire
from inferclub.agent import health
from inferclub.agent.heartbeat import Heartbeat, Refused, hub_auth
from inferclub.agent.manifest import Manifest
from inferclub.agent.metrics import AgentMetrics
from inferclub.agent.server import Runtime, make_app
from inferclub.agent.services import ServiceState, ServiceTable
from inferclub.agent.tunnel import TunnelClient
from inferclub.engines import Engine
from inferclub.fdlimit import raise_nofile_limit
from inferclub.metrics import metrics_app

log = logging.getLogger("inferclub.agent")

#: Exit status when the hub rejects the API key.
EXIT_KEY_REJECTED = 3
#: Exit status when the hub presents a signing key this agent does not trust.
EXIT_HUB_KEY_REFUSED = 4
#: Exit status when another active key of the user registered this provider name.
EXIT_NAME_TAKEN = 5
#: Seconds SIGTERM waits for in-flight requests before closing them.
DRAIN_TIMEOUT = 30.0
#: Largest request body accepted from the hub: what a hub with default limits forwards.
MAX_BODY_SIZE = wire.DEFAULT_BODY_CEILING
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunConfig:
    manifest: Manifest
    hub: str
    key: str = field(repr=False)
    name: str
    listen_host: str
    listen_port: int
    callback_url: str | None = None
    heartbeat_interval: float | None = None
    drain_timeout: float = DRAIN_TIMEOUT
    #: The hub's signing key, set explicitly; else the one pinned in ``known_hubs``.
    hub_key: str | None = None
    known_hubs: Path | None = None
    #: Bearer token for /metrics on the callback server (empty: none there).
    metrics_token: str = field(default="", repr=False)
    #: ``(host, port)`` of a separate listener serving only /metrics.
    metrics_listen: tuple[str, int] | None = None
    #: Dial the hub (``run --tunnel``): the callback server then listens on loopback only.
    tunnel: bool = False


def bind(host: str, port: int, option: str) -> list[socket.socket]:
    """Listening sockets on ``host:port``; an error that names the address and the option."""
    try:
        return tornado.netutil.bind_sockets(port, host)
    except OSError as exc:
        address = f"{format_host(host)}:{port}"
        if exc.errno == errno.EADDRINUSE:
            # The usual case: a second agent on one machine. Say what to change.
            why = "the address is already in use (another agent?)"
        else:
            why = exc.strerror or str(exc)
        raise OSError(
            exc.errno,
            f"cannot listen on {address}: {why}; choose another address with {option} HOST:PORT",
        ) from None


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) -> (host, port); ValueError when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def outbound_address(hub: str) -> str:
    """The local address this machine uses to reach the hub (no packet is sent)."""
    parts = urlsplit(hub)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            return str(sock.getsockname()[0])
    except OSError:
        return socket.gethostname()


def default_callback_url(listen_host: str, port: int, hub: str) -> str:
    host = listen_host
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = False
    if unspecified:
        host = outbound_address(hub)
    return f"http://{format_host(host)}:{port}/v1"


class Agent:
    def __init__(self, config: RunConfig, engines: Mapping[str, Engine]) -> None:
        self.config = config
        self.table = ServiceTable(config.manifest.services, engines)
        self.auth = hub_auth(config.known_hubs, config.hub_key)
        self.started = time.monotonic()
        self.stop_requested = asyncio.Event()
        self.exit_code = 0
        self.heartbeat: Heartbeat | None = None
        self.tunnel: TunnelClient | None = None
        self.metrics = AgentMetrics(self.table)

    def request_stop(self) -> None:
        self.stop_requested.set()

    def service_failed(self, state: ServiceState) -> None:
        if self.heartbeat is not None:
            self.heartbeat.poke()

    async def health_snapshot(self) -> dict[str, Any]:
        return health.snapshot(self.table, self.started, await health.gpus())

    async def run(self) -> int:
        config = self.config
        # Forwarding has no total timeout (a healthy stream may run for long); per-request
        # read timeouts come from each service. No connection cap: max_concurrency limits.
        forward_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        probe_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT))
        runtime = Runtime(
            self.table,
            self.auth,
            forward_session,
            self.service_failed,
            self.metrics,
            config.metrics_token,
        )
        server = tornado.httpserver.HTTPServer(make_app(runtime), max_body_size=MAX_BODY_SIZE)
        metrics_server = tornado.httpserver.HTTPServer(
            metrics_app(self.metrics.registry, config.metrics_token)
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            # Through a tunnel, nothing listens but on loopback: the tunnel replays each
            # request to this server.
            host, lport = (
                ("127.0.0.1", 0) if config.tunnel else (config.listen_host, config.listen_port)
            )
            sockets = bind(host, lport, "--listen")
            server.add_sockets(sockets)
            if config.metrics_listen is not None:
                mhost, mport = config.metrics_listen
                msockets = bind(mhost, mport, "--metrics-listen")
                metrics_server.add_sockets(msockets)
                mport = msockets[0].getsockname()[1]
                print(f"metrics on http://{format_host(mhost)}:{mport}/metrics", flush=True)
            port = sockets[0].getsockname()[1]
            print(f"listening on http://{format_host(host)}:{port}", flush=True)
            callback_url = config.callback_url or default_callback_url(host, port, config.hub)
            if config.tunnel:
                # Sent as the heartbeat requires one; the hub records its own instead.
                callback_url = f"http://127.0.0.1:{port}/v1"
                self.tunnel = self._tunnel(forward_session, f"http://127.0.0.1:{port}")
                log.info("agent %r: hub %s, through a tunnel", config.name, config.hub)
            else:
                log.info("agent %r: hub %s, callback URL %s", config.name, config.hub, callback_url)
            self.heartbeat = Heartbeat(
                probe_session,
                self.table,
                hub=config.hub,
                key=config.key,
                name=config.name,
                callback_url=callback_url,
                auth=self.auth,
                health=self.health_snapshot,
                interval=config.heartbeat_interval,
                exchange=self.tunnel.exchange if self.tunnel else None,
            )
            tasks.append(asyncio.ensure_future(self.heartbeat.run()))
            if self.tunnel is not None:
                tasks.append(asyncio.ensure_future(self.tunnel.run()))
            stop_task = asyncio.ensure_future(self.stop_requested.wait())
            await asyncio.wait({*tasks, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            ended = [task for task in tasks if task.done()]
            if ended:
                self._ended(ended[0].exception())
            else:
                log.info("stopping: waiting for %d requests in flight", self.table.total_in_flight)
                await _cancel(tasks[:1])  # the heartbeat loop; the tunnel carries the goodbye
                # First, so that the hub sends nothing new while the requests in flight end.
                await self.heartbeat.goodbye()
            server.stop()
            runtime.draining = True
            await self.drain(config.drain_timeout)
            if self.tunnel is not None:
                await self.tunnel.shutdown()
        finally:
            await _cancel(tasks)
            server.stop()
            metrics_server.stop()
            await server.close_all_connections()
            await forward_session.close()
            await probe_session.close()
        return self.exit_code

    def refused(self, exc: Refused, url: str) -> int:
        """Log one ERROR saying what to change; the exit status for ``exc``."""
        said = f"HTTP {exc.status} {exc.code} from {url}: {exc.message}"
        if exc.code == "provider_name_taken":
            log.error(
                "the hub refuses the provider name %r (%s); another active key of this user "
                "registered it. Give this agent another name (--name NAME, or name: in the "
                "manifest's agent section), or revoke the other key (the dashboard's API keys "
                "page, or `inferclub keys revoke PREFIX_OR_ID` on the hub's machine); stopping",
                self.config.name,
                said,
            )
            return EXIT_NAME_TAKEN
        log.error("API key rejected by the hub (%s); stopping", said)
        return EXIT_KEY_REJECTED

    def _tunnel(self, session: aiohttp.ClientSession, local: str) -> TunnelClient:
        def connected() -> None:
            if self.heartbeat is not None:
                self.heartbeat.beat_now()

        return TunnelClient(
            session,
            hub=self.config.hub,
            key=self.config.key,
            local=local,
            metrics=self.metrics,
            max_body=MAX_BODY_SIZE,
            on_connect=connected,
        )

    def _ended(self, exc: BaseException | None) -> None:
        """The heartbeat loop or the tunnel stopped on its own: the exit code says why."""
        if isinstance(exc, Refused):
            url = self.tunnel.url if self.tunnel else self.heartbeat.url if self.heartbeat else ""
            self.exit_code = self.refused(exc, url)
        elif isinstance(exc, signing.SigningError):
            # Loud on purpose: whoever holds another key could feed this agent
            # requests as the hub. Nothing is served from here on.
            log.error("%s", exc)
            self.exit_code = EXIT_HUB_KEY_REFUSED
        elif exc is not None:
            raise exc

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.table.total_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.table.total_in_flight:
            log.warning("closing %d requests still in flight", self.table.total_in_flight)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_agent(config: RunConfig, engines: Mapping[str, Engine]) -> int:
    raise_nofile_limit(log)
    agent = Agent(config, engines)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    try:
        return await agent.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main_run(config: RunConfig, engines: Mapping[str, Engine]) -> int:
    try:
        return asyncio.run(run_agent(config, engines))
    except OSError as exc:  # e.g. the listen address is taken
        print(f"inference-club-agent: {exc.strerror or exc}", file=sys.stderr)
        return 1
