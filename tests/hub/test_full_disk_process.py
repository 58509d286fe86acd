"""`inferclub serve` on a full disk (every file it would grow fails with EFBIG, through
RLIMIT_FSIZE): it starts, says it cannot persist, keeps a known provider online and serving for
longer than the online window, and exits 0 on SIGTERM, saying how many history rows it lost.

The database's `-shm` file must exist already (here: the test holds the database open, as a
backup job or a second hub would): SQLite cannot open a WAL database at all when it cannot
create that file."""

from __future__ import annotations

import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import LISTENING, TEST_ENV, HubProcess, post_json

pytestmark = pytest.mark.subprocess

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]
WINDOW = 1.5


def _full_disk() -> None:
    """In the child: no file may grow by a byte, and growing one fails instead of killing."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))


def test_a_hub_on_a_full_disk_serves_and_exits_0(tmp_path: Path) -> None:
    beat = {"name": "rig", "version": "test", "services": LLM}
    with FakeAgent(["m1"]) as agent:
        first = HubProcess(tmp_path).start()  # creates the secrets and the schema
        key = first.user_with_key("alice")
        assert first.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        assert first.stop() == 0
        keep = sqlite3.connect(tmp_path / "hub.db")
        keep.execute("SELECT count(*) FROM providers").fetchone()
        env = {
            **os.environ,
            **TEST_ENV,
            "INFERCLUB_ONLINE_WINDOW": str(WINDOW),
            "INFERCLUB_LAST_SEEN_FLUSH_INTERVAL": "0.2",
            "INFERCLUB_REGISTRY_REFRESH": "0.3",
        }
        argv = [sys.executable, "-m", "inferclub", "serve", "--host", "127.0.0.1", "--port", "0"]
        proc = subprocess.Popen(
            [*argv, "--db", str(tmp_path / "hub.db")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # a pipe: not a file the size limit applies to
            text=True,
            env=env,
            cwd=tmp_path,
            preexec_fn=_full_disk,
        )
        err: list[str] = []
        assert proc.stderr is not None and proc.stdout is not None
        reader = threading.Thread(target=lambda: err.extend(proc.stderr or ()), daemon=True)
        reader.start()
        try:
            found = LISTENING.match(proc.stdout.readline().strip())
            assert found, "".join(err)
            url = found.group(1)
            with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
                deadline = time.monotonic() + 2.5 * WINDOW
                chats = 0
                while time.monotonic() < deadline:
                    status, body = post_json(
                        url, "/v1/agent/heartbeat", {**beat, "callback_url": agent.url}, key
                    )
                    assert status == 200, body
                    reply = client.chat.completions.create(model="m1", messages=[])
                    assert reply.choices
                    chats += 1
                    time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(5)
            proc.stdout.close()
            proc.stderr.close()
            keep.close()
    log = "".join(err)
    assert "the database refuses writes" in log and "cannot persist" in log
    lost = re.search(r"could not write (\d+) request history rows", log)
    assert lost and int(lost.group(1)) == chats, log
    assert "Traceback" not in log, log
