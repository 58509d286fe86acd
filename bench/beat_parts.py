"""What the hub's own code spends on one steady heartbeat of a provider with many models.

In-process, no server: the parts of a heartbeat's handling that grow with its model list, timed
on the same body (the ``tenants.py`` tenant's, 1,024 models by default) in one run, each the
median of ``--rounds`` rounds of ``--repeat`` calls. The framework's share (Tornado, the event
loop, the sockets) is not here: ``heartbeats.py`` measures the whole.

    .venv/bin/python bench/beat_parts.py                 # a few seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

from tenants import beat

from inferclub import wire
from inferclub.hub import jsonbody
from inferclub.hub.routing import Registry
from inferclub.hub.store import ProviderRecord, ServiceInfo

CALLBACK = "http://127.0.0.1:9/v1"


def timed(fn: Callable[[], object], repeat: int, rounds: int) -> float:
    """Microseconds per call, the median of the rounds."""
    per: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        per.append((time.perf_counter() - start) / repeat * 1e6)
    return statistics.median(per)


def registry_with(providers: int, models: int) -> tuple[Registry, ProviderRecord]:
    """A user's registry of ``providers`` providers with ``models`` models each; one of them."""
    registry = Registry(3600.0)
    record = None
    for i in range(providers):
        hb = wire.Heartbeat.parse(json.loads(beat(f"rig{i}", CALLBACK, models)))
        services = tuple(
            ServiceInfo(s.name, s.type, s.engine, s.features, s.models) for s in hb.services
        )
        now = time.time()
        record = ProviderRecord(i + 1, 1, hb.name, CALLBACK, "bench", {}, now, now, services)
        registry.update(record)
    assert record is not None
    return registry, record


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1024)
    parser.add_argument("--providers", type=int, default=64, help="of the same user")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = beat("rig0", CALLBACK, args.models)
    data = json.loads(body)
    hb = wire.Heartbeat.parse(data)
    known = (json.loads(body)["services"], hb.services)
    registry, record = registry_with(args.providers, args.models)

    def steady_update() -> None:
        registry.update(dataclasses.replace(record, last_heartbeat_at=time.time()))

    rows = [
        ("decode the body (jsonbody.loads)", lambda: jsonbody.loads(body)),
        ("validate (Heartbeat.parse)", lambda: wire.Heartbeat.parse(data)),
        ("validate, services as last time", lambda: wire.Heartbeat.parse(data, known)),
        ("registry update, same description", steady_update),
    ]
    print(f"{len(body):,}-byte heartbeat, {args.models:,} models, {args.providers} providers\n")
    print("| part | µs per beat |")
    print("|---|---:|")
    for label, fn in rows:
        print(f"| {label} | {timed(fn, args.repeat, args.rounds):,.1f} |")


if __name__ == "__main__":
    main()
