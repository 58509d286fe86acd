"""A fake *agent* for hub tests: it speaks the hub's side of the agent protocol (OpenAI paths
under its callback URL) with knobs for the failures a hub must survive."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fakes.base import chat_chunks, words
from fakes.openai_api import ChatHandler, OpenAIFake


class FakeAgent(OpenAIFake):
    def __init__(self, models: list[str] | None = None) -> None:
        super().__init__(models or ["m1"])
        #: Send this many chunks, then hang forever (idle timeout, disconnect mid-stream).
        self.stall_after: int | None = None
        #: Send this many chunks, then drop the connection.
        self.break_after: int | None = None
        #: Non-streaming: wait this long before answering.
        self.delay = 0.0

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [(r"/v1/chat/completions", AgentChatHandler, args), *self.openai_routes()]


class AgentChatHandler(ChatHandler):
    fake: FakeAgent

    async def post(self) -> None:
        fake = self.fake
        body = self.json_body()
        if fake.delay:
            await asyncio.sleep(fake.delay)
        cut = fake.stall_after if fake.stall_after is not None else fake.break_after
        if not body.get("stream") or cut is None:
            await super().post()
            return
        model = self.check_model(body)
        if model is None:
            return
        events = chat_chunks(model, words(fake.chunks), fake.include_usage(body))[:cut]
        self.set_header("Content-Type", "text/event-stream")
        for event in events:
            self.write(f"data: {json.dumps(event)}\n\n".encode())
            await self.flush()
        if fake.break_after is not None:
            assert self.request.connection is not None
            self.request.connection.stream.close()  # type: ignore[attr-defined]
            return
        while not self.gone:
            await asyncio.sleep(0.05)
