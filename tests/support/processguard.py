"""Keeps the `subprocess` marker honest: a test without it may not start a process.

`pytest -m "not subprocess"` is the fast part of the suite (unit and in-process tests, seconds
in all). A process started from a test that is not marked would quietly make it slow again, so
an audit hook (Python's, for every ``subprocess.Popen``) refuses it, naming the marker.
"""

from __future__ import annotations

import sys
from typing import Any


class ProcessGuard:
    def __init__(self) -> None:
        #: Whether the running test may start processes; True outside tests (collection,
        #: module-scoped fixtures of marked modules).
        self.allowed = True

    def install(self) -> ProcessGuard:
        # Audit hooks cannot be removed; one guard serves the whole session.
        sys.addaudithook(self._audit)
        return self

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "subprocess.Popen" and not self.allowed:
            raise RuntimeError(
                f"this test starts {args[0]!r}: mark it @pytest.mark.subprocess "
                "(or keep it in-process)"
            )
