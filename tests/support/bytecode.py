"""Compiled bytecode for the test run, kept outside the source tree.

Where ``PYTHONDONTWRITEBYTECODE`` is set (to keep ``__pycache__`` folders out of the checkout),
every test process would compile the package and the test modules again: pytest's assertion
rewriting caches nothing then, and that doubles the collection (10 s of CPU instead of 5 in one
measurement), paid again by every pytest-xdist worker and every hub or agent process a test
starts. The bytecode goes to ``.pytest_cache/pycache`` instead (``PYTHONPYCACHEPREFIX``, for the
child processes too), so the tree stays as clean as the variable asks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Where the bytecode goes unless ``PYTHONPYCACHEPREFIX`` says otherwise.
PREFIX = Path(__file__).resolve().parents[2] / ".pytest_cache" / "pycache"


def cache_bytecode_outside_the_tree() -> None:
    if not sys.dont_write_bytecode:
        return  # __pycache__ folders as usual (or a prefix of the caller's)
    prefix = sys.pycache_prefix or str(PREFIX)
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
