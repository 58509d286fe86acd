"""Chat load on one hub: heartbeats beside it, the history writer under it, kill -9 in the middle
of it, and `--workers 1` against `--workers 2`.

Each scenario starts a fresh hub (``python -m inferclub serve``, SQLite in a temp dir) and the
bench's fake upstream (``bench/fake_upstream.py``) as every provider's callback, and drives it
with the raw keep-alive generator of ``bench/loadgen.py``:

1. ``beside``: FLEET providers (default 10,000: 1,000 users x 10) heartbeat at HB_RATE/s (default
   333/s, i.e. each every 30 s) while one user's chats run at CHAT_RATE/s (default 1,000/s).
   Reported: both rates reached, heartbeat latency p50/p99/max (the target: none above 1 s).
2. ``history``: chats at HISTORY_RATE/s (default 2,000/s, or as many as the hub answers) while the
   bench reads the database every 0.2 s: how far the newest stored row is behind the newest
   answer, and how many answered requests have no row yet. Then ``kill -9`` of the hub: the rows
   lost (answered, never stored) against the bound, flush interval x rate + one batch (1,000).
   ``--history-model NAME`` asks for a model nobody serves instead: the hub answers each with a
   404 itself, and still writes one history row per request, so the history writer gets a rate
   (2,000/s) that chats through one hub process on a 2-core machine do not reach.
3. ``workers``: chats as fast as they are answered (concurrency C) against ``--workers 1`` and
   ``--workers 2``; requests/s of each.

This is a benchmark, not a test: it prints tables and never fails on the numbers.

    .venv/bin/python bench/chat_load.py              # about three minutes
    .venv/bin/python bench/chat_load.py --quick      # smaller fleet, shorter runs
    .venv/bin/python bench/chat_load.py --only history
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import loadgen
from heartbeats import Beats, cpu_seconds, drive, hub, log, make_users

HERE = Path(__file__).resolve().parent
BATCH = 1000  # the history writer's batch size (src/inferclub/hub/history.py)
CHAT = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]}'


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[tuple[str, int]]:
    """The fake upstream's URL and pid (it exits when its stdin closes)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "fake_upstream.py"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--exit-on-stdin-eof",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = (await proc.stdout.readline()).decode().strip()
    try:
        yield line.removeprefix("listening on "), proc.pid
    finally:
        proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


class Chats:
    """The same chat request for ``seconds`` (forever when None, until ``stop()``)."""

    def __init__(self, key: str, seconds: float | None, model: str = "m1") -> None:
        self._raw = loadgen.request_bytes(
            "POST",
            "/v1/chat/completions",
            CHAT % model.encode(),
            {"Authorization": f"Bearer {key}"},
        )
        self._deadline = None if seconds is None else time.monotonic() + seconds
        self.stopped = False

    def __call__(self) -> bytes | None:
        if self.stopped or (self._deadline is not None and time.monotonic() >= self._deadline):
            return None
        return self._raw


async def register(url: str, key: str, upstream_url: str) -> None:
    """The chat user's provider, serving ``m1`` from the fake upstream."""
    body = (
        b'{"name":"chat-rig","callback_url":"%s/v1","version":"bench","services":'
        b'[{"name":"chat","type":"llm","engine":"vllm","models":["m1"]}],"health":{}}'
        % upstream_url.encode()
    )
    raw = loadgen.request_bytes(
        "POST", "/v1/agent/heartbeat", body, {"Authorization": f"Bearer {key}"}
    )
    sent = [raw]
    results = await loadgen.run(url, lambda: sent.pop() if sent else None, 1)
    if results.errors:
        raise RuntimeError(f"registering the chat provider failed: {results.first_error!r}")


def rate(results: loadgen.Results, wall: float) -> str:
    return f"{len(results.latencies) / wall:,.0f}/s"


def ms(results: loadgen.Results, p: float) -> str:
    return f"{loadgen.pct(results.latencies, p) * 1000:.1f}"


async def beside(args: argparse.Namespace) -> list[list[str]]:
    with tempfile.TemporaryDirectory(prefix="inferclub-bench-") as tmp:
        workdir = Path(tmp)
        user_keys = await make_users(
            workdir / "hub.db", workdir / "hub.db.secrets.json", args.users
        )
        fleet = [(k, f"u{u}-rig{i}") for u, k in enumerate(user_keys) for i in range(10)]
        async with upstream() as (up, up_pid):
            with hub(workdir) as (url, pid):
                log(f"beside: registering {len(fleet)} providers")
                await drive(url, fleet, None, args.concurrency)
                await register(url, user_keys[0], up)
                log(f"beside: {args.hb_rate}/s heartbeats and {args.chat_rate}/s chats")
                cpu0, t0 = Cpu(pid, up_pid), time.monotonic()
                beats, chats = await asyncio.gather(
                    # Connections enough that a slow answer does not lower the rate.
                    loadgen.run(url, Beats(fleet, args.duration), 100, args.hb_rate),
                    loadgen.run(url, Chats(user_keys[0], args.duration), 100, args.chat_rate),
                )
                wall = time.monotonic() - t0
                cpu = cpu0.since(wall)
    errors = {**beats.errors, **chats.errors}
    return [
        ["heartbeats", rate(beats, wall), ms(beats, 50), ms(beats, 99), ms(beats, 100)],
        ["chats", rate(chats, wall), ms(chats, 50), ms(chats, 99), ms(chats, 100)],
        [f"CPU: {cpu}", "", "", "", f"errors: {errors or 0}"],
    ]


def family(pid: int) -> list[int]:
    """``pid`` and its children (a hub's workers), from /proc."""
    found = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class Cpu:
    """CPU time of the hub (with its workers), the upstream and this load generator."""

    def __init__(self, hub_pid: int, upstream_pid: int) -> None:
        self._hub = family(hub_pid)
        self._upstream = upstream_pid
        self._start = self._now()

    def _now(self) -> tuple[float, float, float]:
        hub = sum(cpu_seconds(p) for p in self._hub)
        return hub, cpu_seconds(self._upstream), time.process_time()

    def since(self, wall: float) -> str:
        used = [b - a for a, b in zip(self._start, self._now(), strict=True)]
        self.hub_seconds = used[0]
        names = ("hub", "upstream", "load generator")
        return ", ".join(f"{n} {100 * u / wall:.0f}%" for n, u in zip(names, used, strict=True))


async def history(args: argparse.Namespace) -> list[list[str]]:
    os.environ["INFERCLUB_HISTORY_FLUSH_INTERVAL"] = str(args.flush)  # hub() passes it on
    with tempfile.TemporaryDirectory(prefix="inferclub-bench-") as tmp:
        workdir = Path(tmp)
        (key,) = await make_users(workdir / "hub.db", workdir / "hub.db.secrets.json", 1)
        procs: list[subprocess.Popen[str]] = []
        async with upstream() as (up, _up_pid):
            with hub(workdir, procs=procs) as (url, _pid):
                await register(url, key, up)
                chats, res = Chats(key, None, args.history_model), loadgen.Results()
                load = asyncio.create_task(
                    loadgen.run(url, chats, 50, args.history_rate, results=res)
                )
                t0 = time.monotonic()
                lags, backlogs = await watch_history(workdir / "hub.db", res, args.duration)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait()
                # Every answer of the proxy is a row, an error (404 for --history-model) too.
                answered, wall = answered_count(res), time.monotonic() - t0
                chats.stopped = True
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                    await load
                stored = rows(workdir / "hub.db")[0]
    reached = answered / wall
    bound = args.flush * reached + BATCH
    what = "chats" if args.history_model == "m1" else f"requests for {args.history_model!r}"
    return [
        [f"{what} answered (until kill -9)", f"{answered:,}", f"{reached:,.0f}/s"],
        ["newest stored row behind, max", f"{max(lags):.2f} s", f"flush interval {args.flush} s"],
        ["answered without a row yet, max", f"{max(backlogs):,}", ""],
        ["rows lost by kill -9", f"{max(answered - stored, 0):,}", f"bound {bound:,.0f}"],
    ]


async def watch_history(
    db: Path, res: loadgen.Results, seconds: float
) -> tuple[list[float], list[int]]:
    """Sample, every 0.2 s for ``seconds``, how far the stored history is behind."""
    lags: list[float] = []
    backlogs: list[int] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.2)
        answered = answered_count(res)
        count, newest = rows(db)
        if newest:
            lags.append(time.time() - newest)
        backlogs.append(max(answered - count, 0))
    return lags, backlogs


def answered_count(res: loadgen.Results) -> int:
    return len(res.latencies) + sum(res.errors.values())


def rows(db: Path) -> tuple[int, float]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        count, newest = conn.execute("SELECT count(*), max(started_at) FROM requests").fetchone()
    return int(count), float(newest or 0.0)


async def workers(args: argparse.Namespace) -> list[list[str]]:
    out = []
    for n in ("1", "2"):
        with tempfile.TemporaryDirectory(prefix="inferclub-bench-") as tmp:
            workdir = Path(tmp)
            (key,) = await make_users(workdir / "hub.db", workdir / "hub.db.secrets.json", 1)
            async with upstream() as (up, up_pid):
                with hub(workdir, args=("--workers", n)) as (url, pid):
                    await register(url, key, up)
                    await asyncio.sleep(1.0)  # both workers route the provider
                    await loadgen.run(url, Chats(key, 1.0), args.concurrency)  # warm-up
                    cpu, t0 = Cpu(pid, up_pid), time.monotonic()
                    res = await loadgen.run(url, Chats(key, args.duration), args.concurrency)
                    wall = time.monotonic() - t0
                    used = cpu.since(wall)
        per = 1e6 * cpu.hub_seconds / max(len(res.latencies), 1)
        out.append(
            [f"--workers {n}", rate(res, wall), ms(res, 50), ms(res, 99), f"{per:.0f}", used]
        )
    return out


def table(head: list[str], body: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in body:
        print("| " + " | ".join(row) + " |")
    print()


SCENARIOS = {
    "beside": (beside, ["load", "reached", "p50 ms", "p99 ms", "max ms"]),
    "history": (history, ["history under load", "value", "against"]),
    "workers": (
        workers,
        ["hub", "chats/s", "p50 ms", "p99 ms", "hub CPU µs/chat", "CPU (% of a core)"],
    ),
}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="x 10 providers (beside)")
    parser.add_argument("--hb-rate", type=float, default=333.0)
    parser.add_argument("--chat-rate", type=float, default=1000.0)
    parser.add_argument("--history-rate", type=float, default=2000.0)
    parser.add_argument(
        "--history-model", default="m1", help="what the history scenario asks for (m1: served)"
    )
    parser.add_argument("--flush", type=float, default=1.0, help="the hub's flush interval")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=[])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.duration = 100, 5.0
    for name in args.only or SCENARIOS:
        run, head = SCENARIOS[name]
        table(head, await run(args))
    return 0


if __name__ == "__main__":
    try:
        import uvloop  # the generator must stay cheap: it shares the cores with the hub
    except ImportError:
        sys.exit(asyncio.run(main()))
    sys.exit(uvloop.run(main()))
