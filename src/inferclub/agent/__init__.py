"""inference-club-agent: advertises local inference servers to an inferclub hub and relays
the hub's requests to them."""

from __future__ import annotations

from inferclub import __version__

__all__ = ["__version__"]
