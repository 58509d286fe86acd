"""`inference-club-agent check --deep`: one tiny real request per service.

A health check says a server answers; only a request shows that the manifest's URL, type,
engine and model names fit together (a chat model advertised as TTS, a whisper.cpp server
described as OpenAI-style). Each request is the smallest one of its type: a one-token chat,
half a second of silence to transcribe, one word of speech, one embedding. They go through
the engine exactly as the hub's requests would (`prepare_request`, `forward_url`), and only
the status and the shape of the answer are checked. Image services are skipped: the
smallest picture still costs seconds to minutes of GPU time.
"""

from __future__ import annotations

import io
import json
import secrets
import wave

import aiohttp

from inferclub.agent.services import ServiceState, describe
from inferclub.engines import EngineError, EngineRequest

#: Seconds one deep request may take (a CPU-only engine loads its model on first use).
DEEP_TIMEOUT = 120.0
SAMPLE_RATE = 16000
#: How much of an engine's error answer is shown.
ERROR_EXCERPT = 200


def silence_wav(seconds: float = 0.5) -> bytes:
    """``seconds`` of 16 kHz mono 16-bit silence as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(b"\0\0" * int(SAMPLE_RATE * seconds))
    return buf.getvalue()


def multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (bytes, so the engine may edit it like the hub's)."""
    boundary = "inferclub" + secrets.token_hex(8)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def tiny_request(service_type: str, model: str) -> EngineRequest | None:
    """The smallest real request of ``service_type`` (None for types not tried)."""
    json_type = {"Content-Type": "application/json"}
    if service_type == "llm":
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        return EngineRequest(
            "POST", "/chat/completions", json_type, json.dumps(body).encode(), model=model
        )
    if service_type == "embedding":
        body = {"model": model, "input": "hello"}
        return EngineRequest(
            "POST", "/embeddings", json_type, json.dumps(body).encode(), model=model
        )
    if service_type == "tts":
        body = {"model": model, "input": "Hi", "voice": "alloy", "response_format": "wav"}
        return EngineRequest(
            "POST", "/audio/speech", json_type, json.dumps(body).encode(), model=model
        )
    if service_type == "stt":
        form, ctype = multipart(
            {"model": model, "response_format": "json", "temperature": "0"},
            "silence.wav",
            silence_wav(),
        )
        return EngineRequest(
            "POST", "/audio/transcriptions", {"Content-Type": ctype}, form, model=model
        )
    return None


def answer_problem(service_type: str, content_type: str, body: bytes) -> str | None:
    """What is wrong with a 2xx answer, or None when it has the shape its type needs."""
    if service_type == "tts":
        return None if body else "the speech answer is empty"
    if service_type == "stt" and content_type.startswith("text/plain"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return f"the answer is not JSON ({content_type or 'no Content-Type'})"
    key = {"llm": "choices", "embedding": "data", "stt": "text"}[service_type]
    if not isinstance(data, dict) or key not in data:
        return f"the answer has no `{key}`"
    return None


async def deep_check(session: aiohttp.ClientSession, state: ServiceState) -> str:
    """Send one tiny request to ``state``'s service: ``"ok"``, ``"skipped: ..."`` or
    ``"FAILED: ..."``."""
    service, engine = state.service, state.engine
    names = state.model_names()
    if not names:
        return "FAILED: no model to try"
    request = tiny_request(service.type, state.engine_model(names[0]))
    if request is None:
        return f"skipped: no tiny request for {service.type} services"
    prepared = engine.prepare_request(service, request)
    url = engine.forward_url(service, prepared)
    timeout = aiohttp.ClientTimeout(total=service.timeout or DEEP_TIMEOUT)
    try:
        async with session.post(
            url, data=prepared.body, headers=prepared.headers, timeout=timeout
        ) as resp:
            body = await resp.read()
            content_type = resp.headers.get("Content-Type", "")
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, EngineError) as exc:
        return f"FAILED: {request.path} with model {names[0]!r}: {describe(exc)}"
    if status >= 400:
        excerpt = body[:ERROR_EXCERPT].decode(errors="replace").strip()
        return f"FAILED: {request.path} with model {names[0]!r}: HTTP {status}: {excerpt}"
    problem = answer_problem(service.type, content_type, body)
    return f"FAILED: {request.path}: {problem}" if problem else "ok"
