"""Fake whisper.cpp `whisper-server`, after engine-apis.md §4.3.

No model list (`/v1/models` is a 404 `text/plain`); `GET /health` is `{"status":"ok"}`, or 503
`{"status":"loading model"}`; `POST /inference` takes the OpenAI multipart fields (`model` is
ignored; `translate=true` translates); `text` comes back as `text/html`; errors are
`{"error": "..."}`. verbose_json has `language` as a full name, no `seek` or
`compression_ratio`, and words only inside each segment, as tokens (" Amer", "icans", ","),
whatever `timestamp_granularities[]` says.
"""

from __future__ import annotations

from typing import Any

from tests.support.fakes.base import FakeHandler, FakeServer


class FakeWhisperCpp(FakeServer):
    def __init__(self, inference_path: str = "/inference") -> None:
        super().__init__()
        self.inference_path = inference_path
        self.loading = False
        self.text = " And so my fellow Americans, ask not what your country can do for you."

    @property
    def url(self) -> str:
        return self.root  # whisper.cpp's API is not under /v1

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/health", HealthHandler, args),
            (self.inference_path, InferenceHandler, args),
            (r"/load", LoadHandler, args),
        ]


class HealthHandler(FakeHandler):
    fake: FakeWhisperCpp

    def get(self) -> None:
        if self.fake.loading:
            self.send_json({"status": "loading model"}, 503)
        else:
            self.send_json({"status": "ok"})


class InferenceHandler(FakeHandler):
    fake: FakeWhisperCpp

    def post(self) -> None:
        if "file" not in self.request.files:
            self.send_json({"error": "no 'file' field in the request"}, 400)
            return
        fmt = self.get_body_argument("response_format", "json")
        translate = self.get_body_argument("translate", "false") == "true"
        text = " [translated]" + self.fake.text if translate else self.fake.text
        if fmt == "text":
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(text)
        elif fmt == "srt":
            self.set_header("Content-Type", "application/x-subrip")
            self.finish(f"1\n00:00:00,000 --> 00:00:04,000\n{text}\n\n")
        elif fmt == "vtt":
            self.set_header("Content-Type", "text/vtt")
            self.finish(f"WEBVTT\n\n00:00:00.000 --> 00:00:04.000\n{text}\n\n")
        elif fmt == "verbose_json":
            segments = [segment(i, part) for i, part in enumerate(split_segments(text))]
            self.send_json(
                {
                    "task": "translate" if translate else "transcribe",
                    "language": "english",
                    "duration": segments[-1]["end"] if segments else 0.0,
                    "text": text,
                    "segments": segments,
                    "detected_language": "english",
                    "detected_language_probability": 0.98,
                    "language_probabilities": {"english": 0.98},
                }
            )
        else:
            self.send_json({"text": text})


def split_segments(text: str) -> list[str]:
    """Segments end after a comma, the way whisper.cpp cuts at pauses."""
    parts = [p + "," for p in text.split(",")]
    parts[-1] = parts[-1][:-1]
    return [p for p in parts if p.strip()]


def tokens(text: str) -> list[str]:
    """Whisper-like tokens: a leading space starts a word, long words split in two, and
    punctuation is a token of its own."""
    out: list[str] = []
    for word in text.split():
        core = word.rstrip(",.?!")
        if len(core) > 6:
            out += [" " + core[:4], core[4:]]
        elif core:
            out.append(" " + core)
        out += list(word[len(core) :])
    return out


def segment(index: int, text: str) -> dict[str, Any]:
    """One verbose_json segment with its token-level words: 0.25 s per token, 3 s per segment."""
    start = index * 3.0
    words = [
        {
            "word": t,
            "start": round(start + i * 0.25, 2),
            "end": round(start + i * 0.25 + 0.2, 2),
            "t_dtw": -1,
            "probability": 0.9,
        }
        for i, t in enumerate(tokens(text))
    ]
    return {
        "id": index,
        "text": text,
        "start": start,
        "end": words[-1]["end"] if words else start,
        "tokens": [50364 + i for i in range(len(words))],
        "words": words,
        "temperature": 0.0,
        "avg_logprob": -0.2,
        "no_speech_prob": 0.01,
    }


class LoadHandler(FakeHandler):
    def post(self) -> None:
        if not self.get_body_argument("model", ""):
            self.send_json({"error": "model not found!"}, 400)
            return
        self.set_header("Content-Type", "application/text")
        self.finish("Load was successful!")
