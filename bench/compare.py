"""The hub's CPU per request, this tree against a baseline git ref, in one run.

Exports ``src/`` of the baseline ref (``git archive``) to a temporary directory, then runs
``bench/overhead.py`` alternately against the baseline and this tree (the baseline first on
``PYTHONPATH``, so ``python -m inferclub`` is the baseline's hub), ``--rounds`` times each, and
prints, per scenario, the hub's CPU microseconds per request of each and their ratio (median
over the rounds). A benchmark, not a test: it prints numbers and never fails on them.

    .venv/bin/python bench/compare.py --baseline main            # about 2 x 2 quick runs
    .venv/bin/python bench/compare.py --baseline 4b8b6b4 --rounds 3 -- --requests 1000

CPU time spreads by ±25 % on a shared machine. ``--instructions`` counts the hub's
instructions per request under callgrind instead, which does not depend on the load
(``bench/instructions.py``; the extra arguments are then its own, e.g. ``--requests 30``):

    .venv/bin/python bench/compare.py --baseline 4b8b6b4 --instructions -- --requests 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import instructions
from instructions import export

HERE = Path(__file__).resolve().parent


def overhead(pythonpath: str | None, out: Path, extra: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run(
        [sys.executable, str(HERE / "overhead.py"), "--json", str(out), *extra],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def cpu_per_request(data: dict[str, Any]) -> dict[str, float]:
    """Scenario -> the hub's CPU microseconds per request through the hub."""
    out = {}
    for key, modes in data["results"].items():
        value = modes["hub"]["cpu_us_per_request"]["hub"]
        if value is not None:
            out[key] = float(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="git ref to compare against (e.g. main)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each, alternating (2)")
    p.add_argument(
        "--instructions", action="store_true", help="count instructions (bench/instructions.py)"
    )
    p.add_argument("extra", nargs="*", help="arguments for overhead.py (default --quick)")
    args = p.parse_args()
    if args.instructions:
        instructions.main(["--baseline", args.baseline, *args.extra])
        return
    extra = args.extra or ["--quick"]
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="inferclub-compare-") as tmp:
        base_src = export(args.baseline, Path(tmp))
        for i in range(args.rounds):
            for label, path in (("baseline", str(base_src)), ("this", None)):
                print(f"round {i + 1}: {label} ...", file=sys.stderr, flush=True)
                data = overhead(path, Path(tmp) / f"{label}-{i}.json", extra)
                runs[label].append(cpu_per_request(data))
    print(f"Hub CPU per request (µs, median of {args.rounds}), {args.baseline} vs this tree")
    print()
    print("| scenario | baseline | this | this/baseline |")
    print("|---|---:|---:|---:|")
    for key in runs["this"][0]:
        base = statistics.median(r[key] for r in runs["baseline"] if key in r)
        this = statistics.median(r[key] for r in runs["this"] if key in r)
        print(f"| {key} | {base:.0f} | {this:.0f} | {this / base:.2f} |")


if __name__ == "__main__":
    main()
