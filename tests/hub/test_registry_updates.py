"""The registry's incremental updates route exactly as a registry loaded afresh from the same
providers would, whatever order heartbeats, description changes and deletions come in."""

from __future__ import annotations

import dataclasses
import random
import time

from inferclub.hub.routing import Registry
from inferclub.hub.store import ProviderRecord, ServiceInfo
from inferclub.openai_errors import OpenAIError

TYPES = ("llm", "stt")
MODELS = ("a", "b", "c", "d")


def _random_provider(rng: random.Random, pid: int, user: int) -> ProviderRecord:
    services = tuple(
        ServiceInfo(f"s{i}", rng.choice(TYPES), "vllm", (), tuple(rng.sample(MODELS, 2)))
        for i in range(rng.randint(0, 3))
    )
    return ProviderRecord(
        pid,
        user,
        f"rig-{pid}",
        f"http://10.0.0.{pid}:8000/v1",
        "test",
        {},
        0.0,
        time.time() - rng.choice((0, 0, 0, 3600)),
        services,
    )


def _answers(reg: Registry, users: range) -> list[object]:
    out: list[object] = []
    for user in users:
        out.append([(p.id, p.services) for p in reg.providers(user)])
        out.append(reg.models(user))
        for type_ in TYPES:
            for model in (*MODELS, "z"):
                try:
                    route = reg.route(user, type_, model)
                    out.append((route.provider.id, route.service.name))
                except OpenAIError as exc:
                    out.append((exc.status, exc.body()["error"]["code"]))
    return out


def test_incremental_updates_match_a_fresh_load() -> None:
    rng = random.Random(10)
    users = range(1, 4)
    reg = Registry(60.0)
    current: dict[int, ProviderRecord] = {}
    for _ in range(400):
        pid = rng.randint(1, 30)
        if pid in current and rng.random() < 0.2:
            gone = current.pop(pid)
            reg.remove(gone.user_id, pid)
        elif pid in current and rng.random() < 0.4:
            # A steady-state heartbeat: the same description, now online or long gone.
            seen = time.time() - rng.choice((0, 3600))
            current[pid] = dataclasses.replace(current[pid], last_heartbeat_at=seen)
            reg.update(current[pid])
        else:
            user = current[pid].user_id if pid in current else rng.choice(users)
            current[pid] = _random_provider(rng, pid, user)
            reg.update(current[pid])
        fresh = Registry(60.0)
        fresh.load(sorted(current.values(), key=lambda p: p.id))
        assert _answers(reg, users) == _answers(fresh, users)
        found = rng.choice(list(current.values())) if current else None
        if found is not None:
            assert reg.find(found.user_id, found.name) == found
