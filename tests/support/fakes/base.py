"""Shared machinery of the fake engines, and the OpenAI payloads they send.

The servers themselves (a Tornado app on 127.0.0.1, port 0, in a thread, recording every
request and client disconnect) are `inferclub.testing`'s, the same ones plugin authors use.
"""

from __future__ import annotations

import time
from typing import Any

from inferclub.testing.servers import FakeHandler, FakeServer, LoopThread, NotFound, Recorded

__all__ = [
    "FakeHandler",
    "FakeServer",
    "LoopThread",
    "NotFound",
    "Recorded",
    "chat_chunks",
    "chat_completion",
    "text_completion",
    "usage",
    "words",
]


# -- OpenAI payloads ---------------------------------------------------------------------------


def usage(prompt: int = 5, completion: int = 3) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage(),
    }


def chat_chunks(model: str, words: list[str], include_usage: bool) -> list[dict[str, Any]]:
    """OpenAI chat chunks: role, one per word, finish, then a usage chunk if asked."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": w}) for w in words]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage(completion=len(words)),
            }
        )
    return chunks


def text_completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": usage(),
    }


def words(n: int) -> list[str]:
    return [f"tok{i} " for i in range(n)]
