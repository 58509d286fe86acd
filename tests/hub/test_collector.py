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

# A cycle left by start-up is collected before the freeze, not kept for the process's life.
freed = []
node = Node()
node.self = node
weakref.finalize(node, freed.append, "start-up")
del node
default = gc.get_threshold()
collector.tune()
young, middle, old = gc.get_threshold()
print(young, (middle, old) == default[1:], gc.get_freeze_count() > 0, freed == ["start-up"])
# A reference cycle made after start-up is still found, by the collector on its own: with
# allocations enough for a young collection, its finalizer runs without gc.collect().
node = Node()
node.self = node
weakref.finalize(node, freed.append, "later")
del node
kept = [[] for _ in range(3 * collector.YOUNG_THRESHOLD)]
print(freed == ["start-up", "later"])
"""


@pytest.mark.subprocess
def test_tune_freezes_startup_objects_and_still_collects_new_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [str(collector.YOUNG_THRESHOLD), "True", "True", "True", "True"]
