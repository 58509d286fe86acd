"""inference-club-agent: advertises local inference servers to an inferclub hub and relays
the hub's requests to them."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inferclub")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
