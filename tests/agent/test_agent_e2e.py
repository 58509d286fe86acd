"""End to end: the openai SDK -> the real hub -> the agent (both subprocesses) -> an engine.

The engines are the fakes here; `test_agent_real_engines.py` does the same with real servers.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from inferclub.testing import AgentProcess
from tests.support.fakes import FakeOllama, FakeVllm
from tests.support.hubproc import HubProcess
from tests.support.stack import manifest_text, start_agent_process, wait_models

pytestmark = pytest.mark.subprocess


def test_openai_sdk_through_hub_and_agent(
    hub_process: HubProcess, tmp_path: Path, vllm: FakeVllm
) -> None:
    key = hub_process.user_with_key("alice")
    agent = start_agent_process(
        hub_process,
        key,
        tmp_path / "m.yaml",
        {
            "name": "vllm-qwen",
            "engine": "vllm",
            "url": vllm.url,
            "models": [{"hf": "Qwen/Qwen3-8B", "alias": "qwen"}],
        },
    )
    try:
        with openai.OpenAI(base_url=hub_process.api_base, api_key=key, max_retries=0) as sdk:
            wait_models(sdk, {"qwen"})
            reply = sdk.chat.completions.create(
                model="qwen", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
            chunks = list(
                sdk.chat.completions.create(
                    model="qwen", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "tok0 tok1 tok2 tok3 tok4 "
            completion = sdk.completions.create(model="qwen", prompt="Say")
            assert completion.choices[0].text.startswith("tok0")

        sent = vllm.posts("/v1/chat/completions")
        assert [r.json()["model"] for r in sent] == ["Qwen/Qwen3-8B", "Qwen/Qwen3-8B"]
        assert all("Authorization" not in r.headers for r in sent)
        rows = hub_process.wait_for_request_rows(3)
        assert [r["status"] for r in rows] == [200, 200, 200]
        assert rows[0]["service"] == "vllm-qwen" and rows[0]["completion_tokens"] == 3
    finally:
        agent.kill()


def test_engine_errors_reach_the_client_in_openai_shape(
    hub_process: HubProcess, tmp_path: Path, vllm: FakeVllm
) -> None:
    key = hub_process.user_with_key("bob")
    # Advertise a model the engine does not really have: vLLM answers 404 with an int code.
    agent = start_agent_process(
        hub_process,
        key,
        tmp_path / "m.yaml",
        {"name": "vllm-qwen", "engine": "vllm", "url": vllm.url, "models": [{"id": "ghost"}]},
    )
    try:
        with openai.OpenAI(base_url=hub_process.api_base, api_key=key, max_retries=0) as sdk:
            wait_models(sdk, {"ghost"})
            with pytest.raises(openai.NotFoundError) as info:
                sdk.chat.completions.create(model="ghost", messages=[])
            assert isinstance(info.value.body, dict)
            assert info.value.body["message"] == "The model `ghost` does not exist."
            assert info.value.body["code"] == "model_not_found"
            vllm.stop()
            with pytest.raises(openai.APIStatusError) as down:
                sdk.chat.completions.create(model="ghost", messages=[])
            assert down.value.status_code == 502
            assert "vllm-qwen" in down.value.message
    finally:
        agent.kill()


def test_service_down_and_back_changes_hub_models_within_one_beat(
    hub_process: HubProcess, tmp_path: Path, vllm: FakeVllm, ollama: FakeOllama
) -> None:
    key = hub_process.user_with_key("carol")
    interval = 3.0
    agent = start_agent_process(
        hub_process,
        key,
        tmp_path / "m.yaml",
        {"name": "vllm-qwen", "engine": "vllm", "url": vllm.url},
        {"name": "ollama", "engine": "ollama", "url": ollama.url},
        interval=interval,
    )
    everything = {"Qwen/Qwen3-8B", "llama3.2:latest", "qwen3:8b"}
    try:
        with openai.OpenAI(base_url=hub_process.api_base, api_key=key, max_retries=0) as sdk:
            wait_models(sdk, everything)
            ollama.stop()
            assert wait_models(sdk, {"Qwen/Qwen3-8B"}) < interval + 0.5
            # Not a 404 (which reads like a typo, and SDKs do not retry): the model exists,
            # its engine is down, and the answer says so.
            with pytest.raises(openai.InternalServerError) as exc:
                sdk.chat.completions.create(model="qwen3:8b", messages=[])
            assert (exc.value.status_code, exc.value.code) == (503, "model_unavailable")
            assert "home-rig: engine down" in exc.value.message
            ollama.start()
            assert wait_models(sdk, everything) < interval + 0.5
            reply = sdk.chat.completions.create(model="qwen3:8b", messages=[])
            assert reply.model == "qwen3:8b"
    finally:
        agent.kill()


def test_client_disconnect_reaches_the_engine(
    hub_process: HubProcess, tmp_path: Path, vllm: FakeVllm
) -> None:
    key = hub_process.user_with_key("dave")
    vllm.chunks, vllm.chunk_delay = 200, 0.05
    agent = start_agent_process(
        hub_process,
        key,
        tmp_path / "m.yaml",
        {"name": "vllm-qwen", "engine": "vllm", "url": vllm.url},
    )
    try:
        with openai.OpenAI(base_url=hub_process.api_base, api_key=key, max_retries=0) as sdk:
            wait_models(sdk, {"Qwen/Qwen3-8B"})
        parts = urlsplit(hub_process.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps({"model": "Qwen/Qwen3-8B", "messages": [], "stream": True}),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")
        closed_at = time.monotonic()
        assert conn.sock is not None
        conn.sock.close()
        conn.close()
        waited = vllm.seconds_until_disconnect(closed_at)
        assert waited is not None, "the engine never saw the client leave"
        assert waited < 2.0  # hub (<1 s) + agent (at once)
        assert vllm.completed_streams == 0
    finally:
        agent.kill()


def test_an_agent_with_an_inference_key_stops_with_the_reason(
    hub_process: HubProcess, tmp_path: Path, vllm: FakeVllm
) -> None:
    hub_process.create_user("alice")
    out = hub_process.cli("keys", "create", "alice", "--scope", "inference").stdout
    key = out.strip().splitlines()[-1]
    (tmp_path / "m.yaml").write_text(
        manifest_text({"name": "v", "engine": "vllm", "url": vllm.url})
    )
    agent = AgentProcess(
        ["run", "--manifest", str(tmp_path / "m.yaml"), "--hub", hub_process.url, "--key", key]
        + ["--listen", "127.0.0.1:0"]
    )
    try:
        assert agent.wait(30) == 3, "restarting would not help"
    finally:
        agent.kill()  # closes its pipes
    assert "HTTP 403" in agent.stderr and "scope `inference`" in agent.stderr
    assert key not in agent.stderr + agent.stdout
    assert hub_process.query("SELECT id FROM providers") == []


def test_an_agent_whose_name_another_key_owns_stops_and_says_what_to_change(
    hub_process: HubProcess, tmp_path: Path, vllm: FakeVllm
) -> None:
    first = hub_process.user_with_key("alice")
    second = hub_process.create_key("alice")
    service = {"name": "v", "engine": "vllm", "url": vllm.url}
    owner = start_agent_process(hub_process, first, tmp_path / "a.yaml", service, name="rig")
    (tmp_path / "b.yaml").write_text(manifest_text(service))
    late = AgentProcess(
        ["run", "--manifest", str(tmp_path / "b.yaml"), "--hub", hub_process.url]
        + ["--key", second, "--listen", "127.0.0.1:0", "--name", "rig"]
    )
    try:
        assert late.wait(30) == 5, "restarting would not help: not a transient failure"
    finally:
        late.kill()
        owner.kill()
    errors = [ln for ln in late.err if " ERROR " in ln]
    assert len(errors) == 1, late.stderr
    assert "provider name 'rig'" in errors[0] and "provider_name_taken" in errors[0]
    assert "--name NAME" in errors[0] and "inferclub keys revoke" in errors[0]
    assert not any("retrying" in ln for ln in late.err), "it gave up at once"
    assert second not in late.stderr + late.stdout
