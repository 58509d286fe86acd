"""The hub's CPU per request, this tree against baseline git refs, in one run.

Exports ``src/`` of each baseline ref (``git archive``) to a temporary directory and starts,
side by side, one real hub per tree (``python -m inferclub serve``, the tree first on
``PYTHONPATH``), each with its own SQLite database and ``bench/fake_upstream.py`` as its one
provider. One load generator then sends the same requests to all of them at once, taking the
hubs in turn request by request, and reads each hub's CPU time from ``/proc`` before and after.
Whatever else the machine is doing then weighs on every tree alike: on the shared 2-core VM the
CPU time of one tree measured alone spread by +-25 % from run to run, while the ratio of two
trees measured together repeats within a few per cent (this tree against itself, three rounds of
3,000 requests: 0.99-1.02 per round for non-streamed requests, 0.94-1.05 for streams).
It prints, per scenario and round, each tree's CPU microseconds per request and this tree's ratio
to each baseline, then the median ratios. A benchmark, not a test: it never fails on a number.

    .venv/bin/python bench/compare.py --baseline 99bfe9d --baseline 4b8b6b4
    .venv/bin/python bench/compare.py --baseline main --rounds 5 --requests 5000
    .venv/bin/python bench/compare.py --baseline 4b8b6b4 --instructions -- --requests 30

``--instructions`` counts the hub's instructions per request under callgrind instead
(``bench/instructions.py``; the arguments after ``--`` are then its own): they do not depend on
the load, but leave out the kernel's share (the socket work) and what costs more per
instruction (cache misses).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import instructions
from instructions import export
from overhead import (
    Cluster,
    Sample,
    Scenario,
    heartbeat,
    keep_heartbeating,
    log,
    one_request,
    one_stream,
)

CHUNKS = 20


def scenarios(n: int, c: int) -> list[Scenario]:
    """N requests to each hub per scenario; streams are 20 chunks sent at once."""
    return [
        Scenario("nonstream_c1", "non-streaming, concurrency 1", 1, n, 200),
        Scenario(f"nonstream_c{c}", f"non-streaming, concurrency {c}", c, n, 200),
        Scenario(
            f"stream_c{c}", f"{CHUNKS}-chunk streams, concurrency {c}", c, n, 100, True, CHUNKS
        ),
    ]


async def alternate(hubs: list[Cluster], sc: Scenario) -> list[float]:
    """``sc.requests`` requests to each hub, ``sc.concurrency`` at a time per hub, the hubs
    taken in turn; each hub's CPU µs per request."""
    body = sc.body(delay=0.0)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        samples = [Sample() for _ in hubs]

        async def call(i: int) -> None:
            hub = hubs[i]
            url = hub.hub_url + "/v1/chat/completions"
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {hub.key}"}
            if sc.stream:
                await one_stream(session, url, headers, body, samples[i], sc.chunks, 0.0)
            else:
                await one_request(session, url, headers, body, samples[i])

        async def run(per_hub: int) -> None:
            # Exactly per_hub requests each, handed out 0, 1, ..., 0, 1, ... as workers free up.
            turns = iter(range(per_hub * len(hubs)))

            async def worker() -> None:
                for n in turns:
                    await call(n % len(hubs))

            await asyncio.gather(*(worker() for _ in range(sc.concurrency * len(hubs))))

        await run(sc.warmup)
        for s in samples:
            if s.errors:
                raise RuntimeError(f"warm-up failed: {s.first_error}")
        samples = [Sample() for _ in hubs]
        before = [h.hub.cpu_seconds() for h in hubs if h.hub]
        await run(sc.requests)
        after = [h.hub.cpu_seconds() for h in hubs if h.hub]
    for hub, s in zip(hubs, samples, strict=True):
        if s.errors:
            raise RuntimeError(f"{hub.hub_url}: {s.errors} errors: {s.first_error}")
    return [1e6 * (b - a) / sc.requests for a, b in zip(before, after, strict=True)]


async def measure(
    hubs: list[Cluster], scs: list[Scenario], rounds: int
) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {sc.key: [] for sc in scs}
    async with aiohttp.ClientSession() as control:
        for hub in hubs:
            await heartbeat(control, hub)
        beats = [asyncio.create_task(keep_heartbeating(control, hub)) for hub in hubs]
        try:
            for r in range(rounds):
                for sc in scs:
                    t0 = time.perf_counter()
                    cpu = await alternate(hubs, sc)
                    out[sc.key].append(cpu)
                    cells = ", ".join(f"{c:,.0f}" for c in cpu)
                    took = time.perf_counter() - t0
                    log(f"round {r + 1}: {sc.key}: {cells} µs/request ({took:.1f} s)")
        finally:
            for beat in beats:
                beat.cancel()
            await asyncio.gather(*beats, return_exceptions=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", action="append", required=True, help="git ref (repeatable)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (3)")
    p.add_argument("--requests", type=int, default=3000, help="requests per hub per scenario")
    p.add_argument("--concurrency", type=int, default=10, help="per hub, loaded scenarios (10)")
    p.add_argument("--only", help="scenarios whose key contains one of these words (a,b)")
    p.add_argument(
        "--instructions", action="store_true", help="count instructions (bench/instructions.py)"
    )
    p.add_argument("extra", nargs="*", help="with --instructions: bench/instructions.py's own")
    args = p.parse_args()
    if args.instructions:
        instructions.main([a for ref in args.baseline for a in ("--baseline", ref)] + args.extra)
        return
    scs = scenarios(args.requests, args.concurrency)
    if args.only:
        words = args.only.split(",")
        scs = [sc for sc in scs if any(w in sc.key for w in words)]
    labels = [*args.baseline, "this tree"]
    hubs: list[Cluster] = []
    with tempfile.TemporaryDirectory(prefix="inferclub-compare-") as tmp:
        try:
            for i, ref in enumerate(args.baseline):
                (Path(tmp) / f"tree{i}").mkdir()
                src = export(ref, Path(tmp) / f"tree{i}")
                hubs.append(Cluster(Path(tmp) / f"hub{i}", None, with_agent=False))
                hubs[-1].env["PYTHONPATH"] = str(src)
            hubs.append(Cluster(Path(tmp) / "hub-this", None, with_agent=False))
            for hub in hubs:
                hub.workdir.mkdir(parents=True, exist_ok=True)
                hub.start()
            results = asyncio.run(measure(hubs, scs, args.rounds))
        finally:
            for hub in hubs:
                hub.stop()
    bases = labels[:-1]
    print(
        f"Hub CPU per request (µs; the trees at once, requests alternating; {args.rounds} rounds)"
    )
    print()
    head = [*labels, *(f"this/{b}" for b in bases)]
    print("| scenario | round | " + " | ".join(head) + " |")
    print("|---|---:|" + "---:|" * len(head))
    for key, rows in results.items():
        for r, cpu in enumerate(rows, 1):
            cells = [f"{c:,.0f}" for c in cpu] + [f"{cpu[-1] / c:.3f}" for c in cpu[:-1]]
            print(f"| {key} | {r} | " + " | ".join(cells) + " |")
        medians = [
            f"**{statistics.median(row[-1] / row[i] for row in rows):.3f}**"
            for i in range(len(bases))
        ]
        print(
            f"| {key} | median | "
            + " | ".join("" for _ in labels)
            + " | "
            + " | ".join(medians)
            + " |"
        )
    print()


if __name__ == "__main__":
    main()
