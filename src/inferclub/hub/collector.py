"""The cyclic garbage collector, tuned for a server that holds a big registry in memory.

CPython's defaults (a young collection every 700 net allocations, a full one whenever a quarter
more objects reached the oldest generation) suit a short script. A hub with 10,000 providers
holds ~360,000 tracked objects (routes, records, index lists): each full collection walked them
all, 190-270 ms with the event loop stopped, 16-17 times in a minute of registering 10,000
providers and then serving 333 heartbeats/s beside ~800 chats/s (every request in flight
waited; the heartbeats' p99 was ~330 ms), and collections took ~7 % of the hub's CPU.

Most of a request's objects die young by reference counting; collecting the young generation
every 10,000 net allocations instead of 700 lets them go before a collection promotes them, so
the old generations grow, and are walked, far less often (docs/benchmarks.md: "The garbage
collector"). Only what start-up loaded is frozen: providers registered or changed later are
walked by the full collections that remain, which come far less often.
"""

from __future__ import annotations

import gc

#: Net allocations between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Collect what start-up left, freeze what survived (modules, classes, the registry the
    store loaded: they live as long as the process, and no later collection walks them), and
    collect the young generation less often. Called once per hub process, before it serves."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
