"""The health snapshot sent with every heartbeat: agent, host and per-service facts."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

from inferclub.agent import __version__
from inferclub.agent.services import ServiceTable

_GPU_FIELDS = (
    "index",
    "name",
    "memory_total_mib",
    "memory_used_mib",
    "utilization_pct",
    "temperature_c",
)


def memory() -> dict[str, int] | None:
    """Total and available memory in bytes, from /proc/meminfo (None where there is none)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    if "MemTotal" not in values:
        return None
    return {
        "total_bytes": values["MemTotal"],
        "available_bytes": values.get("MemAvailable", values.get("MemFree", 0)),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _number(text: str) -> float | int | str | None:
    text = text.strip()
    if text in ("", "[N/A]", "N/A", "[Not Supported]"):
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


async def gpus(timeout: float = 5.0) -> list[dict[str, Any]]:
    """GPUs as nvidia-smi reports them; an empty list when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    query = "index,name,memory.total,memory.used,utilization.gpu,temperature.gpu"
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            f"--query-gpu={query}",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return []
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return []
    if proc.returncode != 0:
        return []
    result = []
    for line in out.decode(errors="replace").splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(_GPU_FIELDS):
            gpu = {k: _number(v) for k, v in zip(_GPU_FIELDS, cells, strict=True)}
            gpu["name"] = cells[1]
            result.append(gpu)
    return result


def snapshot(table: ServiceTable, started: float, gpu_list: list[dict[str, Any]]) -> dict[str, Any]:
    """The `health` object of a heartbeat. `started` is a `time.monotonic()` reading."""
    return {
        "agent_version": __version__,
        "uptime_s": round(time.monotonic() - started, 1),
        "in_flight": table.in_flight(),
        "load_avg": load_average(),
        "memory": memory(),
        "gpus": gpu_list,
        "services": {
            name: {
                "up": st.up,
                "detail": st.detail,
                "engine": st.service.engine,
                "models": st.model_names(),
                **({"info": dict(st.info)} if st.info else {}),
            }
            for name, st in table.states.items()
        },
    }
