"""`make demo`: a real model answering through the hub, with no other step.

Starts the small real engines that scripts/install-engines.sh installed (llama.cpp's
llama-server as `smollm2`, faster-whisper-server, Piper's local-tts) on loopback, on their
default ports when free (so a later plain `inference-club-agent detect` finds them) or else on
free ones, writes their manifest with `inference-club-agent detect`, checks it with `check
--deep`, runs an agent against the hub that `make run` started (or a hub of its own when none
answers), then prints the OpenAI SDK lines of a streamed chat, a speech request and a
transcription through the hub, and runs exactly those lines. It keeps everything running until
Ctrl-C (`--once`: stop after the requests, as the test does).

The key: `--key` or $INFERCLUB_API_KEY; else a new key for the hub's first local user, made with
`inferclub keys create` on the database `make run` uses (the quickstart prints its key only
once, and keeps no copy). The agent's provider name comes from the key (`demo-` and a hash of
it): a provider name belongs to the key that registered it, so a second `make demo`, with its
new key, would otherwise be refused with 409 `provider_name_taken`.

It needs the openai SDK, which `make demo` installs into the hub's virtualenv (the `demo` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

try:
    import openai
except ImportError:  # run by hand, not by `make demo`
    sys.exit("make demo: the openai SDK is missing: run `make demo` (or pip install -e '.[demo]')")

BIN = Path(sys.executable).parent
DEFAULT_HUB = "http://127.0.0.1:8321"
LLM_ALIAS = "smollm2"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
READY_TIMEOUT = 120.0
#: The engines' default ports (docs/agent.md's `detect` table): used when free.
DEFAULT_PORTS = {"llama-server": 8080, "faster-whisper-server": 8000, "local-tts": 7878}

#: What the demo prints and then runs, as printed (`{auth}`: the key, or where it comes from).
SDK_LINES = """\
{auth}
client = OpenAI(base_url="{hub}/v1", api_key={key})
stream = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Say hello in five words."}}],
    max_tokens=24,
    stream=True,
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
speech = client.audio.speech.create(
    model="tts-1", voice="alloy", input="Hello world", response_format="wav"
)
speech.write_to_file("speech.wav")
with open("speech.wav", "rb") as audio:
    transcript = client.audio.transcriptions.create(model="whisper-1", file=audio)
print("transcription:", transcript.text.strip())
"""


class DemoError(RuntimeError):
    """Something the user must fix; printed without a traceback."""


def engines_dir() -> Path:
    env = os.environ.get("INFERCLUB_ENGINES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "inferclub" / "engines"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_for(engine: str) -> int:
    """The engine's default port when nothing listens there, else a free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_PORTS[engine]))
        except OSError:
            return free_port()
    return DEFAULT_PORTS[engine]


def http(
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except OSError:
        return 0, b""


class Processes:
    """The processes this demo started, stopped (by process group) in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log: IO[bytes] = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - child keeps it
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **OFFLINE, **(env or {})},
            start_new_session=True,
        )
        log.close()
        self.started.append((name, proc))

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise DemoError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(
    what: str, url: str, procs: Processes, ok: Callable[[int], bool] = lambda s: s == 200
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        procs.check_alive()
        if ok(http(url, timeout=2)[0]):
            return
        time.sleep(0.2)
    raise DemoError(f"{what} did not answer at {url} within {READY_TIMEOUT:.0f} s")


def start_engines(procs: Processes, state: Path) -> list[int]:
    """llama-server, faster-whisper-server and local-tts (default ports when free); their
    ports."""
    path = engines_dir() / "engines.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text())
        llama, stt, tts = info["llama"], info["stt"], info["tts"]
    except (OSError, ValueError, KeyError):
        raise DemoError(f"no engines in {path}: run `bash scripts/install-engines.sh`") from None
    ports = [port_for(name) for name in DEFAULT_PORTS]
    # `-t 1`: llama.cpp's threads spin while they wait for each other, so on a machine whose
    # cores are busy (the other two engines, a build, a test suite) two threads were 3 to 18
    # times slower than one (two busy processes on 2 cores); on idle cores one thread costs
    # 0.08 s more per 32 tokens of this model.
    procs.start(
        "llama-server",
        [llama["server"], "-m", llama["gguf"], "--alias", LLM_ALIAS, "--host", "127.0.0.1",
         "--port", str(ports[0]), "-c", "2048", "-t", "1", "--jinja", "--no-webui"],
    )  # fmt: skip
    procs.start(
        "faster-whisper-server",
        [stt["server"], stt["model"], "--host", "127.0.0.1", "--port", str(ports[1])],
    )
    data = state / "tts-data"
    data.mkdir(exist_ok=True)
    settings = json.loads(Path(tts["settings"]).read_text())
    settings["voices_dir"] = tts["voices_dir"]
    (data / "settings.json").write_text(json.dumps(settings))
    procs.start(
        "local-tts",
        [tts["server"], "--host", "127.0.0.1", "--port", str(ports[2])],
        {"LOCAL_TTS_DATA_DIR": str(data)},
    )
    wait_for("llama-server", f"http://127.0.0.1:{ports[0]}/health", procs)
    wait_for("faster-whisper-server", f"http://127.0.0.1:{ports[1]}/health", procs)
    wait_for("local-tts", f"http://127.0.0.1:{ports[2]}/v1/models", procs)
    return ports


def run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DemoError(f"`{' '.join(cmd)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def hub_answers(hub: str) -> bool:
    # Without a key a hub answers 401 with its OpenAI error object: it is there.
    return http(f"{hub}/v1/models")[0] in (200, 401)


def new_key(db: list[str], create_user: bool) -> str:
    if create_user:
        run(str(BIN / "inferclub"), "users", "create", "demo", *db)
    users = run(str(BIN / "inferclub"), "users", "list", *db).split()
    if not users:
        raise DemoError("the hub has no user yet: start it with `make run` first")
    out = run(str(BIN / "inferclub"), "keys", "create", users[0], "--name", "demo", *db)
    return out.strip().splitlines()[-1]


def hub_and_key(args: argparse.Namespace, procs: Processes, state: Path) -> tuple[str, str]:
    hub = args.hub.rstrip("/")
    key = args.key or os.environ.get("INFERCLUB_API_KEY")
    db = ["--db", args.db] if args.db else []
    if not hub_answers(hub):
        print(f"no hub answers at {hub}: starting one (its database: {state / 'hub.db'})")
        port = hub.rsplit(":", 1)[-1]
        db = ["--db", str(state / "hub.db")]
        procs.start("hub", [str(BIN / "inferclub"), "serve", "--port", port, *db])
        wait_for("the hub", f"{hub}/v1/models", procs, ok=lambda s: s == 401)
        return hub, key or new_key(db, create_user=True)
    key = key or new_key(db, create_user=False)
    if http(f"{hub}/v1/models", headers={"Authorization": f"Bearer {key}"})[0] != 200:
        raise DemoError(
            f"the hub at {hub} refuses the key: pass --key KEY (or $INFERCLUB_API_KEY), "
            "or --db with the hub's database"
        )
    return hub, key


def agent_name(key: str) -> str:
    """The demo agent's provider name: one per key, so every run's new key can register it
    (the hub refuses a name another active key registered), and names no secret."""
    return "demo-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def write_manifest(ports: list[int], state: Path) -> Path:
    probes = [arg for port in ports for arg in ("--probe", f"127.0.0.1:{port}")]
    manifest = state / "manifest.yaml"
    manifest.write_text(run(str(BIN / "inference-club-agent"), "detect", *probes))
    print(f"\n{manifest} (written by `inference-club-agent detect`):\n{manifest.read_text()}")
    print(run(str(BIN / "inference-club-agent"), "check", "--deep", "--manifest", str(manifest)))
    print(detect_hint(ports))
    return manifest


def detect_hint(ports: list[int]) -> str:
    """How a later `detect` (in another terminal, while the demo runs) finds these engines."""
    agent = BIN / "inference-club-agent"
    moved = [p for p, default in zip(ports, DEFAULT_PORTS.values(), strict=True) if p != default]
    if not moved:
        return f"`{agent} detect` finds these engines: they are on their default ports."
    probes = " ".join(f"--probe 127.0.0.1:{p}" for p in moved)
    return (
        f"Some default ports were taken; `{agent} detect {probes}` finds these engines "
        "(the others are on their default ports)."
    )


def wait_models(hub: str, key: str, wanted: set[str], procs: Processes) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        procs.check_alive()
        status, body = http(f"{hub}/v1/models", headers={"Authorization": f"Bearer {key}"})
        if status == 200 and wanted <= {m["id"] for m in json.loads(body)["data"]}:
            return
        time.sleep(0.3)
    raise DemoError(f"the hub did not list {sorted(wanted)} within {READY_TIMEOUT:.0f} s")


def sdk_lines(hub: str, key: str | None) -> str:
    """The SDK lines with this hub and ``key`` (None: the key is in $INFERCLUB_API_KEY)."""
    if key is None:
        auth, shown = "import os\n\nfrom openai import OpenAI\n", 'os.environ["INFERCLUB_API_KEY"]'
    else:
        auth, shown = "from openai import OpenAI\n", f'"{key}"'
    return SDK_LINES.format(auth=auth, hub=hub, key=shown, model=LLM_ALIAS)


def run_sdk_lines(lines: str, state: Path) -> list[str]:
    """Run ``lines`` as printed (in ``state``, where speech.wav goes); what they printed."""
    printed = Tee(sys.stdout)
    try:
        with contextlib.chdir(state), contextlib.redirect_stdout(printed):
            # The lines just printed for the user, run as they are: what they show is what ran.
            exec(compile(lines, "<sdk lines>", "exec"), {"__name__": "sdk_lines"})
    except openai.OpenAIError as exc:
        raise DemoError(f"the SDK lines failed: {type(exc).__name__}: {exc}") from None
    return printed.getvalue().splitlines()


class Tee(io.StringIO):
    """Prints through and remembers."""

    def __init__(self, out: IO[str]) -> None:
        super().__init__()
        self.out = out

    def write(self, text: str) -> int:
        self.out.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.out.flush()


def check_answers(printed: list[str], state: Path) -> None:
    """What a user looks at: an answer, a WAV file, and its transcription."""
    # The streamed answer, then the transcription's line.
    if not "".join(printed[:-1]).strip():
        raise DemoError("the chat answer was empty")
    wav = state / "speech.wav"
    audio = wav.read_bytes() if wav.exists() else b""
    if audio[:4] != b"RIFF":
        raise DemoError(f"speech: {wav} is not a WAV file ({len(audio)} bytes)")
    print(f"speech: {len(audio)} bytes of WAV in {wav}")


def demo(args: argparse.Namespace, procs: Processes, state: Path) -> None:
    made = not (args.key or os.environ.get("INFERCLUB_API_KEY"))
    hub, key = hub_and_key(args, procs, state)
    print(f"hub: {hub}")
    ports = start_engines(procs, state)
    manifest = write_manifest(ports, state)
    procs.start(
        "agent",
        [str(BIN / "inference-club-agent"), "run", "--manifest", str(manifest), "--hub", hub,
         "--listen", "127.0.0.1:0", "--name", agent_name(key), "--heartbeat-interval", "2",
         "--known-hubs", str(state / "known_hubs")],
        {"INFERCLUB_API_KEY": key},
    )  # fmt: skip
    wait_models(hub, key, {LLM_ALIAS, "whisper-1", "tts-1"}, procs)
    # A key the demo made is shown (like the quickstart's); one the user gave is not echoed.
    os.environ["INFERCLUB_API_KEY"] = key
    lines = sdk_lines(hub, key if made else None)
    print("\nThese OpenAI SDK lines work now, from any machine that reaches the hub")
    print("(pip install openai); the demo runs them as they are:\n")
    print(textwrap.indent(lines, "    "))
    check_answers(run_sdk_lines(lines, state), state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hub", default=DEFAULT_HUB, help=f"the hub (default {DEFAULT_HUB})")
    parser.add_argument("--key", help="an API key of that hub (or $INFERCLUB_API_KEY)")
    parser.add_argument("--db", help="the hub's database, to make a key (default: make run's)")
    parser.add_argument("--state-dir", help="where logs, the manifest and speech.wav go")
    parser.add_argument("--once", action="store_true", help="stop after the requests")
    args = parser.parse_args()
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="inferclub-demo-"))
    state.mkdir(parents=True, exist_ok=True)
    procs = Processes(state)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        demo(args, procs, state)
        if not args.once:
            print(f"Engines and agent keep running (logs in {state}); Ctrl-C stops them.")
            while True:
                procs.check_alive()
                time.sleep(1)
    except DemoError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print()
    finally:
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
