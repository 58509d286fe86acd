"""Request history as CSV or JSON Lines, for ``inferclub history export`` and the dashboard's
CSV download. Rows are read from the store in bounded pages (keyset paging, newest first), so
an export of millions of rows holds one page in memory."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from inferclub.hub.store import RequestFilter, RequestRecord, Store, User

#: Rows read per store query.
PAGE = 500
FORMATS = ("csv", "jsonl")
#: The columns of an export, in order (CSV header, JSON keys).
COLUMNS = (
    "id",
    "user",
    "started_at",
    "endpoint",
    "type",
    "model",
    "provider",
    "provider_id",
    "service",
    "key_id",
    "status",
    "error_type",
    "error_code",
    "ttfb_ms",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "audio_seconds",
    "images",
    "bytes_in",
    "bytes_out",
    "cancelled",
    # Last, so that scripts reading the columns by position before failover keep working.
    "attempts",
    "served_model",
)
#: A spreadsheet runs a cell that starts with one of these as a formula. The columns whose
#: text a client or an engine chooses get such a cell prefixed with a quote in CSV (never in
#: JSON Lines); logins (``@octocat``) and provider names are the hub's own format.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FREE_TEXT = frozenset({"model", "served_model", "error_type", "error_code"})


async def records(
    store: Store, user: User, flt: RequestFilter | None = None, page: int = PAGE
) -> AsyncIterator[dict[str, Any]]:
    """``user``'s history rows matching ``flt`` as export records, newest first."""
    flt = flt or RequestFilter()
    providers = {p.id: p.name for p in await store.list_providers(user.id)}
    cursor: tuple[float, str] | None = None
    while True:
        batch = await store.list_requests(user.id, dataclasses.replace(flt, before=cursor), page)
        for row in batch:
            yield record(row, user.login, providers)
        if len(batch) < page:
            return
        cursor = (batch[-1].started_at, batch[-1].id)


def record(row: RequestRecord, login: str, providers: dict[int, str]) -> dict[str, Any]:
    out = {name: getattr(row, name, None) for name in COLUMNS}
    out["user"] = login
    out["started_at"] = datetime.fromtimestamp(row.started_at, UTC).isoformat(
        timespec="milliseconds"
    )
    pid = row.provider_id
    out["provider"] = providers.get(pid, "") if pid is not None else ""
    for name in ("ttfb_ms", "duration_ms"):
        value = out[name]
        if isinstance(value, float):
            out[name] = round(value, 3)
    return out


async def write(
    store: Store, users: Iterable[User], flt: RequestFilter, fmt: str, out: TextIO
) -> None:
    """Write the history of ``users`` to ``out`` in ``fmt`` (``csv`` with a header, or
    ``jsonl``), a page at a time."""
    render = csv_rows if fmt == "csv" else jsonl_rows
    if fmt == "csv":
        out.write(csv_header())
    for user in users:
        page: list[dict[str, Any]] = []
        async for rec in records(store, user, flt):
            page.append(rec)
            if len(page) >= PAGE:
                out.write(render(page))
                page.clear()
        out.write(render(page))
    out.flush()


def csv_header() -> str:
    return _csv_line(COLUMNS)


def csv_rows(recs: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([_cell(name, r[name]) for name in COLUMNS] for r in recs)
    return buf.getvalue()


def jsonl_rows(recs: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs)


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _cell(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in _FREE_TEXT and isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def parse_since(value: str) -> float:
    """``YYYY-MM-DD`` or an ISO 8601 time (UTC unless it names an offset), as a timestamp."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--since: expected a date (2026-01-31) or an ISO time, not {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
