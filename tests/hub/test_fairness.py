"""Request starts take turns between users (hub/fairness.py): the order, not the timing.

The rotation's tests set ``STARTS_PER_PASS`` to 1, so that each pass shows; the share of a
pass (a few starts, a budget of body bytes) has tests of its own with the real values.
"""

from __future__ import annotations

import asyncio

import pytest

from inferclub.hub import fairness
from inferclub.hub.fairness import Turns

TENANT, VICTIM, THIRD = 1, 2, 3
K = fairness.STARTS_PER_PASS


@pytest.fixture
def one_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fairness, "STARTS_PER_PASS", 1)


async def started_in_order(turns: Turns, arrivals: list[tuple[int, str]]) -> list[str]:
    """Each arrival asks for its turn in this order, all before any turn is granted; the
    order in which they got it."""
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    await asyncio.gather(*(start(user, label) for user, label in arrivals))
    return order


@pytest.mark.usefixtures("one_a_pass")
async def test_a_burst_of_one_user_lets_another_users_start_through_next() -> None:
    burst = [(TENANT, f"t{i}") for i in range(5)]
    order = await started_in_order(Turns(), [*burst, (VICTIM, "v1"), (VICTIM, "v2")])
    assert order == ["t0", "v1", "t1", "v2", "t2", "t3", "t4"]


@pytest.mark.usefixtures("one_a_pass")
async def test_users_take_turns_in_rotation() -> None:
    arrivals = [(TENANT, "t0"), (TENANT, "t1"), (VICTIM, "v0"), (THIRD, "x0"), (TENANT, "t2")]
    order = await started_in_order(Turns(), arrivals)
    assert order == ["t0", "v0", "x0", "t1", "t2"]


async def test_one_user_alone_keeps_arrival_order() -> None:
    order = await started_in_order(Turns(), [(TENANT, f"t{i}") for i in range(3 * K)])
    assert order == [f"t{i}" for i in range(3 * K)]


async def test_a_pass_lets_a_user_start_a_few_requests_not_the_whole_burst() -> None:
    """With the real share: a burst of 3K starts of one user goes K at a time, and another
    user's starts that arrive behind the whole burst go after its first K."""
    burst = [(TENANT, f"t{i}") for i in range(3 * K)]
    order = await started_in_order(Turns(), [*burst, (VICTIM, "v1"), (VICTIM, "v2")])
    assert order == [
        *(f"t{i}" for i in range(K)),
        "v1",
        "v2",
        *(f"t{i}" for i in range(K, 3 * K)),
    ]


async def test_each_pass_lets_every_waiting_user_start_its_share() -> None:
    turns = Turns()
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    tasks = [asyncio.ensure_future(start(TENANT, f"t{i}")) for i in range(3 * K)]
    tasks += [asyncio.ensure_future(start(VICTIM, f"v{i}")) for i in range(K + 1)]
    await asyncio.sleep(0)  # every start asks for its turn: K of each user's go at once
    assert turns.waiting() == 2 * K + 1
    await asyncio.sleep(0)  # their starts run; the first pass: both used their share
    assert len(order) == 2 * K and turns.waiting() == 2 * K + 1
    await asyncio.sleep(0)  # the second pass: K more of the tenant's, the victim's last
    assert turns.waiting() == K
    await asyncio.sleep(0)
    assert order[2 * K :] == [*(f"t{i}" for i in range(K, 2 * K)), f"v{K}"]
    await asyncio.gather(*tasks)
    assert turns.waiting() == 0


async def test_large_bodies_take_a_pass_each() -> None:
    """A start counts its body against the pass's byte budget: a user's large heartbeats go
    one a pass (the first at once, always), while small starts still go several at a time."""
    turns = Turns()
    order: list[str] = []
    large = fairness.BYTES_PER_PASS // 2 + 1

    async def start(user_id: int, label: str, size: int) -> None:
        await turns.turn(user_id, size)
        order.append(label)

    tasks = [asyncio.ensure_future(start(TENANT, f"big{i}", large)) for i in range(3)]
    tasks += [asyncio.ensure_future(start(VICTIM, f"v{i}", 100)) for i in range(3)]
    await asyncio.gather(*tasks)
    # One large start fits the budget, two do not; the victim's three small ones go at once.
    assert order == ["big0", "v0", "v1", "v2", "big1", "big2"]
    tasks = [asyncio.ensure_future(start(TENANT, "huge", 10 * fairness.BYTES_PER_PASS))]
    await asyncio.gather(*tasks)
    assert order[-1] == "huge"  # larger than the budget: still started, alone


@pytest.mark.usefixtures("one_a_pass")
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
    # their way while its own first step runs: two at most, not the 17 left of the burst.
    assert order.index("v") <= arrived + 2, order
    assert len(order) == 21


async def test_a_user_arriving_mid_burst_waits_for_a_pass_of_the_burst_at_most() -> None:
    """The same with the real share: a late start goes after one pass of the burst at most."""
    turns = Turns()
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    burst = [asyncio.ensure_future(start(TENANT, f"t{i}")) for i in range(6 * K)]
    while len(order) < K + 1:
        await asyncio.sleep(0)
    arrived = len(order)
    late = asyncio.ensure_future(start(VICTIM, "v"))
    await asyncio.gather(*burst, late)
    assert order.index("v") <= arrived + K, order
    assert len(order) == 6 * K + 1


@pytest.mark.usefixtures("one_a_pass")
async def test_a_waiter_that_left_is_skipped_and_nothing_is_left_behind() -> None:
    turns = Turns()
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    first = asyncio.ensure_future(start(TENANT, "t0"))
    gone = asyncio.ensure_future(start(TENANT, "t1"))
    last = asyncio.ensure_future(start(TENANT, "t2"))
    await asyncio.sleep(0)  # the first started at once (nobody waited); the other two wait
    assert turns.waiting() == 2
    gone.cancel()
    await asyncio.gather(first, last)
    assert order == ["t0", "t2"]
    assert turns.waiting() == 0


async def test_one_user_alone_starts_at_once_until_another_user_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Turns are taken between users: a user alone on the hub starts a burst at once. Another
    user's start turns the rotation on for ``SHARED_FOR`` seconds (a fake clock here)."""
    now = [1000.0]
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    turns = Turns()
    order: list[str] = []
    many = 3 * K

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
    assert await burst([(TENANT, f"a{i}") for i in range(many)]) == many + 1
    order.clear()
    # Another user: from its start on, the tenant's starts take turns with it.
    assert await burst([(VICTIM, "v0"), *((TENANT, f"t{i}") for i in range(many))]) == 1 + K
    assert order == ["v0", *(f"t{i}" for i in range(many))]
    order.clear()
    now[0] += fairness.SHARED_FOR - 1  # the victim started less than SHARED_FOR ago
    assert await burst([(TENANT, f"t{i}") for i in range(many)]) == K
    assert turns.waiting() == 0
    await asyncio.sleep(0)  # the last pass
    now[0] += 2  # the victim's start is SHARED_FOR ago: the tenant is alone again
    order.clear()
    assert await burst([(TENANT, f"b{i}") for i in range(many)]) == many
