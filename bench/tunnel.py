"""What does the tunnel cost? The same fake upstream behind two real agents, one hub, on loopback.

Four processes: the fake upstream (``bench/fake_upstream.py``), the real hub, and two real
agents serving the same upstream's model to two users: one in callback mode (the hub connects
to it) and one with ``--tunnel`` (it dials the hub; requests come back through its WebSocket).
A request with the first user's key takes the callback path, with the second's the tunnel.

1. Added latency at concurrency 1, the two paths interleaved request by request: non-streamed
   chats, and whole streams of ``--chunks`` chunks (time to the last byte and to the first).
2. ``--streams`` (500) concurrent streams over the one tunnel, ``--chunks`` chunks each,
   ``--delay`` apart: how many complete, how many fail.
3. Memory: one slow client reads a large stream (``--big-chunks`` events, about 150 bytes
   each) ``--read`` bytes at a time, ``--pause`` seconds apart, while the agent's RSS is
   sampled: at start, peak and end, per path.

It also prints the hub's and the agent's CPU time per non-streamed chat on each path (from
``/proc/PID/stat``): on a loaded machine the latencies mostly measure the wait for a core,
the CPU time does not.

A benchmark, not a test: it prints a table and never fails on a number. Run from the
repository root: ``.venv/bin/python -m bench.tunnel`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.overhead import HERE, MODEL, Proc, pct

PATHS = ("callback", "tunnel")
#: What makes the second agent dial the hub.
TUNNEL_FLAGS = ["--tunnel"]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Rig:
    """The processes, the hub's URL, and each path's key and agent."""

    hub_url: str = ""
    hub: Proc | None = None
    keys: dict[str, str] = field(default_factory=dict)
    agents: dict[str, Proc] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def headers(self, path: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[path]}"}


def cli(workdir: Path, env: dict[str, str], *args: str) -> str:
    argv = [sys.executable, "-m", "inferclub", *args, "--db", str(workdir / "hub.db")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=workdir, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"inferclub {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(rig: Rig, workdir: Path, env: dict[str, str], path: str, upstream: str) -> None:
    cli(workdir, env, "users", "create", path)
    rig.keys[path] = cli(workdir, env, "keys", "create", path)
    service = {"name": "s", "engine": "openai", "url": upstream + "/v1", "models": [MODEL]}
    manifest = workdir / f"{path}.yaml"
    manifest.write_text(json.dumps({"hosts": [{"id": path, "services": [service]}]}))
    argv = [sys.executable, "-m", "inferclub.agent", "run", "--manifest", str(manifest)]
    argv += ["--hub", rig.hub_url, "--name", path, "--listen", f"127.0.0.1:{free_port()}"]
    argv += ["--known-hubs", str(workdir / f"{path}.known_hubs")]
    argv += TUNNEL_FLAGS if path == "tunnel" else []
    agent = Proc(f"agent-{path}", argv, workdir, {**env, "INFERCLUB_API_KEY": rig.keys[path]})
    rig.agents[path] = agent
    rig.procs.append(agent)


@contextmanager
def started(workdir: Path) -> Iterator[Rig]:
    env = {
        **os.environ,
        "INFERCLUB_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        # 500 streams of one user at once: the per-user limit would refuse most of them.
        "INFERCLUB_MAX_CONCURRENT_REQUESTS_PER_USER": "0",
        "INFERCLUB_MAX_REQUESTS_PER_SECOND_PER_USER": "0",
    }
    rig = Rig()
    try:
        upstream = Proc(
            "upstream",
            [sys.executable, str(HERE / "fake_upstream.py"), "--port", "0"],
            workdir,
            env,
        )
        rig.procs.append(upstream)
        hub = Proc("hub", [sys.executable, "-m", "inferclub", "serve", "--port", "0", "--db",
                           str(workdir / "hub.db")], workdir, env)  # fmt: skip
        rig.procs.append(hub)
        rig.hub = hub
        rig.hub_url = hub.wait_url()
        for path in PATHS:
            start_agent(rig, workdir, env, path, upstream.wait_url())
        yield rig
    finally:
        for proc in reversed(rig.procs):
            proc.stop()


async def wait_ready(session: aiohttp.ClientSession, rig: Rig, timeout: float = 60) -> None:
    """Until a chat through each path succeeds."""
    deadline = time.monotonic() + timeout
    for path in PATHS:
        while True:
            async with session.post(
                rig.hub_url + "/v1/chat/completions", json=CHAT, headers=rig.headers(path)
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {path} agent never served:\n{rig.agents[path].tail()}")
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- measurements


async def stream(
    session: aiohttp.ClientSession, rig: Rig, path: str, chunks: int, delay: float = 0.0
) -> tuple[float, float]:
    """Seconds to the first and to the last byte of one stream; raises unless it ends in
    ``[DONE]``."""
    body = {**CHAT, "stream": True, "bench_chunks": chunks, "bench_delay": delay}
    start = time.perf_counter()
    first = 0.0
    async with session.post(
        rig.hub_url + "/v1/chat/completions", json=body, headers=rig.headers(path)
    ) as resp:
        resp.raise_for_status()
        tail = b""
        async for piece in resp.content.iter_any():
            first = first or time.perf_counter() - start
            tail = (tail + piece)[-64:]
    if b"data: [DONE]" not in tail:
        raise RuntimeError("stream ended without [DONE]")
    return first, time.perf_counter() - start


async def chat(session: aiohttp.ClientSession, rig: Rig, path: str) -> float:
    start = time.perf_counter()
    async with session.post(
        rig.hub_url + "/v1/chat/completions", json=CHAT, headers=rig.headers(path)
    ) as resp:
        await resp.read()
        resp.raise_for_status()
    return time.perf_counter() - start


async def latencies(
    n: int, one: Callable[[str], Awaitable[tuple[float, ...]]]
) -> dict[str, list[tuple[float, ...]]]:
    """``n`` samples per path, the paths interleaved so drifting load hits both alike."""
    out: dict[str, list[tuple[float, ...]]] = {p: [] for p in PATHS}
    for _ in range(n):
        for path in PATHS:
            out[path].append(await one(path))
    return out


async def many_streams(rig: Rig, n: int, chunks: int, delay: float) -> tuple[int, int, float]:
    """``n`` streams at once over the tunnel: completed, failed, seconds for all."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(stream(session, rig, "tunnel", chunks, delay) for _ in range(n)),
            return_exceptions=True,
        )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"first failure of {len(failed)}: {failed[0]!r}", file=sys.stderr)
    return n - len(failed), len(failed), time.perf_counter() - start


async def cpu_per_request(
    session: aiohttp.ClientSession, rig: Rig, n: int
) -> dict[str, tuple[float, float]]:
    """Microseconds of hub and agent CPU per non-streamed chat, each path on its own: unlike
    latency, it does not depend on what else the machine runs."""
    assert rig.hub is not None
    out = {}
    for path in PATHS:
        agent = rig.agents[path]
        hub0, agent0 = rig.hub.cpu_seconds(), agent.cpu_seconds()
        for _ in range(n):
            await chat(session, rig, path)
        hub1, agent1 = rig.hub.cpu_seconds(), agent.cpu_seconds()
        out[path] = ((hub1 - hub0) / n * 1e6, (agent1 - agent0) / n * 1e6)
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def slow_reader(rig: Rig, path: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """The agent's RSS (MiB) at start, at its peak and at the end of one slowly read stream."""
    pid = rig.agents[path].pid
    samples = [rss_mib(pid)]

    async def sample() -> None:
        while True:
            samples.append(rss_mib(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    body = {**CHAT, "stream": True, "bench_chunks": args.big_chunks}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session,
            session.post(
                rig.hub_url + "/v1/chat/completions", json=body, headers=rig.headers(path)
            ) as resp,
        ):
            while await resp.content.read(args.read):
                await asyncio.sleep(args.pause)
    finally:
        sampler.cancel()
    return samples[0], max(samples), rss_mib(pid)


# --------------------------------------------------------------------------- report


def ms(values: list[float], p: float) -> str:
    return f"{pct(values, p) * 1000:.2f}"


def latency_rows(name: str, data: dict[str, list[tuple[float, ...]]], i: int) -> list[str]:
    rows = []
    for p in (50, 99):
        cb = [s[i] for s in data["callback"]]
        tu = [s[i] for s in data["tunnel"]]
        added = (pct(tu, p) - pct(cb, p)) * 1000
        rows.append(f"| {name} p{p} | {ms(cb, p)} | {ms(tu, p)} | {added:+.2f} |")
    return rows


async def measure(rig: Rig, args: argparse.Namespace) -> None:
    async with aiohttp.ClientSession() as session:
        await wait_ready(session, rig)

        async def one_chat(path: str) -> tuple[float, ...]:
            return (await chat(session, rig, path),)

        async def one_stream(path: str) -> tuple[float, ...]:
            return await stream(session, rig, path, args.chunks)

        for _ in range(20):  # warm-up: connections, pools, the engine's first answers
            await one_chat("callback"), await one_chat("tunnel")
        chats = await latencies(args.requests, one_chat)
        streams = await latencies(args.requests, one_stream)
        cpu = await cpu_per_request(session, rig, args.requests)
    print("| concurrency 1, ms | callback | tunnel | added |\n|---|---:|---:|---:|")
    print("\n".join(latency_rows("non-stream", chats, 0)))
    print("\n".join(latency_rows(f"stream of {args.chunks}, first byte", streams, 0)))
    print("\n".join(latency_rows(f"stream of {args.chunks}, last byte", streams, 1)))

    print("\n| non-stream, CPU per request | hub µs | agent µs |\n|---|---:|---:|")
    for path, (hub_us, agent_us) in cpu.items():
        print(f"| {path} | {hub_us:.0f} | {agent_us:.0f} |")

    done, failed, took = await many_streams(rig, args.streams, args.chunks, args.delay)
    print(
        f"\n{args.streams} concurrent streams over one tunnel ({args.chunks} chunks, "
        f"{args.delay * 1000:g} ms apart): {done} completed, {failed} failed, {took:.1f} s"
    )

    print(
        f"\none slow client, a stream of {args.big_chunks} chunks read {args.read} bytes "
        f"every {args.pause * 1000:g} ms; agent RSS, MiB:\n"
    )
    print("| path | start | peak | end |\n|---|---:|---:|---:|")
    for path in PATHS:
        start, peak, end = await slow_reader(rig, path, args)
        print(f"| {path} | {start:.1f} | {peak:.1f} | {end:.1f} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="samples per path (300)")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream (20)")
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams (500)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--big-chunks", type=int, default=100_000, help="the large stream")
    parser.add_argument("--read", type=int, default=16384, help="slow client's read size")
    parser.add_argument("--pause", type=float, default=0.01, help="slow client's pause, s")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.streams, args.big_chunks = 30, 50, 10_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {load[0]:.2f}")
    print(f"command: python -m bench.tunnel {' '.join(argv or sys.argv[1:])}\n")
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp, started(Path(tmp)) as rig:
        asyncio.run(measure(rig, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
