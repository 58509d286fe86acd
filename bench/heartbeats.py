"""How many heartbeats does one hub process absorb, and what does one cost it?

Two scenarios, each against a fresh hub (``python -m inferclub serve``, SQLite in a temp dir):

1. a fleet: USERS users x PER_USER providers (default 1,000 x 10 = 10,000), 5 models each;
2. one user with MANY providers (default 2,000), the case where a per-user index rebuild hurt.

Every provider registers once (its description is stored), then the load generator sends
steady-state heartbeats (same description, new health) for DURATION seconds at concurrency C
(as fast as they are answered, or at ``--rate`` beats/s in all)
over keep-alive connections, round-robin over the providers. Reported: heartbeats/s, latency
p50/p99/max, and the hub's CPU time per heartbeat (``/proc/PID/stat``). Callback URLs point at a
closed local port, so the hub's reachability probe fails fast (and is cached for a minute).

This is a benchmark, not a test: it prints a table and never fails on the numbers.

    .venv/bin/python bench/heartbeats.py                 # about two minutes
    .venv/bin/python bench/heartbeats.py --quick         # smaller fleet, shorter runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import loadgen

from inferclub.hub import keys
from inferclub.hub.config import load_or_create_secrets
from inferclub.hub.store import SQLiteStore

LISTENING = re.compile(r"^listening on (http://\S+)$")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def make_users(db: Path, secrets: Path, users: int) -> list[str]:
    """``users`` users with a key each, written straight into the store (as the CLI would)."""
    pepper = load_or_create_secrets(secrets).pepper
    store = SQLiteStore(db)
    await store.open()
    out = []
    try:
        for i in range(users):
            user = await store.create_user(f"u{i}")
            key = keys.generate()
            digest = keys.hash_key(pepper, key)
            await store.create_key(user.id, "bench", keys.display_prefix(key), digest)
            out.append(key)
    finally:
        await store.close()
    return out


@contextmanager
def hub(
    workdir: Path,
    profile: str | None = None,
    refresh: str | None = None,
    args: tuple[str, ...] = (),
    procs: list[subprocess.Popen[str]] | None = None,
) -> Iterator[tuple[str, int]]:
    """A hub on ``workdir/hub.db``: its URL and pid (its Popen appended to ``procs``)."""
    env = {
        **os.environ,
        "INFERCLUB_LOG_LEVEL": "WARNING",
        "INFERCLUB_ONLINE_WINDOW": "600",
        # Round-robin over a small fleet beats each provider faster than a real agent would.
        "INFERCLUB_HEARTBEAT_MIN_INTERVAL": "0",
        "INFERCLUB_MAX_PROVIDERS_PER_USER": "0",
        "INFERCLUB_MAX_CONCURRENT_REQUESTS_PER_USER": "0",  # chat_load.py: one user's load
        "INFERCLUB_MAX_REQUESTS_PER_SECOND_PER_USER": "0",
    }
    if refresh:
        env["INFERCLUB_REGISTRY_REFRESH"] = refresh
    python = [sys.executable]
    if profile:
        python += ["-m", "cProfile", "-o", str(Path(profile).resolve())]
    argv = [*python, "-m", "inferclub", "serve", "--host", "127.0.0.1", "--port", "0"]
    with open(workdir / "hub.log", "w") as err:
        proc = subprocess.Popen(
            [*argv, "--db", str(workdir / "hub.db"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        if procs is not None:
            procs.append(proc)
        try:
            assert proc.stdout is not None
            found = LISTENING.match(proc.stdout.readline().strip())
            if not found:
                raise RuntimeError((workdir / "hub.log").read_text())
            yield found.group(1), proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def beat_request(key: str, name: str) -> tuple[bytes, bytes]:
    """A provider's heartbeat as raw bytes, split where its health counter goes."""
    models = ",".join(f'"{name}-m{i}"' for i in range(5))
    body = (
        f'{{"name":"{name}","callback_url":"http://127.0.0.1:9/v1","version":"bench",'
        f'"services":[{{"name":"chat","type":"llm","engine":"vllm","models":[{models}]}}],'
        f'"health":{{"beat":'
    ).encode()
    head = loadgen.request_bytes(
        "POST", "/v1/agent/heartbeat", b"", {"Authorization": f"Bearer {key}"}
    )
    return head.replace(b"Content-Length: 0", b"Content-Length: %d"), body


class Beats:
    """Heartbeats round-robin over ``providers`` (key, name): once each when ``seconds`` is
    None, else for ``seconds``; each beat carries a new health value."""

    def __init__(self, providers: list[tuple[str, str]], seconds: float | None) -> None:
        self._requests = [beat_request(k, n) for k, n in providers]
        self._position = 0
        self._deadline = None if seconds is None else time.monotonic() + seconds

    def __call__(self) -> bytes | None:
        if self._deadline is None and self._position >= len(self._requests):
            return None
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return None
        head, body = self._requests[self._position % len(self._requests)]
        self._position += 1
        tail = b"%d}}" % self._position
        return head % (len(body) + len(tail)) + body + tail


async def drive(
    url: str,
    providers: list[tuple[str, str]],
    seconds: float | None,
    concurrency: int,
    rate: float | None = None,
) -> list[float]:
    """Send heartbeats (see :class:`Beats`), as fast as answered or at ``rate``/s in all;
    their latencies in seconds."""
    results = await loadgen.run(url, Beats(providers, seconds), concurrency, rate)
    if results.errors:
        raise RuntimeError(f"heartbeats failed: {results.errors} {results.first_error!r}")
    return results.latencies


pct = loadgen.pct


async def scenario(name: str, users: int, per_user: int, args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="inferclub-bench-") as tmp:
        workdir = Path(tmp)
        user_keys = await make_users(workdir / "hub.db", workdir / "hub.db.secrets.json", users)
        providers = [(k, f"u{u}-rig{i}") for u, k in enumerate(user_keys) for i in range(per_user)]
        profile = args.profile_hub and f"{args.profile_hub}.{name.replace(' ', '-')}.prof"
        with hub(workdir, profile, args.registry_refresh) as (url, pid):
            log(f"{name}: registering {len(providers)} providers")
            await drive(url, providers, None, args.concurrency)
            spy = py_spy(pid, args.py_spy, name, args.duration)
            cpu0, t0, own0 = cpu_seconds(pid), time.monotonic(), time.process_time()
            lat = await drive(url, providers, args.duration, args.concurrency, args.rate)
            if spy is not None:
                spy.wait(60)
            cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
            own = time.process_time() - own0
            idle = await idle_cpu(pid, args.idle) if args.idle else float("nan")
    return [
        name,
        f"{len(providers):,}",
        f"{len(lat) / wall:,.0f}",
        f"{pct(lat, 50) * 1000:.1f}",
        f"{pct(lat, 99) * 1000:.1f}",
        f"{max(lat) * 1000:.1f}",
        f"{cpu / len(lat) * 1000:.2f}",
        f"{own / len(lat) * 1000:.2f}",
        f"{idle:.2f}",
    ]


def py_spy(
    pid: int, prefix: str | None, name: str, seconds: float
) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of the hub's steady state only (not the registrations before it),
    as collapsed stacks in PREFIX.SCENARIO.txt; None without a prefix."""
    if not prefix:
        return None
    out = f"{prefix}.{name.replace(' ', '-')}.txt"
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds) - 1))]
    argv += ["--rate", "200", "--format", "raw", "--output", out, "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def idle_cpu(pid: int, seconds: float) -> float:
    """The hub's CPU use, in % of one core, over ``seconds`` without any traffic."""
    log(f"measuring idle CPU for {seconds:.0f} s")
    await asyncio.sleep(2 * 2.0)  # let the last last-seen batches be written first
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--many", type=int, default=2000, help="providers of the single user")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--rate",
        type=float,
        help="steady beats/s offered in all (default: as fast as the hub answers, which "
        "measures its capacity, with every beat queued behind the other connections')",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--idle", type=float, default=60.0, help="seconds of idle CPU to measure (0: skip)"
    )
    parser.add_argument(
        "--registry-refresh", help="the hub's registry_refresh (default: the hub's own)"
    )
    parser.add_argument(
        "--profile-hub", metavar="PREFIX", help="run the hub under cProfile: PREFIX.SCENARIO.prof"
    )
    parser.add_argument(
        "--py-spy",
        metavar="PREFIX",
        help="sample the hub's steady state with py-spy (pip install py-spy): PREFIX.SCENARIO.txt",
    )
    parser.add_argument("--only", choices=["fleet", "one user"], help="run one scenario only")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.many, args.duration, args.idle = 100, 500, 5.0, 10.0
    rows = []
    if args.only in (None, "fleet"):
        rows.append(await scenario("fleet", args.users, args.per_user, args))
    if args.only in (None, "one user"):
        rows.append(await scenario("one user", 1, args.many, args))
    head = ["scenario", "providers", "beats/s", "p50 ms", "p99 ms", "max ms", "hub CPU ms/beat"]
    head.append("load generator CPU ms/beat")
    head.append(f"idle hub CPU % ({args.idle:.0f} s)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    try:
        import uvloop  # the generator must stay cheap: it shares the cores with the hub
    except ImportError:
        sys.exit(asyncio.run(main()))
    sys.exit(uvloop.run(main()))
