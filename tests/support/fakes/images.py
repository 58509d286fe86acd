"""Fake image servers, after engine-apis.md §6.

`FakeSdCpp` is stable-diffusion.cpp's server: `GET /v1/models` is the fixed `sd-cpp-local`;
`POST /v1/images/generations` (JSON: prompt, n, size `WxH`, output_format png|jpeg|webp) and
`POST /v1/images/edits` (multipart: prompt, `image[]` or legacy `image`, optional `mask`, n, size,
output_format png|jpeg) always answer `data[].b64_json` plus a top-level `output_format`,
whatever `response_format` says; errors are `{"error": "<string>"}`.

`FakeLocalAIImages` is LocalAI's image generation: `model` is required, the default answer is a
`url` under `/generated-images/` on the server itself (served there too), `b64_json` only with
`response_format: b64_json`; the body is `{"id", "created", "data"}`. LocalAI has no
`/v1/images/edits`.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
import zlib
from typing import Any

from tests.support.fakes.base import FakeHandler, FakeServer


def png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 80, 20)) -> bytes:
    """A valid solid-colour PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def parse_size(size: Any) -> tuple[int, int] | None:
    try:
        w, h = (int(x) for x in str(size).lower().split("x"))
    except ValueError:
        return None
    return (w, h) if 0 < w <= 2048 and 0 < h <= 2048 else None


class FakeSdCpp(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.model = "sd-cpp-local"

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/v1/models", SdModelsHandler, args),
            (r"/v1/images/generations", SdGenerationsHandler, args),
            (r"/v1/images/edits", SdEditsHandler, args),
        ]


class SdHandler(FakeHandler):
    fake: FakeSdCpp

    def error(self, message: str, status: int = 400) -> None:
        self.send_json({"error": message}, status)

    def answer(self, prompt: Any, n: Any, size: Any, fmt: Any, formats: tuple[str, ...]) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            self.error("prompt required")
            return
        try:
            count = int(n) if n is not None else 1
        except ValueError:
            count = 0
        if not 1 <= count <= 8:
            self.error("n must be between 1 and 8")
            return
        dims = parse_size(size or "512x512")
        if dims is None:
            self.error("invalid size")
            return
        fmt = fmt or "png"
        if fmt not in formats:
            self.error(f"invalid output_format {fmt!r}")
            return
        w, h = dims
        # A tiny stand-in picture (real ones are the requested size), one colour per image.
        images = [png(min(w, 16), min(h, 16), (i * 40 % 256, 80, 20)) for i in range(count)]
        self.send_json(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(img).decode()} for img in images],
                "output_format": fmt,
            }
        )


class SdModelsHandler(SdHandler):
    def get(self) -> None:
        self.send_json(
            {
                "object": "list",
                "data": [{"id": self.fake.model, "object": "model", "owned_by": "local"}],
            }
        )


class SdGenerationsHandler(SdHandler):
    def post(self) -> None:
        body = self.json_body()
        self.answer(
            body.get("prompt"),
            body.get("n"),
            body.get("size"),
            body.get("output_format"),
            ("png", "jpeg", "webp"),
        )


class SdEditsHandler(SdHandler):
    def post(self) -> None:
        files = self.request.files
        if not (files.get("image[]") or files.get("image")):
            self.error("at least one image is required")
            return
        arg = self.get_body_argument
        self.answer(
            arg("prompt", None),
            arg("n", None),
            arg("size", None),
            arg("output_format", None),
            ("png", "jpeg"),
        )


class FakeLocalAIImages(FakeServer):
    def __init__(self, models: list[str] | None = None) -> None:
        super().__init__()
        self.models = list(models or ["stablediffusion"])
        self.generated: dict[str, bytes] = {}

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/v1/models", LocalAIModelsHandler, args),
            (r"/v1/images/generations", LocalAIGenerationsHandler, args),
            (r"/generated-images/(.+)", GeneratedImageHandler, args),
        ]


class LocalAIModelsHandler(FakeHandler):
    fake: FakeLocalAIImages

    def get(self) -> None:
        self.send_json(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.fake.models]}
        )


class LocalAIGenerationsHandler(FakeHandler):
    fake: FakeLocalAIImages

    def post(self) -> None:
        body = self.json_body()
        if body.get("model") not in self.fake.models:
            self.send_json(
                {"error": {"code": 500, "message": "could not load model", "type": ""}}, 500
            )
            return
        count = int(body.get("n") or 1)
        data = []
        for i in range(count):
            img = png(8, 8, (20, 20 + i * 40 % 200, 200))
            if body.get("response_format") == "b64_json":
                data.append({"b64_json": base64.b64encode(img).decode()})
            else:
                name = f"b{uuid.uuid4().hex}.png"
                self.fake.generated[name] = img
                data.append({"url": f"{self.fake.root}/generated-images/{name}"})
        self.send_json({"id": uuid.uuid4().hex, "created": int(time.time()), "data": data})


class GeneratedImageHandler(FakeHandler):
    fake: FakeLocalAIImages

    def get(self, name: str) -> None:
        img = self.fake.generated.get(name)
        if img is None:
            self.set_status(404)
            self.finish()
            return
        self.set_header("Content-Type", "image/png")
        self.finish(img)
