"""Request starts take turns between users (hub/fairness.py): the order, not the timing.

The rotation's tests set ``STARTS_PER_PASS`` to 1, so that each pass shows; the share of a
pass (a few starts, a budget of body bytes) has tests of its own with the real values.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tornado.ioloop import IOLoop

from inferclub.hub import fairness
from inferclub.hub.fairness import Turns
from tests.support.hubapp import running_hub

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


@pytest.fixture
def clock(io_loop: IOLoop, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The loop's time, set by the test."""
    now = [1000.0]
    monkeypatch.setattr(io_loop.asyncio_loop, "time", lambda: now[0])  # type: ignore[attr-defined]
    return now


async def two_users_then_alone(turns: Turns, clock: list[float]) -> None:
    """Another user started (turns are on) longer than ``MIXED_FOR`` ago: the tenant's
    starts from now on are one user's alone, with the share of a few a pass."""
    await turns.turn(VICTIM)
    await turns.turn(TENANT)
    await asyncio.sleep(0)  # the pass those two scheduled
    clock[0] += 2 * fairness.MIXED_FOR


async def test_a_user_alone_for_a_while_starts_a_few_requests_a_pass(clock: list[float]) -> None:
    """A burst of 3K starts of one user, when no other user started in the last
    ``MIXED_FOR`` seconds: K at once, then K a pass, not all of it in one round of the loop."""
    turns = Turns()
    await two_users_then_alone(turns, clock)
    order: list[str] = []

    async def start(user_id: int, label: str) -> None:
        await turns.turn(user_id)
        order.append(label)

    tasks = [asyncio.ensure_future(start(TENANT, f"t{i}")) for i in range(3 * K)]
    await asyncio.sleep(0)  # every start asks: K go at once (the share of the next pass)
    assert turns.waiting() == 2 * K
    await asyncio.sleep(0)  # those K run; the pass: their share is used
    assert len(order) == K and turns.waiting() == 2 * K
    await asyncio.sleep(0)  # the next pass: K more
    assert turns.waiting() == K
    await asyncio.gather(*tasks)
    assert order == [f"t{i}" for i in range(3 * K)]


async def test_users_starting_in_turn_get_one_start_a_pass(clock: list[float]) -> None:
    """Starts of two users within ``MIXED_FOR``: one start a pass each, so a light user's
    requests wait for one start of the heavy user's burst per round of the loop, not K."""
    turns = Turns()
    await two_users_then_alone(turns, clock)
    order = await started_in_order(
        turns, [*((TENANT, f"t{i}") for i in range(2 * K)), (VICTIM, "v0"), (VICTIM, "v1")]
    )
    # The tenant's first K started at once (it was alone until the victim's start); from the
    # victim's start on, one a pass each.
    assert order == [
        *(f"t{i}" for i in range(K)),
        "v0",
        f"t{K}",
        "v1",
        *(f"t{i}" for i in range(K + 1, 2 * K)),
    ]
    # The tenant alone again, but the victim started less than MIXED_FOR ago: one a pass.
    clock[0] += fairness.MIXED_FOR / 2
    tasks = [asyncio.ensure_future(turns.turn(TENANT)) for _ in range(3)]
    await asyncio.sleep(0)
    assert turns.waiting() == 2
    await asyncio.gather(*tasks)


async def test_the_share_of_a_pass_counts_body_bytes(clock: list[float]) -> None:
    """A user alone gets K starts a pass, but no more than BYTES_PER_PASS of body (one start
    always): starts of a quarter of it go four at a time, a larger one alone."""
    # The values docs/benchmarks.md names (the tests here scale with them).
    assert (fairness.STARTS_PER_PASS, fairness.BYTES_PER_PASS) == (8, 16 * 1024)
    assert fairness.MIXED_FOR == 1.0
    turns = Turns()
    await two_users_then_alone(turns, clock)
    quarter = fairness.BYTES_PER_PASS // 4
    tasks = [asyncio.ensure_future(turns.turn(TENANT, quarter)) for _ in range(10)]
    await asyncio.sleep(0)  # four at once: their bodies fill the next pass's budget
    assert turns.waiting() == 6
    await asyncio.sleep(0)  # that pass: the budget is used
    assert turns.waiting() == 6
    await asyncio.sleep(0)  # the next pass: four more
    assert turns.waiting() == 2
    await asyncio.gather(*tasks)
    huge = [asyncio.ensure_future(turns.turn(TENANT, 10 * fairness.BYTES_PER_PASS))]
    huge += [asyncio.ensure_future(turns.turn(TENANT, 10 * fairness.BYTES_PER_PASS))]
    await asyncio.sleep(0)  # larger than the budget: the first still starts, alone
    assert turns.waiting() == 1
    await asyncio.gather(*huge)
    assert turns.waiting() == 0


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
    for _ in range(10):  # a few rounds of the loop: more would mean one share let all through
        if len(order) > K:
            break
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
    # Another user: from its start on, the tenant's starts take turns with it, one a pass
    # while the two users' starts follow each other (MIXED_FOR).
    assert await burst([(VICTIM, "v0"), *((TENANT, f"t{i}") for i in range(many))]) == 2
    assert order == ["v0", *(f"t{i}" for i in range(many))]
    order.clear()
    now[0] += fairness.SHARED_FOR - 1  # the victim started less than SHARED_FOR ago
    assert await burst([(TENANT, f"t{i}") for i in range(many)]) == K
    assert turns.waiting() == 0
    await asyncio.sleep(0)  # the last pass
    now[0] += 2  # the victim's start is SHARED_FOR ago: the tenant is alone again
    order.clear()
    assert await burst([(TENANT, f"b{i}") for i in range(many)]) == many


# -- held starts while the loop is busy ----------------------------------------------------


class FakeCpu:
    """The loop thread's CPU clock, driven by the test: ``busy(share)`` spends ``share`` of
    the loop time that passes next on the CPU."""

    def __init__(self, clock: list[float]) -> None:
        self._clock = clock
        self.cpu = 0.0
        self.share = 0.0
        self._at = clock[0]

    def __call__(self) -> float:
        self.cpu += (self._clock[0] - self._at) * self.share
        self._at = self._clock[0]
        return self.cpu


async def competing(clock: list[float], share: float) -> tuple[Turns, FakeCpu]:
    """Turns on a fake CPU clock where the victim and the tenant have each held a start (they
    compete, within MIXED_FOR), hold none now, and the loop's thread was on the CPU ``share``
    of the last window."""
    cpu = FakeCpu(clock)
    turns = Turns(cpu_clock=cpu)
    for user in (VICTIM, TENANT):
        turns.release(user, await turns.hold(user))
    await asyncio.sleep(0)  # the pass those scheduled
    cpu.share = share
    clock[0] += 0.01
    turns._loop_busy(clock[0])  # the first window begins
    clock[0] += fairness.BUSY_WINDOW
    return turns, cpu


async def passes(n: int = 4) -> None:
    """A few rounds of the loop: the passes due run, and what they let start."""
    for _ in range(n):
        await asyncio.sleep(0)


async def held_at_once(turns: Turns, user: int, n: int) -> list[asyncio.Future[float]]:
    """``n`` holds of ``user``; those that started at once after a step of the loop."""
    tasks = [asyncio.ensure_future(turns.hold(user)) for _ in range(n)]
    await asyncio.sleep(0)
    return tasks


async def test_on_a_busy_loop_a_competing_user_holds_one_start_at_a_time(
    clock: list[float],
) -> None:
    """The loop's thread busy (above BUSY_ABOVE) and two users competing: the tenant's
    second start waits until its first one's answer begins; the victim's start goes at once
    (it holds none); each release lets the tenant's next one go."""
    assert (fairness.BUSY_ABOVE, fairness.CALM_BELOW, fairness.HOLD_FOR) == (0.6, 0.3, 0.01)
    turns, cpu = await competing(clock, share=0.9)
    tenant = await held_at_once(turns, TENANT, 3)
    assert [t.done() for t in tenant] == [True, False, False]
    victim = await turns.hold(VICTIM)  # at once, while the tenant holds one and two wait
    assert turns.waiting() == 2
    turns.release(TENANT, tenant[0].result())
    await passes()  # the passes: the next one goes, the last waits for it to release
    assert [t.done() for t in tenant] == [True, True, False]
    turns.release(VICTIM, victim)
    turns.release(TENANT, tenant[1].result())
    await asyncio.gather(*tenant)
    assert turns.waiting() == 0


async def test_on_a_calm_loop_competing_users_hold_as_many_starts_as_they_like(
    clock: list[float],
) -> None:
    turns, cpu = await competing(clock, share=0.5)  # under BUSY_ABOVE
    tenant = await held_at_once(turns, TENANT, 3)
    await passes()  # one a pass (the users compete), none held back
    assert all(t.done() for t in tenant)


async def test_the_hold_lasts_until_the_loop_is_calm_again(clock: list[float]) -> None:
    """Hysteresis: once busy, starts are held to their count until the loop's share falls
    under CALM_BELOW, not as soon as it is under BUSY_ABOVE."""
    turns, cpu = await competing(clock, share=0.9)
    turns.release(TENANT, await turns.hold(TENANT))  # the window measures busy
    cpu.share = 0.4  # between the two thresholds: still busy
    clock[0] += fairness.BUSY_WINDOW
    first = await turns.hold(TENANT)
    second = asyncio.ensure_future(turns.hold(TENANT))
    await passes(3)
    assert not second.done()
    turns.release(TENANT, first)
    await second
    cpu.share = 0.1  # calm
    clock[0] += fairness.BUSY_WINDOW
    more = await held_at_once(turns, TENANT, 3)
    await passes()
    assert all(t.done() for t in more)


async def test_a_start_waiting_for_its_engine_stops_counting_after_hold_for(
    clock: list[float],
) -> None:
    """A held start whose answer has not begun after HOLD_FOR waits for its engine, which
    costs no CPU: the user's next start goes then (a timer's pass), without a release."""
    turns, cpu = await competing(clock, share=0.9)
    slow = await turns.hold(TENANT)
    nxt = asyncio.ensure_future(turns.hold(TENANT))
    await passes(3)
    assert not nxt.done()
    clock[0] += fairness.HOLD_FOR  # the timer is due
    await passes()
    assert nxt.done()
    turns.release(TENANT, slow)  # late: it no longer counted, and nothing breaks
    assert turns.waiting() == 0


async def test_a_client_that_leaves_after_its_turn_came_gives_its_start_back(
    clock: list[float],
) -> None:
    turns, cpu = await competing(clock, share=0.9)
    first = await turns.hold(TENANT)
    second = asyncio.ensure_future(turns.hold(TENANT))
    await asyncio.sleep(0)
    turns.release(TENANT, first)
    await asyncio.sleep(0)  # the pass: the second's turn comes (its future is done) ...
    second.cancel()  # ... and its client leaves before it runs
    with pytest.raises(asyncio.CancelledError):
        await second
    third = asyncio.ensure_future(turns.hold(TENANT))
    await passes()
    assert third.done()  # not held back by the start its client left
    turns.release(TENANT, third.result())


async def test_another_users_heartbeats_alone_hold_no_one_back(clock: list[float]) -> None:
    """Heartbeats hold no start: a user whose agent beats while a heavy user's requests keep
    the loop busy is no competitor, and the heavy user's starts are not held back."""
    cpu = FakeCpu(clock)
    turns = Turns(cpu_clock=cpu)
    await turns.turn(VICTIM)  # a heartbeat of another user
    turns.release(TENANT, await turns.hold(TENANT))
    await asyncio.sleep(0)
    cpu.share = 0.9
    clock[0] += 0.001
    turns._loop_busy(clock[0])  # the first window begins
    clock[0] += fairness.BUSY_WINDOW
    tenant = await held_at_once(turns, TENANT, 3)
    await passes()  # one a pass (the two users' starts followed each other), none held back
    assert all(t.done() for t in tenant)


async def test_a_heartbeat_does_not_wait_behind_its_users_held_back_requests(
    clock: list[float],
) -> None:
    turns, cpu = await competing(clock, share=0.9)
    tenant = await held_at_once(turns, TENANT, 3)  # one holds, two are held back
    beat = asyncio.ensure_future(turns.turn(TENANT))
    await passes()
    assert beat.done()
    assert [t.done() for t in tenant] == [True, False, False]
    for i in range(3):  # each release lets the next one go
        turns.release(TENANT, tenant[i].result())
        await passes()
        assert sum(t.done() for t in tenant) == min(3, i + 2)
    assert turns.waiting() == 0


@pytest.mark.parametrize(("shared_for", "still_shared_at"), [(fairness.SHARED_FOR, 0), (600, 1)])
async def test_users_share_the_hub_for_as_long_as_it_was_given(
    clock: list[float], shared_for: float, still_shared_at: int
) -> None:
    """A hub whose online window is longer than SHARED_FOR shares for that long: another
    user with a provider online (a heartbeat within the window) always counts."""
    turns = Turns(shared_for=shared_for)
    await turns.turn(VICTIM)
    assert not turns.shared()  # one user alone
    await turns.turn(TENANT)
    assert turns.shared()
    clock[0] += fairness.SHARED_FOR + 1
    assert turns.shared() == bool(still_shared_at)
    clock[0] += 600
    assert not turns.shared()
    await asyncio.sleep(0)  # the pass the turns scheduled


async def test_the_hub_shares_for_its_online_window_when_longer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub whose online window is 600 s: two users' starts keep it shared past SHARED_FOR."""
    async with running_hub(tmp_path, online_window=600) as hub:
        turns = hub.hub.turns
        await turns.turn(VICTIM)
        await turns.turn(TENANT)
        loop = asyncio.get_running_loop()
        later = loop.time() + fairness.SHARED_FOR + 1
        with monkeypatch.context() as m:
            m.setattr(loop, "time", lambda: later)
            assert turns.shared()
        await asyncio.sleep(0)  # the pass the turns scheduled
