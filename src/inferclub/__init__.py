"""inferclub: an OpenAI-compatible hub that routes each user's requests to their own GPUs."""

from __future__ import annotations

__version__ = "0.1.0"
