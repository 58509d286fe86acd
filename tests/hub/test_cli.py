"""The ``inferclub`` command as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess, start_hub

pytestmark = pytest.mark.subprocess

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]


def inferclub(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferclub", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_users_and_keys_lifecycle(hub_process: HubProcess) -> None:
    assert "created user alice" in hub_process.cli("users", "create", "alice").stdout
    dup = hub_process.cli("users", "create", "alice", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = hub_process.cli("users", "create", "no spaces", check=False)
    assert bad.returncode == 1 and "invalid login" in bad.stderr

    key = hub_process.create_key("alice", name="laptop")
    listing = hub_process.cli("keys", "list", "alice").stdout
    assert key[:11] in listing and "laptop" in listing and "active" in listing
    assert key not in listing

    rotated = hub_process.cli("keys", "rotate", key[:11]).stdout.strip().splitlines()
    new_key = rotated[-1]
    assert new_key != key and new_key.startswith("ic_") and "revoked" in rotated[0]
    with openai.OpenAI(base_url=hub_process.api_base, api_key=new_key, max_retries=0) as c:
        assert c.models.list().data == []

    missing = hub_process.cli("keys", "revoke", key[:11], check=False)
    assert missing.returncode == 1 and "no active key" in missing.stderr
    key_id = hub_process.query("SELECT id FROM api_keys WHERE revoked_at IS NULL")[0]["id"]
    assert "revoked" in hub_process.cli("keys", "revoke", str(key_id)).stdout
    unknown = hub_process.cli("keys", "create", "nobody", check=False)
    assert unknown.returncode == 1 and "no user 'nobody'" in unknown.stderr


def test_keys_create_with_a_scope(hub_process: HubProcess) -> None:
    hub_process.create_user("alice")
    out = hub_process.cli("keys", "create", "alice", "--name", "rig", "--scope", "agent").stdout
    assert "scope agent" in out.splitlines()[0]
    key = out.strip().splitlines()[-1]
    listing = hub_process.cli("keys", "list", "alice").stdout.splitlines()
    assert "SCOPE" in listing[0]
    (row,) = [line for line in listing if key[:11] in line]
    assert row.split()[3] == "agent"

    with (
        FakeAgent(["m1"]) as agent,
        openai.OpenAI(base_url=hub_process.api_base, api_key=key, max_retries=0) as client,
    ):
        assert hub_process.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(model="m1", messages=[])
        assert denied.value.code == "insufficient_scope"
        assert not any(r.path == "/v1/chat/completions" for r in agent.requests)

    bad = hub_process.cli("keys", "create", "alice", "--scope", "admin", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_default_database_comes_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    assert inferclub("users", "create", "dora", env={"INFERCLUB_DB": str(db)}).returncode == 0
    assert db.exists()


def test_user_and_key_commands_on_sqlite_load_no_server_and_no_postgres(tmp_path: Path) -> None:
    # Scripts (and this suite) run these commands often: each import below costs 50-200 ms of
    # CPU per command, and none of them can serve `users` or `keys` on a SQLite file. A hub
    # on SQLite has no use for asyncpg either.
    script = (
        "import sys\n"
        "from inferclub.hub.cli import main\n"
        "for argv in (['users', 'create', 'ann'], ['keys', 'create', 'ann']):\n"
        f"    assert main([*argv, '--db', {str(tmp_path / 'hub.db')!r}]) == 0\n"
        "heavy = ('asyncpg', 'aiohttp', 'tornado.httpserver', 'prometheus_client')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "import inferclub.hub.app\n"
        "print('asyncpg' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["[]", "False"]


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text("prot: 1\n")
    result = inferclub("serve", "--config", str(cfg))
    assert result.returncode == 2 and "unknown setting 'prot'" in result.stderr


def test_sigint_stops_an_idle_hub_with_exit_0(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path).start()
    assert hub.stop(signal.SIGINT) == 0
    assert "stopped" in hub.log()


def test_sigterm_lets_an_in_flight_stream_finish(tmp_path: Path) -> None:
    with FakeAgent(["m1"]) as agent, start_hub(tmp_path) as hub:
        key = hub.user_with_key("alice")
        hub.heartbeat(key, "rig", agent.url, LLM)
        agent.chunks, agent.chunk_delay = 10, 0.1
        with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as c:
            stream = c.chat.completions.create(model="m1", messages=[], stream=True)
            it = iter(stream)
            next(it)
            stopper = threading.Thread(target=lambda: setattr(hub, "code", hub.stop()))
            stopper.start()
            rest = list(it)
            stopper.join(30)
        text = "".join(ch.choices[0].delta.content or "" for ch in rest if ch.choices)
        assert text.endswith("tok9 "), "the stream ran to its end"
        assert hub.code == 0, hub.log()  # type: ignore[attr-defined]
        assert "draining 1 in-flight" in hub.log()


def test_quickstart_creates_a_user_and_key_and_prints_next_steps(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, "--quickstart").start()
    try:
        out = "\n".join(quickstart_output(hub, "Next steps"))
        key = next(ln.strip() for ln in hub.stdout_lines if ln.strip().startswith("ic_"))
        assert "inference-club-agent run" in out and f'api_key="{key}"' in out
        assert "`make demo`" in out and "docs/run-your-first-model.md" in out
        # The agent command runs as printed, from where the hub was started, venv or not.
        command = next(ln.split() for ln in hub.stdout_lines if "inference-club-agent" in ln)
        agent = command[command.index("run") - 1]
        printed = subprocess.run(
            [agent, "--version"], cwd=hub.workdir, capture_output=True, text=True, check=False
        )
        assert printed.returncode == 0 and "inference-club-agent" in printed.stdout
        with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as c:
            assert c.models.list().data == []
    finally:
        assert hub.stop() == 0


def quickstart_output(hub: HubProcess, last: str) -> list[str]:
    """The hub's stdout once a line containing ``last`` was printed."""
    deadline = time.monotonic() + 10
    while not any(last in ln for ln in hub.stdout_lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(hub.stdout_lines)


def test_a_restarted_quickstart_says_how_to_get_a_new_key(tmp_path: Path) -> None:
    first = HubProcess(tmp_path, "--quickstart").start()
    try:
        created = next(ln for ln in quickstart_output(first, "Next steps") if "Created" in ln)
    finally:
        assert first.stop() == 0
    login = created.split("'")[1]
    again = HubProcess(tmp_path, "--quickstart").start()
    try:
        out = quickstart_output(again, "Dashboard: sign in")
        assert not any(ln.strip().startswith("ic_") for ln in out), "no new key by itself"
        command = next(ln.split() for ln in out if " keys create " in ln)
        assert command[1:] == ["keys", "create", login, "--db", again.db]
        assert any(f"Dashboard: sign in as {login}" in ln for ln in out)
        # So does the one that prints another sign-in link.
        dashboard = next(ln for ln in out if ln.startswith("Dashboard: sign in"))
        again_link = dashboard.split("`")[1].split()
        assert again_link[1:4] == ["users", "login-link", login]
        link = subprocess.run(
            again_link, cwd=again.workdir, capture_output=True, text=True, check=False
        )
        assert link.returncode == 0, link.stderr
        assert "/auth/link?token=" in link.stdout.strip().splitlines()[-1]
        # The command runs as printed, from where the hub was started, and its key works.
        made = subprocess.run(
            command, cwd=again.workdir, capture_output=True, text=True, check=False
        )
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        with openai.OpenAI(base_url=again.api_base, api_key=key, max_retries=0) as c:
            assert c.models.list().data == []
    finally:
        assert again.stop() == 0


def test_a_port_in_use_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = inferclub("serve", "--port", port, "--db", str(tmp_path / "h.db"))
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_file_that_is_not_a_database_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"these are my notes, not a database" * 100)
    for args in (("users", "create", "alice"), ("serve", "--port", "0")):
        result = inferclub(*args, "--db", str(bad))
        assert result.returncode == 1, result.stderr
        assert f"{bad}: cannot open the database" in result.stderr


def test_fallback_models_from_the_command_line(tmp_path: Path) -> None:
    env = {"INFERCLUB_REGISTRY_REFRESH": "0.2"}
    with FakeAgent(["small"]) as agent, start_hub(tmp_path, env=env) as hub:
        key = hub.user_with_key("alice")
        small = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["small"]}]
        hub.heartbeat(key, "laptop", agent.url, small)
        out = hub.cli("models", "fallback", "alice", "big", "small").stdout
        assert "big falls back to small" in out
        assert hub.cli("models", "fallbacks", "alice").stdout.strip() == "big -> small"
        same = hub.cli("models", "fallback", "alice", "big", "big", check=False)
        assert same.returncode == 1 and "its own fallback" in same.stderr
        # The running hub picks it up within registry_refresh.
        with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as c:
            for _ in range(100):
                try:
                    raw = c.chat.completions.with_raw_response.create(model="big", messages=[])
                    break
                except openai.NotFoundError:
                    threading.Event().wait(0.05)
            assert raw.headers["X-InferClub-Served-Model"] == "small"
        assert "removed" in hub.cli("models", "fallback", "alice", "big", "--remove").stdout
        gone = hub.cli("models", "fallback", "alice", "big", "--remove", check=False)
        assert gone.returncode == 1 and "no fallback" in gone.stderr
