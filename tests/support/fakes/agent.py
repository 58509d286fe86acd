"""A fake *agent* for hub tests: it speaks the hub's side of the agent protocol (OpenAI paths
under its callback URL) with knobs for the failures a hub must survive."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from tornado.httputil import HTTPFile, parse_body_arguments

from tests.support.fakes.base import FakeHandler, chat_chunks, chat_completion, words
from tests.support.fakes.openai_api import ChatHandler, OpenAIFake

#: What an agent serving chat with `m1` advertises in a heartbeat.
LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "features": [], "models": ["m1"]}]


class FakeAgent(OpenAIFake):
    def __init__(self, models: list[str] | None = None) -> None:
        super().__init__(models or ["m1"])
        #: Send this many chunks, then hang forever (idle timeout, disconnect mid-stream).
        self.stall_after: int | None = None
        #: Send this many chunks, then drop the connection.
        self.break_after: int | None = None
        #: Non-streaming: wait this long before answering.
        self.delay = 0.0
        #: Chat: while set, requests wait at the agent (a busy service) until `release`.
        self.holding = threading.Event()
        #: Non-streaming chat: an answer this many characters long, sent with a
        #: ``Content-Length`` or, with ``chunked_answer``, in 1 MiB chunks without one.
        self.answer_size = 0
        self.chunked_answer = False
        #: Chat: answer with exactly this ``(status, body)`` as JSON, as a hostile agent may.
        self.raw_answer: tuple[int, bytes] | None = None

        #: Transcriptions: answer ``response_format=text`` with JSON, as vLLM does.
        self.text_as_json = False
        self.transcript = "the quick brown fox"
        #: Speech: audio bytes to send, in this many chunks, ``chunk_delay`` apart.
        self.audio = b"RIFF" + bytes(range(256)) * 40
        self.audio_chunks = 4

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/v1/chat/completions", AgentChatHandler, args),
            (r"/v1/audio/(transcriptions|translations)", TranscriptionHandler, args),
            (r"/v1/audio/speech", SpeechHandler, args),
            (r"/v1/images/(generations|edits)", ImagesHandler, args),
            *self.openai_routes(),
        ]

    def hold(self) -> None:
        """Chat requests from now on wait at the agent until `release` (or their client goes):
        a service kept busy for exactly as long as a test needs, not for a guessed time."""
        self.holding.set()

    def release(self) -> None:
        self.holding.clear()

    def form(self, index: int = -1) -> tuple[dict[str, list[str]], dict[str, list[HTTPFile]]]:
        """Fields and files of a recorded multipart request, parsed independently of the hub."""
        rec = self.requests[index]
        fields: dict[str, list[bytes]] = {}
        files: dict[str, list[HTTPFile]] = {}
        parse_body_arguments(rec.headers["Content-Type"], rec.body, fields, files)
        return {k: [v.decode() for v in vs] for k, vs in fields.items()}, files


class AgentChatHandler(ChatHandler):
    fake: FakeAgent

    async def large_answer(self, model: str) -> None:
        data = json.dumps(chat_completion(model, "x" * self.fake.answer_size)).encode()
        self.set_header("Content-Type", "application/json")
        if not self.fake.chunked_answer:
            self.finish(data)
            return
        for start in range(0, len(data), 1024 * 1024):
            self.write(data[start : start + 1024 * 1024])
            await self.flush()
        self.finish()

    async def post(self) -> None:
        fake = self.fake
        body = self.json_body()
        if fake.delay:
            await asyncio.sleep(fake.delay)
        while fake.holding.is_set() and not self.gone:
            await asyncio.sleep(0.01)
        if fake.raw_answer is not None:
            self.set_status(fake.raw_answer[0])
            self.set_header("Content-Type", "application/json")
            self.finish(fake.raw_answer[1])
            return
        if fake.answer_size and not body.get("stream"):
            await self.large_answer(str(body.get("model")))
            return
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


class TranscriptionHandler(FakeHandler):
    """OpenAI-shaped STT answers by ``response_format``, with segments and words."""

    fake: FakeAgent

    def post(self, _kind: str) -> None:
        fmt = self.get_body_argument("response_format", "json")
        text = self.fake.transcript
        if fmt == "text" and not self.fake.text_as_json:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(text)
        elif fmt == "verbose_json":
            words_ = [
                {"word": w, "start": i * 0.5, "end": i * 0.5 + 0.4}
                for i, w in enumerate(text.split())
            ]
            self.send_json(
                {
                    "task": "transcribe",
                    "language": "english",
                    "duration": 2.5,
                    "text": text,
                    "segments": [
                        {
                            "id": 0,
                            "seek": 0,
                            "start": 0.0,
                            "end": 2.0,
                            "text": text,
                            "tokens": [1, 2],
                            "temperature": 0.0,
                            "avg_logprob": -0.2,
                            "compression_ratio": 1.0,
                            "no_speech_prob": 0.01,
                        }
                    ],
                    "words": words_,
                }
            )
        else:
            self.send_json({"text": text, "usage": {"type": "duration", "seconds": 3}})


class SpeechHandler(FakeHandler):
    fake: FakeAgent

    async def post(self) -> None:
        body = self.json_body()
        audio = self.fake.audio
        if body.get("stream_format") == "sse":
            import base64

            events = [
                {"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()},
                {
                    "type": "speech.audio.done",
                    "usage": {"input_tokens": 3, "output_tokens": 9, "total_tokens": 12},
                },
            ]
            await self.stream_events(events, self.fake.chunk_delay, done=False)
            return
        self.set_header("Content-Type", "audio/wav")
        n = self.fake.audio_chunks
        step = -(-len(audio) // n)
        await self.stream_bytes(
            [audio[i : i + step] for i in range(0, len(audio), step)], self.fake.chunk_delay
        )


class ImagesHandler(FakeHandler):
    fake: FakeAgent

    def post(self, kind: str) -> None:
        if kind == "generations":
            body = self.json_body()
            n, fmt = int(body.get("n", 1)), body.get("response_format", "url")
        else:
            n = int(self.get_body_argument("n", "1"))
            fmt = self.get_body_argument("response_format", "b64_json")
        item = (
            {"b64_json": "iVBORw0KGgo="}
            if fmt == "b64_json"
            else {"url": f"http://127.0.0.1:{self.fake.port}/img/1.png"}
        )
        self.send_json({"created": 1, "data": [item] * n})
