"""The agent protocol: parsing and validating heartbeats.

Every problem is reported with the path of the bad field (``services[1].type``) so an agent
author can fix it at once; a heartbeat is validated whole before anything is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from inferclub import SERVICE_TYPES
from inferclub.hub.errors import ApiError
from inferclub.hub.store import ServiceInfo

MAX_SERVICES = 256
MAX_MODELS = 1024
MAX_HEALTH_BYTES = 64 * 1024


@dataclass(frozen=True)
class Heartbeat:
    name: str
    callback_url: str
    version: str
    services: tuple[ServiceInfo, ...]
    health: dict[str, Any]


def _bad(field: str, message: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid heartbeat: {field}: {message}",
        "invalid_request_error",
        "invalid_heartbeat",
        field,
    )


def _text(value: Any, field: str, max_len: int = 200, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _bad(field, "must be a string")
    value = value.strip()
    if required and not value:
        raise _bad(field, "must not be empty")
    if len(value) > max_len:
        raise _bad(field, f"must be at most {max_len} characters")
    if any(ord(c) < 32 for c in value):
        raise _bad(field, "must not contain control characters")
    return value


def _text_list(value: Any, field: str, max_items: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad(field, "must be a list of strings")
    if len(value) > max_items:
        raise _bad(field, f"must have at most {max_items} entries")
    out: list[str] = []
    for i, item in enumerate(value):
        text = _text(item, f"{field}[{i}]", 512)
        if text not in out:
            out.append(text)
    return tuple(out)


def parse_heartbeat(data: dict[str, Any]) -> Heartbeat:
    name = _text(data.get("name"), "name", 100)
    url = _text(data.get("callback_url"), "callback_url", 2000)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("callback_url", "must be an http:// or https:// URL with a host")
    try:
        _ = parts.port
    except ValueError:
        raise _bad("callback_url", "has an invalid port") from None
    version = _text(data.get("version"), "version", 100, required=False)

    raw_services = data.get("services", [])
    if not isinstance(raw_services, list):
        raise _bad("services", "must be a list")
    if len(raw_services) > MAX_SERVICES:
        raise _bad("services", f"must have at most {MAX_SERVICES} entries")
    services: list[ServiceInfo] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_services):
        where = f"services[{i}]"
        if not isinstance(raw, dict):
            raise _bad(where, "must be an object")
        sname = _text(raw.get("name"), f"{where}.name", 100)
        if sname in names:
            raise _bad(f"{where}.name", f"duplicate service name {sname!r}")
        names.add(sname)
        stype = raw.get("type", "llm")
        if stype not in SERVICE_TYPES:
            raise _bad(f"{where}.type", f"must be one of {', '.join(SERVICE_TYPES)}, not {stype!r}")
        engine = _text(raw.get("engine", "openai"), f"{where}.engine", 100)
        features = _text_list(raw.get("features"), f"{where}.features", 64)
        models = _text_list(raw.get("models"), f"{where}.models", MAX_MODELS)
        services.append(ServiceInfo(sname, stype, engine, features, models))

    health = data.get("health", {})
    if health is None:
        health = {}
    if not isinstance(health, dict):
        raise _bad("health", "must be an object")
    if len(json.dumps(health)) > MAX_HEALTH_BYTES:
        raise _bad("health", f"must be at most {MAX_HEALTH_BYTES} bytes of JSON")
    return Heartbeat(name, url, version, tuple(services), health)
