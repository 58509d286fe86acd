"""Does one hostile tenant hurt the others, and what did issue 9's defences cost per request?

Two hubs run side by side from two source trees: the current one and ``--baseline-ref`` (a git
ref, by default ``99bfe9d``: main just before issue 9's first merge), unpacked with
``git archive`` into a temp dir and run from there (``PYTHONPATH``) with the same interpreter.
Each hub gets its own throw-away SQLite database, a user ``victim`` with one provider, and a
user ``tenant`` with the most providers a user may have (64), each advertising the most models
a provider may (1,024). The victim's provider points at one fake upstream
(``bench/fake_upstream.py``) and the tenant's at another, as separate agents would.

1. **CPU per request.** The victim sends non-streaming chats and 20-chunk streams at
   concurrency C through one hub, then the other, alternating for ``--rounds`` rounds; the
   hub's CPU time (``/proc/PID/stat``) per request is reported for each tree (median of the
   rounds) and as a ratio, current/baseline.
2. **A noisy neighbour.** On each hub, the victim's chat latency at concurrency 1, on a quiet
   hub and while the tenant floods, alternating ``--cycles`` times: every one of the tenant's
   64 providers heartbeats once a second (the allowed rate) with its 1,024 models, and it
   keeps 64 slow streams open (its concurrent-request limit; each 4 s long, so all 64 end and
   start again together every ~4 s, at least once in every flooded window), from a separate
   process at the lowest CPU priority, so the flood does not slow the victim's load generator.
   Reported: victim p50/p99 quiet and flooded, the p99 ratio, the hub's CPU share while
   flooded (1.0 = one core) and what the hub answered the tenant.

A benchmark, not a test: it prints tables and never fails on a number. Everything binds to
127.0.0.1; subprocesses and temp dirs are removed on exit.

    .venv/bin/python bench/tenants.py                   # about three minutes
    .venv/bin/python bench/tenants.py --quick           # about a minute
    .venv/bin/python bench/tenants.py --baseline-ref main~5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from overhead import Proc

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "bench-model"
PROVIDERS = 64
MODELS = 1024
#: Seconds from starting the flood process until the victim is measured: its start-up, then
#: heartbeats spread over a second and the streams open.
FLOOD_RAMP = 2.0
#: What the flood times: heartbeats the hub accepted, and streams it began to answer.
ACCEPTED, STARTED = "heartbeats accepted", "requests begun"
#: Chunks of each of the tenant's streams, 0.1 s apart: a stream lasts 4 s.
STREAM_CHUNKS = 40
#: Seconds between the end of a flood and the next quiet window.
QUIET_SETTLE = 3.0
DEFAULT_BASELINE = "99bfe9d"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


# -- the hubs --------------------------------------------------------------------------------


@dataclass
class Hub:
    """One hub process from one source tree, with the two users' keys."""

    name: str
    src: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None
    url: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    #: A ``.prof`` file: run this hub under cProfile (it writes the file when it stops).
    profile: str = ""
    #: Settings of this hub (``INFERCLUB_*``) beside the bench's own.
    settings: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> str:
        db = str(self.workdir / "hub.db")
        argv = [sys.executable, "-m", "inferclub", *args, "--db", db]
        done = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: inferclub {' '.join(args)}: {done.stderr}")
        return done.stdout

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.src),
            "INFERCLUB_LOG_LEVEL": "WARNING",
            # Providers stay online for the whole run without keep-alive heartbeats.
            "INFERCLUB_ONLINE_WINDOW": "3600",
            **self.settings,
        }
        for login in ("victim", "tenant"):
            self.cli("users", "create", login)
            self.keys[login] = self.cli("keys", "create", login).strip().splitlines()[-1]
        profiler = ["-m", "cProfile", "-o", self.profile] if self.profile else []
        argv = [
            sys.executable,
            *profiler,
            "-m",
            "inferclub",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        self.proc = Proc(
            "hub", [*argv, "--db", str(self.workdir / "hub.db")], self.workdir, self.env
        )
        self.url = self.proc.wait_url()

    def cpu(self) -> float:
        assert self.proc is not None
        return self.proc.cpu_seconds()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def unpack(ref: str, into: Path) -> Path:
    """The ``src`` tree of ``ref``, from ``git archive`` (the repository is not touched)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
    return into / "src"


def beat(name: str, callback: str, models: int, beat_no: int = 0) -> bytes:
    services = [{"name": "chat", "type": "llm", "engine": "openai", "models": [MODEL]}]
    if models > 1:
        extra = [f"{name}-model-{i:04d}" for i in range(models - 1)]
        services.append({"name": "more", "type": "llm", "engine": "openai", "models": extra})
    payload = {"name": name, "callback_url": callback, "version": "bench", "services": services}
    return json.dumps({**payload, "health": {"beat": beat_no}}).encode()


async def register(hub: Hub, victim_callback: str, tenant_callback: str) -> None:
    async with aiohttp.ClientSession(hub.url) as session:
        for login, names, models, callback in (
            ("victim", ["victim-rig"], 1, victim_callback),
            ("tenant", [f"rig{i}" for i in range(PROVIDERS)], MODELS, tenant_callback),
        ):
            for name in names:
                async with session.post(
                    "/v1/agent/heartbeat",
                    data=beat(name, callback, models),
                    headers={"Authorization": f"Bearer {hub.keys[login]}"},
                ) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{hub.name}: heartbeat {resp.status}")


# -- load ------------------------------------------------------------------------------------


def chat(stream: bool, chunks: int = 20, delay: float = 0.0) -> bytes:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}]}
    if stream:
        body.update(stream=True, bench_chunks=chunks, bench_delay=delay)
    return json.dumps(body).encode()


async def requests(url: str, key: str, total: int, concurrency: int, body: bytes) -> list[float]:
    """``total`` chats, ``concurrency`` at a time; the latency of each that got a 200."""
    latencies: list[float] = []
    left = total
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=conn) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                start = time.perf_counter()
                async with session.post("/v1/chat/completions", data=body, headers=headers) as r:
                    await r.read()
                if r.status == 200:
                    latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def victim_for(url: str, key: str, seconds: float, every: float = 0.0) -> list[float]:
    """Chats one at a time for ``seconds``, each ``every`` seconds after the last one began
    (0: each as soon as the last one is answered): their latencies."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while (began := time.monotonic()) < deadline:
        out += await requests(url, key, 1, 1, chat(False))
        await asyncio.sleep(max(0.0, began + every - time.monotonic()))
    return out


# -- the flood, in its own process -----------------------------------------------------------


async def flood(
    url: str, key: str, callback: str, seconds: float, parts: str = "both", kind: str = "slow"
) -> dict[str, Any]:
    """The tenant at its limits: each provider heartbeats once a second with all its models,
    and 64 requests are kept in flight (``parts``: ``heartbeats`` or ``streams`` for one of
    the two alone): slow streams (``kind`` ``slow``) or tiny chats answered at once, each
    followed by the next (``tiny``: as many requests a second as the hub can take). Counts of
    what the hub answered, and when (``time.monotonic()``, the same clock in every process)
    it accepted each heartbeat and began each stream or answered each chat."""
    counts: dict[str, int] = {}
    times: dict[str, list[float]] = {ACCEPTED: [], STARTED: []}
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    conn = aiohttp.TCPConnector(limit=0)
    bodies = [beat(f"rig{i}", callback, MODELS) for i in range(PROVIDERS)]

    def count(what: str) -> None:
        counts[what] = counts.get(what, 0) + 1

    async with aiohttp.ClientSession(url, connector=conn) as session:

        async def beats(body: bytes, offset: float) -> None:
            await asyncio.sleep(offset)  # spread over the second, as independent agents are
            while time.monotonic() < deadline:
                started = time.monotonic()
                async with session.post("/v1/agent/heartbeat", data=body, headers=headers) as r:
                    await r.read()
                count(f"heartbeat {r.status}")
                if r.status == 200:
                    times[ACCEPTED].append(time.monotonic())
                await asyncio.sleep(max(0.0, 1.02 - (time.monotonic() - started)))

        async def in_flight() -> None:
            # Slow: four seconds each, all 64 end and start again together every ~4 s, and a
            # flooded window (--flood / --cycles, 5 s by default) holds at least one such
            # burst. Tiny: answered at once, each followed by the next.
            body = chat(True, chunks=STREAM_CHUNKS, delay=0.1) if kind == "slow" else chat(False)
            what = "stream" if kind == "slow" else "chat"
            while time.monotonic() < deadline:
                async with session.post("/v1/chat/completions", data=body, headers=headers) as r:
                    if r.status == 200:
                        times[STARTED].append(time.monotonic())
                    await r.read()
                count(f"{what} {r.status}")

        tasks = []
        if parts != "streams":
            tasks += [beats(b, i / PROVIDERS) for i, b in enumerate(bodies)]
        if parts != "heartbeats":
            tasks += [in_flight() for _ in range(PROVIDERS)]
        # On time: the streams still open at the end are cut (the hub cancels them upstream).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.gather(*tasks)
    return {"counts": counts, "times": times}


@contextlib.contextmanager
def flooding(hub: Hub, callback: str, seconds: float, parts: str, kind: str) -> Iterator[Path]:
    """The flood in a child process for ``seconds``; yields where its counts will be."""
    out = hub.workdir / "flood.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--flood-worker"]
    argv += [hub.url, hub.keys["tenant"], callback, str(seconds), str(out), parts, kind]
    # At the lowest CPU priority: the tenant's clients and agents run on other machines,
    # and on a 2-core box this process would otherwise take the victim's client's turn.
    child = subprocess.Popen(["nice", "-n", "19", *argv], env=os.environ.copy())
    try:
        yield out
    finally:
        try:
            child.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# -- the scenarios ---------------------------------------------------------------------------


async def cpu_per_request(hubs: list[Hub], args: argparse.Namespace) -> dict[str, list[float]]:
    """Hub CPU milliseconds per request, per hub, one value per round (alternating hubs)."""
    per: dict[str, list[float]] = {h.name: [] for h in hubs}
    for r in range(args.rounds):
        for hub in hubs if r % 2 == 0 else list(reversed(hubs)):
            key = hub.keys["victim"]
            cpu0 = hub.cpu()
            done = await requests(hub.url, key, args.requests, args.concurrency, chat(False))
            streams = args.requests // 2
            done += await requests(hub.url, key, streams, args.concurrency, chat(True))
            per[hub.name].append((hub.cpu() - cpu0) / max(1, len(done)) * 1000)
            log(f"round {r + 1}: {hub.name} {per[hub.name][-1]:.3f} ms CPU/request")
    return per


@dataclass
class Noise:
    """The victim's latencies (seconds) quiet and flooded, and what the flood saw."""

    quiet: list[float]
    flood: list[float]
    counts: dict[str, int]
    busy: float  # the hub's CPU seconds per second while flooded
    #: What the flood got from the hub inside the measured windows: per kind, how many.
    inside: dict[str, int]
    #: The measured windows' seconds in all.
    window_seconds: float


async def noisy(hub: Hub, callback: str, args: argparse.Namespace) -> Noise:
    """The victim's latencies quiet and flooded, in ``args.cycles`` alternations of the two:
    the machine's speed drifts over a minute (other VMs on the host, idle states), and
    alternating makes both sides see the same drift."""
    key = hub.keys["victim"]
    await victim_for(hub.url, key, 1.0)  # warm-up
    quiet: list[float] = []
    loud: list[float] = []
    counts: dict[str, int] = {}
    busy: list[float] = []
    inside = {ACCEPTED: 0, STARTED: 0}
    window_seconds = 0.0
    for _ in range(args.cycles):
        quiet += await victim_for(hub.url, key, args.quiet / args.cycles, args.victim_every)
        seconds = FLOOD_RAMP + args.flood / args.cycles + 0.5
        with flooding(
            hub, callback, seconds, args.flood_parts, args.tenant_requests
        ) as counts_file:
            await asyncio.sleep(FLOOD_RAMP)  # the flood's streams and heartbeats are under way
            cpu0, wall0 = hub.cpu(), time.monotonic()
            loud += await victim_for(hub.url, key, args.flood / args.cycles, args.victim_every)
            wall1 = time.monotonic()
            busy.append((hub.cpu() - cpu0) / (wall1 - wall0))
        window_seconds += wall1 - wall0
        if counts_file.exists():
            seen = json.loads(counts_file.read_text())
            for what, n in seen["counts"].items():
                counts[what] = counts.get(what, 0) + n
            for what, times in seen["times"].items():
                inside[what] += sum(wall0 <= t <= wall1 for t in times)
        # The cut streams' ends, and the hub's batched writes after the flood (history every
        # second, last-seen times every two), happen before the next quiet window.
        await asyncio.sleep(QUIET_SETTLE)
    return Noise(quiet, loud, counts, statistics.mean(busy), inside, window_seconds)


def print_cpu(per: dict[str, list[float]]) -> None:
    names = list(per)
    print("\nHub CPU per victim request (median of rounds; non-streaming + 20-chunk streams)\n")
    print("| tree | ms CPU/request (median) | rounds |")
    print("|---|---|---|")
    for name in names:
        rounds = ", ".join(f"{v:.3f}" for v in per[name])
        print(f"| {name} | {statistics.median(per[name]):.3f} | {rounds} |")
    if len(names) == 2:
        ratio = statistics.median(per[names[1]]) / statistics.median(per[names[0]])
        print(f"\ncurrent/baseline CPU per request: {ratio:.2f}")


def print_tables(
    per: dict[str, list[float]], noise: dict[str, Noise], parts: str, kind: str
) -> None:
    if per:
        print_cpu(per)
    what = "64 slow streams" if kind == "slow" else "64 tiny chats in flight"
    print(f"\nVictim chat latency, concurrency 1, quiet vs one tenant flooding ({parts}; {what})\n")
    print(
        "| tree | quiet n | quiet p50 ms | quiet p99 ms | flood n | flood p50 ms "
        "| flood p99 ms | p99 ratio | hub CPU in flood | tenant's answers "
        "| flood inside the measured windows |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, result in noise.items():
        quiet, loud = result.quiet, result.flood
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(result.counts.items()))
        print(
            f"| {name} | {len(quiet)} | {pct(quiet, 50) * 1000:.1f} | {pct(quiet, 99) * 1000:.1f} "
            f"| {len(loud)} | {pct(loud, 50) * 1000:.1f} | {pct(loud, 99) * 1000:.1f} "
            f"| {pct(loud, 99) / pct(quiet, 99):.2f} | {result.busy:.0%} | {answers} "
            f"| {result.inside[ACCEPTED] / result.window_seconds:.0f} heartbeats accepted/s, "
            f"{result.inside[STARTED]} {'streams begun' if kind == 'slow' else 'chats answered'} "
            f"in {result.window_seconds:.0f} s |"
        )


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="inferclub-tenants-") as tmp:
        root = Path(tmp)
        # The victim's agent and the tenant's are separate processes, as on separate
        # machines: one shared fake upstream made the victim's answer wait in the upstream's
        # own event loop behind the tenant's 64 streams, which is not the hub's doing.
        # The tenant's runs at the lowest CPU priority, as its load generator does: on a
        # 2-core box, answering 64 tiny chats in flight as fast as the hub forwards them
        # would otherwise take the victim's upstream's and client's turns.
        upstreams = [
            Proc(
                name,
                [*nice, sys.executable, str(HERE / "fake_upstream.py"), "--port", "0"]
                + ["--exit-on-stdin-eof"],
                root,
                dict(os.environ),
                stdin_pipe=True,
            )
            for name, nice in (("victim-upstream", []), ("tenant-upstream", ["nice", "-n", "19"]))
        ]
        trees = [("current", REPO / "src")]
        if args.baseline_ref:
            trees.insert(
                0, (f"baseline {args.baseline_ref}", unpack(args.baseline_ref, root / "baseline"))
            )
        profile = str(Path(args.profile_hub).resolve()) if args.profile_hub else ""

        @contextlib.asynccontextmanager
        async def running(part: str, settings: dict[str, str]) -> AsyncIterator[list[Hub]]:
            """A hub of each tree with these settings, the two users registered."""
            hubs = [
                Hub(name, src, root / f"{part}-hub-{i}", settings=settings)
                for i, (name, src) in enumerate(trees)
            ]
            if part == "noise":
                hubs[-1].profile = profile
            try:
                for hub in hubs:
                    hub.start()
                    await register(hub, callback, tenant_callback)
                    log(f"{hub.name} ({part}): {hub.url}")
                yield hubs
            finally:
                for hub in hubs:
                    hub.stop()

        try:
            callback, tenant_callback = (u.wait_url() + "/v1" for u in upstreams)
            per: dict[str, list[float]] = {}
            if not args.skip_cpu:
                # CPU per request at the load's own pace: 1,000 requests at concurrency 10
                # are far past the default request rate, which would pace them.
                unpaced = {"INFERCLUB_MAX_REQUESTS_PER_SECOND_PER_USER": "0"}
                async with running("cpu", unpaced) as hubs:
                    per = await cpu_per_request(hubs, args)
            # The noisy neighbour with every limit at its default: the tenant floods at them.
            async with running("noise", {}) as hubs:
                noise = {h.name: await noisy(h, tenant_callback, args) for h in hubs}
        finally:
            for upstream in upstreams:
                upstream.stop()
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print_tables(per, noise, args.flood_parts, args.tenant_requests)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--flood-worker"]:
        url, key, callback, seconds, out, parts, kind = argv[1:8]
        seen = asyncio.run(flood(url, key, callback, float(seconds), parts, kind))
        Path(out).write_text(json.dumps(seen))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE, help="'' for no baseline")
    parser.add_argument("--requests", type=int, default=1000, help="per round and tree")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of quiet victim load")
    parser.add_argument("--flood", type=float, default=15.0, help="seconds of flooded load")
    parser.add_argument(
        "--cycles",
        type=int,
        default=3,
        help="alternations of quiet and flooded load (a flooded window under 4 s may miss "
        "the tenant's bursts of stream starts)",
    )
    parser.add_argument(
        "--flood-parts",
        choices=["both", "heartbeats", "streams"],
        default="both",
        help="what the tenant floods with (to tell which part costs the victim)",
    )
    parser.add_argument(
        "--tenant-requests",
        choices=["slow", "tiny"],
        default="slow",
        help="the tenant's 64 requests in flight: 4 s streams, or tiny chats answered at once "
        "(each followed by the next: a flood that keeps the hub's CPU busy)",
    )
    parser.add_argument(
        "--victim-every",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="the victim's chats begin this far apart (0: each as soon as the last one is"
        " answered, which takes the victim past the default request rate itself)",
    )
    parser.add_argument("--skip-cpu", action="store_true", help="the noisy neighbour only")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--profile-hub",
        metavar="FILE.prof",
        help="cProfile the current hub of the noisy-neighbour part",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.quiet, args.flood, args.cycles = 300, 2, 5.0, 10.0, 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
