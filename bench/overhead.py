"""How much does the hub cost per request? Same fake upstream, called directly and through the hub.

Four processes, so none shares a GIL with another: the fake upstream
(``bench/fake_upstream.py``), the real hub (``python -m inferclub serve``, started through its
CLI with a throw-away database), a real agent (``python -m inferclub.agent run``) whose manifest
serves the same upstream to a second user, and this script, the load generator (one asyncio
loop, one aiohttp ``ClientSession`` per measurement, keep-alive, connection limit = concurrency).

Every measurement runs three times, back to back: DIRECT (load generator -> upstream), HUB (load
generator -> hub -> upstream) and AGENT (load generator -> hub -> agent -> upstream, the full
path), and is reported as hub/direct ratios, then the full path next to the hub alone:

1. non-streaming latency p50/p99 at concurrency 1;
2. the same at concurrency C (default 50), plus requests/second;
3. streams/second of N-chunk streams (default 20) with no delay, concurrency C;
4. time to first SSE chunk of streams at concurrency 1;
5. C concurrent slow streams (N chunks, 50 ms apart), once with their starts spread over
   50 ms ("staggered", like independent users) and once all opened at the same moment
   ("together", the worst case: C chunks reach the hub at once): each chunk's transit time
   from the upstream's send to the client's receive
   (the upstream stamps chunks with ``time.monotonic()``, a system-wide clock), the
   inter-arrival jitter (``|gap - 50 ms|``), time to the first chunk, and stream duration.

It also samples each process's CPU time (``/proc/PID/stat``) around every measurement, so the
hub's CPU cost per request is printed too, and times the one thing signed requests add to it
(``HubSigner.sign`` over the benchmark's body, once per request; no switch turns signing off
in the hub) to report hub CPU per request with and without signing as a ratio. This is a
benchmark, not a test: it prints numbers and never fails on them. Everything binds to
127.0.0.1, runs a bounded number of requests, and cleans up its subprocesses and temp dir on
exit (also on Ctrl-C).

    .venv/bin/python bench/overhead.py            # full run (about a minute)
    .venv/bin/python bench/overhead.py --quick    # smoke run, < 30 s
    .venv/bin/python bench/overhead.py --requests 5000 --json bench.json
    .venv/bin/python bench/overhead.py --profile-hub hub.svg   # py-spy (or hub.prof: cProfile)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inferclub.signing import HubSigner, request_target

HERE = Path(__file__).resolve().parent
LISTENING = re.compile(r"^listening on (http://\S+)$")
MODEL = "bench-model"
LOGIN = "bench"
AGENT_LOGIN = "bench-agent"
HEARTBEAT_EVERY = 20.0
PHASE_LIMIT = 240.0  # seconds; no single measurement may run longer than this
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Proc:
    """A child process whose stdout/stderr go to files in the work dir (no pipes to drain)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        env: dict[str, str],
        stdin_pipe: bool = False,
    ) -> None:
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.log"
        self._out: TextIO = open(self.out_path, "w")  # noqa: SIM115 - closed in stop()
        self._err: TextIO = open(self.err_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._out,
            stderr=self._err,
            env=env,
            cwd=workdir,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            # Started before any thread exists (aiohttp never resolves: all URLs are IPs).
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
        self.pid = self.popen.pid

    def wait_url(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out_path.read_text().splitlines():
                m = LISTENING.match(line.strip())
                if m:
                    return m.group(1)
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(
            f"{self.name} did not start (exit code {self.popen.poll()}); its log:\n{self.tail()}"
        )

    def tail(self, n: int = 30) -> str:
        text = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        return "\n".join(text.splitlines()[-n:])

    def cpu_seconds(self) -> float:
        """user + system CPU time of the process so far (Linux /proc), NaN elsewhere."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return math.nan
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        p = self.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stdin is not None:
            with contextlib.suppress(OSError):
                p.stdin.close()
        self._out.close()
        self._err.close()


class Cluster:
    """Upstream + hub (+ optional profiler), with a user, key and registered provider."""

    def __init__(
        self,
        workdir: Path,
        profile: str | None,
        hub_prefix: tuple[str, ...] = (),
        with_agent: bool = True,
    ) -> None:
        self.workdir = workdir
        #: Runs the hub under a tool (bench/instructions.py: valgrind), which slows its start.
        self.hub_prefix = hub_prefix
        self.with_agent = with_agent
        self.db = workdir / "hub.db"
        self.profile = profile
        self.env = {
            **os.environ,
            "INFERCLUB_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            # One user's load as fast as the hub takes it: the hub's overhead, not its pacing.
            "INFERCLUB_MAX_REQUESTS_PER_SECOND_PER_USER": "0",
        }
        self.procs: list[Proc] = []
        self.upstream: Proc | None = None
        self.hub: Proc | None = None
        self.agent: Proc | None = None
        #: The key of a second user whose only provider is a real agent in front of the
        #: same upstream: requests with it take the full path (hub -> agent -> upstream).
        self.agent_key = ""
        self.profiler: Proc | None = None
        self.upstream_url = ""
        self.hub_url = ""
        self.key = ""

    def _cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "inferclub", *args, "--db", str(self.db)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.workdir,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"inferclub {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def start(self) -> None:
        self.upstream = Proc(
            "upstream",
            [
                sys.executable,
                str(HERE / "fake_upstream.py"),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--exit-on-stdin-eof",
            ],
            self.workdir,
            self.env,
            stdin_pipe=True,
        )
        self.procs.append(self.upstream)
        self._cli("users", "create", LOGIN)
        self.key = self._cli("keys", "create", LOGIN, "--name", "bench").strip().splitlines()[-1]
        hub_cmd = [*self.hub_prefix, sys.executable]
        if self.profile and self.profile.endswith(".prof"):
            hub_cmd += ["-m", "cProfile", "-o", str(Path(self.profile).resolve())]
        hub_cmd += [
            "-m",
            "inferclub",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(self.db),
        ]
        self.hub = Proc("hub", hub_cmd, self.workdir, self.env)
        self.procs.append(self.hub)
        self.upstream_url = self.upstream.wait_url()
        self.hub_url = self.hub.wait_url(timeout=300 if self.hub_prefix else 30)
        if self.with_agent:
            self._start_agent()
        if self.profile and not self.profile.endswith(".prof"):
            self._start_py_spy(self.profile)

    def _start_agent(self) -> None:
        """The real agent (its CLI) with a manifest serving MODEL from the same upstream."""
        self._cli("users", "create", AGENT_LOGIN)
        out = self._cli("keys", "create", AGENT_LOGIN, "--name", "bench-agent")
        self.agent_key = out.strip().splitlines()[-1]
        manifest = self.workdir / "manifest.yaml"
        service = {
            "name": "s",
            "type": "llm",
            "engine": "openai",
            "url": self.upstream_url + "/v1",
            "models": [{"id": MODEL}],
        }
        manifest.write_text(json.dumps({"hosts": [{"id": "bench", "services": [service]}]}))
        with socket.socket() as s:  # a free port for the agent's callback server
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [sys.executable, "-m", "inferclub.agent", "run", "--manifest", str(manifest)]
        argv += ["--hub", self.hub_url, "--name", "bench-agent", "--listen", f"127.0.0.1:{port}"]
        argv += ["--known-hubs", str(self.workdir / "known_hubs")]
        env = {**self.env, "INFERCLUB_API_KEY": self.agent_key}
        self.agent = Proc("agent", argv, self.workdir, env)
        self.procs.append(self.agent)

    async def wait_agent(self, session: aiohttp.ClientSession, timeout: float = 60) -> None:
        """Until the hub lists MODEL for the agent's user: its first heartbeat arrived."""
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.agent_key}"}
        while time.monotonic() < deadline:
            async with session.get(self.hub_url + "/v1/models", headers=headers) as resp:
                if resp.status == 200 and MODEL in await resp.text():
                    return
            assert self.agent is not None
            if self.agent.popen.poll() is not None:
                break
            await asyncio.sleep(0.2)
        assert self.agent is not None
        raise RuntimeError(f"the agent did not register; its log:\n{self.agent.tail()}")

    def _start_py_spy(self, out: str) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise RuntimeError(
                "--profile-hub with a non-.prof file needs py-spy "
                "(pip install py-spy); or name the file *.prof for cProfile"
            )
        fmt = {".json": "speedscope", ".txt": "raw"}.get(Path(out).suffix, "flamegraph")
        assert self.hub is not None
        self.profiler = Proc(
            "py-spy",
            [
                exe,
                "record",
                "--pid",
                str(self.hub.pid),
                "--rate",
                "250",
                "--format",
                fmt,
                "--output",
                str(Path(out).resolve()),
                "--nonblocking",
            ],
            self.workdir,
            self.env,
        )
        time.sleep(1.0)
        if self.profiler.popen.poll() is not None:
            raise RuntimeError(f"py-spy failed to attach:\n{self.profiler.tail()}")

    def cpu(self) -> dict[str, float]:
        return {
            "loadgen": time.process_time(),
            "hub": self.hub.cpu_seconds() if self.hub else math.nan,
            "upstream": self.upstream.cpu_seconds() if self.upstream else math.nan,
            "agent": self.agent.cpu_seconds() if self.agent else math.nan,
        }

    def stop(self) -> None:
        # The profiler first (SIGINT makes py-spy write its output), then hub, then upstream.
        if self.profiler is not None:
            self.profiler.stop(signal.SIGINT, timeout=30)
        if self.agent is not None:
            self.agent.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.upstream is not None:
            self.upstream.stop()


async def heartbeat(session: aiohttp.ClientSession, cluster: Cluster) -> None:
    port = cluster.upstream_url.rsplit(":", 1)[1]
    payload = {
        "name": "bench",
        "callback_url": f"http://127.0.0.1:{port}/v1",
        "version": "bench",
        "services": [{"name": "s", "type": "llm", "engine": "openai", "models": [MODEL]}],
    }
    async with session.post(
        cluster.hub_url + "/v1/agent/heartbeat",
        json=payload,
        headers={"Authorization": f"Bearer {cluster.key}"},
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"heartbeat failed: {resp.status} {await resp.text()}")


async def keep_heartbeating(session: aiohttp.ClientSession, cluster: Cluster) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_EVERY)
        try:
            await heartbeat(session, cluster)
        except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
            log(f"warning: heartbeat failed: {exc}")


# --------------------------------------------------------------------------- load


@dataclass
class Sample:
    """What one measurement (one path, one scenario) collected."""

    count: int = 0
    errors: int = 0
    first_error: str = ""
    wall: float = 0.0
    latency: list[float] = field(default_factory=list)  # whole request / whole stream, seconds
    ttfb: list[float] = field(default_factory=list)  # to the first content chunk, seconds
    transit: list[float] = field(default_factory=list)  # chunk sent by upstream -> received
    gap_error: list[float] = field(default_factory=list)  # |inter-arrival gap - delay|
    reads: int = 0  # socket reads the client needed (events arrive coalesced under load)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what[:300]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    concurrency: int
    requests: int
    warmup: int
    stream: bool = False
    chunks: int = 20
    delay: float = 0.0
    #: Spread the workers' first requests evenly over one ``delay`` (else all start at once).
    stagger: bool = False

    def body(self, delay: float | None = None) -> bytes:
        payload: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
        }
        if self.stream:
            payload.update(stream=True, bench_chunks=self.chunks)
            d = self.delay if delay is None else delay
            if d:
                payload["bench_delay"] = d
        return json.dumps(payload).encode()


async def one_request(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, out: Sample
) -> None:
    t0 = time.monotonic()
    async with session.post(url, data=body, headers=headers) as resp:
        data = await resp.read()
    elapsed = time.monotonic() - t0
    if resp.status != 200 or b'"usage"' not in data:
        out.error(f"HTTP {resp.status}: {data[:200]!r}")
        return
    out.latency.append(elapsed)


async def one_stream(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    out: Sample,
    chunks: int,
    delay: float,
) -> None:
    t0 = time.monotonic()
    times: list[float] = []
    transit = out.transit
    done = False
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            out.error(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
            return
        buf = b""
        async for piece in resp.content.iter_any():
            now = time.monotonic()
            out.reads += 1
            buf = buf + piece if buf else piece
            while (cut := buf.find(b"\n\n")) >= 0:
                event, buf = buf[:cut], buf[cut + 2 :]
                if event.startswith(b"data: [DONE]"):
                    done = True
                elif event.startswith(b"data:") and b'"choices":[]' not in event:
                    times.append(now)  # a content chunk (usage-only chunks are not counted)
                    at = event.rfind(b'"bench_sent":')
                    if at > 0:
                        transit.append(now - float(event[at + 13 : event.index(b"}", at)]))
    end = time.monotonic()
    if not done or len(times) != chunks:
        out.error(f"stream incomplete: {len(times)}/{chunks} chunks, done={done}")
        return
    out.latency.append(end - t0)
    out.ttfb.append(times[0] - t0)
    if delay:
        out.gap_error.extend(abs(b - a - delay) for a, b in itertools.pairwise(times))


async def drive(
    total: int,
    concurrency: int,
    call: Callable[[], Awaitable[None]],
    out: Sample,
    stagger: float = 0.0,
) -> None:
    """``total`` calls, at most ``concurrency`` at a time (bounded: each worker takes a ticket).
    With ``stagger``, worker *i* starts ``i * stagger`` seconds late."""
    left = total

    async def worker(i: int) -> None:
        nonlocal left
        if stagger:
            await asyncio.sleep(i * stagger)
        while left > 0:
            left -= 1
            try:
                await call()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                out.error(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker(i) for i in range(min(concurrency, total))))


async def measure(cluster: Cluster, sc: Scenario, base: str, key: str) -> Sample:
    url = base + "/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    body = sc.body()
    out = Sample()
    warm = Sample()
    connector = aiohttp.TCPConnector(limit=sc.concurrency, limit_per_host=sc.concurrency)
    timeout = aiohttp.ClientTimeout(total=60 + sc.chunks * sc.delay * 2, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if sc.stream:
            fast = sc.body(delay=0.0)

            async def warm_call() -> None:
                await one_stream(session, url, headers, fast, warm, sc.chunks, 0.0)

            async def call() -> None:
                await one_stream(session, url, headers, body, out, sc.chunks, sc.delay)
        else:

            async def warm_call() -> None:
                await one_request(session, url, headers, body, warm)

            async def call() -> None:
                await one_request(session, url, headers, body, out)

        # Warm-up opens the connections (also the hub's pool to the upstream); not measured.
        await drive(sc.warmup, sc.concurrency, warm_call, warm)
        if warm.errors:
            raise RuntimeError(f"{base}: warm-up failed: {warm.first_error}")
        cpu0 = cluster.cpu()
        t0 = time.perf_counter()
        async with asyncio.timeout(PHASE_LIMIT):
            await drive(
                sc.requests,
                sc.concurrency,
                call,
                out,
                sc.delay / sc.concurrency if sc.stagger else 0.0,
            )
        out.wall = time.perf_counter() - t0
        cpu1 = cluster.cpu()
    out.count = sc.requests
    out.cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    return out


def signing_cpu_us(body: bytes, n: int = 3000) -> float:
    """CPU µs per request that signing adds to the hub: what its connect step does once per
    forwarded request (the request target, ``HubSigner.sign`` over ``body``), timed on this
    machine in this process (the same Python and ``cryptography`` as the hub's)."""
    signer = HubSigner(Ed25519PrivateKey.generate())
    url = "http://127.0.0.1:8000/v1/chat/completions"
    t0 = time.process_time()
    try:
        for i in range(n):
            signer.sign("POST", request_target(url), f"req_{i:024x}", "1", body, service="llm")
    except TypeError:  # a tree from before signing (bench/compare.py's baselines): no number
        return math.nan
    return 1e6 * (time.process_time() - t0) / n


# --------------------------------------------------------------------------- statistics


def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation; NaN when there is nothing to measure."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarise(sc: Scenario, s: Sample) -> dict[str, Any]:
    ms = 1000.0
    ok = len(s.latency)
    d: dict[str, Any] = {
        "requests": s.count,
        "ok": ok,
        "errors": s.errors,
        "wall_s": s.wall,
        "rate_per_s": ok / s.wall if s.wall else math.nan,
        "latency_p50_ms": pct(s.latency, 50) * ms,
        "latency_p99_ms": pct(s.latency, 99) * ms,
        "latency_mean_ms": (sum(s.latency) / ok * ms) if ok else math.nan,
        "cpu_s": s.cpu,
        "cpu_pct": {k: 100 * v / s.wall if s.wall else math.nan for k, v in s.cpu.items()},
        "cpu_us_per_request": {k: 1e6 * v / ok if ok else math.nan for k, v in s.cpu.items()},
    }
    if s.first_error:
        d["first_error"] = s.first_error
    if sc.stream:
        d.update(
            ttfb_p50_ms=pct(s.ttfb, 50) * ms,
            ttfb_p99_ms=pct(s.ttfb, 99) * ms,
            reads_per_stream=s.reads / max(1, ok + s.errors),
        )
        if s.transit:
            d.update(
                chunk_transit_p50_ms=pct(s.transit, 50) * ms,
                chunk_transit_p99_ms=pct(s.transit, 99) * ms,
                chunk_transit_max_ms=max(s.transit) * ms,
            )
        if s.gap_error:
            d.update(
                gap_error_p50_ms=pct(s.gap_error, 50) * ms,
                gap_error_p99_ms=pct(s.gap_error, 99) * ms,
            )
    return d


def fmt_num(v: float, unit: str) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "ms":
        return f"{v:.2f} ms" if abs(v) < 100 else f"{v:.0f} ms"
    return f"{v:.3g}"


def row(metric: str, direct: float, hub: float, unit: str) -> dict[str, Any]:
    ratio = hub / direct if direct and not math.isnan(direct) and not math.isnan(hub) else math.nan
    if unit == "/s":
        # At saturation, wall time per request: what the hub adds to each one.
        added_v = (1 / hub - 1 / direct) * 1e6 if hub and direct else math.nan
        added = "n/a" if math.isnan(added_v) else f"{added_v:+,.0f} µs/req"
    else:
        added_v = hub - direct
        added = "n/a" if math.isnan(added_v) else f"{added_v:+.2f} ms"
    return {
        "metric": metric,
        "unit": unit,
        "direct": direct,
        "hub": hub,
        "ratio": ratio,
        "added": added_v,
        "cells": [
            metric,
            fmt_num(direct, unit),
            fmt_num(hub, unit),
            "n/a" if math.isnan(ratio) else f"{ratio:.2f}x",
            added,
        ],
    }


def markdown(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(header)))
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if i in right else str(c).ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


# --------------------------------------------------------------------------- main


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    import tornado

    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401 - optional

        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu": cpu_model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "tornado": tornado.version,
        "aiohttp": aiohttp.__version__,
        "event_loop": loop_name,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    n, c, k = args.requests, args.concurrency, args.chunks
    warm1 = max(50, n // 10)
    return [
        Scenario("nonstream_c1", "non-streaming, concurrency 1", 1, n, warm1),
        Scenario(
            f"nonstream_c{c}", f"non-streaming, concurrency {c}", c, 5 * n, max(2 * c, n // 2)
        ),
        Scenario(
            f"stream_c{c}",
            f"{k}-chunk streams, concurrency {c}",
            c,
            2 * n,
            max(2 * c, n // 5),
            stream=True,
            chunks=k,
        ),
        Scenario(
            "stream_ttfb_c1",
            f"{k}-chunk streams, concurrency 1",
            1,
            max(50, n // 2),
            max(20, n // 20),
            stream=True,
            chunks=k,
        ),
        Scenario(
            f"slow_c{c}_staggered",
            f"{c} slow streams ({k}×{args.delay * 1000:g} ms), staggered",
            c,
            c * args.rounds,
            c,
            stream=True,
            chunks=k,
            delay=args.delay,
            stagger=True,
        ),
        Scenario(
            f"slow_c{c}_together",
            f"{c} slow streams ({k}×{args.delay * 1000:g} ms), opened together",
            c,
            c * args.rounds,
            c,
            stream=True,
            chunks=k,
            delay=args.delay,
        ),
    ]


def selected(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios to run: all, or those whose key contains one of ``--only``'s words."""
    if not args.only:
        return scenarios(args)
    words = [w.strip() for w in args.only.split(",") if w.strip()]
    return [sc for sc in scenarios(args) if any(w in sc.key for w in words)]


def table_spec(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(scenario, row title, summary field, unit) of every table row."""
    c, k = args.concurrency, args.chunks
    slow = f"{c} slow streams ({k}×{args.delay * 1000:g} ms)"
    gap = "inter-arrival jitter p99"  # |gap between two chunks - delay|
    spec = [
        ("nonstream_c1", "non-streaming c=1: latency p50", "latency_p50_ms", "ms"),
        ("nonstream_c1", "non-streaming c=1: latency p99", "latency_p99_ms", "ms"),
        (f"nonstream_c{c}", f"non-streaming c={c}: latency p50", "latency_p50_ms", "ms"),
        (f"nonstream_c{c}", f"non-streaming c={c}: latency p99", "latency_p99_ms", "ms"),
        (f"nonstream_c{c}", f"non-streaming c={c}: requests/s", "rate_per_s", "/s"),
        (f"stream_c{c}", f"{k}-chunk streams c={c}: streams/s", "rate_per_s", "/s"),
        (f"stream_c{c}", f"{k}-chunk streams c={c}: duration p50", "latency_p50_ms", "ms"),
        (f"stream_c{c}", f"{k}-chunk streams c={c}: duration p99", "latency_p99_ms", "ms"),
        ("stream_ttfb_c1", "stream c=1: first chunk p50", "ttfb_p50_ms", "ms"),
        ("stream_ttfb_c1", "stream c=1: first chunk p99", "ttfb_p99_ms", "ms"),
    ]
    for key, how in ((f"slow_c{c}_staggered", "staggered"), (f"slow_c{c}_together", "together")):
        spec += [
            (key, f"{slow}, {how}: chunk transit p50", "chunk_transit_p50_ms", "ms"),
            (key, f"{slow}, {how}: chunk transit p99", "chunk_transit_p99_ms", "ms"),
            (key, f"{slow}, {how}: {gap}", "gap_error_p99_ms", "ms"),
            (key, f"{slow}, {how}: first chunk p99", "ttfb_p99_ms", "ms"),
            (key, f"{slow}, {how}: duration p50", "latency_p50_ms", "ms"),
            (key, f"{slow}, {how}: duration p99", "latency_p99_ms", "ms"),
        ]
    return spec


def table_rows(
    res: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    return [
        row(title, res[key]["direct"][field_], res[key]["hub"][field_], unit)
        for key, title, field_, unit in table_spec(args)
        if key in res
    ]


def signing_targets(
    res: dict[str, dict[str, dict[str, Any]]], sign_us: float
) -> list[tuple[str, str, bool | None]]:
    """Hub CPU per request with signing (measured) over without (measured minus what one
    signature costs), for every scenario: signing is once per request, never per chunk."""
    out: list[tuple[str, str, bool | None]] = []
    for key, modes in res.items():
        with_us = modes["hub"]["cpu_us_per_request"]["hub"]
        if not with_us or math.isnan(with_us) or math.isnan(sign_us) or with_us <= sign_us:
            continue
        ratio = with_us / (with_us - sign_us)
        out.append(
            (
                f"hub CPU/request grows by at most 10 % with signing ({key})",
                f"{with_us:,.0f} µs with, {with_us - sign_us:,.0f} µs without "
                f"({sign_us:.0f} µs per signature): {ratio:.3f}x",
                ratio <= 1.10,
            )
        )
    return out


def targets(
    res: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace
) -> list[tuple[str, str, bool | None]]:
    c, k = args.concurrency, args.chunks
    out: list[tuple[str, str, bool | None]] = []
    if r := res.get("nonstream_c1"):
        added = r["hub"]["latency_p50_ms"] - r["direct"]["latency_p50_ms"]
        out.append(("< 1 ms added p50 at concurrency 1", f"{added:+.2f} ms", added < 1.0))
    if r := res.get(f"nonstream_c{c}"):
        out.append(
            (
                f">= 2000 req/s non-streaming through the hub (c={c})",
                f"{r['hub']['rate_per_s']:,.0f}/s",
                r["hub"]["rate_per_s"] >= 2000,
            )
        )
    if r := res.get(f"stream_c{c}"):
        out.append(
            (
                f">= 800 streams/s of {k} chunks through the hub (no delay, c={c})",
                (
                    f"{r['hub']['rate_per_s']:,.0f}/s (the client needed "
                    f"{r['hub']['reads_per_stream']:.1f} reads per stream: chunks arrive coalesced)"
                ),
                r["hub"]["rate_per_s"] >= 800,
            )
        )
    for how in ("staggered", "together"):
        if not (r := res.get(f"slow_c{c}_{how}")):
            continue
        late = r["hub"]["chunk_transit_p99_ms"] - r["direct"]["chunk_transit_p99_ms"]
        dur = r["hub"]["latency_p50_ms"] - r["direct"]["latency_p50_ms"]
        # "No measurable added latency", read as: < 2 ms added on chunk transit p99 and on
        # stream duration p50.
        out.append(
            (
                (
                    f"no measurable added latency for {c} slow streams, {how} "
                    "(< 2 ms added on chunk transit p99 and on duration p50)"
                ),
                f"chunk transit p99 {late:+.2f} ms, duration p50 {dur:+.2f} ms",
                late < 2.0 and dur < 2.0,
            )
        )
    # When every chunk is relayed on its own (slow streams), what does a stream cost the hub?
    if r := res.get(f"slow_c{c}_staggered"):
        per_stream = r["hub"]["cpu_us_per_request"]["hub"]
        if per_stream and not math.isnan(per_stream):
            out.append(
                (
                    f"(derived) hub CPU per {k}-chunk stream when each chunk is relayed separately",
                    (
                        f"{per_stream:,.0f} µs, i.e. ~{1e6 / per_stream:,.0f} such streams/s"
                        " per core "
                        "if chunks were never coalesced"
                    ),
                    None,
                )
            )
    return out


async def run(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    # SIGTERM cancels the run cleanly (asyncio.run already does that for Ctrl-C).
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as control:
        await heartbeat(control, cluster)
        if cluster.with_agent:
            await cluster.wait_agent(control)
        beat = asyncio.create_task(keep_heartbeating(control, cluster))
        try:
            for sc in selected(args):
                results[sc.key] = {}
                paths = (
                    ("direct", cluster.upstream_url, cluster.key),
                    ("hub", cluster.hub_url, cluster.key),
                    ("agent", cluster.hub_url, cluster.agent_key),
                )
                for mode, base, key in paths if cluster.with_agent else paths[:2]:
                    t = time.perf_counter()
                    sample = await measure(cluster, sc, base, key)
                    results[sc.key][mode] = summ = summarise(sc, sample)
                    log(
                        f"  {sc.title:<52} {mode:<6} {sample.count:>6} in "
                        f"{time.perf_counter() - t:5.1f} s"
                        + (
                            f"  ({sample.errors} errors: {sample.first_error})"
                            if sample.errors
                            else ""
                        )
                    )
                    if summ["ok"] == 0:
                        raise RuntimeError(
                            f"{sc.title} via {mode}: every request failed: {sample.first_error}"
                        )
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
    return results


def full_path_rows(
    res: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace
) -> list[list[str]]:
    """The same rows for the three paths; the agent's share is full path minus hub alone."""
    rows = []
    for key, title, field_, unit in table_spec(args):
        direct, hub, full = (res[key][mode][field_] for mode in ("direct", "hub", "agent"))
        both = row(title, direct, full, unit)
        agent = row(title, hub, full, unit)
        rows.append(
            [title, fmt_num(direct, unit), fmt_num(hub, unit), fmt_num(full, unit)]
            + [both["cells"][3], agent["cells"][4]]
        )
    return rows


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    params: dict[str, Any],
    results: dict[str, Any],
    elapsed: float,
    sign_us: float,
) -> dict[str, Any]:
    rows = table_rows(results, args)
    goals = targets(results, args) + signing_targets(results, sign_us)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# inferclub hub overhead — {when}")
    print()
    print(
        f"- machine: {info['cores']} cores ({info['usable_cores']} usable), {info['cpu']}, "
        f"{info['platform']}"
    )
    print(
        f"- python {info['python']} ({info['implementation']}), tornado {info['tornado']}, "
        f"aiohttp {info['aiohttp']}, event loop {info['event_loop']}"
    )
    if info.get("loadavg"):
        load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
        busy = (
            " (other work is running: expect noisier numbers)" if info["loadavg"][0] > 0.3 else ""
        )
        print(f"- load average before the run: {load}{busy}")
    print("- parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(f"- total run time: {elapsed:.0f} s (including start-up)")
    print()
    print(
        markdown(
            ["metric", "direct", "via hub", "ratio (hub/direct)", "added"],
            [r["cells"] for r in rows],
        )
    )
    print()
    if not args.hub_only:
        print("The full path: the same upstream through the hub and a real agent (its CLI):")
        print()
        print(
            markdown(
                [
                    "metric",
                    "direct",
                    "hub alone",
                    "hub + agent",
                    "ratio (full/direct)",
                    "agent adds",
                ],
                full_path_rows(results, args),
            )
        )
        print()
    print(
        "CPU used per process during each measurement (CPU% of one core; µs of CPU per "
        "request or stream):"
    )
    print()
    cpu_rows = []
    for key, modes in results.items():
        for mode, s in modes.items():
            pc, us = s["cpu_pct"], s["cpu_us_per_request"]
            cpu_rows.append(
                [
                    key,
                    mode,
                    f"{s['wall_s']:.2f} s",
                    str(s["errors"]),
                    f"{pc['loadgen']:.0f}%",
                    f"{pc['hub']:.0f}%" if mode != "direct" else "-",
                    f"{pc['agent']:.0f}%" if mode == "agent" else "-",
                    f"{pc['upstream']:.0f}%",
                    f"{us['hub']:,.0f} µs" if mode != "direct" else "-",
                    f"{us['agent']:,.0f} µs" if mode == "agent" else "-",
                    f"{s['reads_per_stream']:.1f}" if "reads_per_stream" in s else "-",
                ]
            )
    print(
        markdown(
            [
                "scenario",
                "path",
                "wall",
                "errors",
                "load gen CPU",
                "hub CPU",
                "agent CPU",
                "upstream CPU",
                "hub CPU/req",
                "agent CPU/req",
                "client reads/stream",
            ],
            cpu_rows,
            right=set(range(2, 11)),
        )
    )
    print()
    print("Targets:")
    for goal, measured, met in goals:
        verdict = "" if met is None else " — met" if met else " — NOT met"
        print(f"- {goal}: {measured}{verdict}")
    return {
        "date": when,
        "elapsed_s": elapsed,
        "machine": info,
        "parameters": params,
        "results": results,
        "table": [{k: v for k, v in r.items() if k != "cells"} for r in rows],
        "targets": [{"target": g, "measured": m, "met": ok} for g, m, ok in goals],
        "signing_cpu_us_per_request": sign_us,
    }


def _no_nan(obj: Any) -> Any:
    """NaN (nothing measured) as JSON null: strict JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Hub overhead benchmark: one fake upstream, called directly and through "
        "the hub; prints a markdown table of hub/direct ratios."
    )
    p.add_argument(
        "--quick", action="store_true", help="short smoke run (< 30 s): --requests 300 --rounds 1"
    )
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        metavar="N",
        help="non-streaming requests at concurrency 1 (default 2000); the other "
        "scenarios scale from it (5N at concurrency C, 2N fast streams, "
        "N/2 first-chunk streams)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=50,
        metavar="C",
        help="concurrency of the loaded scenarios (default 50)",
    )
    p.add_argument("--chunks", type=int, default=20, help="content chunks per stream (20)")
    p.add_argument(
        "--delay",
        type=float,
        default=0.05,
        help="seconds between chunks of the slow streams (0.05)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of C concurrent slow streams (default 3; 1 with --quick)",
    )
    p.add_argument(
        "--only",
        metavar="WORDS",
        help="run only the scenarios whose key contains one of these comma-separated "
        "words (keys: nonstream_c1, nonstream_cC, stream_cC, stream_ttfb_c1, "
        "slow_cC_staggered, slow_cC_together), e.g. to profile one of them",
    )
    p.add_argument("--json", metavar="FILE", help="also write all numbers to FILE as JSON")
    p.add_argument(
        "--hub-only",
        action="store_true",
        help="no agent and no full path: direct and through the hub only (what "
        "bench/compare.py runs, so that a baseline tree's agent and its flags play no part)",
    )
    p.add_argument(
        "--profile-hub",
        metavar="FILE",
        help="profile the hub process: FILE.prof runs it under cProfile; .svg "
        "(flamegraph), .json (speedscope) or .txt (raw) attach py-spy",
    )
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = 300 if args.quick else 2000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.requests < 1 or args.concurrency < 1 or args.chunks < 1 or args.rounds < 1:
        p.error("--requests, --concurrency, --chunks and --rounds must be positive")
    if not 0 < args.delay <= 5:
        p.error("--delay must be in (0, 5] seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine_info()
    params = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "chunks": args.chunks,
        "slow_delay_s": args.delay,
        "slow_rounds": args.rounds,
        "quick": args.quick,
        "hub_only": args.hub_only,
    }
    if args.only:
        params["only"] = args.only
    # Ctrl-C and SIGTERM unwind through the finally below, which cleans up (installed
    # explicitly: a shell may start a background job with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="inferclub-bench-"))
    cluster = Cluster(workdir, args.profile_hub, with_agent=not args.hub_only)
    try:
        log(f"starting upstream and hub in {workdir} ...")
        cluster.start()
        log(
            f"upstream {cluster.upstream_url}, hub {cluster.hub_url} (pid {cluster.hub.pid})"
            if cluster.hub
            else ""
        )
        try:
            results = asyncio.run(run(args, cluster))
        finally:
            # The closed loop put SIGTERM back to its default; interrupt cleanly again.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        elapsed = time.perf_counter() - started
        sign_us = signing_cpu_us(Scenario("sign", "", 1, 1, 0).body())
        data = report(args, info, params, results, elapsed, sign_us)
        if args.json:
            Path(args.json).write_text(json.dumps(_no_nan(data), indent=2, default=str) + "\n")
            log(f"wrote {args.json}")
        return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; cleaning up")
        return 130
    except (RuntimeError, TimeoutError) as exc:
        log(f"benchmark failed: {exc or type(exc).__name__}")
        if cluster.hub is not None:
            log(f"hub log tail:\n{cluster.hub.tail()}")
        return 1
    finally:
        # Let the clean-up finish (it is bounded: every child gets SIGTERM, then SIGKILL).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        if args.profile_hub:
            log(f"hub profile written to {args.profile_hub}")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
