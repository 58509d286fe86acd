"""`inferclub serve --workers N`: pre-forked hub processes sharing the listening sockets.

The parent binds the sockets and creates the secrets before forking, so the workers share the
port and never race to create the secrets file; each worker opens its own store connection and
runs its own event loop. The parent does nothing but wait: SIGTERM or SIGINT is passed on to
every worker (each drains as a single hub does), and the parent exits 0 when all of them did.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("inferclub")

#: What a worker runs: ``worker(index, sockets) -> exit status``.
Worker = Callable[[int, list[socket.socket]], int]


def worker_count(value: str) -> int:
    """The ``workers`` setting as a number: ``auto`` is one per core."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"workers: expected a whole number of at least 1 or `auto`, not {value!r}")
    return count


def run(count: int, sockets: list[socket.socket], worker: Worker) -> int:
    """Fork ``count`` workers and wait for them; 0 when every worker exited 0."""
    pids: dict[int, int] = {}

    def forward(signum: int, _frame: FrameType | None) -> None:
        for pid in pids:
            os.kill(pid, signum)

    # Installed before the first fork, so a signal that comes early still reaches every worker.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for index in range(count):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(index, sockets, worker)
        pids[pid] = index
    for sock in sockets:
        sock.close()  # the workers hold the port now
    return _wait(pids)


def _child(index: int, sockets: list[socket.socket], worker: Worker) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    status = 1
    try:
        status = worker(index, sockets)
    except BaseException:  # noqa: BLE001 - a worker never returns into the parent's code
        log.exception("worker %d failed", index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _wait(pids: dict[int, int]) -> int:
    worst = 0
    while pids:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = pids.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if index is None or code == 0:
            continue
        if not worst:
            # One worker down: stop the others too, so a supervisor restarts the whole hub.
            log.error("worker %d exited with status %d; stopping the others", index, code)
            for other in pids:
                os.kill(other, signal.SIGTERM)
        worst = worst or (code if code > 0 else 1)
    return worst
