"""Provider liveness: a heartbeat is applied in memory and answered; the store is written behind.

Routing reads only the in-memory registry, so a heartbeat updates it first. Only a changed
description (callback URL, agent version, services and models) is written before the answer;
last-seen times and health go to the store in batches, off the request path. A store that
fails is logged and counted, and never takes a provider offline or fails a heartbeat (a new
provider is routed under a provisional id until the store takes it): the in-memory state is the
truth for routing, the store catches up when it can.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import Any

from inferclub import wire
from inferclub.hub import background
from inferclub.hub.background import StoreFailures
from inferclub.hub.routing import Registry
from inferclub.hub.store import (
    ProviderChanges,
    ProviderNameTaken,
    ProviderRecord,
    ServiceInfo,
    Store,
)
from inferclub.openai_errors import OpenAIError

log = logging.getLogger("inferclub.liveness")

#: Providers whose last ``services`` are kept to skip validating them again (see
#: :meth:`Liveness.remember_services`). The kept lists share their strings with the validated
#: copy the registry holds anyway: what is extra is the lists and objects, ~0.5 KB for a
#: provider with a few models, ~10 KB for one with 1,024.
MAX_KNOWN = 100_000


def name_taken(name: str) -> OpenAIError:
    return OpenAIError(
        409,
        f"The provider name {name!r} belongs to another of your keys (the one whose heartbeat "
        "registered it). Heartbeat with that key, choose another name, or revoke that key "
        "first.",
        "invalid_request_error",
        "provider_name_taken",
        "name",
    )


class Liveness:
    def __init__(self, store: Store, registry: Registry, interval: float) -> None:
        self._store = store
        self._registry = registry
        self._interval = interval
        #: provider id -> (last heartbeat, health) not yet written
        self._seen: dict[int, tuple[float, dict[str, Any]]] = {}
        #: providers whose changed description the store refused: written at their next beat
        self._unsaved: set[int] = set()
        self.description_failures = StoreFailures("provider descriptions")
        self.last_seen_failures = StoreFailures("last-seen times")
        self._task: asyncio.Task[None] | None = None
        #: providers another hub changed (heard through the store's NOTIFY), to fetch
        self._changed: set[tuple[int, int]] = set()
        self._changed_wake = asyncio.Event()
        self._changes_task: asyncio.Task[None] | None = None
        #: what the store said last time and the time asked about, for refresh()
        self._changes: ProviderChanges | None = None
        self._since = 0.0
        # Last-seen times reach the store up to one flush interval after the beat (and their
        # write takes a moment): each round looks back that far, so none is missed.
        self._margin = interval + 1.0
        #: the last provisional id handed out (negative: the store's ids are positive)
        self._provisional = 0
        #: (user id, provider name) -> its last valid ``services``, raw and validated
        self._known: dict[tuple[int, str], wire.KnownServices] = {}

    async def load(self) -> None:
        """Load every provider into the registry: at start, and when changes were missed."""
        started = time.time()
        # The versions before the providers: a change in between is fetched again, not lost.
        self._changes = await self._store.provider_changes(started)
        self._registry.load(await self._store.list_providers())
        self._since = started - self._margin

    async def refresh(self) -> None:
        """Catch up with what other hubs (or processes) sharing the store wrote.

        When nothing was written, this is one small query. Otherwise it looks at the providers
        heard from since the last round (their last-seen times and health), and only when a
        description was stored or a provider deleted somewhere does it fetch those providers
        whole and the list of ids. Never a reload of the whole fleet.
        """
        started = time.time()
        changes = await self._store.provider_changes(self._since, self._changes)
        newer = [s for s in changes.seen if self._newer(s.user_id, s.id, s.last_heartbeat_at)]
        described = self._changes is None or changes.version != self._changes.version
        unknown = [s.id for s in newer if self._registry.get(s.user_id, s.id) is None]
        fetch = [s.id for s in newer] if described else unknown
        fetched = await self._store.get_providers(fetch) if fetch else []
        if described:
            existing = await self._store.provider_ids()
            for user_id, provider_id in self._registry.ids():
                if provider_id not in existing and not is_provisional(provider_id):
                    self._registry.remove(user_id, provider_id)
        # No await from here on: what is applied is compared with the registry as it is now.
        for record in fetched:
            if self._newer(record.user_id, record.id, record.last_heartbeat_at):
                self._registry.update(record)
        done = {record.id for record in fetched}
        for seen in newer:
            mine = self._registry.get(seen.user_id, seen.id)
            stamp = seen.last_heartbeat_at
            if seen.id not in done and mine is not None and stamp > mine.last_heartbeat_at:
                health = json.loads(seen.health_json)
                self._registry.update(
                    dataclasses.replace(mine, last_heartbeat_at=stamp, health=health)
                )
        self._changes = changes
        self._since = started - self._margin

    def _newer(self, user_id: int, provider_id: int, stamp: float) -> bool:
        mine = self._registry.get(user_id, provider_id)
        return mine is None or stamp > mine.last_heartbeat_at

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="last-seen-writer")
        self._changes_task = asyncio.create_task(self._fetch_changes(), name="provider-changes")

    async def stop(self) -> None:
        await background.cancel(self._changes_task)
        await background.cancel(self._task)
        self._task = self._changes_task = None
        await self.flush()

    def provider_changed(self, payload: str) -> bool:
        """Note a provider change the store announced (``"user_id:provider_id"``); False when
        the payload names no provider, so the caller reloads them all."""
        uid, _, pid = payload.partition(":")
        if not (uid.isdigit() and pid.isdigit()):
            return False
        self._changed.add((int(uid), int(pid)))
        self._changed_wake.set()
        return True

    async def _fetch_changes(self) -> None:
        """Apply announced changes one provider at a time: the cost follows what changed."""
        while True:
            await self._changed_wake.wait()
            self._changed_wake.clear()
            changed, self._changed = self._changed, set()
            for user_id, provider_id in changed:
                try:
                    found = await self._store.get_provider(user_id, provider_id)
                except Exception:  # noqa: BLE001 - the periodic reload catches up later
                    log.exception("fetching changed provider %d failed", provider_id)
                    continue
                mine = self._registry.get(user_id, provider_id)
                if found is None:
                    self._registry.remove(user_id, provider_id)
                elif mine is None or found.last_heartbeat_at >= mine.last_heartbeat_at:
                    self._registry.update(found)

    def known_services(self, user_id: int, name: str) -> wire.KnownServices | None:
        """What the provider's last valid ``services`` were, for :meth:`wire.Heartbeat.parse`."""
        return self._known.get((user_id, name))

    def remember_services(
        self, user_id: int, name: str, raw: Any, services: tuple[wire.AdvertisedService, ...]
    ) -> None:
        """Keep a validated ``services`` list for the provider's next beat. The table holds
        one entry per provider name heard from; past :data:`MAX_KNOWN` (names of deleted
        providers, or a fleet larger than any expected) it starts again from empty."""
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known[(user_id, name)] = (raw, services)

    async def beat(
        self,
        user_id: int,
        hb: wire.Heartbeat,
        now: float,
        key_id: int | None = None,
        transport: str = "callback",
    ) -> tuple[ProviderRecord, ProviderRecord | None]:
        """Apply a heartbeat sent with key ``key_id``: ``(the provider now, the provider
        before or None)``. A 409 ``provider_name_taken`` when the name is another active
        key's: only the store can tell whether that key is still active, so a heartbeat from
        a key other than the one this hub last saw is always written through."""
        before = self._registry.find(user_id, hb.name)
        services = tuple(
            ServiceInfo(s.name, s.type, s.engine, s.features, s.models) for s in hb.services
        )
        if (
            before is not None
            and before.id not in self._unsaved
            and (key_id is None or before.key_id == key_id)
            and (before.callback_url, before.agent_version, before.services, before.transport)
            == (hb.callback_url, hb.version, services, transport)
        ):
            record = dataclasses.replace(before, health=hb.health, last_heartbeat_at=now)
            self._seen[record.id] = (now, hb.health)
        else:
            record = await self._save(user_id, hb, services, now, before, key_id, transport)
            if before is not None and before.id != record.id:
                # A provider that was only in memory got its id from the store.
                self._registry.remove(user_id, before.id)
                self._unsaved.discard(before.id)
        self._registry.update(record)
        return record, before

    async def _save(
        self,
        user_id: int,
        hb: wire.Heartbeat,
        services: tuple[ServiceInfo, ...],
        now: float,
        before: ProviderRecord | None,
        key_id: int | None,
        transport: str,
    ) -> ProviderRecord:
        try:
            record = await self._store.save_heartbeat(
                user_id,
                hb.name,
                hb.callback_url,
                hb.version,
                hb.health,
                services,
                now,
                key_id,
                transport,
            )
        except ProviderNameTaken:
            raise name_taken(hb.name) from None
        except Exception as exc:  # noqa: BLE001 - any store failure; routing goes on in memory
            self.description_failures.failed(f"{type(exc).__name__}: {exc}")
            if before is not None and key_id is not None and before.key_id != key_id:
                # A name changing keys needs the store's word that it may.
                raise OpenAIError(
                    503,
                    "The hub cannot register this provider right now (its store is failing);"
                    " the agent will retry.",
                    "service_unavailable",
                    "store_unavailable",
                ) from None
            if before is None:
                # Routed from memory under a provisional id until a beat finds the store
                # working again and it gets its real one (see beat()).
                self._provisional -= 1
                before = ProviderRecord(
                    self._provisional,
                    user_id,
                    hb.name,
                    hb.callback_url,
                    "",
                    {},
                    now,
                    now,
                    key_id=key_id,
                    transport=transport,
                )
            self._unsaved.add(before.id)
            if not is_provisional(before.id):
                self._seen[before.id] = (now, hb.health)
            return dataclasses.replace(
                before,
                callback_url=hb.callback_url,
                agent_version=hb.version,
                health=hb.health,
                services=services,
                last_heartbeat_at=now,
                transport=transport,
            )
        self.description_failures.worked()
        self._unsaved.discard(record.id)
        self._seen.pop(record.id, None)
        return record

    async def flush(self) -> None:
        """Write the buffered last-seen times; on failure keep them (newest wins) for later."""
        if not self._seen:
            return
        batch, self._seen = self._seen, {}
        try:
            await self._store.touch_providers(batch)
        except Exception as exc:  # noqa: BLE001 - any store failure; retried next round
            self.last_seen_failures.failed(f"{type(exc).__name__}: {exc}")
            # At most one entry per provider, so the backlog stays as small as the fleet.
            self._seen = {**batch, **self._seen}
        else:
            self.last_seen_failures.worked()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()


def is_provisional(provider_id: int) -> bool:
    """True for the id of a provider only this hub's memory knows (its store was failing when
    the provider first beat): no history row, no store write names it."""
    return provider_id < 0
