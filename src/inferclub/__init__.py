"""inferclub: an OpenAI-compatible hub that routes each user's requests to their own GPUs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    #: The one version of both programs: the installed package's metadata (pyproject.toml).
    __version__ = version("inferclub")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
