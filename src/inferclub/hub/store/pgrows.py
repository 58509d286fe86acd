"""Rows to records and back for the PostgreSQL store: the multi-row pieces of its queries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from inferclub.hub.store.base import RequestFilter
from inferclub.hub.store.models import (
    REQUEST_COLUMNS,
    RequestRecord,
    ServiceInfo,
    User,
)
from inferclub.hub.store.pgschema import Connection


async def insert_services(
    db: Connection, provider_id: int, services: Sequence[ServiceInfo]
) -> None:
    if not services:
        return
    # Two statements for any number of services and models (unnest), not one per row.
    rows = await db.fetch(
        "INSERT INTO services (provider_id, position, name, type, engine, features)"
        " SELECT $1, s.position, s.name, s.type, s.engine, s.features"
        " FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[])"
        " AS s(position, name, type, engine, features) RETURNING id, position",
        provider_id,
        list(range(len(services))),
        [s.name for s in services],
        [s.type for s in services],
        [s.engine for s in services],
        [json.dumps(list(s.features)) for s in services],
    )
    service_ids = {r["position"]: r["id"] for r in rows}
    models = [
        (service_ids[pos], i, model)
        for pos, svc in enumerate(services)
        for i, model in enumerate(svc.models)
    ]
    if models:
        await db.execute(
            "INSERT INTO service_models (service_id, position, model)"
            " SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[])",
            [m[0] for m in models],
            [m[1] for m in models],
            [m[2] for m in models],
        )


def user(row: asyncpg.Record) -> User:
    return User(row["id"], row["login"], row["github_id"], row["created_at"])


def request(row: asyncpg.Record) -> RequestRecord:
    return RequestRecord(**dict(zip(REQUEST_COLUMNS, row, strict=True)))


def request_where(user_id: int, flt: RequestFilter | None, first: int = 1) -> tuple[str, list[Any]]:
    """A WHERE clause on ``requests`` whose parameters are numbered from ``$first``."""
    terms = flt.terms() if flt is not None else []
    clauses = [f"user_id = ${first}"]
    clauses += [f"{column} {op} ${first + i}" for i, (column, op, _) in enumerate(terms, 1)]
    args: list[Any] = [user_id, *(value for _, _, value in terms)]
    if flt is not None and flt.before is not None:
        n = first + len(args)
        # COLLATE "C": the same order as list_requests' ORDER BY.
        clauses.append(f'(started_at, id COLLATE "C") < (${n}, ${n + 1})')
        args += [float(flt.before[0]), str(flt.before[1])]
    return "WHERE " + " AND ".join(clauses), args
