"""The choice among a user's candidates (``choose.Fleet``), without a server: load first, then
hot models, then registration order; passive health; goodbyes; errors that say why none can
serve. Every order here is deterministic: the clock is passed in."""

from __future__ import annotations

from typing import Any

import pytest

from inferclub import wire
from inferclub.hub.affinity import Conversation, conversation_key
from inferclub.hub.choose import Fleet, ProviderState, more_room
from inferclub.hub.routing import Registry, Route
from inferclub.openai_errors import OpenAIError
from tests.support.registry import ALICE, WINDOW, provider, registry, svc

NOW = 1000.0


def beat(
    fleet: Fleet,
    pid: int,
    *services: dict[str, Any],
    down: list[dict[str, Any]] | None = None,
    leaving: bool = False,
) -> None:
    """What provider ``pid``'s last heartbeat said of its services' load."""
    hb = wire.Heartbeat.parse(
        {
            "name": f"rig-{pid}",
            "callback_url": f"http://10.0.0.{pid}:8000/v1",
            "services": list(services),
            "down": down or [],
            "leaving": leaving,
        }
    )
    fleet.heard(pid, ProviderState.of(hb), user_id=ALICE)


def three() -> Registry:
    return registry(*(provider(pid, svc(f"s{pid}", "llm", "m1")) for pid in (1, 2, 3)))


def names(routes: list[Route]) -> list[str]:
    return [r.provider.name for r in routes]


def choose(fleet: Fleet, reg: Registry, model: str = "m1", type_: str = "llm") -> list[str]:
    return names(fleet.choose(reg, ALICE, type_, model))


def refused(fleet: Fleet, reg: Registry, model: str = "m1") -> OpenAIError:
    with pytest.raises(OpenAIError) as exc:
        fleet.choose(reg, ALICE, "llm", model)
    return exc.value


def test_equal_candidates_keep_registration_order() -> None:
    assert choose(Fleet(10), three()) == ["rig-1", "rig-2", "rig-3"]


def test_the_fewest_requests_in_flight_wins() -> None:
    fleet, reg = Fleet(10), three()
    first, second, _ = reg.candidates(ALICE, "llm", "m1")
    with fleet.busy(first), fleet.busy(first), fleet.busy(second):
        assert choose(fleet, reg) == ["rig-3", "rig-2", "rig-1"]
    assert choose(fleet, reg) == ["rig-1", "rig-2", "rig-3"]


def test_most_free_capacity_counts_max_concurrency_and_the_engines_queue() -> None:
    fleet, reg = Fleet(10), three()
    beat(fleet, 1, {"name": "s1", "models": ["m1"], "max_concurrency": 2})
    beat(fleet, 2, {"name": "s2", "models": ["m1"], "max_concurrency": 8, "queue": 3})
    beat(fleet, 3, {"name": "s3", "models": ["m1"], "max_concurrency": 4})
    # free: rig-1 2, rig-2 8-3 = 5, rig-3 4
    assert choose(fleet, reg) == ["rig-2", "rig-3", "rig-1"]


def test_a_service_at_its_capacity_comes_last_and_one_without_a_limit_first() -> None:
    fleet, reg = Fleet(10), three()
    beat(fleet, 1, {"name": "s1", "models": ["m1"], "max_concurrency": 1})
    beat(fleet, 2, {"name": "s2", "models": ["m1"], "max_concurrency": 50})
    first = reg.candidates(ALICE, "llm", "m1")[0]
    with fleet.busy(first):
        assert fleet.full(first)
        assert choose(fleet, reg) == ["rig-3", "rig-2", "rig-1"]


def test_among_equally_free_services_the_one_with_the_model_loaded_wins() -> None:
    fleet = Fleet(10)
    reg = registry(*(provider(pid, svc(f"s{pid}", "llm", "m1", "m2")) for pid in (1, 2)))
    beat(fleet, 1, {"name": "s1", "models": ["m1", "m2"], "loaded": ["m1"]})
    beat(fleet, 2, {"name": "s2", "models": ["m1", "m2"], "loaded": ["m2"]})
    assert choose(fleet, reg, "m2") == ["rig-2", "rig-1"]
    assert choose(fleet, reg, "m1") == ["rig-1", "rig-2"]


def test_a_leaving_agent_gets_no_new_request_and_its_next_beat_takes_it_back() -> None:
    fleet, reg = Fleet(10), three()
    beat(fleet, 2, {"name": "s2", "models": ["m1"]}, leaving=True)
    assert choose(fleet, reg) == ["rig-1", "rig-3"]
    beat(fleet, 2, {"name": "s2", "models": ["m1"]})
    assert choose(fleet, reg) == ["rig-1", "rig-2", "rig-3"]


def test_a_failed_provider_cools_down_doubling_then_gets_one_trial() -> None:
    fleet, reg = Fleet(10), three()
    routes = reg.candidates(ALICE, "llm", "m1")
    fleet.failed(1, now=NOW)
    assert names(fleet.order(routes, "m1", NOW + 9.9)) == ["rig-2", "rig-3"]
    assert names(fleet.order(routes, "m1", NOW + 10)) == ["rig-1", "rig-2", "rig-3"]
    fleet.trying(routes[0])  # its trial: other requests still skip it meanwhile
    assert names(fleet.order(routes, "m1", NOW + 10)) == ["rig-2", "rig-3"]
    fleet.failed(1, now=NOW + 11)  # the trial failed: 20 s now
    assert names(fleet.order(routes, "m1", NOW + 30.9)) == ["rig-2", "rig-3"]
    for _ in range(5):
        fleet.failed(1, now=NOW + 31)
    assert fleet.cooling_down(1, NOW + 31) == 60.0  # capped
    fleet.succeeded(1)
    assert fleet.cooling_down(1, NOW + 31) is None
    assert names(fleet.order(routes, "m1", NOW + 31)) == ["rig-1", "rig-2", "rig-3"]


def test_when_every_candidate_cools_down_the_503_names_them_with_retry_after() -> None:
    fleet, reg = Fleet(10), registry(provider(1, svc("a", "llm", "m1")))
    fleet.failed(1)
    err = refused(fleet, reg)
    assert (err.status, err.code, err.type) == (503, "model_unavailable", "service_unavailable")
    assert "rig-1: cooling down after failing" in err.message
    assert err.headers["Retry-After"] == "10"


def test_an_engine_down_behind_a_live_agent_is_503_not_404() -> None:
    fleet, reg = Fleet(10), registry(provider(1, svc("other", "llm", "m9")))
    beat(
        fleet,
        1,
        {"name": "other", "models": ["m9"]},
        down=[{"name": "llama", "models": ["m1"], "detail": "cannot connect"}],
    )
    err = refused(fleet, reg)
    assert (err.status, err.code) == (503, "model_unavailable")
    assert "rig-1: engine down (cannot connect)" in err.message
    assert err.headers["Retry-After"]


def test_an_unknown_model_404_lists_up_to_20_models_of_that_type() -> None:
    models = [f"m{i:02}" for i in range(25)]
    reg = registry(provider(1, svc("a", "llm", *models), svc("b", "stt", "whisper")))
    err = refused(Fleet(10), reg, "nope")
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "`m00`" in err.message and "`m19`" in err.message and "`m20`" not in err.message
    assert "and 5 more" in err.message and "whisper" not in err.message


def test_an_offline_provider_is_named_as_gone() -> None:
    reg = registry(provider(1, svc("a", "llm", "m1"), silent_for=WINDOW + 5))
    err = refused(Fleet(10), reg)
    assert (err.status, err.code) == (503, "model_unavailable")
    assert "rig-1: agent gone" in err.message


def test_a_heartbeat_wakes_waiters_only_when_it_brings_room() -> None:
    """What makes a heartbeat wake the user's waiting requests (its registry changes wake
    them too, see test_routing): first word of a provider, a service new or with more room,
    a provider back from leaving. A steady beat does not (waking costs each waiter a choice)."""

    def state(*services: dict[str, Any], leaving: bool = False) -> ProviderState:
        hb = wire.Heartbeat.parse(
            {
                "name": "rig",
                "callback_url": "http://10.0.0.1:8000/v1",
                "services": list(services),
                "leaving": leaving,
            }
        )
        return ProviderState.of(hb)

    one = {"name": "a", "type": "llm", "models": ["m1"], "max_concurrency": 1}
    steady = state(one)
    assert more_room(None, steady)
    assert not more_room(steady, state(one))
    assert more_room(steady, state({**one, "max_concurrency": 2}))
    assert more_room(steady, state({**one, "max_concurrency": None}))
    queued = state({**one, "max_concurrency": 4, "queue": 3})
    assert more_room(queued, state({**one, "max_concurrency": 4, "queue": 1}))
    assert not more_room(queued, state({**one, "max_concurrency": 4, "queue": 3}))
    assert more_room(steady, state(one, {**one, "name": "b"}))
    assert not more_room(state(one, {**one, "name": "b"}), steady)
    assert more_room(state(one, leaving=True), steady)


def test_a_single_candidate_leaves_the_conversation_unhashed() -> None:
    """Nothing to choose between: the chat's opening messages are not encoded, and the turn
    is not remembered (``asked`` stays None)."""
    fleet = Fleet(10)
    reg = registry(provider(1, svc("s1", "llm", "m1")))
    chat = Conversation(ALICE, [{"role": "user", "content": "hi"}])
    assert names(fleet.choose(reg, ALICE, "llm", "m1", chat)) == ["rig-1"]
    assert chat.asked is None
    two = registry(*(provider(pid, svc(f"s{pid}", "llm", "m1")) for pid in (1, 2)))
    fleet.choose(two, ALICE, "llm", "m1", chat)
    assert chat.asked == conversation_key(ALICE, [{"role": "user", "content": "hi"}])


def test_a_conversation_goes_back_to_its_service_unless_another_has_more_room() -> None:
    """Affinity sits after load and before hot models and registration order."""
    fleet = Fleet(10)
    reg = registry(*(provider(pid, svc(f"s{pid}", "llm", "m1")) for pid in (1, 2, 3)))
    chat = Conversation(ALICE, [{"role": "user", "content": "hi"}])
    other = Conversation(ALICE, [{"role": "user", "content": "hello"}])
    assert names(fleet.choose(reg, ALICE, "llm", "m1", chat)) == ["rig-1", "rig-2", "rig-3"]
    fleet.affinity.served(chat.asked, 2, "s2")  # rig-2 answered the first turn
    assert names(fleet.choose(reg, ALICE, "llm", "m1", chat)) == ["rig-2", "rig-1", "rig-3"]
    assert names(fleet.choose(reg, ALICE, "llm", "m1", other)) == ["rig-1", "rig-2", "rig-3"]
    # Preferred over a hot model elsewhere...
    beat(fleet, 1, {"name": "s1", "models": ["m1"], "loaded": ["m1"]})
    assert names(fleet.choose(reg, ALICE, "llm", "m1", chat))[0] == "rig-2"
    # ...but not once it is busier than another candidate.
    second = reg.candidates(ALICE, "llm", "m1")[1]
    with fleet.busy(second):
        assert names(fleet.choose(reg, ALICE, "llm", "m1", chat)) == ["rig-1", "rig-3", "rig-2"]
    assert names(fleet.choose(reg, ALICE, "llm", "m1", chat))[0] == "rig-2"
