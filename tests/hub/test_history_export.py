"""`inferclub history export` as a user runs it (a subprocess) on a database with history."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from inferclub.hub import export
from inferclub.hub.store import RequestRecord, SQLiteStore
from tests.support.hubproc import TEST_ENV

pytestmark = pytest.mark.subprocess

#: 2026-06-01T00:00:00Z
JUNE = 1_780_272_000.0
DAY = 86400.0


def seed(db: Path) -> None:
    """alice: 1,100 requests, one a minute back from June 1st (more than two export pages);
    bob: one, with a model name a spreadsheet would run as a formula, served by a fallback
    model on the second provider tried."""

    async def go() -> None:
        store = SQLiteStore(db)
        await store.open()
        try:
            alice = await store.create_user("alice")
            bob = await store.create_user("bob")
            await store.add_requests(
                RequestRecord(
                    id=f"req_{i:024x}",
                    user_id=alice.id,
                    endpoint="/v1/chat/completions",
                    started_at=JUNE - 60 * i,
                    status=200,
                    type="llm",
                    model="qwen",
                    ttfb_ms=12.3456,
                    prompt_tokens=5,
                    completion_tokens=i,
                )
                for i in range(1100)
            )
            await store.add_requests(
                [
                    RequestRecord(
                        id="req_bob",
                        user_id=bob.id,
                        endpoint="/v1/embeddings",
                        started_at=JUNE + DAY,
                        status=404,
                        model="=HYPERLINK(1)",
                        error_type="invalid_request_error",
                        attempts=2,
                        served_model="@small",
                    )
                ]
            )
        finally:
            await store.close()

    asyncio.run(go())


def run(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferclub", "history", "export", "--db", str(db), *args],
        capture_output=True,
        text=True,
        env={**TEST_ENV, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_history_export_csv_and_jsonl(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    seed(db)

    out = run(db, "--user", "alice", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 1100 and tuple(rows[0]) == export.COLUMNS
    assert rows[0]["id"] == f"req_{0:024x}" and rows[-1]["id"] == f"req_{1099:024x}"
    assert rows[0]["started_at"] == "2026-06-01T00:00:00.000+00:00"
    assert (rows[5]["user"], rows[5]["completion_tokens"], rows[5]["ttfb_ms"]) == (
        "alice",
        "5",
        "12.346",
    )
    assert rows[5]["provider"] == rows[5]["key_id"] == ""

    # --since takes a date: the requests of June 1st, 00:00 on (one), and bob's of the 2nd.
    out = run(db, "--since", "2026-06-01", "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["user"], r["id"]) for r in lines] == [
        ("alice", f"req_{0:024x}"),
        ("bob", "req_bob"),
    ]
    # JSON Lines keep values as they are; CSV defuses a would-be formula.
    assert lines[1]["model"] == "=HYPERLINK(1)" and lines[1]["status"] == 404
    # Failover and fallback are on the record: how many providers were tried, which model served.
    assert (lines[1]["attempts"], lines[1]["served_model"]) == (2, "@small")
    assert (lines[0]["attempts"], lines[0]["served_model"]) == (None, None)
    out = run(db, "--user", "bob", "--format", "csv")
    (bob,) = list(csv.DictReader(io.StringIO(out.stdout)))
    assert bob["model"] == "'=HYPERLINK(1)"
    assert (bob["attempts"], bob["served_model"]) == ("2", "'@small")


def test_history_export_refuses_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    seed(db)
    out = run(db, "--user", "carol", "--format", "csv")
    assert out.returncode == 1 and "no user 'carol'" in out.stderr and out.stdout == ""
    out = run(db, "--since", "yesterday", "--format", "csv")
    assert out.returncode == 1 and "--since" in out.stderr
    out = run(db, "--format", "xml")
    assert out.returncode == 2 and "invalid choice" in out.stderr
