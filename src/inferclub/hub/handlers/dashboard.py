"""The dashboard's pages: keys, providers, request history with charts.

Pages are server-rendered templates with a little JavaScript (``inferclub/static``). Every
query is scoped to the signed-in user, so another user's key, provider or request id is a 404.
The playground is in ``playground.py``; the base handlers in ``base.py``.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import tornado.web

from inferclub.hub import export, flash, keys
from inferclub.hub.choose import Fleet
from inferclub.hub.fallbacks import FallbackError
from inferclub.hub.handlers.base import (
    DashboardApiHandler,
    DashboardHandler,
    WebHandler,
    session_token,
)
from inferclub.hub.routing import Registry
from inferclub.hub.store import ProviderRecord, RequestFilter
from inferclub.hub.tunnels import Tunnels
from inferclub.wire import SERVICE_TYPES

PAGE_SIZE = 50
#: How often the providers page polls its JSON, milliseconds.
PROVIDERS_POLL_MS = 2000
#: Chart windows when no dates are given: name -> (seconds, bucket seconds).
RANGES = {
    "1h": (3600, 60),
    "24h": (86400, 1800),
    "7d": (7 * 86400, 3 * 3600),
    "30d": (30 * 86400, 12 * 3600),
}
_NICE_BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def service_state(p: ProviderRecord, name: str, online: bool) -> str | None:
    """``up`` or ``down`` as the agent last reported it; ``unknown`` once the provider is
    offline (its last report says nothing about now); None when it never reported one."""
    services = p.health.get("services") if isinstance(p.health, dict) else None
    report = services.get(name) if isinstance(services, dict) else None
    if not isinstance(report, dict) or "up" not in report:
        return None
    if not online:
        return "unknown"
    return "up" if report["up"] else "down"


def provider_json(
    p: ProviderRecord,
    registry: Registry,
    now: float,
    fleet: Fleet | None = None,
    tunnels: Tunnels | None = None,
) -> dict[str, Any]:
    leaving = fleet is not None and fleet.state(p.id).leaving
    # An agent that said goodbye takes no new requests: it is not shown as online (nor its
    # services as up) while its last heartbeat ages out.
    online = registry.is_online(p, now) and not leaving
    by_type: dict[str, list[dict[str, Any]]] = {}
    for s in p.services:
        by_type.setdefault(s.type, []).append(
            {
                "name": s.name,
                "engine": s.engine,
                "features": list(s.features),
                "models": list(s.models),
                "state": service_state(p, s.name, online),
            }
        )
    return {
        "id": p.id,
        "name": p.name,
        "callback_url": p.callback_url,
        # "tunnel": the agent dialled in; its round-trip time when this process holds it.
        "transport": p.transport,
        "tunnel_rtt_ms": _tunnel_rtt(p, tunnels),
        "agent_version": p.agent_version,
        "online": online,
        "last_heartbeat_at": p.last_heartbeat_at,
        "heartbeat_age": max(0.0, now - p.last_heartbeat_at),
        "created_at": p.created_at,
        "services_by_type": [
            {"type": t, "services": by_type[t]}
            for t in sorted(
                by_type,
                key=lambda t: SERVICE_TYPES.index(t) if t in SERVICE_TYPES else len(SERVICE_TYPES),
            )
        ],
        "health": p.health,
        # Passive health and goodbyes (choose.Fleet): seconds of cooldown left, or None.
        "cooling_down": None if fleet is None else fleet.cooling_down(p.id),
        "leaving": leaving,
    }


def _tunnel_rtt(p: ProviderRecord, tunnels: Tunnels | None) -> float | None:
    held = tunnels.get(p.id) if tunnels is not None else None
    return None if held is None or held.rtt_ms is None else round(held.rtt_ms, 2)


def providers_payload(handler: WebHandler, user_id: int) -> dict[str, Any]:
    hub = handler.hub
    now = time.time()
    return {
        "now": now,
        "online_window": hub.registry.online_window,
        "poll_ms": PROVIDERS_POLL_MS,
        "providers": [
            provider_json(p, hub.registry, now, hub.fleet, hub.relay.tunnels)
            for p in hub.registry.providers(user_id)
        ],
    }


# -- pages ------------------------------------------------------------------------------------


class HomeHandler(WebHandler):
    async def get(self) -> None:
        self.redirect("/dashboard/providers" if self.current_user else "/login")


class KeysHandler(DashboardHandler):
    """The keys page. Every form on it posts, then redirects here (POST/redirect/GET): a new
    key comes back once, as a one-time message (:mod:`inferclub.hub.flash`), so reloading the
    page shows the list again instead of creating another key."""

    section = "keys"

    @tornado.web.authenticated
    async def get(self) -> None:
        message: dict[str, Any] = {}
        token = session_token(self, self.hub.settings)
        flash_id = self.get_query_argument("flash", "")
        if token and flash_id:
            message = await flash.take(self.hub.store, token, flash_id) or {}
        rows = await self.hub.store.list_keys(self.user_id)
        rows.sort(key=lambda k: (not k.active, -k.id))
        self.render(
            "keys.html",
            keys=rows,
            new_key=str(message.get("key", "")),
            new_id=int(message.get("id", 0)),
            notice=str(message.get("notice", "")),
        )

    @tornado.web.authenticated
    async def submit(self) -> None:
        label = self.get_body_argument("name", "").strip()[:100]
        scope = self.get_body_argument("scope", keys.ALL)
        if scope not in keys.SCOPES:
            raise tornado.web.HTTPError(400, "Choose a scope: %s.", ", ".join(keys.SCOPES))
        await self._check_key_limit()
        new = await self.hub.accounts.issue_key(self.user_id, label, scope)
        await see_keys(self, key=new.secret, id=new.record.id, notice="Key created.")

    async def _check_key_limit(self) -> None:
        # Every new key also empties every user's key cache (see keycache.py): without a
        # limit, one tenant creating keys in a loop sent all tenants' requests to the store.
        limit = self.hub.settings.max_keys_per_user
        if limit <= 0:
            return
        active = sum(k.active for k in await self.hub.store.list_keys(self.user_id))
        if active >= limit:
            raise tornado.web.HTTPError(
                429, "You have %d active keys, the most this hub allows; revoke one first.", active
            )


class KeyActionHandler(DashboardHandler):
    @tornado.web.authenticated
    async def submit(self, key_id: str, action: str) -> None:
        accounts = self.hub.accounts
        mine = await self.hub.store.get_key(self.user_id, int(key_id))
        if mine is None:
            raise tornado.web.HTTPError(404, "No such key.")
        if not mine.active:
            raise tornado.web.HTTPError(409, "Key %s… is already revoked.", mine.prefix)
        if action == "revoke":
            if not await accounts.revoke_key(self.user_id, mine.id):
                raise tornado.web.HTTPError(409, "Key %s… was revoked meanwhile.", mine.prefix)
            await see_keys(self, notice=f"Key {mine.prefix}… revoked.")
            return
        new = await accounts.rotate_key(self.user_id, mine.id)
        if new is None:
            raise tornado.web.HTTPError(409, "Key %s… was revoked meanwhile.", mine.prefix)
        await see_keys(
            self,
            key=new.secret,
            id=new.record.id,
            notice=f"Key {mine.prefix}… revoked; here is its replacement.",
        )


async def see_keys(handler: DashboardHandler, **message: Any) -> None:
    """Redirect (303) to the keys page, which shows ``message`` once."""
    token = session_token(handler, handler.hub.settings)
    assert token is not None  # @authenticated: the session cookie is there
    flash_id = await flash.put(handler.hub.store, token, handler.user_id, message)
    handler.redirect(f"/dashboard/keys?flash={flash_id}", status=303)


class ProvidersHandler(DashboardHandler):
    section = "providers"

    @tornado.web.authenticated
    async def get(self) -> None:
        has_key = any(k.active for k in await self.hub.store.list_keys(self.user_id))
        self.render(
            "providers.html",
            data=providers_payload(self, self.user_id),
            has_key=has_key,
            fallbacks=self.hub.fallbacks.listed(self.user_id),
        )


class ProvidersApiHandler(DashboardApiHandler):
    async def get(self) -> None:
        self.write_json(providers_payload(self, self.user_id))


class ProviderApiHandler(DashboardApiHandler):
    async def get(self, provider_id: str) -> None:
        provider = await self.hub.store.get_provider(self.user_id, int(provider_id))
        if provider is None:
            raise tornado.web.HTTPError(404, "No such provider.")
        hub = self.hub
        self.write_json(
            provider_json(provider, hub.registry, time.time(), hub.fleet, hub.relay.tunnels)
        )


class ProviderDeleteHandler(DashboardHandler):
    @tornado.web.authenticated
    async def submit(self, provider_id: str) -> None:
        pid = int(provider_id)
        if not await self.hub.store.delete_provider(self.user_id, pid):
            raise tornado.web.HTTPError(404, "No such provider.")
        self.hub.registry.remove(self.user_id, pid)
        self.redirect("/dashboard/providers", status=303)


class FallbackHandler(DashboardHandler):
    """Set (``POST`` model and fallback) or remove (``remove`` set) a fallback model."""

    @tornado.web.authenticated
    async def submit(self) -> None:
        model = self.get_body_argument("model", "")
        fallbacks = self.hub.fallbacks
        if self.get_body_argument("remove", ""):
            if not await fallbacks.delete(self.user_id, model):
                raise tornado.web.HTTPError(404, "No fallback for this model.")
        else:
            try:
                await fallbacks.set(self.user_id, model, self.get_body_argument("fallback", ""))
            except FallbackError as exc:
                raise tornado.web.HTTPError(400, "Fallback refused: %s.", str(exc)) from None
        self.redirect("/dashboard/providers#fallbacks")


def _day(value: str) -> float | None:
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def chart_series(
    buckets: list[Any], since: float, until: float, size: float
) -> list[dict[str, Any]]:
    """Every bucket of the window, empty ones included, so the charts have a time axis."""
    by_start = {b.start: b for b in buckets}
    out = []
    start = math.floor(since / size) * size
    while start < until:
        b = by_start.get(start)
        out.append(
            {
                "t": start,
                "requests": b.requests if b else 0,
                "errors": b.errors if b else 0,
                "ttfb_ms": b.avg_ttfb_ms if b else None,
                "duration_ms": b.avg_duration_ms if b else None,
                "prompt_tokens": b.prompt_tokens if b else 0,
                "completion_tokens": b.completion_tokens if b else 0,
            }
        )
        start += size
    return out


class RequestsHandler(DashboardHandler):
    section = "requests"

    @tornado.web.authenticated
    async def get(self) -> None:
        arg = self.get_query_argument
        model, status_raw = arg("model", "").strip(), arg("status", "").strip()
        date_from, date_to = arg("from", ""), arg("to", "")
        range_name = arg("range", "24h")
        if range_name not in RANGES:
            range_name = "24h"
        try:
            page = max(1, int(arg("page", "1")))
        except ValueError:
            page = 1
        flt = request_filter(self)
        since, until = flt.since, flt.until
        store = self.hub.store
        total = await store.count_requests(self.user_id, flt)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(page, pages)
        rows = await store.list_requests(self.user_id, flt, PAGE_SIZE, (page - 1) * PAGE_SIZE)

        now = time.time()
        if since is None and until is None:
            span, bucket = RANGES[range_name]
            c_since, c_until = now - span, now
        else:
            c_until = until if until is not None else now
            c_since = since if since is not None else c_until - RANGES["30d"][0]
            bucket = next(
                (b for b in _NICE_BUCKETS if (c_until - c_since) / b <= 72), _NICE_BUCKETS[-1]
            )
        chart_flt = RequestFilter(flt.model, flt.type, flt.status, c_since, c_until)
        buckets = await store.request_buckets(self.user_id, chart_flt, bucket)
        series = chart_series(buckets, c_since, c_until, bucket)

        providers = {p.id: p.name for p in await store.list_providers(self.user_id)}
        models = sorted({m for m, _, _ in self.hub.registry.models(self.user_id)})
        params = {
            k: v
            for k, v in (
                ("model", model),
                ("type", flt.type or ""),
                ("status", status_raw),
                ("from", date_from),
                ("to", date_to),
                ("range", range_name),
            )
            if v
        }
        self.render(
            "requests.html",
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            params=params,
            providers=providers,
            models=models,
            types=SERVICE_TYPES,
            ranges=list(RANGES),
            range_name=range_name,
            dated=since is not None or until is not None,
            chart={"bucket": bucket, "since": c_since, "until": c_until, "series": series},
            page_size=PAGE_SIZE,
        )


def request_filter(handler: tornado.web.RequestHandler) -> RequestFilter:
    """The requests page's filters from its query (the page, and its CSV download)."""
    arg = handler.get_query_argument
    type_, status_raw = arg("type", ""), arg("status", "").strip()
    since, until = _day(arg("from", "")), _day(arg("to", ""))
    if until is not None:
        until += 86400  # "to" is inclusive: the whole day
    return RequestFilter(
        model=arg("model", "").strip() or None,
        type=type_ if type_ in SERVICE_TYPES else None,
        status=int(status_raw) if status_raw.isdigit() and len(status_raw) <= 3 else None,
        since=since,
        until=until,
    )


class RequestsCsvHandler(DashboardHandler):
    """``/dashboard/requests.csv``: every row the requests page's filters select, streamed a
    page at a time."""

    @tornado.web.authenticated
    async def get(self) -> None:
        user = self.current_user
        assert user is not None
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="inferclub-requests.csv"')
        self.write(export.csv_header())
        page: list[dict[str, Any]] = []
        async for rec in export.records(self.hub.store, user, request_filter(self)):
            page.append(rec)
            if len(page) >= export.PAGE:
                self.write(export.csv_rows(page))
                page.clear()
                await self.flush()
        self.finish(export.csv_rows(page))


class RequestDetailHandler(DashboardHandler):
    section = "requests"

    @tornado.web.authenticated
    async def get(self, request_id: str) -> None:
        store = self.hub.store
        row = await store.get_request(self.user_id, request_id)
        if row is None:
            raise tornado.web.HTTPError(404, "No such request.")
        provider = None
        if row.provider_id is not None:
            provider = await store.get_provider(self.user_id, row.provider_id)
        key = await store.get_key(self.user_id, row.key_id) if row.key_id is not None else None
        self.render("request.html", r=row, provider=provider.name if provider else None, key=key)


routes: list[tuple[str, Any]] = [
    (r"/", HomeHandler),
    (r"/dashboard/?", HomeHandler),
    (r"/dashboard/keys", KeysHandler),
    (r"/dashboard/keys/(\d+)/(revoke|rotate)", KeyActionHandler),
    (r"/dashboard/providers", ProvidersHandler),
    (r"/dashboard/providers/(\d+)/delete", ProviderDeleteHandler),
    (r"/dashboard/fallbacks", FallbackHandler),
    (r"/dashboard/requests", RequestsHandler),
    (r"/dashboard/requests\.csv", RequestsCsvHandler),
    (r"/dashboard/requests/([A-Za-z0-9_]+)", RequestDetailHandler),
    (r"/dashboard/api/providers", ProvidersApiHandler),
    (r"/dashboard/api/providers/(\d+)", ProviderApiHandler),
]
