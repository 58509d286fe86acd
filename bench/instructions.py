"""Instructions the hub executes per request, baseline git refs against this tree, in one run.

CPU time per request spreads by ±25 % on a shared machine; an instruction count does not depend
on the machine's load. For each tree (every ``--baseline`` ref, exported with ``git archive``
as ``bench/compare.py`` does, then this tree) this starts the fake upstream
(``bench/fake_upstream.py``) and the real hub (``python -m inferclub serve``, uvloop if
installed, as in production) under ``valgrind --tool=callgrind --instr-atstart=no``, so
start-up is not counted. It registers the upstream as the provider with a heartbeat and, for
each scenario: a warm-up, ``callgrind_control --zero``, N requests, ``--dump`` (A), 2N
requests, ``--dump`` (B). The hub's instructions per request are ``(A + B) / 3N``; ``A / N``
and ``(B - A) / N`` (what a phase costs besides its requests cancels out of the latter) are
logged as a check. The load generator and the upstream run outside valgrind, and the hub's
wall-time-driven background loops wait an hour (``QUIET_HUB``). A benchmark, not a test: it
prints a table and never fails on a number. bench/README.md says more, caveats included.

    .venv/bin/python bench/instructions.py --baseline 99bfe9d --baseline 4b8b6b4
    .venv/bin/python bench/instructions.py --baseline main --requests 40 --keep /tmp/cg
    .venv/bin/python bench/instructions.py --baseline 99bfe9d --tenant   # a hub two users share
    .venv/bin/python bench/compare.py --baseline main --instructions    # the same, one ref
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from overhead import Cluster, Sample, Scenario, drive, heartbeat, log, one_request, one_stream
from tenants import MODELS, PROVIDERS, beat

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = 20
TOTALS = re.compile(r"^totals:\s*(\d+)", re.M)
#: The same for every tree. Fixed hashing makes dict and set work repeatable. The provider
#: stays online, and no timeout fires, however slowly the hub runs under valgrind. The
#: background loops (key cache, registry, history and last-seen writers) wait an hour: they run
#: per second of wall time, not per request, and valgrind stretches the wall time by a varying
#: factor, so counting them would make the count depend on the machine's load again. History
#: rows are still written when a batch of 1,000 is full, as on any hub.
QUIET_HUB = {
    "PYTHONHASHSEED": "0",
    "INFERCLUB_ONLINE_WINDOW": "3600",
    "INFERCLUB_KEY_CACHE_REFRESH": "3600",
    "INFERCLUB_REGISTRY_REFRESH": "3600",
    "INFERCLUB_HISTORY_FLUSH_INTERVAL": "3600",
    "INFERCLUB_LAST_SEEN_FLUSH_INTERVAL": "3600",
    # Under valgrind, 50 connections to the upstream took the hub longer than the default 10 s.
    "INFERCLUB_CONNECT_TIMEOUT": "600",
    "INFERCLUB_FIRST_BYTE_TIMEOUT": "600",
    "INFERCLUB_IDLE_TIMEOUT": "600",
}


def export(ref: str, into: Path) -> Path:
    """``src/`` of ``ref`` under ``into``; its path."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def scenarios(n: int, c: int) -> list[Scenario]:
    """Each measured with N then 2N requests (``requests`` is N); warm-ups are not counted."""
    return [
        Scenario("nonstream_c1", "non-streaming, concurrency 1", 1, n, 10),
        Scenario(f"nonstream_c{c}", f"non-streaming, concurrency {c}", c, n, c),
        Scenario("stream_c1", f"{CHUNKS}-chunk streams, c 1", 1, n, 10, True, CHUNKS),
        Scenario(f"stream_c{c}", f"{CHUNKS}-chunk streams, c {c}", c, n, c, True, CHUNKS),
    ]


class Callgrind:
    """The hub's valgrind: its command prefix, and the counts it dumps on request."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pid = 0
        self.prefix = (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir}/callgrind.out.%p",
        )

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def dump(self) -> int:
        """Instructions since the last zero or dump."""
        before = set(self.workdir.glob("callgrind.out.*"))
        self.control("--dump")
        (new,) = set(self.workdir.glob("callgrind.out.*")) - before
        match = TOTALS.search(new.read_text(errors="replace"))
        if match is None:
            raise RuntimeError(f"no totals in {new}")
        return int(match.group(1))


async def run_requests(
    session: aiohttp.ClientSession, cluster: Cluster, sc: Scenario, n: int
) -> None:
    url = cluster.hub_url + "/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {cluster.key}"}
    body = sc.body()
    out = Sample()

    async def call() -> None:
        if sc.stream:
            await one_stream(session, url, headers, body, out, sc.chunks, 0.0)
        else:
            await one_request(session, url, headers, body, out)

    await drive(n, sc.concurrency, call, out)
    if out.errors:
        raise RuntimeError(f"{sc.key}: {out.errors} errors, first: {out.first_error}")


class Tenant:
    """``--tenant``: a second user, ``tenants.py``'s tenant at its limits (64 providers of
    1,024 models), idle while the requests are counted but for one heartbeat before them, so
    the hub has a big registry and its users take turns (hub/fairness.py)."""

    def __init__(self, cluster: Cluster) -> None:
        cluster._cli("users", "create", "tenant")
        self.key = cluster._cli("keys", "create", "tenant").strip().splitlines()[-1]
        self.callback = cluster.upstream_url + "/v1"
        self.registered = False
        self.beats = 0

    async def beat(self, session: aiohttp.ClientSession, url: str) -> None:
        """All its providers' first heartbeats, or one more of its first provider's."""
        names = [f"rig{i}" for i in range(1 if self.registered else PROVIDERS)]
        for name in names:
            self.beats += 1
            body = beat(name, self.callback, MODELS, self.beats)
            headers = {"Authorization": f"Bearer {self.key}"}
            async with session.post(url + "/v1/agent/heartbeat", data=body, headers=headers) as r:
                if r.status not in (200, 429):  # 429: paced, a turn taken all the same
                    raise RuntimeError(f"tenant heartbeat: {r.status} {await r.text()}")
        self.registered = True


async def phases(
    cluster: Cluster, cg: Callgrind, sc: Scenario, tenant: Tenant | None = None
) -> tuple[int, int]:
    """The instructions of N requests (A), then of 2N more (B), for one scenario."""
    connector = aiohttp.TCPConnector(limit=sc.concurrency, limit_per_host=sc.concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await heartbeat(session, cluster)
        if tenant is not None and not tenant.registered:
            await tenant.beat(session, cluster.hub_url)
        await run_requests(session, cluster, sc, sc.warmup)
        if tenant is not None:
            await tenant.beat(session, cluster.hub_url)
        cg.control("--zero")
        await run_requests(session, cluster, sc, sc.requests)
        a = cg.dump()
        await run_requests(session, cluster, sc, 2 * sc.requests)
        b = cg.dump()
    return a, b


def measure_tree(
    label: str, pythonpath: str | None, work: Path, args: argparse.Namespace
) -> dict[str, float]:
    workdir = work / label
    workdir.mkdir()
    cg = Callgrind(workdir)
    cluster = Cluster(workdir, None, hub_prefix=cg.prefix, with_agent=False)
    if pythonpath:
        cluster.env["PYTHONPATH"] = pythonpath + os.pathsep + cluster.env.get("PYTHONPATH", "")
    cluster.env.update(QUIET_HUB)
    results: dict[str, float] = {}
    try:
        cluster.start()
        assert cluster.hub is not None
        tenant = Tenant(cluster) if args.tenant else None
        cg.pid = cluster.hub.pid
        cg.control("--instr=on")
        for sc in scenarios(args.requests, args.concurrency):
            if args.only and not any(word in sc.key for word in args.only.split(",")):
                continue
            log(f"{label}: {sc.key} ...")
            a, b = asyncio.run(phases(cluster, cg, sc, tenant))
            n = sc.requests
            log(f"{label}: {sc.key}: A/N {a / n:,.0f}, (B - A)/N {(b - a) / n:,.0f} per request")
            results[sc.key] = (a + b) / (3 * n)
    finally:
        cluster.stop()
    if args.keep:
        shutil.copytree(workdir, Path(args.keep) / label, dirs_exist_ok=True)
    return results


def table(runs: dict[str, dict[str, float]]) -> str:
    labels = list(runs)
    this = runs["this"]
    bases = [b for b in labels if b != "this"]
    head = ["scenario", *(f"{b} Ir/req" for b in bases), "this Ir/req"]
    head += [f"this/{b}" for b in bases]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, value in this.items():
        cells = [key, *(f"{runs[b][key]:,.0f}" for b in bases), f"{value:,.0f}"]
        cells += [f"{value / runs[b][key]:.3f}" for b in bases]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", action="append", default=[], help="git ref (repeatable)")
    p.add_argument("--requests", type=int, default=60, help="N: phases of N and 2N (60)")
    p.add_argument("--concurrency", type=int, default=50, help="of the c-N scenarios (50)")
    p.add_argument("--only", help="scenarios whose key contains one of these words (a,b)")
    p.add_argument("--keep", help="copy the callgrind dumps here (for callgrind_annotate)")
    p.add_argument(
        "--tenant",
        action="store_true",
        help="a second user with 64 providers of 1,024 models (bench/tenants.py's tenant)",
    )
    args = p.parse_args(argv)
    if not shutil.which("valgrind"):
        sys.exit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    runs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="inferclub-instructions-") as tmp:
        work = Path(tmp)
        for ref in args.baseline:
            tree = work / f"src-{ref}"
            tree.mkdir()
            runs[ref] = measure_tree(ref, str(export(ref, tree)), work, args)
        runs["this"] = measure_tree("this", None, work, args)
    print(f"Hub instructions per request (callgrind, (A + B) / 3N, N={args.requests})")
    print()
    print(table(runs))


if __name__ == "__main__":
    main()
