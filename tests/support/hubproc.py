"""Run the real hub as a subprocess through its CLI, the way users and scripts do."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LISTENING = re.compile(r"^listening on (http://\S+)$")
#: Test settings of every hub, in-process or not: history rows and key revocations show up fast.
TEST_ENV = {
    "INFERCLUB_HISTORY_FLUSH_INTERVAL": "0.05",
    "INFERCLUB_KEY_CACHE_REFRESH": "0.2",
    "INFERCLUB_LOG_LEVEL": "DEBUG",
    # Tests re-register a provider at once; the pacing has its own tests.
    "INFERCLUB_HEARTBEAT_MIN_INTERVAL": "0",
}


class HubProcess:
    def __init__(
        self,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        db: str | None = None,
    ) -> None:
        self.workdir = workdir
        #: The ``--db`` value: a SQLite file in ``workdir`` unless a ``postgresql://`` URL is given.
        self.db = db or str(workdir / "hub.db")
        self.log_path = workdir / "hub.log"
        self.env = {**os.environ, **TEST_ENV, **(env or {})}
        self.args = args
        self.stdout_lines: list[str] = []
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    # -- lifecycle --
    def start(self, timeout: float = 60) -> HubProcess:
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "inferclub", "serve", "--host", "127.0.0.1", "--port", "0"]
        try:
            self.proc = subprocess.Popen(
                [*argv, "--db", str(self.db), *self.args],
                stdout=subprocess.PIPE,
                stderr=self._log,
                text=True,
                env=self.env,
                cwd=self.workdir,
            )
        except BaseException:
            self._log.close()
            raise
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line.rstrip("\n"))
                m = LISTENING.match(line.strip())
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not found.wait(timeout):
            self.stop()
            raise RuntimeError(f"hub did not start; log:\n{self.log()}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    # -- CLI --
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "inferclub", *args, "--db", self.db]
        return self._run_cli(argv, " ".join(args), check)

    def cli_commands(self, *commands: list[str]) -> subprocess.CompletedProcess[str]:
        """Several ``inferclub`` commands, in order, in one Python process: the command's own
        ``main()`` for each, stopping at the first that fails. Interpreter start-up is most of
        what a command costs (about 0.15 s of CPU), and hundreds of tests begin with two."""
        argvs = [[*args, "--db", self.db] for args in commands]
        script = (
            "import json, sys\n"
            "from inferclub.hub.cli import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    if code := main(argv):\n"
            "        sys.exit(code)\n"
        )
        what = "; ".join(" ".join(args) for args in commands)
        return self._run_cli([sys.executable, "-c", script, json.dumps(argvs)], what, True)

    def _run_cli(self, argv: list[str], what: str, check: bool) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.workdir,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"inferclub {what} failed: {result.stderr}")
        return result

    def create_user(self, login: str) -> None:
        self.cli("users", "create", login)

    def create_key(self, login: str, name: str = "") -> str:
        return self.cli("keys", "create", login, "--name", name).stdout.strip().splitlines()[-1]

    def user_with_key(self, login: str) -> str:
        """A new user and a key of theirs (`users create`, `keys create`: one process)."""
        out = self.cli_commands(["users", "create", login], ["keys", "create", login, "--name", ""])
        return out.stdout.strip().splitlines()[-1]

    # -- agent protocol --
    def heartbeat(
        self, key: str, name: str, callback_url: str, services: list[dict[str, Any]], **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        payload = {
            "name": name,
            "callback_url": callback_url,
            "version": "test",
            "services": services,
            **extra,
        }
        return self.post_json("/v1/agent/heartbeat", payload, key)

    def post_json(
        self, path: str, payload: Any, key: str | None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        return post_json(self.url, path, payload, key, content_type)

    # -- store, read-only --
    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return query_db(self.db, sql, *args)

    def wait_for_request_rows(self, n: int = 1, timeout: float = 10) -> list[sqlite3.Row]:
        """History rows, newest last, once at least ``n`` were written (they are batched)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query("SELECT * FROM requests ORDER BY started_at")
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def post_json(
    base: str, path: str, payload: Any, key: str | None, content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    """POST ``payload`` (an object, or raw bytes sent as they are); the JSON answer."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request_json(base, "POST", path, data, key, content_type)


def request_json(
    base: str,
    method: str,
    path: str,
    data: bytes | None = None,
    key: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, Any]]:
    """The status and JSON answer of one plain HTTP request, error statuses included."""
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def query_db(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Rows of a read-only query of the hub's database (it may be running)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


@contextmanager
def start_hub(
    workdir: Path, *args: str, online_window: float | None = None, env: dict[str, str] | None = None
) -> Iterator[HubProcess]:
    extra = list(args)
    if online_window is not None:
        extra += ["--online-window", str(online_window)]
    hub = HubProcess(workdir, *extra, env=env).start()
    try:
        yield hub
    finally:
        hub.stop()


@contextmanager
def two_hubs_on_postgres(tmp_path: Path, dsn: str) -> Iterator[tuple[HubProcess, HubProcess]]:
    """Hubs as on two machines: their own directories, one database and secrets file. The
    polling timers are far longer than the 1 s the docs promise, so only the changes pushed
    with LISTEN/NOTIFY can keep it. Both must exit 0 on SIGTERM."""
    env = {
        "INFERCLUB_REGISTRY_REFRESH": "30",
        "INFERCLUB_KEY_CACHE_REFRESH": "30",
        "INFERCLUB_SECRETS_FILE": str(tmp_path / "secrets.json"),
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = HubProcess(tmp_path / "a", env=env, db=dsn).start()
    try:
        second = HubProcess(tmp_path / "b", env=env, db=dsn).start()
        try:
            yield first, second
        finally:
            assert second.stop() == 0
    finally:
        assert first.stop() == 0
