"""``/v1/responses`` through the real hub and agent (subprocesses) to a fake engine that
answers in OpenAI's Responses shape, driven by the openai SDK's ``client.responses``; and
``/v1/rerank``, which llama-server and vLLM serve beside chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakes import FakeVllm
from tests.support.fakes.responses import INPUT_TOKENS, OUTPUT_TOKENS
from tests.support.stack import Stack, start_stack

pytestmark = pytest.mark.subprocess

TEXT = "tok0 tok1 tok2 tok3 tok4 "


@pytest.fixture(scope="module")
def responses_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FakeVllm]]:
    with FakeVllm() as engine:
        service = {
            "name": "chat",
            "engine": "vllm",
            "url": engine.url,
            "models": [{"hf": "Qwen/Qwen3-8B", "alias": "qwen"}],
        }
        workdir: Path = tmp_path_factory.mktemp("responses")
        with start_stack(workdir, [service], {("qwen", "llm")}) as stack:
            yield stack, engine


def test_a_response_whole(responses_stack: tuple[Stack, FakeVllm]) -> None:
    stack, engine = responses_stack
    with stack.client() as sdk:
        raw = sdk.responses.with_raw_response.create(model="qwen", input="Say hi")
        response = raw.parse()
    assert response.output_text == TEXT
    assert response.usage is not None and response.usage.output_tokens == OUTPUT_TOKENS
    # The agent forwarded it to the engine's /v1/responses, under the engine's model name.
    assert engine.posts("/v1/responses")[-1].json()["model"] == "Qwen/Qwen3-8B"
    row = stack.row(raw.headers["x-request-id"])
    assert (row["endpoint"], row["type"], row["status"]) == ("/v1/responses", "llm", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)


def test_a_response_streamed_event_by_event(responses_stack: tuple[Stack, FakeVllm]) -> None:
    stack, _ = responses_stack
    with (
        stack.client() as sdk,
        sdk.responses.with_streaming_response.create(
            model="qwen", input="Say hi", stream=True
        ) as raw,
    ):
        request_id = raw.headers["x-request-id"]
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = list(raw.parse())
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == TEXT and len(deltas) == 5
    final = events[-1].response  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.input_tokens == INPUT_TOKENS
    row = stack.row(request_id)
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (
        200,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
    )


def test_models_name_the_endpoints_a_model_serves(responses_stack: tuple[Stack, FakeVllm]) -> None:
    stack, _ = responses_stack
    with stack.client() as sdk:
        (model,) = sdk.models.list().data
    assert "/v1/responses" in (model.model_extra or {})["endpoints"]
    assert "/v1/chat/completions" in (model.model_extra or {})["endpoints"]


def test_rerank_reaches_the_llm_service_and_answers_its_results(
    responses_stack: tuple[Stack, FakeVllm],
) -> None:
    stack, engine = responses_stack
    documents = ["a cat sat", "stock prices fell", "the cat purred on the mat"]
    with stack.client() as sdk:
        # OpenAI has no rerank endpoint: the SDK's generic post() reaches it.
        answer: Any = sdk.post(
            "/rerank",
            body={"model": "qwen", "query": "cat on mat", "documents": documents, "top_n": 2},
            cast_to=object,
        )
    assert [r["index"] for r in answer["results"]] == [2, 0]
    assert answer["results"][0]["relevance_score"] == 1.0
    # Forwarded to the engine's /v1/rerank under the engine's model name.
    assert engine.posts("/v1/rerank")[-1].json()["model"] == "Qwen/Qwen3-8B"
    row = stack.first_row("endpoint", "/v1/rerank")
    assert (row["type"], row["status"], row["prompt_tokens"]) == ("llm", 200, len(documents))
    with stack.client() as sdk:
        (model,) = sdk.models.list().data
    assert "/v1/rerank" in (model.model_extra or {})["endpoints"]
