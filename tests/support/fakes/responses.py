"""OpenAI's Responses API (``POST /v1/responses``), as vLLM, llama-server, Ollama and LM Studio
serve it: a ``response`` object, or a stream of named events (``event: response.created`` ...
``response.output_text.delta`` ... ``response.completed``, whose ``response.usage`` has
``input_tokens`` and ``output_tokens``), with no ``[DONE]`` at the end."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support.fakes.base import words
from tests.support.fakes.openai_api import OpenAIHandler

INPUT_TOKENS = 7
OUTPUT_TOKENS = 5


def response_object(model: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    """A ``response``: in progress (no output, ``usage`` null) or completed with ``text``."""
    done = text is not None
    output = (
        [
            {
                "type": "message",
                "id": "msg_fake",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if done
        else []
    )
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": (
            {
                "input_tokens": INPUT_TOKENS,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": OUTPUT_TOKENS,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
            }
            if done
            else None
        ),
    }


def response_events(model: str, pieces: list[str]) -> list[dict[str, Any]]:
    """The events of a streamed response of one text message, in OpenAI's order."""
    text = "".join(pieces)
    item = {"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant"}
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response_object(model, None, "in_progress")},
        {"type": "response.in_progress", "response": response_object(model, None, "in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **where, "part": part},
        *(
            {"type": "response.output_text.delta", **where, "delta": p, "logprobs": []}
            for p in pieces
        ),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": response_object(model, text)["output"][0],
        },
        {"type": "response.completed", "response": response_object(model, text)},
    ]
    return [{**e, "sequence_number": i} for i, e in enumerate(events)]


class ResponsesHandler(OpenAIHandler):
    async def post(self) -> None:
        body = self.json_body()
        model = self.check_model(body)
        if model is None:
            return
        pieces = words(self.fake.chunks)
        if not body.get("stream"):
            self.send_json(response_object(model, "".join(pieces)))
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        chunks = [
            f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
            for e in response_events(model, pieces)
        ]
        await self.stream_bytes(chunks, self.fake.chunk_delay, self.fake.first_delay)
