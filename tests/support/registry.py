"""Provider records and registries for routing and choice unit tests (no store, no sockets)."""

from __future__ import annotations

import time

from inferclub.hub.routing import Registry
from inferclub.hub.store import ProviderRecord, ServiceInfo

WINDOW = 60.0
ALICE, BOB = 1, 2


def svc(name: str, type_: str, *models: str) -> ServiceInfo:
    return ServiceInfo(name=name, type=type_, engine="vllm", models=models)


def provider(
    pid: int, *services: ServiceInfo, user: int = ALICE, silent_for: float = 0.0
) -> ProviderRecord:
    """Provider ``pid`` (ids grow with registration), last heard from ``silent_for`` s ago."""
    now = time.time()
    return ProviderRecord(
        id=pid,
        user_id=user,
        name=f"rig-{pid}",
        callback_url=f"http://10.0.0.{pid}:8000/v1",
        agent_version="test",
        health={},
        created_at=now - 3600,
        last_heartbeat_at=now - silent_for,
        services=services,
    )


def registry(*providers: ProviderRecord) -> Registry:
    reg = Registry(WINDOW)
    for p in providers:
        reg.update(p)  # as heartbeats arrive, in this order
    return reg
