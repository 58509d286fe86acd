"""`inference-club-agent detect`: find engines on their default local ports, print a manifest."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from inferclub.engines import Engine, EngineError, Service

PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Found:
    service: Service
    models: tuple[str, ...]


#: Suffixes dropped from a file-path model id before an alias is made from it.
MODEL_FILE_SUFFIXES = (".gguf", ".ggml", ".bin", ".safetensors", ".onnx")
#: A parameter count in a model name (`135M`, `8B`, `1.5b`): what comes before it is the family.
SIZE_TOKEN = re.compile(r"^\d+(\.\d+)?[mbk]$")


def default_urls(engines: Iterable[Engine], host: str = "127.0.0.1") -> list[str]:
    ports = sorted({p for e in engines for p in e.default_ports})
    return [f"http://{host}:{port}" for port in ports]


def nothing_found(urls: Iterable[str]) -> str:
    """What `detect` says when nothing answered: where it looked and how to look elsewhere."""
    where = ", ".join(urlsplit(url).netloc or url for url in urls)
    return (
        f"no engine found at {where}. Start one (docs/run-your-first-model.md), or say where "
        "yours listens: inference-club-agent detect --probe HOST:PORT (repeatable)"
    )


def probe_url(value: str) -> str:
    """`HOST:PORT` (or a whole `http://HOST:PORT` root) -> the root URL to probe."""
    if "://" in value:
        return value.rstrip("/")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return f"http://{host}:{port}"


def propose_alias(model_id: str) -> str | None:
    """A short name for a file-path, repo-style or sized model id, or None.

    `/models/SmolLM2-135M-Instruct.Q4_1.gguf` and `smollm2-135m` become `smollm2`,
    `Qwen/Qwen3-8B` becomes `qwen3`; Ollama's `name:tag` ids are already short.
    """
    name = model_id.rstrip("/").rsplit("/", 1)[-1]
    if ":" in name or not name:
        return None
    lowered = name.lower()
    for suffix in MODEL_FILE_SUFFIXES:
        if lowered.endswith(suffix):
            lowered = lowered[: -len(suffix)].split(".")[0]  # the quantisation (`.Q4_1`) too
            break
    tokens = lowered.split("-")
    for i, token in enumerate(tokens):
        if i and SIZE_TOKEN.match(token):
            lowered = "-".join(tokens[:i])
            break
    return lowered if lowered and lowered != model_id else None


async def _probe_url(
    session: aiohttp.ClientSession, engines: list[Engine], url: str
) -> Found | None:
    for engine in engines:
        try:
            service = await engine.probe(session, url)
        except (TimeoutError, aiohttp.ClientError, EngineError, ValueError):
            service = None
        if service is None:
            continue
        try:
            models = tuple(m.id for m in service.models) or tuple(
                await engine.discover_models(session, service)
            )
        except (TimeoutError, aiohttp.ClientError, EngineError, ValueError):
            models = ()
        return Found(service, models)
    return None


async def detect(engines: Mapping[str, Engine], urls: list[str]) -> list[Found]:
    """Probe each root URL with every engine (specific engines first); one service per URL."""
    ordered = sorted(engines.values(), key=lambda e: (e.probe_order, e.name))
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(_probe_url(session, ordered, u.rstrip("/")) for u in urls))
    return [r for r in results if r is not None]


def model_entries(item: Found, taken: set[str]) -> list[dict[str, str]]:
    """The `models:` list of a detected service: pinned ones as probed, and when a found
    model gets a short alias, every found model (aliases need the list)."""
    ids = [m.id for m in item.service.models] or list(item.models)
    entries: list[dict[str, str]] = []
    for model_id in ids:
        entry = {"id": model_id}
        alias = propose_alias(model_id)
        if alias and alias not in taken and alias not in ids:
            entry["alias"] = alias
            taken.add(alias)
        entries.append(entry)
    if item.service.models or any("alias" in e for e in entries):
        return entries
    return []


def render_manifest(found: list[Found]) -> str:
    """A ready-to-use manifest for what `detect` found."""
    services: list[dict[str, Any]] = []
    names: set[str] = set()
    aliases: set[str] = set()
    comments = []
    for item in found:
        s = item.service
        name = s.name
        if name in names:
            name = f"{name}-{urlsplit(s.url).port}"
        names.add(name)
        entry: dict[str, Any] = {"name": name, "type": s.type, "engine": s.engine, "url": s.url}
        models = model_entries(item, aliases)
        if models:
            entry["models"] = models
        if s.options:
            entry["options"] = dict(s.options)
        services.append(entry)
        listed = ", ".join(item.models) if item.models else "none found"
        comments.append(f"#   {name}: {listed}")
    host = socket.gethostname().split(".")[0] or "localhost"
    head = [
        "# Generated by `inference-club-agent detect`.",
        "# Services without `models:` advertise the models their engine reports at run time;",
        "# list models (with `id:` or `hf:`, optionally `alias:`) to pin or rename them.",
        "# Models found now:",
        *comments,
    ]
    body = yaml.safe_dump({"hosts": [{"id": host, "services": services}]}, sort_keys=False)
    return "\n".join(head) + "\n" + body
