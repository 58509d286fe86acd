"""Formatting helpers the dashboard's templates call (see ``DashboardHandler``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from inferclub.hub.store import RequestRecord


def iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else ""


def utc(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "never"


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def usage(r: RequestRecord) -> str:
    parts = []
    if r.prompt_tokens is not None or r.completion_tokens is not None:
        parts.append(f"{r.prompt_tokens or 0} + {r.completion_tokens or 0}")
    if r.audio_seconds is not None:
        parts.append(f"{r.audio_seconds:g} s audio")
    if r.images is not None:
        parts.append(f"{r.images} image" + ("s" if r.images != 1 else ""))
    return ", ".join(parts) or "–"


def json_script(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` breakout)."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
