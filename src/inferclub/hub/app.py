"""The hub's application object and its services. ``make_app`` opens no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

import tornado.httputil
import tornado.web
from tornado.http1connection import HTTP1Connection

from inferclub import metrics, signing
from inferclub.hub import background
from inferclub.hub.accounts import Accounts
from inferclub.hub.callback_policy import policy_for
from inferclub.hub.choose import Fleet, WaitQueue
from inferclub.hub.config import ConfigError, Secrets, Settings
from inferclub.hub.fairness import SHARED_FOR, Turns
from inferclub.hub.fallbacks import Fallbacks
from inferclub.hub.handlers import agent as agent_handlers
from inferclub.hub.handlers import auth as auth_handlers
from inferclub.hub.handlers import dashboard as dashboard_handlers
from inferclub.hub.handlers import openai as openai_handlers
from inferclub.hub.handlers import playground as playground_handlers
from inferclub.hub.handlers import tunnel as tunnel_handlers
from inferclub.hub.handlers.base import NotFoundPage, is_secure, xsrf_cookie_name
from inferclub.hub.history import HistoryWriter, Retention
from inferclub.hub.keycache import KeyCache
from inferclub.hub.limits import (
    REFUSED_AFTER,
    ConcurrencyLimit,
    HeartbeatPacer,
    ProbeBudget,
    RequestRate,
    probe_target,
)
from inferclub.hub.liveness import Liveness
from inferclub.hub.metrics import HubMetrics
from inferclub.hub.reachability import NOT_CHECKED
from inferclub.hub.relay import Relay, Timeouts
from inferclub.hub.routing import Registry
from inferclub.hub.store import KEYS_CHANNEL, PROVIDERS_CHANNEL, Store

log = logging.getLogger("inferclub")


class Cuttable(Protocol):
    """A running request the shutdown deadline can end (a proxy handler)."""

    def cut(self) -> None: ...


access_log = logging.getLogger("inferclub.access")


#: Providers whose last reachability check is remembered (an evicted one is checked again
#: at its next heartbeat, which costs one probe).
MAX_REACHABILITY_ENTRIES = 100_000


class Hub:
    """Everything a handler needs, reached through ``Application.settings["hub"]``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        secrets: Secrets,
        signer: signing.HubSigner | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.secrets = secrets
        #: Signs every request to an agent; its key is beside the secrets file by default.
        self.signer = signer or load_signer(settings)
        self.keys = KeyCache(store, secrets.pepper, settings.key_cache_refresh)
        self.accounts = Accounts(store, lambda: secrets.pepper, self.keys)
        self.registry = Registry(settings.online_window)
        self.liveness = Liveness(store, self.registry, settings.last_seen_flush_interval)
        self.history = HistoryWriter(store, settings.history_flush_interval)
        self.retention = Retention(store, settings.history_retention_days)
        #: Which addresses callback URLs may point to; raises ConfigError on a bad setting.
        self.callback_policy = policy_for(settings.public_url, settings.callback_networks)
        self.relay = Relay(
            Timeouts(settings.connect_timeout, settings.first_byte_timeout, settings.idle_timeout),
            self.callback_policy,
            self.signer,
        )
        #: This process's internal listener (``internal_listen``), once bound: where other
        #: processes send requests for the tunnels it holds; "" when there is none.
        self.internal_url = ""
        #: Checks those requests: every hub process signs with the same key.
        self.internal_verifier = signing.RequestVerifier(self.signer.public_key)
        self.heartbeat_pacer = HeartbeatPacer(settings.heartbeat_min_interval)
        self.goodbye_pacer = HeartbeatPacer(settings.heartbeat_min_interval, "Goodbyes")
        self.probe_budget = ProbeBudget(settings.max_probe_targets_per_user)
        self.concurrency = ConcurrencyLimit(settings.max_concurrent_requests_per_user)
        self.request_rate = RequestRate(
            settings.max_requests_per_second_per_user, settings.request_burst_per_user
        )
        #: When requests past a user's cap on requests in flight try again (or get their
        #: 429): no sooner than a second, and one at a time at the same rate (hub/limits.py).
        self.refusal_rate = RequestRate(
            settings.max_requests_per_second_per_user, 1, not_before=REFUSED_AFTER
        )
        #: Request starts of different users in turns on the event loop.
        self.turns = Turns(shared_for=max(SHARED_FOR, settings.online_window))
        self.fallbacks = Fallbacks(store)
        #: Load, goodbyes and passive health of providers: the choice between candidates.
        self.fleet = Fleet(
            settings.cooldown, WaitQueue(settings.queue_timeout, settings.max_queue_per_user)
        )
        # A heartbeat (here or, through the store, at another hub) that brings the user
        # another candidate lets a waiting request go at once, not when a request ends.
        self.registry.on_grown = self.fleet.queue.wake
        #: Prometheus metrics; served at /metrics only when configured (docs/operations.md).
        self.metrics = HubMetrics(self)
        #: Requests being proxied right now (drained on shutdown).
        self.inflight = 0
        #: Set when the shutdown drain deadline passed: the connections that close from then on
        #: are cut by the hub, and their requests are recorded so, not as cancelled by a client.
        self.cutting = False
        #: Set when SIGTERM's drain begins: every answer closes its connection, and a new
        #: request on a kept-alive connection gets a 503 ``server_shutting_down``.
        self.draining = False
        #: The proxied requests running now, so the drain deadline can end their streams
        #: with an error event (see ``cut_streams``).
        self.active: set[Cuttable] = set()
        self._registry_task: asyncio.Task[None] | None = None
        self._reload_now = asyncio.Event()
        #: provider id -> (callback URL, problem or None, when checked)
        self._reachability: dict[int, tuple[str, str | None, float]] = {}

    async def start(self) -> None:
        """Load providers into the routing registry and start the background writers."""
        await self.liveness.load()
        await self.fallbacks.load()
        await self.keys.start()
        await self.history.start()
        await self.retention.start()
        await self.liveness.start()
        await self.relay.start()
        self._registry_task = asyncio.create_task(self._watch_providers(), name="registry-refresh")
        # PostgreSQL pushes key and provider changes made by any hub or the CLI; SQLite does
        # nothing here and the polling above and in the key cache covers it.
        await self.store.listen(self._on_change)

    def _on_change(self, channel: str, payload: str) -> None:
        if channel == KEYS_CHANNEL:
            self.keys.invalidate()
        elif channel == PROVIDERS_CHANNEL and not self.liveness.provider_changed(payload):
            self._reload_now.set()  # changes were missed (the listener reconnected)

    async def stop(self) -> None:
        await background.cancel(self._registry_task)
        self._registry_task = None
        await self.relay.close()
        await self.retention.stop()
        await self.liveness.stop()
        await self.history.stop()
        await self.keys.stop()

    async def _watch_providers(self) -> None:
        """Follow the store now and then: another hub instance sharing it may have received
        heartbeats (or deleted a provider). Only what changed is read, except after missed
        notifications, when everything is."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_now.wait(), self.settings.registry_refresh)
            missed = self._reload_now.is_set()
            self._reload_now.clear()
            try:
                await (self.liveness.load() if missed else self.liveness.refresh())
                await self.fallbacks.load()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep routing on the current registry; retry next round
                log.exception("reading provider changes from the store failed")

    async def check_callback(
        self, user_id: int, provider_id: int, callback_url: str
    ) -> tuple[str | None, bool]:
        """What kind of failure reaching this provider's callback URL had (see
        :func:`~inferclub.hub.reachability.reachability_kind`), or None when it answered;
        and whether that was found out just now (so a caller logs it once per check, not at
        every heartbeat).

        Checked when a provider first shows up or changes its URL, and again at most once a
        minute while it is failing, so an agent learns at once that it is unreachable (behind
        NAT, bound to the wrong interface) instead of from failing requests. Past the user's
        probe budget the answer is ``NOT_CHECKED``, not remembered: a later beat checks.
        """
        now = time.monotonic()
        known = self._reachability.get(provider_id)
        if (
            known is not None
            and known[0] == callback_url
            and (known[1] is None or now - known[2] < 60)
        ):
            return known[1], False
        if not self.probe_budget.allow(user_id, probe_target(callback_url)):
            return NOT_CHECKED, False
        problem = await self.relay.probe(callback_url, provider_id)
        # Newest last, and bounded: provider ids are never reused, so a tenant creating and
        # deleting providers would otherwise grow this without end.
        self._reachability.pop(provider_id, None)
        self._reachability[provider_id] = (callback_url, problem, now)
        if len(self._reachability) > MAX_REACHABILITY_ENTRIES:
            del self._reachability[next(iter(self._reachability))]
        return problem, True

    def cut_streams(self) -> None:
        """The drain deadline passed: end every running request (a stream with a final
        error event, one still waiting with a 503), recorded as cut by the server."""
        self.cutting = True
        for request in list(self.active):
            request.cut()


def load_signer(settings: Settings) -> signing.HubSigner:
    """The hub's signer, its key read from (or created in) the file beside the secrets file:
    every worker and every hub instance sharing that file signs with the same key."""
    path = signing.hub_key_path(settings.secrets_path)
    try:
        return signing.HubSigner(signing.load_or_create_hub_key(path))
    except signing.SigningError as exc:
        raise ConfigError(str(exc)) from None


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    if access_log.isEnabledFor(level):
        access_log.log(
            level,
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.path,
            1000.0 * handler.request.request_time(),
        )


class _Deadlines(tornado.httputil.HTTPMessageDelegate):
    """Slow clients are cut, each holds a socket and a buffer: a request's headers must arrive
    within ``header_timeout`` of the connection being ready for them (opened, or its previous
    answer sent, so an idle kept-alive connection ends too), and its body within
    ``body_timeout`` of its headers, or the connection is closed.

    One timer per request, moved from the headers to the body if there is one, and cancelled
    once the body is in or the connection closed. Tornado's own ``header_timeout`` and
    ``body_timeout`` wrap every header read in a timeout future and every body read in a task
    and a timeout future: 1.7 % and 3 % of a small request's instructions. The server that
    serves this application leaves both to it (``cli.py``)."""

    def __init__(
        self,
        delegate: tornado.httputil.HTTPMessageDelegate,
        connection: tornado.httputil.HTTPConnection,
        settings: Settings,
    ) -> None:
        self._delegate = delegate
        self._connection = connection
        self._settings = settings
        self._timer: asyncio.TimerHandle | None = None
        if isinstance(connection, HTTP1Connection) and not connection.stream.closed():
            # Called before Tornado reads the headers. A connection that closes while idle
            # ends its timer here: Tornado tells no delegate of a request that never began.
            # Tornado also begins a request on a stream closed after the last answer
            # (``Connection: close``, HTTP/1.0, a refused body): a close callback set now would
            # never run, and the timer would hold the connection for ``header_timeout``.
            connection.stream.set_close_callback(self._cancel)
            self._timer = asyncio.get_running_loop().call_later(
                settings.header_timeout, self._headers_expired
            )

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self._cancel()
        length = headers.get("Content-Length")
        if (length is not None and length != "0") or "Transfer-Encoding" in headers:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._settings.body_timeout, self._body_expired)
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._cancel()
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._cancel()
        self._delegate.on_connection_close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_expired(self) -> None:
        self._timer = None
        assert isinstance(self._connection, HTTP1Connection)
        stream = self._connection.stream
        if stream is None or stream.closed():
            return
        if stream._read_buffer_size:  # part of a request came: a slow client, not an idle one
            log.info(
                "closed a connection from %s: its request headers took longer than %g s",
                self._connection.context,
                self._settings.header_timeout,
            )
        self._connection.close()

    def _body_expired(self) -> None:
        self._timer = None
        log.info(
            "closed a connection from %s: its request body took longer than %g s",
            getattr(self._connection, "context", "a client"),
            self._settings.body_timeout,
        )
        if isinstance(self._connection, HTTP1Connection):
            self._connection.close()


class HubApplication(tornado.web.Application):
    """The hub's application: Tornado's, with the deadlines of :class:`_Deadlines`."""

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return _Deadlines(
            super().start_request(server_conn, request_conn),
            request_conn,
            self.settings["hub"].settings,
        )


def make_app(hub: Hub, **overrides: Any) -> tornado.web.Application:
    routes: list[Any] = [
        *openai_handlers.routes,
        *agent_handlers.routes,
        *tunnel_handlers.routes,
        *openai_handlers.fallback_routes,
        *auth_handlers.routes,
        *dashboard_handlers.routes,
        *playground_handlers.routes,
    ]
    if hub.settings.metrics_token:
        # Without a token /metrics stays a 404 here; `metrics_listen` serves it elsewhere.
        routes.append(metrics.metrics_route(hub.metrics.registry, hub.settings.metrics_token))
    here = Path(__file__).resolve().parent
    # Browsers ask for /favicon.ico on every site, signed in or not.
    routes.append((r"/(favicon\.ico)", tornado.web.StaticFileHandler, {"path": here / "static"}))
    secure = is_secure(hub.settings)
    settings: dict[str, Any] = {
        "hub": hub,
        "log_function": _log_request,
        "compress_response": False,
        # The dashboard: signed session cookies, XSRF on every mutation. /v1 handlers take
        # the bearer key only and skip XSRF (handlers/base.py).
        "cookie_secret": hub.secrets.cookie_secret,
        "xsrf_cookies": True,
        "xsrf_cookie_name": xsrf_cookie_name(secure),
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Lax", "secure": secure},
        # Unknown paths outside /v1 get a page of the dashboard's, under its body limit.
        "default_handler_class": NotFoundPage,
        "login_url": "/login",
        "template_path": str(here / "templates"),
        "static_path": str(here / "static"),
        **overrides,
    }
    return HubApplication(routes, **settings)
