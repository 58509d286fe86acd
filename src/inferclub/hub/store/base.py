"""The store interface. Handlers and services talk to this, never to SQL.

SQLite (``sqlite.py``) is the embedded default; PostgreSQL (``postgres.py``) lets hubs on several
machines share one database. Both implement the same methods; nothing above this package changes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inferclub.hub.store.models import (
    ApiKey,
    AuthToken,
    Fallback,
    KeyOwner,
    ProviderChanges,
    ProviderRecord,
    RequestBucket,
    RequestRecord,
    ServiceInfo,
    User,
)


class StoreError(Exception):
    """Base class of store errors that callers are expected to handle."""


class AlreadyExists(StoreError):
    pass


class ProviderNameTaken(StoreError):
    """A heartbeat named a provider that another active key of the user registered."""


@dataclass(frozen=True)
class RequestFilter:
    model: str | None = None
    type: str | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None
    #: Keyset paging: only rows listed after this ``(started_at, id)`` (newest first), so a
    #: long export reads page after page without an ever larger OFFSET.
    before: tuple[float, str] | None = None

    def terms(self) -> list[tuple[str, str, Any]]:
        """``(column, operator, value)`` of each condition set, for a backend to render with
        its own placeholders."""
        terms: list[tuple[str, str, Any]] = [
            ("model", "=", self.model),
            ("type", "=", self.type),
            ("status", "=", self.status),
            ("started_at", ">=", None if self.since is None else float(self.since)),
            ("started_at", "<", None if self.until is None else float(self.until)),
        ]
        return [term for term in terms if term[2] is not None]


#: What :meth:`Store.listen` callbacks receive: ``(channel, payload)``.
ChangeCallback = Callable[[str, str], None]

#: Channel of key changes (create, revoke, rotate); the payload is the key's id.
KEYS_CHANNEL = "keys"
#: Channel of provider description changes (heartbeat saved, provider deleted); the payload is
#: ``"user_id:provider_id"``.
PROVIDERS_CHANNEL = "providers"


def _bump(counter: str) -> str:
    # A row, not a schema change: it appears at its first bump.
    return (
        f"INSERT INTO counters (name, value) VALUES ('{counter}', 1)"
        " ON CONFLICT (name) DO UPDATE SET value = counters.value + 1"
    )


#: Both backends bump this in the transaction that stores a description or deletes a provider,
BUMP_PROVIDERS_VERSION = _bump("providers_version")
#: and this in the one that writes a batch of last-seen times.
BUMP_LAST_SEEN_VERSION = _bump("last_seen_version")
#: Both counters, read first by :meth:`Store.provider_changes`.
READ_PROVIDER_COUNTERS = (
    "SELECT name, value FROM counters WHERE name IN ('providers_version', 'last_seen_version')"
)


class Store(abc.ABC):
    """Persistent state of the hub. Every write method is one atomic transaction."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def listen(self, on_change: ChangeCallback) -> None:
        """Call ``on_change(channel, payload)`` for changes made by any hub sharing the store.

        Channels are :data:`KEYS_CHANNEL` and :data:`PROVIDERS_CHANNEL`. An empty payload
        means "anything on this channel may have changed" (said after a lost connection was
        re-established, since changes made meanwhile were not heard): reload it all. Returns
        once changes committed from now on will be delivered. The callback runs on the event
        loop and must not block. Backends that cannot push changes do nothing; the hub
        polls :meth:`keys_version` and reloads providers on a timer either way.
        """

    # users
    @abc.abstractmethod
    async def create_user(self, login: str, github_id: int | None = None) -> User: ...

    @abc.abstractmethod
    async def get_user(self, login: str) -> User | None: ...

    @abc.abstractmethod
    async def get_user_by_id(self, user_id: int) -> User | None: ...

    @abc.abstractmethod
    async def upsert_github_user(self, github_id: int, login: str) -> User:
        """Find the user by GitHub's numeric id (updating a changed login) or create it.

        Another GitHub user holding ``login`` is renamed ``login~id``; a local user holding it
        is never touched: :class:`AlreadyExists` (accounts keep the two namespaces apart)."""

    @abc.abstractmethod
    async def count_users(self) -> int: ...

    @abc.abstractmethod
    async def list_users(self) -> list[User]: ...

    # keys
    @abc.abstractmethod
    async def create_key(
        self, user_id: int, name: str, prefix: str, key_hash: str, scope: str = "all"
    ) -> ApiKey: ...

    @abc.abstractmethod
    async def list_keys(self, user_id: int) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def get_key(self, user_id: int, key_id: int) -> ApiKey | None:
        """The key ``key_id`` if it belongs to ``user_id`` (revoked or not), else None."""

    @abc.abstractmethod
    async def find_keys(self, prefix_or_id: str) -> list[ApiKey]:
        """Keys whose display prefix or numeric id matches, for the CLI."""

    @abc.abstractmethod
    async def find_active_key(self, key_hash: str) -> KeyOwner | None: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: int, user_id: int | None = None) -> bool:
        """Revoke; with ``user_id`` only that user's key. False when nothing matched. The
        provider names the key had registered are released in the same transaction."""

    @abc.abstractmethod
    async def rotate_key(
        self, user_id: int, key_id: int, prefix: str, key_hash: str
    ) -> ApiKey | None:
        """Revoke ``key_id`` and create its replacement (same label and scope) in one
        transaction; the provider names ``key_id`` had registered pass to the replacement."""

    @abc.abstractmethod
    async def keys_version(self) -> int:
        """A number that changes whenever any key is created, revoked or rotated."""

    @abc.abstractmethod
    async def touch_keys(self, last_used: Mapping[int, float]) -> None: ...

    # providers
    @abc.abstractmethod
    async def save_heartbeat(
        self,
        user_id: int,
        name: str,
        callback_url: str,
        agent_version: str,
        health: dict[str, Any],
        services: Sequence[ServiceInfo],
        now: float,
        key_id: int | None = None,
        transport: str = "callback",
    ) -> ProviderRecord:
        """Upsert the provider by (user, name) and replace its services, all or nothing.

        With ``key_id``, the name is bound to that key: a new provider, or one whose name is
        unbound or bound to a revoked key, is bound to it; one bound to another active key
        raises :class:`ProviderNameTaken` and nothing changes. Without, the binding is kept.
        """

    @abc.abstractmethod
    async def touch_providers(self, seen: Mapping[int, tuple[float, dict[str, Any]]]) -> None:
        """Record when providers were last heard from and their latest health, in one batch
        (``provider id -> (time, health)``). A stamp never moves back; unknown ids are skipped."""

    @abc.abstractmethod
    async def list_providers(self, user_id: int | None = None) -> list[ProviderRecord]:
        """Providers (of one user, or all) in routing order: oldest provider first."""

    @abc.abstractmethod
    async def get_provider(self, user_id: int, provider_id: int) -> ProviderRecord | None:
        """The provider ``provider_id`` if it belongs to ``user_id``, else None."""

    @abc.abstractmethod
    async def get_providers(self, ids: Collection[int]) -> list[ProviderRecord]:
        """The providers among ``ids`` that exist (any user's), in routing order."""

    @abc.abstractmethod
    async def provider_ids(self) -> set[int]:
        """Every provider's id: how a hub finds providers another hub deleted."""

    @abc.abstractmethod
    async def provider_changes(
        self, since: float, previous: ProviderChanges | None = None
    ) -> ProviderChanges:
        """The description and last-seen versions and the providers heard from after
        ``since``: how a hub follows the others at a cost that grows with the heartbeats, not
        with the fleet. When neither version moved since ``previous`` (nothing was written),
        the providers are not even looked at and ``seen`` is empty."""

    @abc.abstractmethod
    async def delete_provider(self, user_id: int, provider_id: int) -> bool: ...

    # fallback models
    @abc.abstractmethod
    async def set_fallback(self, user_id: int, model: str, fallback: str, now: float) -> None:
        """Set (or replace) the user's fallback for ``model``."""

    @abc.abstractmethod
    async def delete_fallback(self, user_id: int, model: str) -> bool:
        """Remove the user's fallback for ``model``; False when there was none."""

    @abc.abstractmethod
    async def list_fallbacks(self, user_id: int | None = None) -> list[Fallback]:
        """Fallbacks of one user (or all), by user and model."""

    # request history
    @abc.abstractmethod
    async def add_requests(self, rows: Iterable[RequestRecord]) -> None: ...

    @abc.abstractmethod
    async def prune_requests(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` of the oldest rows started before ``before``; how many."""

    @abc.abstractmethod
    async def list_requests(
        self, user_id: int, flt: RequestFilter | None = None, limit: int = 50, offset: int = 0
    ) -> list[RequestRecord]:
        """Newest first."""

    @abc.abstractmethod
    async def count_requests(self, user_id: int, flt: RequestFilter | None = None) -> int: ...

    @abc.abstractmethod
    async def get_request(self, user_id: int, request_id: str) -> RequestRecord | None: ...

    @abc.abstractmethod
    async def request_buckets(
        self, user_id: int, flt: RequestFilter | None, bucket_seconds: float
    ) -> list[RequestBucket]:
        """History aggregated per ``bucket_seconds`` (aligned to the epoch), oldest first;
        buckets without requests are left out."""

    # dashboard sign-in tokens (stored by hash only)
    @abc.abstractmethod
    async def create_auth_token(
        self, kind: str, token_hash: str, user_id: int | None, expires_at: float, data: str = ""
    ) -> None:
        """Store a token; expired tokens of any kind are purged in the same transaction."""

    @abc.abstractmethod
    async def get_auth_token(self, kind: str, token_hash: str, now: float) -> AuthToken | None:
        """The unexpired token, left in place (sessions)."""

    @abc.abstractmethod
    async def consume_auth_token(self, kind: str, token_hash: str, now: float) -> AuthToken | None:
        """Delete the token and return it if it had not expired: each works at most once."""

    @abc.abstractmethod
    async def delete_auth_token(self, kind: str, token_hash: str) -> bool: ...
