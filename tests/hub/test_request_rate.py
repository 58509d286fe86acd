"""The per-user request rate (hub/limits.py: RequestRate) on a test clock: who waits, and how
long. A request past the rate waits for its slot; the hub never refuses it for the rate."""

from __future__ import annotations

import pytest

from inferclub.hub.limits import _PRUNE_AT, RequestRate

MALLORY, BOB = 1, 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waits(rate: RequestRate, user: int, n: int) -> list[float]:
    return [round(rate.wait(user), 6) for _ in range(n)]


def test_a_burst_goes_at_once_and_the_rest_take_the_rate_s_slots() -> None:
    rate = RequestRate(10.0, burst=3, clock=Clock())
    assert waits(rate, MALLORY, 6) == [0, 0, 0, 0.1, 0.2, 0.3]
    assert rate.paced == 3


def test_requests_at_the_rate_never_wait() -> None:
    clock = Clock()
    rate = RequestRate(10.0, burst=1, clock=clock)
    for _ in range(50):
        assert rate.wait(MALLORY) == 0
        clock.now += 0.1
    assert rate.paced == 0


def test_a_user_who_was_idle_has_its_whole_burst_again() -> None:
    clock = Clock()
    rate = RequestRate(10.0, burst=3, clock=clock)
    waits(rate, MALLORY, 6)  # six requests: its schedule is 0.6 s ahead
    clock.now += 0.5
    assert waits(rate, MALLORY, 3) == [0, 0, 0.1]  # not yet: two of three
    clock.now += 1.0
    assert waits(rate, MALLORY, 4) == [0, 0, 0, 0.1]


def test_one_users_backlog_does_not_delay_another() -> None:
    rate = RequestRate(10.0, burst=2, clock=Clock())
    assert waits(rate, MALLORY, 50)[-1] == pytest.approx(4.8)
    assert waits(rate, BOB, 2) == [0, 0]


def test_a_request_that_left_before_its_slot_gives_it_back() -> None:
    """Clients that ask and leave must not push their user's schedule on: the next request
    takes the slot the one that left had."""
    rate = RequestRate(10.0, burst=1, clock=Clock())
    assert waits(rate, MALLORY, 3) == [0, 0.1, 0.2]
    for _ in range(100):  # ask, and leave before the slot
        rate.wait(MALLORY)
        rate.give_back(MALLORY)
    assert waits(rate, MALLORY, 1) == [0.3]


def test_with_not_before_the_first_requests_of_a_flood_do_not_come_due_together() -> None:
    """Refusals past the in-flight cap: each waits a second at least, and the first ones of
    a flood are spread at the rate from there, not all due at that second."""
    rate = RequestRate(10.0, burst=1, clock=Clock(), not_before=1.0)
    assert waits(rate, MALLORY, 4) == [1.0, 1.1, 1.2, 1.3]
    assert waits(RequestRate(0.0, burst=1, not_before=1.0), MALLORY, 2) == [1.0, 1.0]


def test_rate_zero_is_no_limit_and_remembers_nothing() -> None:
    rate = RequestRate(0.0, burst=1, clock=Clock())
    assert waits(rate, MALLORY, 1000) == [0] * 1000
    assert rate.paced == 0 and not rate._due


def test_the_table_of_users_stays_bounded() -> None:
    clock = Clock()
    rate = RequestRate(10.0, burst=1, clock=clock)
    for user in range(3 * _PRUNE_AT):
        rate.wait(user)
        clock.now += 1.0  # each user's slot is past before the next one comes
    assert len(rate._due) <= _PRUNE_AT
