"""Which provider serves a request: the in-memory routing registry on its own (no server, no
store). Errors are checked as the OpenAI error body a client would get."""

from __future__ import annotations

from typing import Any

import pytest

from inferclub.hub.routing import Registry
from inferclub.openai_errors import OpenAIError
from tests.support.registry import ALICE, BOB, WINDOW, provider, registry, svc


def refused(reg: Registry, user: int, type_: str, model: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(OpenAIError) as exc:
        reg.route(user, type_, model)
    return exc.value.status, exc.value.body()["error"]


def test_the_first_registered_online_provider_wins_whatever_order_beats_arrive() -> None:
    first, second = provider(1, svc("a", "llm", "m1")), provider(2, svc("b", "llm", "m1"))
    for reg in (registry(first, second), registry(second, first)):
        route = reg.route(ALICE, "llm", "m1")
        assert (route.provider.name, route.service.name) == ("rig-1", "a")


def test_within_a_provider_the_manifest_order_wins() -> None:
    reg = registry(provider(1, svc("small", "llm", "m1"), svc("big", "llm", "m1", "m2")))
    assert reg.route(ALICE, "llm", "m1").service.name == "small"
    assert reg.route(ALICE, "llm", "m2").service.name == "big"


def test_offline_providers_are_skipped() -> None:
    reg = registry(
        provider(1, svc("a", "llm", "m1"), silent_for=WINDOW + 1),
        provider(2, svc("b", "llm", "m1")),
    )
    assert reg.route(ALICE, "llm", "m1").provider.name == "rig-2"
    assert [(m, t, p.name) for m, t, p in reg.models(ALICE)] == [("m1", "llm", "rig-2")]


def test_when_every_candidate_is_offline_the_answer_is_503_not_404() -> None:
    reg = registry(provider(1, svc("a", "llm", "m1"), silent_for=WINDOW + 30))
    status, err = refused(reg, ALICE, "llm", "m1")
    assert (status, err["type"], err["code"]) == (503, "service_unavailable", "model_unavailable")
    assert "rig-1: agent gone (last heartbeat 90 s ago)" in err["message"]
    assert reg.models(ALICE) == []


def test_other_users_providers_are_invisible() -> None:
    reg = registry(provider(1, svc("a", "llm", "m1")), provider(2, svc("b", "llm", "m2"), user=BOB))
    status, err = refused(reg, BOB, "llm", "m1")
    assert (status, err["code"]) == (404, "model_not_found")
    assert "rig-1" not in err["message"]
    assert [m for m, _, _ in reg.models(BOB)] == ["m2"]
    assert [p.name for p in reg.providers(BOB)] == ["rig-2"]
    # A user nobody registered for sees nothing at all.
    assert refused(reg, 99, "llm", "m1")[0] == 404 and reg.models(99) == []


def test_a_model_served_as_another_type_says_which() -> None:
    reg = registry(provider(1, svc("ears", "stt", "whisper"), svc("voice", "tts", "whisper")))
    status, err = refused(reg, ALICE, "llm", "whisper")
    assert (status, err["code"], err["param"]) == (404, "model_not_found", "model")
    assert "served as stt and tts, not llm" in err["message"]
    assert reg.route(ALICE, "tts", "whisper").service.name == "voice"


def test_models_lists_each_model_and_type_once_in_routing_order() -> None:
    reg = registry(
        provider(1, svc("a", "llm", "m1", "shared"), svc("b", "stt", "shared")),
        provider(2, svc("c", "llm", "m1", "m3")),
    )
    assert [(m, t, p.name) for m, t, p in reg.models(ALICE)] == [
        ("m1", "llm", "rig-1"),
        ("shared", "llm", "rig-1"),
        ("shared", "stt", "rig-1"),
        ("m3", "llm", "rig-2"),
    ]


def test_a_newer_heartbeat_seen_here_survives_an_older_copy_from_the_store() -> None:
    stale = provider(1, svc("a", "llm", "m1"), silent_for=WINDOW + 1)
    fresh = provider(1, svc("a", "llm", "m1", "m2"))
    reg = registry(fresh)
    reg.load([stale])  # another instance's store copy, older than what this one saw
    assert reg.route(ALICE, "llm", "m2").provider.last_heartbeat_at == fresh.last_heartbeat_at
    reg.load([])  # deleted everywhere: gone here too
    assert refused(reg, ALICE, "llm", "m1")[0] == 404


def test_a_removed_provider_no_longer_routes() -> None:
    reg = registry(provider(1, svc("a", "llm", "m1")), provider(2, svc("b", "llm", "m1")))
    reg.remove(ALICE, 1)
    assert reg.route(ALICE, "llm", "m1").provider.name == "rig-2"
    reg.remove(ALICE, 2)
    assert refused(reg, ALICE, "llm", "m1") == (
        404,
        {
            "message": "The model `m1` does not exist or you do not have access to it."
            " None of your providers serves a model of type llm now.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        },
    )


def test_the_registry_says_when_a_users_candidates_may_have_grown() -> None:
    """What wakes a user's waiting requests from the registry's side: a provider new, back
    online or with other services; from the store's full reload, any user whose providers
    changed. A steady heartbeat says nothing."""
    grown: list[int] = []
    reg = Registry(WINDOW)
    reg.on_grown = grown.append
    rig = provider(1, svc("a", "llm", "m1"))
    reg.update(rig)
    reg.update(provider(1, svc("a", "llm", "m1")))  # steady
    assert grown == [ALICE]
    reg.update(provider(1, svc("a", "llm", "m1", "m2")))  # another model
    reg.update(provider(2, svc("b", "llm", "m1"), user=BOB))
    assert grown == [ALICE, ALICE, BOB]
    reg.update(provider(1, svc("a", "llm", "m1", "m2"), silent_for=WINDOW + 1))  # went quiet
    reg.update(provider(1, svc("a", "llm", "m1", "m2")))  # back online
    assert grown == [ALICE, ALICE, BOB, ALICE]
    grown.clear()
    bob = reg.providers(BOB)
    reg.load([provider(1, svc("a", "llm", "m3")), *bob])
    assert grown == [ALICE]
