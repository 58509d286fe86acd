"""Request starts take turns between users (hub/fairness.py): the order, not the timing."""

from __future__ import annotations

import asyncio

import pytest

from inferclub.hub import fairness
from inferclub.hub.fairness import Turns

TENANT, VICTIM, THIRD = 1, 2, 3


async def started_in_order(turns: Turns, arrivals: list[tuple[int, str]]) -> list[str]:
    """Each arrival asks for its turn in this order, all before any turn is granted; the
    order in which they got it."""
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    await asyncio.gather(*(start(user, label) for user, label in arrivals))
    return order


async def test_a_burst_of_one_user_lets_another_users_start_through_next() -> None:
    burst = [(TENANT, f"t{i}") for i in range(5)]
    order = await started_in_order(Turns(), [*burst, (VICTIM, "v1"), (VICTIM, "v2")])
    assert order == ["t0", "v1", "t1", "v2", "t2", "t3", "t4"]


async def test_users_take_turns_in_rotation() -> None:
    arrivals = [(TENANT, "t0"), (TENANT, "t1"), (VICTIM, "v0"), (THIRD, "x0"), (TENANT, "t2")]
    order = await started_in_order(Turns(), arrivals)
    assert order == ["t0", "v0", "x0", "t1", "t2"]


async def test_one_user_alone_keeps_arrival_order() -> None:
    order = await started_in_order(Turns(), [(TENANT, f"t{i}") for i in range(4)])
    assert order == ["t0", "t1", "t2", "t3"]


async def test_a_user_arriving_mid_burst_waits_for_a_few_starts_not_the_burst() -> None:
    """A start that arrives while a burst is being let through, one turn a pass, goes after
    a few of its starts, whatever is left of the burst."""
    turns = Turns()
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    burst = [asyncio.ensure_future(start(TENANT, f"t{i}")) for i in range(20)]
    while len(order) < 3:
        await asyncio.sleep(0)
    arrived = len(order)
    late = asyncio.ensure_future(start(VICTIM, "v"))
    await asyncio.gather(*burst, late)
    # In arrival order it would be last (21st). Here it waits for the starts already on
    # their way while its own first step runs, then for the one whose user is ahead of it
    # in the rotation: three at most, not the 17 left of the burst.
    assert order.index("v") <= arrived + 3, order
    assert len(order) == 21


async def test_a_waiter_that_left_is_skipped_and_nothing_is_left_behind() -> None:
    turns = Turns()
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    first = asyncio.ensure_future(start(TENANT, "t0"))
    gone = asyncio.ensure_future(start(TENANT, "t1"))
    last = asyncio.ensure_future(start(VICTIM, "v0"))
    await asyncio.sleep(0)  # the first started at once (nobody waited); the other two wait
    assert turns.waiting() == 2
    gone.cancel()
    await asyncio.gather(first, last)
    assert order == ["t0", "v0"]
    assert turns.waiting() == 0


async def test_each_pass_lets_every_waiting_user_start_one_request() -> None:
    turns = Turns()
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    tasks = [asyncio.ensure_future(start(TENANT, f"t{i}")) for i in range(3)]
    tasks += [asyncio.ensure_future(start(VICTIM, f"v{i}")) for i in range(2)]
    await asyncio.sleep(0)  # every start asks for its turn; the first, on an idle hub, has it
    assert turns.waiting() == 4
    await asyncio.sleep(0)  # the first pass: the tenant already started one, the victim starts
    assert turns.waiting() == 3
    await asyncio.sleep(0)  # its two starts run, and the second pass
    assert order == ["t0", "v0"] and turns.waiting() == 1
    await asyncio.gather(*tasks)
    assert order == ["t0", "v0", "t1", "v1", "t2"]


async def test_one_user_alone_starts_at_once_until_another_user_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Turns are taken between users: a user alone on the hub starts a burst at once. Another
    user's start turns the rotation on for ``SHARED_FOR`` seconds (a fake clock here)."""
    now = [1000.0]
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    turns = Turns()
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    async def burst(arrivals: list[tuple[int, str]]) -> int:
        """Start these; how many had started after the first step of each."""
        tasks = [asyncio.ensure_future(start(user, label)) for user, label in arrivals]
        await asyncio.sleep(0)
        at_once = len(order)
        await asyncio.gather(*tasks)
        return at_once

    await start(TENANT, "first")  # on an idle hub: at once, with a pass scheduled
    await asyncio.sleep(0)  # the pass: nobody waited
    assert await burst([(TENANT, f"a{i}") for i in range(5)]) == 6
    order.clear()
    # Another user: from its start on, the tenant's starts take turns with it.
    assert await burst([(VICTIM, "v0"), *((TENANT, f"t{i}") for i in range(3))]) == 1
    assert order == ["v0", "t0", "t1", "t2"]
    order.clear()
    now[0] += fairness.SHARED_FOR - 1  # the victim started less than SHARED_FOR ago
    assert await burst([(TENANT, f"t{i}") for i in range(3)]) == 1
    assert turns.waiting() == 0
    await asyncio.sleep(0)  # the last pass
    now[0] += 2  # the victim's start is SHARED_FOR ago: the tenant is alone again
    order.clear()
    assert await burst([(TENANT, f"b{i}") for i in range(5)]) == 5
