"""The builtin engines against the fakes: discovery, health, path and error translation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from inferclub.agent.detect import detect
from inferclub.engines import (
    Engine,
    EngineError,
    EngineRequest,
    EngineResponse,
    Health,
    Model,
    Service,
    get_engines,
    get_plugin_manager,
)
from inferclub.multipart import get_field, set_field
from tests.support.fakes import (
    FakeLlamaServer,
    FakeLmStudio,
    FakeOllama,
    FakeSpeaches,
    FakeVllm,
    FakeWhisperCpp,
)

ENGINES = get_engines(get_plugin_manager(entrypoints=False))
T = TypeVar("T")


def run(fn: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            return await fn(session)

    return asyncio.run(main())


def discover(service: Service) -> tuple[Health, list[str]]:
    engine = ENGINES[service.engine]

    async def go(session: aiohttp.ClientSession) -> tuple[Health, list[str]]:
        return await engine.health(session, service), await engine.discover_models(session, service)

    return run(go)


def health(service: Service) -> Health:
    return run(lambda session: ENGINES[service.engine].health(session, service))


# -- discovery -----------------------------------------------------------------------------------


def test_vllm_discovery_and_health() -> None:
    with FakeVllm(["Qwen/Qwen3-8B", "my-lora"]) as fake:
        service = Service("v", "vllm", fake.url)
        state, models = discover(service)
        assert state.ok and state.info == {"version": "0.11.0"}
        assert models == ["Qwen/Qwen3-8B", "my-lora"]
        fake.dead = True  # EngineDeadError: /health answers 503
        assert not health(service).ok


def test_vllm_discovery_sends_the_api_key() -> None:
    with FakeVllm(api_key="k") as fake:
        assert discover(Service("v", "vllm", fake.url, api_key="k"))[1] == ["Qwen/Qwen3-8B"]
        with pytest.raises(EngineError, match="HTTP 401"):
            discover(Service("v", "vllm", fake.url))


def test_lmstudio_advertises_loaded_models_of_the_service_type() -> None:
    with FakeLmStudio() as fake:
        state, llm = discover(Service("l", "lmstudio", fake.url))
        assert state.ok
        # /v1/models also lists the not-loaded VLM; only loaded llm/vlm models count.
        assert llm == ["qwen/qwen3-4b"]
        _, emb = discover(Service("e", "lmstudio", fake.url, type="embedding"))
        assert emb == ["text-embedding-nomic-embed-text-v1.5"]
        fake.catalog[1]["state"] = "loaded"
        assert discover(Service("l", "lmstudio", fake.url))[1] == [
            "qwen/qwen3-4b",
            "qwen2-vl-7b-instruct",
        ]


def test_ollama_discovery_uses_tags_and_ps() -> None:
    with FakeOllama() as fake:
        state, llm = discover(Service("o", "ollama", fake.url))
        assert state.ok and state.info == {"loaded": ["qwen3:8b"]}
        assert llm == ["llama3.2:latest", "qwen3:8b"]  # the embedding-only model is left out
        _, emb = discover(Service("o", "ollama", fake.url, type="embedding"))
        assert emb == ["nomic-embed-text:latest"]
        engine = ENGINES["ollama"]
        service = Service("o", "ollama", fake.url)
        assert engine.model_matches(service, "llama3.2:latest", "llama3.2")
        assert not engine.model_matches(service, "llama3.2:1b", "llama3.2")
    with FakeOllama(models=[], loaded=[]) as empty:
        assert discover(Service("o", "ollama", empty.url))[1] == []


def test_llamacpp_discovery_and_loading() -> None:
    with FakeLlamaServer() as fake:
        service = Service("l", "llamacpp", fake.url)
        state, models = discover(service)
        assert state.ok and models == ["smollm2-135m"]
        fake.loading = True
        assert not health(service).ok


def test_whisper_openai_style_lists_only_speech_to_text_models() -> None:
    with FakeSpeaches() as fake:
        state, models = discover(Service("s", "whisper", fake.url, type="stt"))
        assert state.ok
        assert models == ["Systran/faster-whisper-small"]


def test_whisper_cpp_has_no_model_list_and_reports_loading() -> None:
    with FakeWhisperCpp() as fake:
        service = Service(
            "w",
            "whisper",
            fake.url,
            type="stt",
            models=(Model("whisper-1"),),
            options={"api": "whispercpp"},
        )
        state, models = discover(service)
        assert state.ok and models == []
        fake.loading = True
        state = health(service)
        assert not state.ok and "loading model" in state.detail


def test_openai_generic_engine() -> None:
    with FakeVllm(["m"]) as fake:
        state, models = discover(Service("g", "openai", fake.url, type="tts"))
        assert state.ok and models == ["m"]


def test_engine_down_is_a_connection_error() -> None:
    with FakeVllm() as fake:
        service = Service("v", "vllm", fake.url)
        fake.stop()
        with pytest.raises(aiohttp.ClientConnectorError):
            health(service)


# -- detection -----------------------------------------------------------------------------------


def test_probes_tell_engines_apart() -> None:
    fakes = [
        FakeVllm(),
        FakeLmStudio(),
        FakeOllama(),
        FakeLlamaServer(),
        FakeSpeaches(),
        FakeWhisperCpp(),
    ]
    try:
        for fake in fakes:
            fake.start()
        found = asyncio.run(detect(ENGINES, [f.root for f in fakes]))
    finally:
        for fake in fakes:
            fake.close()
    assert [(f.service.engine, f.service.type, f.service.url) for f in found] == [
        ("vllm", "llm", fakes[0].url),
        ("lmstudio", "llm", fakes[1].url),
        ("ollama", "llm", fakes[2].url),
        ("llamacpp", "llm", fakes[3].url),
        ("whisper", "stt", fakes[4].url),
        ("whisper", "stt", fakes[5].root),
    ]
    assert found[5].service.options == {"api": "whispercpp"}
    assert found[2].models == ("llama3.2:latest", "qwen3:8b")


# -- forwarding translation ----------------------------------------------------------------------


def whispercpp_service() -> Service:
    return Service(
        "w",
        "whisper",
        "http://127.0.0.1:8080",
        type="stt",
        models=(Model("whisper-1"),),
        options={"api": "whispercpp"},
    )


def test_whisper_cpp_path_translation() -> None:
    engine = ENGINES["whisper"]
    service = whispercpp_service()
    assert engine.forward_path(service, "/audio/transcriptions") == "/inference"
    assert engine.forward_path(service, "/audio/translations") == "/inference"
    custom = Service(
        **{**service.__dict__, "options": {"api": "whispercpp", "inference_path": "/v1/asr"}}
    )
    assert engine.forward_path(custom, "/audio/transcriptions") == "/v1/asr"
    openai_style = Service("s", "whisper", "http://127.0.0.1:8000/v1", type="stt")
    assert engine.forward_path(openai_style, "/audio/transcriptions") == "/audio/transcriptions"

    boundary = "XyZ"
    ctype = f"multipart/form-data; boundary={boundary}"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        b"RIFF\x00\x01\r\n--XyZ--\r\n"
    )
    request = EngineRequest("POST", "/audio/translations", {"Content-Type": ctype}, body)
    prepared = engine.prepare_request(service, request)
    assert prepared.path == "/inference"
    assert engine.forward_url(service, prepared) == "http://127.0.0.1:8080/inference"
    assert get_field(prepared.body, ctype, "translate") == "true"
    assert prepared.body.startswith(body[: body.index(b"--XyZ--")])


def test_whisper_cpp_text_is_relayed_as_text_plain() -> None:
    async def chunks() -> Any:
        yield b"hello"

    engine = ENGINES["whisper"]
    service = whispercpp_service()
    request = EngineRequest("POST", "/inference", {}, b"")
    out = engine.translate_response(
        service,
        request,
        EngineResponse(200, {"Content-Type": "text/html; charset=utf-8"}, chunks()),
    )
    assert out.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_api_key_is_added_to_forwarded_requests() -> None:
    engine: Engine = ENGINES["vllm"]
    request = EngineRequest(
        "POST", "/chat/completions", {"Content-Type": "application/json"}, b"{}"
    )
    keyed = engine.prepare_request(Service("v", "vllm", "http://h/v1", api_key="s3"), request)
    assert keyed.headers["Authorization"] == "Bearer s3"
    plain = engine.prepare_request(Service("v", "vllm", "http://h/v1"), request)
    assert "Authorization" not in plain.headers


# -- multipart helpers ---------------------------------------------------------------------------


def test_multipart_field_edits_keep_every_other_byte() -> None:
    ctype = 'multipart/form-data; boundary="b1"'
    audio = b"\x00\xff--b1 not a delimiter\r\n\r\n\x01"
    body = (
        b'--b1\r\nContent-Disposition: form-data; name="model"\r\n\r\nsmall\r\n'
        b'--b1\r\nContent-Disposition: form-data; name="file"; filename="model"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n--b1--\r\n"
    )
    assert get_field(body, ctype, "model") == "small"
    assert get_field(body, ctype, "language") is None
    renamed = set_field(body, ctype, "model", "openai/whisper-large-v3")
    assert renamed == body.replace(b"\r\n\r\nsmall\r\n", b"\r\n\r\nopenai/whisper-large-v3\r\n")
    added = set_field(body, ctype, "language", "en")
    assert added.startswith(body[: body.rindex(b"--b1--")])
    assert get_field(added, ctype, "language") == "en"
    assert set_field(b"{}", "application/json", "model", "x") == b"{}"


# -- load: what the hub chooses on ---------------------------------------------------------------


def test_ollama_and_lmstudio_tell_their_loaded_models_others_cannot_tell() -> None:
    with FakeOllama(loaded=["qwen3:8b"]) as fake:
        service = Service("o", "ollama", fake.url)
        load = run(lambda s: ENGINES["ollama"].load(s, service))
        assert load is not None and load.loaded == ("qwen3:8b",) and load.queue is None
    with FakeLmStudio() as fake:
        service = Service("l", "lmstudio", fake.url)
        load = run(lambda s: ENGINES["lmstudio"].load(s, service))
        assert load is not None
        assert load.loaded == ("qwen/qwen3-4b", "text-embedding-nomic-embed-text-v1.5")
    with FakeVllm() as fake:
        service = Service("v", "vllm", fake.url)
        assert run(lambda s: ENGINES["vllm"].load(s, service)) is None
