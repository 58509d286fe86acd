"""PostgreSQL backend (asyncpg), for hubs on several machines sharing one database.

A connection pool instead of SQLite's single connection and lock: reads never wait for
writes. Every write method is one transaction. Key changes and provider changes also NOTIFY
in that transaction, so other hubs hear of them at commit and never of a rolled-back change.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from inferclub.hub.store import pgrows, pgschema
from inferclub.hub.store.base import (
    BUMP_LAST_SEEN_VERSION,
    BUMP_PROVIDERS_VERSION,
    KEYS_CHANNEL,
    PROVIDERS_CHANNEL,
    READ_PROVIDER_COUNTERS,
    AlreadyExists,
    ChangeCallback,
    ProviderNameTaken,
    RequestFilter,
    Store,
    StoreError,
)
from inferclub.hub.store.models import (
    REQUEST_COLUMNS,
    UPSERT_PROVIDER,
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
    assemble_providers,
    provider_counters,
    provider_seen,
    request_values,
)
from inferclub.hub.store.pglisten import CONNECTION_ERRORS, Listener
from inferclub.hub.store.pgschema import Connection, redact_dsn

_KEY_COLS = "id, user_id, name, prefix, created_at, last_used_at, revoked_at, scope"
_TOKEN_COLS = "kind, user_id, data, created_at, expires_at"
_REQUEST_COLS = ", ".join(REQUEST_COLUMNS)


class PostgresStore(Store):
    """The store on a PostgreSQL server named by a ``postgresql://`` URL (libpq's form; query
    parameters other than connection options become server settings, e.g. ``search_path``).

    Each instance holds up to ``max_size`` pooled connections plus one for LISTEN. NOTIFY
    channels are per database, not per schema: hubs on other schemas of the same database
    hear these changes too, which costs them a needless reload and nothing else.
    """

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self.name = redact_dsn(dsn)
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._listener = Listener(dsn, (KEYS_CHANNEL, PROVIDERS_CHANNEL), name=self.name)

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self._min_size, max_size=self._max_size
            )
            async with self.pool.acquire() as conn:
                await pgschema.migrate(conn)
        except (*CONNECTION_ERRORS, ValueError) as exc:
            await self.close()
            raise StoreError(f"{self.name}: cannot open the database: {exc}") from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def listen(self, on_change: ChangeCallback) -> None:
        await self._listener.add(on_change)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    # ------------------------------------------------------------------ users
    async def create_user(self, login: str, github_id: int | None = None) -> User:
        now = time.time()
        try:
            user_id = await self.pool.fetchval(
                "INSERT INTO users (login, github_id, created_at) VALUES ($1, $2, $3) RETURNING id",
                login,
                github_id,
                now,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"user {login!r} already exists") from None
        return User(user_id, login, github_id, now)

    async def get_user(self, login: str) -> User | None:
        row = await self.pool.fetchrow("SELECT * FROM users WHERE login = $1", login)
        return pgrows.user(row) if row else None

    async def get_user_by_id(self, user_id: int) -> User | None:
        row = await self.pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        return pgrows.user(row) if row else None

    async def upsert_github_user(self, github_id: int, login: str) -> User:
        # SQLite runs this read-then-write alone; here another hub may insert the same GitHub
        # user or take the login between our read and our write. The retry sees its commit.
        for attempt in range(3):
            try:
                async with self._write() as db:
                    return await _upsert_github_user(db, github_id, login)
            except asyncpg.UniqueViolationError:
                if attempt == 2:
                    raise AlreadyExists(f"a local user holds the login {login!r}") from None
        raise AssertionError("unreachable")

    async def count_users(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM users"))

    async def list_users(self) -> list[User]:
        return [pgrows.user(r) for r in await self.pool.fetch("SELECT * FROM users ORDER BY id")]

    # ------------------------------------------------------------------- keys
    async def create_key(
        self, user_id: int, name: str, prefix: str, key_hash: str, scope: str = "all"
    ) -> ApiKey:
        async with self._write() as db:
            return await _insert_key(db, user_id, name, prefix, key_hash, scope)

    async def list_keys(self, user_id: int) -> list[ApiKey]:
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLS} FROM api_keys WHERE user_id = $1 ORDER BY id", user_id
        )
        return [ApiKey(*r) for r in rows]

    async def get_key(self, user_id: int, key_id: int) -> ApiKey | None:
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLS} FROM api_keys WHERE id = $1 AND user_id = $2", key_id, user_id
        )
        return ApiKey(*row) if row else None

    async def find_keys(self, prefix_or_id: str) -> list[ApiKey]:
        if prefix_or_id.isdigit():
            sql = f"SELECT {_KEY_COLS} FROM api_keys WHERE id = $1"
            arg: Any = int(prefix_or_id)
        else:
            sql = f"SELECT {_KEY_COLS} FROM api_keys WHERE prefix = $1 ORDER BY id"
            arg = prefix_or_id
        return [ApiKey(*r) for r in await self.pool.fetch(sql, arg)]

    async def find_active_key(self, key_hash: str) -> KeyOwner | None:
        row = await self.pool.fetchrow(
            "SELECT k.id, k.user_id, u.login, k.scope FROM api_keys k"
            " JOIN users u ON u.id = k.user_id WHERE k.hash = $1 AND k.revoked_at IS NULL",
            key_hash,
        )
        return KeyOwner(row[0], row[1], row[2], row[3]) if row else None

    async def revoke_key(self, key_id: int, user_id: int | None = None) -> bool:
        async with self._write() as db:
            return await _revoke(db, key_id, user_id)

    async def rotate_key(
        self, user_id: int, key_id: int, prefix: str, key_hash: str
    ) -> ApiKey | None:
        async with self._write() as db:
            # FOR UPDATE: of two rotations at once, the second waits and then finds the key
            # revoked, instead of creating a second replacement.
            row = await db.fetchrow(
                "SELECT name, scope FROM api_keys"
                " WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL FOR UPDATE",
                key_id,
                user_id,
            )
            if row is None:
                return None
            new = await _insert_key(db, user_id, row["name"], prefix, key_hash, row["scope"])
            # Before the revocation, which would release them: the names pass to the new key.
            await db.execute("UPDATE providers SET key_id = $1 WHERE key_id = $2", new.id, key_id)
            await _revoke(db, key_id, user_id)
            return new

    async def keys_version(self) -> int:
        return int(
            await self.pool.fetchval("SELECT value FROM counters WHERE name = 'keys_version'")
        )

    async def touch_keys(self, last_used: Mapping[int, float]) -> None:
        if not last_used:
            return
        # greatest(): hubs flush at different times; an older stamp never overwrites a newer.
        await self.pool.execute(
            "UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, t.ts)"
            " FROM unnest($1::bigint[], $2::float8[]) AS t(id, ts) WHERE k.id = t.id",
            list(last_used),
            [float(ts) for ts in last_used.values()],
        )

    # -------------------------------------------------------------- providers
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
        health_json = json.dumps(health, separators=(",", ":"))
        async with self._write() as db:
            # The conflict clause waits for a concurrent heartbeat of the same name and then
            # judges the binding it committed: of two keys racing for a new name, one wins.
            row = await db.fetchrow(
                "WITH p AS (INSERT INTO providers (user_id, name, callback_url, agent_version,"
                " health, created_at, last_heartbeat_at, key_id, transport)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $6, $8, $9) {UPSERT_PROVIDER}"
                " RETURNING id, created_at, key_id)"
                " SELECT id, created_at, key_id, pg_notify($7, $1::text || ':' || id::text)"
                " FROM p",
                user_id,
                name,
                callback_url,
                agent_version,
                health_json,
                now,
                PROVIDERS_CHANNEL,
                key_id,
                transport,
            )
            if row is None:
                raise ProviderNameTaken(f"provider {name!r} belongs to another key")
            provider_id, created_at, bound = row[0], row[1], row[2]
            await db.execute(BUMP_PROVIDERS_VERSION)
            await db.execute("DELETE FROM services WHERE provider_id = $1", provider_id)
            await pgrows.insert_services(db, provider_id, services)
        return ProviderRecord(
            provider_id,
            user_id,
            name,
            callback_url,
            agent_version,
            health,
            created_at,
            now,
            tuple(services),
            bound,
            transport,
        )

    async def touch_providers(self, seen: Mapping[int, tuple[float, dict[str, Any]]]) -> None:
        if not seen:
            return
        # No NOTIFY: liveness is each hub's own; descriptions are what other hubs must hear.
        async with self._write() as db:
            await db.execute(
                "UPDATE providers p SET last_heartbeat_at = t.ts, health = t.health"
                " FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS t(id, ts, health)"
                " WHERE p.id = t.id AND p.last_heartbeat_at < t.ts",
                list(seen),
                [float(ts) for ts, _ in seen.values()],
                [json.dumps(h, separators=(",", ":")) for _, h in seen.values()],
            )
            await db.execute(BUMP_LAST_SEEN_VERSION)

    async def list_providers(self, user_id: int | None = None) -> list[ProviderRecord]:
        if user_id is None:
            return await self._providers("", ())
        return await self._providers("WHERE p.user_id = $1", (user_id,))

    async def get_provider(self, user_id: int, provider_id: int) -> ProviderRecord | None:
        found = await self._providers("WHERE p.id = $1 AND p.user_id = $2", (provider_id, user_id))
        return found[0] if found else None

    async def get_providers(self, ids: Collection[int]) -> list[ProviderRecord]:
        return await self._providers("WHERE p.id = ANY($1::bigint[])", (list(ids),))

    async def provider_ids(self) -> set[int]:
        return {row[0] for row in await self.pool.fetch("SELECT id FROM providers")}

    async def provider_changes(
        self, since: float, previous: ProviderChanges | None = None
    ) -> ProviderChanges:
        async with self.pool.acquire() as db:
            # The versions first (read committed: each statement sees the latest commits), so a
            # write between the two reads is seen again next time rather than missed.
            found = provider_counters(await db.fetch(READ_PROVIDER_COUNTERS))
            if found.same_versions(previous):
                return found
            seen = await db.fetch(
                "SELECT id, user_id, last_heartbeat_at, health FROM providers"
                " WHERE last_heartbeat_at > $1 ORDER BY id",
                since,
            )
        return dataclasses.replace(found, seen=provider_seen(seen))

    async def _providers(self, where: str, args: Sequence[Any]) -> list[ProviderRecord]:
        """Providers matching ``where`` (on ``providers p``) with their services and models."""
        # One snapshot for the three queries, so a heartbeat committed in between can't pair
        # a provider with services it no longer has.
        async with (
            self.pool.acquire() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            prows = await db.fetch(f"SELECT p.* FROM providers p {where} ORDER BY p.id", *args)
            srows = await db.fetch(
                "SELECT s.id, s.provider_id, s.name, s.type, s.engine, s.features"
                f" FROM services s JOIN providers p ON p.id = s.provider_id {where}"
                " ORDER BY s.provider_id, s.position",
                *args,
            )
            mrows = await db.fetch(
                "SELECT m.service_id, m.model FROM service_models m"
                " JOIN services s ON s.id = m.service_id"
                f" JOIN providers p ON p.id = s.provider_id {where}"
                " ORDER BY m.service_id, m.position",
                *args,
            )
        return assemble_providers(prows, srows, mrows)

    async def delete_provider(self, user_id: int, provider_id: int) -> bool:
        async with self._write() as db:
            deleted = await db.fetchval(
                "DELETE FROM providers WHERE id = $1 AND user_id = $2 RETURNING id",
                provider_id,
                user_id,
            )
            if deleted is None:
                return False
            await db.execute(BUMP_PROVIDERS_VERSION)
            await db.execute(
                "SELECT pg_notify($1, $2)", PROVIDERS_CHANNEL, f"{user_id}:{provider_id}"
            )
            return True

    # -------------------------------------------------------- fallback models
    async def set_fallback(self, user_id: int, model: str, fallback: str, now: float) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT INTO model_fallbacks (user_id, model, fallback, created_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, model)"
                " DO UPDATE SET fallback = excluded.fallback",
                user_id,
                model,
                fallback,
                now,
            )

    async def delete_fallback(self, user_id: int, model: str) -> bool:
        async with self._write() as db:
            deleted = await db.fetchval(
                "DELETE FROM model_fallbacks WHERE user_id = $1 AND model = $2 RETURNING model",
                user_id,
                model,
            )
            return deleted is not None

    async def list_fallbacks(self, user_id: int | None = None) -> list[Fallback]:
        sql = "SELECT user_id, model, fallback FROM model_fallbacks"
        args: tuple[Any, ...] = ()
        if user_id is not None:
            sql, args = sql + " WHERE user_id = $1", (user_id,)
        rows = await self.pool.fetch(sql + " ORDER BY user_id, model", *args)
        return [Fallback(r[0], r[1], r[2]) for r in rows]

    # -------------------------------------------------------- request history
    async def add_requests(self, rows: Iterable[RequestRecord]) -> None:
        values = [request_values(r) for r in rows]
        if not values:
            return
        placeholders = ", ".join(f"${i}" for i in range(1, len(REQUEST_COLUMNS) + 1))
        async with self._write() as db:
            await db.executemany(
                f"INSERT INTO requests ({_REQUEST_COLS}) VALUES ({placeholders})"
                " ON CONFLICT (id) DO NOTHING",
                values,
            )

    async def prune_requests(self, before: float, limit: int) -> int:
        status = await self.pool.execute(
            "DELETE FROM requests WHERE id IN (SELECT id FROM requests"
            " WHERE started_at < $1 ORDER BY started_at LIMIT $2)",
            before,
            limit,
        )
        return int(status.split()[-1])  # "DELETE n"

    async def list_requests(
        self, user_id: int, flt: RequestFilter | None = None, limit: int = 50, offset: int = 0
    ) -> list[RequestRecord]:
        where, args = pgrows.request_where(user_id, flt)
        n = len(args)
        # COLLATE "C": ties on started_at break by the id's bytes, as in SQLite, whatever
        # the database's collation.
        rows = await self.pool.fetch(
            f"SELECT {_REQUEST_COLS} FROM requests {where}"
            f' ORDER BY started_at DESC, id COLLATE "C" DESC LIMIT ${n + 1} OFFSET ${n + 2}',
            *args,
            limit,
            offset,
        )
        return [pgrows.request(r) for r in rows]

    async def count_requests(self, user_id: int, flt: RequestFilter | None = None) -> int:
        where, args = pgrows.request_where(user_id, flt)
        return int(await self.pool.fetchval(f"SELECT count(*) FROM requests {where}", *args))

    async def get_request(self, user_id: int, request_id: str) -> RequestRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_REQUEST_COLS} FROM requests WHERE id = $1 AND user_id = $2",
            request_id,
            user_id,
        )
        return pgrows.request(row) if row else None

    async def request_buckets(
        self, user_id: int, flt: RequestFilter | None, bucket_seconds: float
    ) -> list[RequestBucket]:
        where, args = pgrows.request_where(user_id, flt, first=2)
        rows = await self.pool.fetch(
            "SELECT floor(started_at / $1)::bigint AS b, count(*),"
            " count(*) FILTER (WHERE status >= 400), avg(ttfb_ms), avg(duration_ms),"
            " coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(completion_tokens), 0)::bigint"
            f" FROM requests {where} GROUP BY b ORDER BY b",
            float(bucket_seconds),
            *args,
        )
        return [
            RequestBucket(r[0] * bucket_seconds, r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows
        ]

    # ---------------------------------------------------- dashboard sign-in
    async def create_auth_token(
        self, kind: str, token_hash: str, user_id: int | None, expires_at: float, data: str = ""
    ) -> None:
        now = time.time()
        async with self._write() as db:
            await db.execute("DELETE FROM auth_tokens WHERE expires_at <= $1", now)
            await db.execute(
                "INSERT INTO auth_tokens (hash, kind, user_id, data, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                token_hash,
                kind,
                user_id,
                data,
                now,
                expires_at,
            )

    async def get_auth_token(self, kind: str, token_hash: str, now: float) -> AuthToken | None:
        row = await self.pool.fetchrow(
            f"SELECT {_TOKEN_COLS} FROM auth_tokens"
            " WHERE hash = $1 AND kind = $2 AND expires_at > $3",
            token_hash,
            kind,
            now,
        )
        return AuthToken(*row) if row else None

    async def consume_auth_token(self, kind: str, token_hash: str, now: float) -> AuthToken | None:
        row = await self.pool.fetchrow(
            f"DELETE FROM auth_tokens WHERE hash = $1 AND kind = $2 RETURNING {_TOKEN_COLS}",
            token_hash,
            kind,
        )
        token = AuthToken(*row) if row else None
        return token if token is not None and token.expires_at > now else None

    async def delete_auth_token(self, kind: str, token_hash: str) -> bool:
        deleted = await self.pool.fetchval(
            "DELETE FROM auth_tokens WHERE hash = $1 AND kind = $2 RETURNING 1", token_hash, kind
        )
        return deleted is not None


async def _upsert_github_user(db: Connection, github_id: int, login: str) -> User:
    row = await db.fetchrow("SELECT * FROM users WHERE github_id = $1 FOR UPDATE", github_id)
    # Only a GitHub account steps aside for another (GitHub logins can be renamed and then
    # taken); a local user is never renamed: the INSERT or UPDATE fails instead.
    rename = (
        "UPDATE users SET login = login || '~' || id"
        " WHERE login = $1 AND id <> $2 AND github_id IS NOT NULL"
    )
    if row is not None:
        if row["login"] != login:
            # The login moved to this GitHub account; free it from any stale holder.
            await db.execute(rename, login, row["id"])
            await db.execute("UPDATE users SET login = $1 WHERE id = $2", login, row["id"])
        return User(row["id"], login, github_id, row["created_at"])
    await db.execute(rename, login, 0)
    now = time.time()
    user_id = await db.fetchval(
        "INSERT INTO users (login, github_id, created_at) VALUES ($1, $2, $3) RETURNING id",
        login,
        github_id,
        now,
    )
    return User(user_id, login, github_id, now)


async def _insert_key(
    db: Connection, user_id: int, name: str, prefix: str, key_hash: str, scope: str
) -> ApiKey:
    now = time.time()
    key_id = await db.fetchval(
        "INSERT INTO api_keys (user_id, name, prefix, hash, created_at, scope)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        user_id,
        name,
        prefix,
        key_hash,
        now,
        scope,
    )
    await _key_changed(db, key_id)
    return ApiKey(key_id, user_id, name, prefix, now, None, None, scope)


async def _revoke(db: Connection, key_id: int, user_id: int | None) -> bool:
    sql = "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
    args: list[Any] = [time.time(), key_id]
    if user_id is not None:
        sql += " AND user_id = $3"
        args.append(user_id)
    if await db.fetchval(sql + " RETURNING id", *args) is None:
        return False
    # A revoked key owns no provider name: any key of the user may take them now.
    await db.execute("UPDATE providers SET key_id = NULL WHERE key_id = $1", key_id)
    await _key_changed(db, key_id)
    return True


async def _key_changed(db: Connection, key_id: int) -> None:
    """Bump ``keys_version`` and tell the other hubs, in the caller's transaction."""
    await db.execute(
        "WITH v AS (UPDATE counters SET value = value + 1 WHERE name = 'keys_version'"
        " RETURNING value) SELECT pg_notify($1, $2) FROM v",
        KEYS_CHANNEL,
        str(key_id),
    )
