"""The hub's garbage-collector tuning (hub/collector.py), in a process of its own: it changes
interpreter-wide settings that the test process must keep."""

from __future__ import annotations

import subprocess
import sys

import pytest

from inferclub.hub import collector

PROGRAM = """
import gc, weakref
from inferclub.hub import collector

class Node:
    pass

collector.tune()
print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
# A reference cycle made after start-up is still found, by the collector on its own: with
# allocations enough for a young collection, its finalizer runs without gc.collect().
freed = []
node = Node()
node.self = node
weakref.finalize(node, freed.append, True)
del node
kept = [[] for _ in range(3 * collector.YOUNG_THRESHOLD)]
print(freed == [True])
"""


@pytest.mark.subprocess
def test_tune_freezes_startup_objects_and_still_collects_new_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [str(collector.YOUNG_THRESHOLD), "True", "True"]
