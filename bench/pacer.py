"""What the heartbeat pacer (``hub/limits.py``) costs per accepted beat in a fleet of 10,000
providers, at a few fleet-wide beat rates.

In-process, with a simulated clock (each beat advances it by 1/RATE s), the pacer's interval 0
as in ``heartbeats.py``: the table keeps 4 s of beats. Before issue 10's fix it was pruned at
every call once more than 4,096 providers had beaten within those 4 s (above ~1,024 beats/s),
i.e. a whole-table rebuild per heartbeat. Runs against whatever ``inferclub`` is imported, so

    .venv/bin/python bench/pacer.py
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python bench/pacer.py

compare two versions. Prints microseconds per accepted beat; never fails on the numbers.
"""

from __future__ import annotations

import time
from typing import Any

import inferclub.hub.limits as limits

_clock = [0.0]


def fake_monotonic() -> float:
    return _clock[0]


def new_pacer() -> limits.HeartbeatPacer:
    """A pacer on the simulated clock: passed in where the pacer takes one, else patched into
    the module's ``time`` (older versions read ``time.monotonic`` there)."""
    try:
        return limits.HeartbeatPacer(0.0, clock=fake_monotonic)  # type: ignore[call-arg,unused-ignore]
    except TypeError:
        module_time: Any = limits.time
        module_time.monotonic = fake_monotonic
        return limits.HeartbeatPacer(0.0)


def per_beat(rate: float, fleet: int = 10_000, beats: int = 20_000) -> float:
    """Microseconds per ``accepted`` call with ``fleet`` providers round-robin at ``rate``/s."""
    pacer = new_pacer()
    for i in range(fleet):
        _clock[0] += 1 / rate
        pacer.accepted(1, f"rig{i}")
    start = time.perf_counter()
    for j in range(beats):
        _clock[0] += 1 / rate
        pacer.accepted(1, f"rig{j % fleet}")
    return (time.perf_counter() - start) / beats * 1e6


def main() -> None:
    print(f"pacer from {limits.__file__}")
    print("| beats/s (10,000 providers) | µs per accepted beat |")
    print("|---|---|")
    for rate in (333, 1000, 2000, 4000):
        print(f"| {rate:,} | {per_beat(rate):.1f} |")


if __name__ == "__main__":
    main()
