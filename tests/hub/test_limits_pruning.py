"""The in-memory limits stay bounded without scanning their whole table at every call when a
hub knows more live providers (or users) than the pruning threshold: a fleet of 10,000
providers made every accepted heartbeat rebuild the pacer's table (issue 10)."""

from __future__ import annotations

import pytest

from inferclub.hub.limits import _PRUNE_AT, HeartbeatPacer, ProbeBudget
from inferclub.openai_errors import OpenAIError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_fleet_larger_than_the_threshold_is_not_rescanned_at_every_beat() -> None:
    clock = Clock()
    pacer = HeartbeatPacer(1.0, clock=clock)
    fleet = _PRUNE_AT + 1000
    for i in range(fleet):
        pacer.accepted(1, f"rig{i}")
    table = pacer._last
    for i in range(fleet):  # every provider beats again, all of them still live
        clock.now += 0.0001
        pacer.accepted(1, f"rig{i}")
    assert pacer._last is table, "the table was rebuilt although nothing in it was stale"
    assert len(pacer) == fleet
    with pytest.raises(OpenAIError) as refused:
        pacer.check(1, "rig7")
    assert refused.value.status == 429


def test_stale_beats_are_still_forgotten_past_the_threshold() -> None:
    clock = Clock()
    pacer = HeartbeatPacer(1.0, clock=clock)
    for i in range(3 * _PRUNE_AT):
        pacer.accepted(1, f"old{i}")
    clock.now += 60  # all of them long gone
    for i in range(3 * _PRUNE_AT):
        pacer.accepted(2, f"new{i}")
    # Only the live part (the new ones) is left, however many came before.
    assert len(pacer) == 3 * _PRUNE_AT


def test_probe_budget_still_forgets_users_past_the_threshold() -> None:
    clock = Clock()
    budget = ProbeBudget(1, window=60.0, clock=clock)
    for user in range(_PRUNE_AT + 10):
        assert budget.allow(user, "10.0.0.1:80")
    clock.now += 61
    for user in range(_PRUNE_AT + 10, 3 * _PRUNE_AT):
        assert budget.allow(user, "10.0.0.1:80")
    assert len(budget._targets) < 3 * _PRUNE_AT - 10
    assert budget.allow(0, "10.0.0.2:80")  # user 0's old target is forgotten
