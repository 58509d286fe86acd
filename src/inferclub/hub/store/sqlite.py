"""SQLite backend (aiosqlite): WAL, a busy timeout, ``BEGIN IMMEDIATE`` for every write."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from inferclub.hub.store.base import (
    BUMP_LAST_SEEN_VERSION,
    BUMP_PROVIDERS_VERSION,
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

log = logging.getLogger(__name__)

#: One ``(?, ?, ...)`` per history row in a multi-row INSERT, and rows per statement within
#: SQLite's limit on a statement's parameters (32,766 since 3.32, 999 before).
_ROW_PLACEHOLDERS = "(" + ", ".join("?" for _ in REQUEST_COLUMNS) + ")"
_MAX_PARAMETERS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_ROWS_PER_INSERT = _MAX_PARAMETERS // len(REQUEST_COLUMNS)
#: Last-seen rows per UPDATE (three parameters each); UPDATE ... FROM needs SQLite 3.33.
_PROVIDERS_PER_UPDATE = _MAX_PARAMETERS // 3
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)

BUSY_TIMEOUT_MS = 10_000
#: Reader connections beside the one writer.
READERS = 2


def migrations() -> list[tuple[int, str]]:
    """``(version, sql)`` for every file in ``migrations/``, in order."""
    found = []
    for entry in resources.files("inferclub.hub.store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def _owner_only(db: Path) -> None:
    """Mode 0600 on the database and its WAL and shared-memory files (older installs made
    them world-readable)."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        # One writer connection, one lock: statements of two coroutines never interleave
        # inside a transaction, and no write waits on another write of this process.
        self._lock = asyncio.Lock()
        # Readers beside it (WAL lets them read while the writer writes), so authentication,
        # routing reloads and the dashboard never queue behind history batches.
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []

    async def open(self) -> None:
        on_disk = str(self.path) != ":memory:"
        if on_disk:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 (an empty file is an empty database): it holds key hashes, sessions
            # and usage history, and SQLite gives the -wal and -shm files the database's mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            if on_disk:
                _owner_only(self.path)
            await self._db.execute("PRAGMA synchronous = NORMAL")
            await self._db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
            if str(self.path) != ":memory:":  # a memory database is per connection
                for _ in range(READERS):
                    await self._open_reader()
        except sqlite3.Error as exc:
            # Close the connection's thread too, or the process would never exit.
            await self.close()
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from None
        except BaseException:
            await self.close()
            raise

    async def _open_reader(self) -> None:
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._all_readers.append(reader)
        reader.row_factory = sqlite3.Row
        await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await reader.execute("PRAGMA query_only = ON")
        self._readers.put_nowait(reader)

    async def close(self) -> None:
        readers, self._all_readers = self._all_readers, []
        self._readers = asyncio.Queue()
        for reader in readers:
            await reader.close()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def listen(self, on_change: ChangeCallback) -> None:
        """Nothing to do: SQLite has no way to push a change to another process. Hubs sharing
        the file see key changes by polling :meth:`keys_version` and provider changes by
        asking for :meth:`provider_changes` on a timer."""

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def _migrate(self) -> None:
        # SQLite's procedure for rebuilding a table (a migration may): foreign keys off
        # outside the transaction, or dropping the old table would cascade into its children;
        # checked before the commit, so a migration cannot leave a dangling reference.
        await self.db.execute("PRAGMA foreign_keys = OFF")
        try:
            async with self._write() as db:
                current = int((await _one(db, "PRAGMA user_version"))[0])
                for version, sql in migrations():
                    if version <= current:
                        continue
                    log.info("applying schema migration %04d", version)
                    for statement in _split_sql(sql):
                        await db.execute(statement)
                    await db.execute(f"PRAGMA user_version = {version}")
                if await (await db.execute("PRAGMA foreign_key_check")).fetchone():
                    raise StoreError(f"{self.path}: a schema migration broke a foreign key")
        finally:
            await self.db.execute("PRAGMA foreign_keys = ON")

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self.db
            try:
                # IMMEDIATE takes the write lock up front, so a read-then-write transaction
                # can't fail with SQLITE_BUSY halfway (the busy handler covers the wait).
                await db.execute("BEGIN IMMEDIATE")
                yield db
            except BaseException:
                # Also when the writer was cancelled while BEGIN was on its way: statements
                # run in order on the connection's thread, so this ROLLBACK comes after it.
                with contextlib.suppress(sqlite3.OperationalError):
                    await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """A reader connection, in a read transaction: one snapshot for all its statements."""
        if not self._all_readers:
            async with self._lock:
                yield self.db
            return
        reader = await self._readers.get()
        try:
            await reader.execute("BEGIN")
            try:
                yield reader
            finally:
                await reader.execute("COMMIT")
        finally:
            self._readers.put_nowait(reader)

    # ------------------------------------------------------------------ users
    async def create_user(self, login: str, github_id: int | None = None) -> User:
        now = time.time()
        try:
            async with self._write() as db:
                cur = await db.execute(
                    "INSERT INTO users (login, github_id, created_at) VALUES (?, ?, ?)",
                    (login, github_id, now),
                )
                return User(cur.lastrowid or 0, login, github_id, now)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"user {login!r} already exists") from None

    async def get_user(self, login: str) -> User | None:
        async with self._read() as db:
            row = await (
                await db.execute("SELECT * FROM users WHERE login = ?", (login,))
            ).fetchone()
        return _user(row) if row else None

    async def get_user_by_id(self, user_id: int) -> User | None:
        async with self._read() as db:
            row = await (
                await db.execute("SELECT * FROM users WHERE id = ?", (user_id,))
            ).fetchone()
        return _user(row) if row else None

    async def upsert_github_user(self, github_id: int, login: str) -> User:
        try:
            async with self._write() as db:
                return await _upsert_github_user(db, github_id, login)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"a local user holds the login {login!r}") from None

    async def count_users(self) -> int:
        async with self._read() as db:
            return int((await _one(db, "SELECT count(*) FROM users"))[0])

    async def list_users(self) -> list[User]:
        async with self._read() as db:
            rows = await (await db.execute("SELECT * FROM users ORDER BY id")).fetchall()
        return [_user(r) for r in rows]

    # ------------------------------------------------------------------- keys
    async def create_key(
        self, user_id: int, name: str, prefix: str, key_hash: str, scope: str = "all"
    ) -> ApiKey:
        async with self._write() as db:
            return await self._insert_key(db, user_id, name, prefix, key_hash, scope)

    async def _insert_key(
        self,
        db: aiosqlite.Connection,
        user_id: int,
        name: str,
        prefix: str,
        key_hash: str,
        scope: str,
    ) -> ApiKey:
        now = time.time()
        cur = await db.execute(
            "INSERT INTO api_keys (user_id, name, prefix, hash, created_at, scope)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (user_id, name, prefix, key_hash, now, scope),
        )
        await _bump_keys_version(db)
        return ApiKey(cur.lastrowid or 0, user_id, name, prefix, now, None, None, scope)

    async def list_keys(self, user_id: int) -> list[ApiKey]:
        async with self._read() as db:
            rows = await (
                await db.execute(
                    f"SELECT {_KEY_COLS} FROM api_keys WHERE user_id = ? ORDER BY id", (user_id,)
                )
            ).fetchall()
        return [_key(r) for r in rows]

    async def get_key(self, user_id: int, key_id: int) -> ApiKey | None:
        async with self._read() as db:
            row = await (
                await db.execute(
                    f"SELECT {_KEY_COLS} FROM api_keys WHERE id = ? AND user_id = ?",
                    (key_id, user_id),
                )
            ).fetchone()
        return _key(row) if row else None

    async def find_keys(self, prefix_or_id: str) -> list[ApiKey]:
        async with self._read() as db:
            if prefix_or_id.isdigit():
                sql = f"SELECT {_KEY_COLS} FROM api_keys WHERE id = ?"
                args: tuple[Any, ...] = (int(prefix_or_id),)
            else:
                sql = f"SELECT {_KEY_COLS} FROM api_keys WHERE prefix = ? ORDER BY id"
                args = (prefix_or_id,)
            rows = await (await db.execute(sql, args)).fetchall()
        return [_key(r) for r in rows]

    async def find_active_key(self, key_hash: str) -> KeyOwner | None:
        async with self._read() as db:
            row = await (
                await db.execute(
                    "SELECT k.id, k.user_id, u.login, k.scope FROM api_keys k"
                    " JOIN users u ON u.id = k.user_id WHERE k.hash = ? AND k.revoked_at IS NULL",
                    (key_hash,),
                )
            ).fetchone()
        return KeyOwner(row[0], row[1], row[2], row[3]) if row else None

    async def revoke_key(self, key_id: int, user_id: int | None = None) -> bool:
        async with self._write() as db:
            return await self._revoke(db, key_id, user_id)

    async def _revoke(self, db: aiosqlite.Connection, key_id: int, user_id: int | None) -> bool:
        sql = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        args: tuple[Any, ...] = (time.time(), key_id)
        if user_id is not None:
            sql += " AND user_id = ?"
            args += (user_id,)
        cur = await db.execute(sql, args)
        if cur.rowcount:
            # A revoked key owns no provider name: any key of the user may take them now.
            await db.execute("UPDATE providers SET key_id = NULL WHERE key_id = ?", (key_id,))
            await _bump_keys_version(db)
        return bool(cur.rowcount)

    async def rotate_key(
        self, user_id: int, key_id: int, prefix: str, key_hash: str
    ) -> ApiKey | None:
        async with self._write() as db:
            row = await (
                await db.execute(
                    "SELECT name, scope FROM api_keys"
                    " WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
                    (key_id, user_id),
                )
            ).fetchone()
            if row is None:
                return None
            new = await self._insert_key(db, user_id, row["name"], prefix, key_hash, row["scope"])
            # Before the revocation, which would release them: the names pass to the new key.
            await db.execute("UPDATE providers SET key_id = ? WHERE key_id = ?", (new.id, key_id))
            await self._revoke(db, key_id, user_id)
            return new

    async def keys_version(self) -> int:
        async with self._read() as db:
            row = await _one(db, "SELECT value FROM counters WHERE name = 'keys_version'")
        return int(row[0])

    async def touch_keys(self, last_used: Mapping[int, float]) -> None:
        if not last_used:
            return
        async with self._write() as db:
            await db.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                [(ts, key_id) for key_id, ts in last_used.items()],
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
            row = await (
                await db.execute(
                    "INSERT INTO providers (user_id, name, callback_url, agent_version, health,"
                    " created_at, last_heartbeat_at, key_id, transport)"
                    f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) {UPSERT_PROVIDER}"
                    " RETURNING id, created_at, key_id",
                    (user_id, name, callback_url, agent_version, health_json, now, now, key_id)
                    + (transport,),
                )
            ).fetchone()
            if row is None:
                raise ProviderNameTaken(f"provider {name!r} belongs to another key")
            provider_id, created_at, bound = row[0], row[1], row[2]
            await db.execute(BUMP_PROVIDERS_VERSION)
            await db.execute("DELETE FROM services WHERE provider_id = ?", (provider_id,))
            for position, svc in enumerate(services):
                cur = await db.execute(
                    "INSERT INTO services (provider_id, position, name, type, engine, features)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        provider_id,
                        position,
                        svc.name,
                        svc.type,
                        svc.engine,
                        json.dumps(svc.features),
                    ),
                )
                await db.executemany(
                    "INSERT INTO service_models (service_id, position, model) VALUES (?, ?, ?)",
                    [(cur.lastrowid, i, m) for i, m in enumerate(svc.models)],
                )
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
        rows = [
            (pid, ts, json.dumps(health, separators=(",", ":")))
            for pid, (ts, health) in seen.items()
        ]
        async with self._write() as db:
            if _UPDATE_FROM:
                # Many providers per statement (UPDATE ... FROM a VALUES list), for the reason
                # add_requests gives: a statement per provider waited on the GIL once each.
                for start in range(0, len(rows), _PROVIDERS_PER_UPDATE):
                    chunk = rows[start : start + _PROVIDERS_PER_UPDATE]
                    await db.execute(
                        "WITH seen(id, ts, health) AS (VALUES "
                        + ", ".join(["(?, ?, ?)"] * len(chunk))
                        + ") UPDATE providers SET last_heartbeat_at = seen.ts,"
                        " health = seen.health FROM seen WHERE providers.id = seen.id"
                        " AND providers.last_heartbeat_at < seen.ts",
                        [value for row in chunk for value in row],
                    )
            else:
                await db.executemany(
                    "UPDATE providers SET last_heartbeat_at = ?, health = ?"
                    " WHERE id = ? AND last_heartbeat_at < ?",
                    [(ts, health, pid, ts) for pid, ts, health in rows],
                )
            await db.execute(BUMP_LAST_SEEN_VERSION)

    async def list_providers(self, user_id: int | None = None) -> list[ProviderRecord]:
        if user_id is None:
            return await self._providers("", ())
        return await self._providers("WHERE p.user_id = ?", (user_id,))

    async def get_provider(self, user_id: int, provider_id: int) -> ProviderRecord | None:
        found = await self._providers("WHERE p.id = ? AND p.user_id = ?", (provider_id, user_id))
        return found[0] if found else None

    async def get_providers(self, ids: Collection[int]) -> list[ProviderRecord]:
        wanted = sorted(ids)
        found: list[ProviderRecord] = []
        # In slices: SQLite caps the number of parameters of one statement.
        for at in range(0, len(wanted), 500):
            part = wanted[at : at + 500]
            where = f"WHERE p.id IN ({', '.join('?' * len(part))})"
            found += await self._providers(where, tuple(part))
        return found

    async def provider_ids(self) -> set[int]:
        async with self._read() as db:
            return {row[0] for row in await db.execute_fetchall("SELECT id FROM providers")}

    async def provider_changes(
        self, since: float, previous: ProviderChanges | None = None
    ) -> ProviderChanges:
        async with self._read() as db:
            # The versions first: a write between the two reads is then seen again next time
            # rather than missed.
            found = provider_counters(await db.execute_fetchall(READ_PROVIDER_COUNTERS))
            if found.same_versions(previous):
                return found
            seen = await db.execute_fetchall(
                "SELECT id, user_id, last_heartbeat_at, health FROM providers"
                " WHERE last_heartbeat_at > ? ORDER BY id",
                (since,),
            )
        return dataclasses.replace(found, seen=provider_seen(seen))

    async def _providers(self, where: str, args: tuple[Any, ...]) -> list[ProviderRecord]:
        """Providers matching ``where`` (on ``providers p``) with their services and models."""
        async with self._read() as db:
            prows = await (
                await db.execute(f"SELECT p.* FROM providers p {where} ORDER BY p.id", args)
            ).fetchall()
            srows = await (
                await db.execute(
                    "SELECT s.id, s.provider_id, s.name, s.type, s.engine, s.features"
                    f" FROM services s JOIN providers p ON p.id = s.provider_id {where}"
                    " ORDER BY s.provider_id, s.position",
                    args,
                )
            ).fetchall()
            mrows = await (
                await db.execute(
                    "SELECT m.service_id, m.model FROM service_models m"
                    " JOIN services s ON s.id = m.service_id"
                    f" JOIN providers p ON p.id = s.provider_id {where}"
                    " ORDER BY m.service_id, m.position",
                    args,
                )
            ).fetchall()
        return assemble_providers(prows, srows, mrows)

    async def delete_provider(self, user_id: int, provider_id: int) -> bool:
        async with self._write() as db:
            cur = await db.execute(
                "DELETE FROM providers WHERE id = ? AND user_id = ?", (provider_id, user_id)
            )
            if cur.rowcount:
                await db.execute(BUMP_PROVIDERS_VERSION)
            return bool(cur.rowcount)

    # -------------------------------------------------------- fallback models
    async def set_fallback(self, user_id: int, model: str, fallback: str, now: float) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT INTO model_fallbacks (user_id, model, fallback, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, model)"
                " DO UPDATE SET fallback = excluded.fallback",
                (user_id, model, fallback, now),
            )

    async def delete_fallback(self, user_id: int, model: str) -> bool:
        async with self._write() as db:
            cur = await db.execute(
                "DELETE FROM model_fallbacks WHERE user_id = ? AND model = ?", (user_id, model)
            )
            return bool(cur.rowcount)

    async def list_fallbacks(self, user_id: int | None = None) -> list[Fallback]:
        sql = "SELECT user_id, model, fallback FROM model_fallbacks"
        args: tuple[Any, ...] = ()
        if user_id is not None:
            sql, args = sql + " WHERE user_id = ?", (user_id,)
        async with self._read() as db:
            rows = await (await db.execute(sql + " ORDER BY user_id, model", args)).fetchall()
        return [Fallback(r[0], r[1], r[2]) for r in rows]

    # -------------------------------------------------------- request history
    async def add_requests(self, rows: Iterable[RequestRecord]) -> None:
        # A bool (``cancelled``) is an int to sqlite3: stored as 0 or 1.
        values = [request_values(r) for r in rows]
        if not values:
            return
        # Many rows per statement, not executemany(): the sqlite3 module takes the GIL back
        # after every row's step, and with the event loop busy each take waits up to the
        # interpreter's switch interval (5 ms). A 1,000-row batch then took ~0.5 s, and the
        # writer fell behind for good at ~1,000 requests/s; one statement waits once.
        async with self._write() as db:
            for start in range(0, len(values), _ROWS_PER_INSERT):
                chunk = values[start : start + _ROWS_PER_INSERT]
                await db.execute(
                    f"INSERT OR IGNORE INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES "
                    + ", ".join([_ROW_PLACEHOLDERS] * len(chunk)),
                    [value for row in chunk for value in row],
                )

    async def prune_requests(self, before: float, limit: int) -> int:
        async with self._write() as db:
            cur = await db.execute(
                "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests"
                " WHERE started_at < ? ORDER BY started_at LIMIT ?)",
                (before, limit),
            )
            return cur.rowcount

    async def list_requests(
        self, user_id: int, flt: RequestFilter | None = None, limit: int = 50, offset: int = 0
    ) -> list[RequestRecord]:
        where, args = _request_where(user_id, flt)
        async with self._read() as db:
            rows = await (
                await db.execute(
                    f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests {where}"
                    " ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?",
                    (*args, limit, offset),
                )
            ).fetchall()
        return [_request(r) for r in rows]

    async def count_requests(self, user_id: int, flt: RequestFilter | None = None) -> int:
        where, args = _request_where(user_id, flt)
        async with self._read() as db:
            return int((await _one(db, f"SELECT count(*) FROM requests {where}", args))[0])

    async def get_request(self, user_id: int, request_id: str) -> RequestRecord | None:
        async with self._read() as db:
            row = await (
                await db.execute(
                    f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests"
                    " WHERE id = ? AND user_id = ?",
                    (request_id, user_id),
                )
            ).fetchone()
        return _request(row) if row else None

    async def request_buckets(
        self, user_id: int, flt: RequestFilter | None, bucket_seconds: float
    ) -> list[RequestBucket]:
        where, args = _request_where(user_id, flt)
        async with self._read() as db:
            rows = await (
                await db.execute(
                    "SELECT CAST(started_at / ? AS INTEGER) AS b, count(*),"
                    " sum(status >= 400), avg(ttfb_ms), avg(duration_ms),"
                    " coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)"
                    f" FROM requests {where} GROUP BY b ORDER BY b",
                    (bucket_seconds, *args),
                )
            ).fetchall()
        return [
            RequestBucket(r[0] * bucket_seconds, r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows
        ]

    # ---------------------------------------------------- dashboard sign-in
    async def create_auth_token(
        self, kind: str, token_hash: str, user_id: int | None, expires_at: float, data: str = ""
    ) -> None:
        now = time.time()
        async with self._write() as db:
            await db.execute("DELETE FROM auth_tokens WHERE expires_at <= ?", (now,))
            await db.execute(
                "INSERT INTO auth_tokens (hash, kind, user_id, data, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash, kind, user_id, data, now, expires_at),
            )

    async def get_auth_token(self, kind: str, token_hash: str, now: float) -> AuthToken | None:
        async with self._read() as db:
            row = await (
                await db.execute(
                    f"SELECT {_TOKEN_COLS} FROM auth_tokens"
                    " WHERE hash = ? AND kind = ? AND expires_at > ?",
                    (token_hash, kind, now),
                )
            ).fetchone()
        return AuthToken(*row) if row else None

    async def consume_auth_token(self, kind: str, token_hash: str, now: float) -> AuthToken | None:
        async with self._write() as db:
            row = await (
                await db.execute(
                    f"DELETE FROM auth_tokens WHERE hash = ? AND kind = ? RETURNING {_TOKEN_COLS}",
                    (token_hash, kind),
                )
            ).fetchone()
        token = AuthToken(*row) if row else None
        return token if token is not None and token.expires_at > now else None

    async def delete_auth_token(self, kind: str, token_hash: str) -> bool:
        async with self._write() as db:
            cur = await db.execute(
                "DELETE FROM auth_tokens WHERE hash = ? AND kind = ?", (token_hash, kind)
            )
            return bool(cur.rowcount)


async def _upsert_github_user(db: aiosqlite.Connection, github_id: int, login: str) -> User:
    # Only a GitHub account steps aside for another (GitHub logins can be renamed and then
    # taken); a local user is never renamed: the INSERT or UPDATE fails instead.
    rename = (
        "UPDATE users SET login = login || '~' || id"
        " WHERE login = ? AND id != ? AND github_id IS NOT NULL"
    )
    row = await (
        await db.execute("SELECT * FROM users WHERE github_id = ?", (github_id,))
    ).fetchone()
    if row is not None:
        if row["login"] != login:
            # The login moved to this GitHub account; free it from any stale holder.
            await db.execute(rename, (login, row["id"]))
            await db.execute("UPDATE users SET login = ? WHERE id = ?", (login, row["id"]))
        return User(row["id"], login, github_id, row["created_at"])
    await db.execute(rename, (login, 0))
    now = time.time()
    cur = await db.execute(
        "INSERT INTO users (login, github_id, created_at) VALUES (?, ?, ?)",
        (login, github_id, now),
    )
    return User(cur.lastrowid or 0, login, github_id, now)


_KEY_COLS = "id, user_id, name, prefix, created_at, last_used_at, revoked_at, scope"
_TOKEN_COLS = "kind, user_id, data, created_at, expires_at"


async def _one(db: aiosqlite.Connection, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row:
    """The first row of a query that always returns one (a count, a RETURNING insert)."""
    row = await (await db.execute(sql, args)).fetchone()
    if row is None:
        raise StoreError(f"no row from {sql.split()[0]}")
    return row


async def _bump_keys_version(db: aiosqlite.Connection) -> None:
    await db.execute("UPDATE counters SET value = value + 1 WHERE name = 'keys_version'")


def _split_sql(sql: str) -> list[str]:
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["login"], row["github_id"], row["created_at"])


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(*row)


def _request(row: sqlite3.Row) -> RequestRecord:
    data = dict(zip(REQUEST_COLUMNS, row, strict=True))
    data["cancelled"] = bool(data["cancelled"])
    return RequestRecord(**data)


def _request_where(user_id: int, flt: RequestFilter | None) -> tuple[str, tuple[Any, ...]]:
    terms = flt.terms() if flt is not None else []
    clauses = ["user_id = ?", *(f"{column} {op} ?" for column, op, _ in terms)]
    args: tuple[Any, ...] = (user_id, *(value for _, _, value in terms))
    if flt is not None and flt.before is not None:
        clauses.append("(started_at, id) < (?, ?)")
        args += (float(flt.before[0]), str(flt.before[1]))
    return "WHERE " + " AND ".join(clauses), args
