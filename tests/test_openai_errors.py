"""What each engine's error shape becomes, on the agent and on the hub alike (one normaliser)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inferclub import engines, openai_errors
from inferclub.openai_errors import MAX_MESSAGE, OpenAIError, normalise_error_body

NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def err(message: str, type: str, param: str | None = None, code: str | None = None) -> Any:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def raw(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


CASES = [
    # vLLM: class names as types and the integer status as code, nested or flat (older).
    pytest.param(
        400,
        {"error": {"message": "bad", "type": "BadRequestError", "code": 400}},
        err("bad", "invalid_request_error"),
        id="vllm-nested-int-code",
    ),
    pytest.param(
        404,
        {
            "error": {
                "message": "The model `x` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
        },
        err("The model `x` does not exist.", "invalid_request_error", None, "model_not_found"),
        id="vllm-nested-unknown-model",
    ),
    pytest.param(
        400,
        {"object": "error", "message": "bad", "type": "BadRequestError", "param": "n", "code": 400},
        err("bad", "invalid_request_error", "n"),
        id="vllm-flat-object-error",
    ),
    pytest.param(
        401,
        {"error": "Unauthorized"},
        err("Unauthorized", "authentication_error", None, "invalid_api_key"),
        id="vllm-api-key-string",
    ),
    # Ollama: OpenAI types on /v1 (kept), a string natively.
    pytest.param(
        404,
        {
            "error": {
                "message": 'model "q" not found, try pulling it first',
                "type": "not_found_error",
                "param": None,
                "code": None,
            }
        },
        err(
            'model "q" not found, try pulling it first', "not_found_error", None, "model_not_found"
        ),
        id="ollama-v1",
    ),
    pytest.param(
        404,
        {"error": "model 'q' not found"},
        err("model 'q' not found", "invalid_request_error", None, "model_not_found"),
        id="ollama-native-string",
    ),
    pytest.param(
        400,
        {"error": "no 'file' field in the request"},
        err("no 'file' field in the request", "invalid_request_error"),
        id="whisper-cpp-string",
    ),
    pytest.param(
        429,
        {"error": "too many requests"},
        err("too many requests", "rate_limit_error", None, "rate_limit_exceeded"),
        id="string-429",
    ),
    # FastAPI (speaches, Kokoro): `detail` as a validation list, a string or an object.
    pytest.param(
        422,
        {"detail": [{"type": "missing", "loc": ["body", "file"], "msg": "Field required"}]},
        err("body.file: Field required", "invalid_request_error", "file"),
        id="fastapi-detail-list",
    ),
    pytest.param(
        422,
        {
            "detail": [
                {"loc": ["body", "file"], "msg": "Field required"},
                {"loc": ["body", "temperature"], "msg": "Input should be a valid number"},
            ]
        },
        err(
            "body.file: Field required; body.temperature: Input should be a valid number",
            "invalid_request_error",
            "file",
        ),
        id="fastapi-detail-list-several",
    ),
    pytest.param(
        404,
        {"detail": "Model 'x' is not installed locally."},
        err(
            "Model 'x' is not installed locally.", "invalid_request_error", None, "model_not_found"
        ),
        id="fastapi-detail-string",
    ),
    pytest.param(
        400,
        {
            "detail": {
                "error": "invalid_model",
                "message": "Unsupported model",
                "type": "invalid_request_error",
            }
        },
        err("Unsupported model", "invalid_request_error", None, "invalid_model"),
        id="kokoro-detail-object",
    ),
    pytest.param(
        500,
        {"detail": {"error": "processing_error", "message": "boom", "type": "server_error"}},
        err("boom", "server_error", None, "processing_error"),
        id="kokoro-detail-object-500",
    ),
    # openedai-speech: flat, no wrapper.
    pytest.param(
        500,
        {"message": "boom", "code": 500, "type": "ServerError", "param": None},
        err("boom", "server_error"),
        id="openedai-flat",
    ),
    # Already OpenAI's shape (an agent's answer reaching the hub): unchanged.
    pytest.param(
        503,
        err("this agent is shutting down", "service_unavailable"),
        err("this agent is shutting down", "service_unavailable"),
        id="agent-openai-shape",
    ),
    pytest.param(
        404,
        err("no such service", "invalid_request_error", "model", "service_not_found"),
        err("no such service", "invalid_request_error", "model", "service_not_found"),
        id="openai-shape-with-param-and-code",
    ),
    # Not JSON, or JSON of another shape: the text is the message.
    pytest.param(502, NGINX_502, err(NGINX_502.strip(), "server_error"), id="html"),
    pytest.param(
        503, "Service Unavailable\n", err("Service Unavailable", "server_error"), id="text"
    ),
    pytest.param(500, '["oops"]', err('["oops"]', "server_error"), id="json-list"),
    pytest.param(
        400, '"just a string"', err("just a string", "invalid_request_error"), id="json-str"
    ),
    pytest.param(
        500, {"status": "failed"}, err('{"status": "failed"}', "server_error"), id="json-other"
    ),
    # Nothing to go on: the reason phrase.
    pytest.param(502, "", err("Bad Gateway", "server_error"), id="empty"),
    pytest.param(504, " \r\n", err("Gateway Timeout", "server_error"), id="whitespace"),
    pytest.param(599, "", err("HTTP 599", "server_error"), id="empty-unknown-status"),
    pytest.param(
        500, {"error": {}}, err("Internal Server Error", "server_error"), id="empty-error"
    ),
    # Bytes that are not UTF-8 are replaced, never an exception.
    pytest.param(500, b"caf\xe9 \xff", err("caf\ufffd \ufffd", "server_error"), id="invalid-utf8"),
    pytest.param(
        400,
        b'{"error": "caf\xe9"}',
        err("caf\ufffd", "invalid_request_error"),
        id="invalid-utf8-in-json",
    ),
]


@pytest.mark.parametrize(("status", "body", "expected"), CASES)
def test_engine_error_shapes(status: int, body: Any, expected: Any) -> None:
    assert normalise_error_body(status, raw(body), "application/json") == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("x" * 5000, id="text"),
        pytest.param({"error": "x" * 5000}, id="string"),
        pytest.param({"error": {"message": "x" * 5000, "type": "server_error"}}, id="object"),
        pytest.param({"detail": [{"loc": ["body", "f"], "msg": "x" * 5000}]}, id="detail"),
    ],
)
def test_over_long_messages_are_cut(body: Any) -> None:
    message = normalise_error_body(500, raw(body))["error"]["message"]
    assert len(message) == MAX_MESSAGE and set(message[-10:]) == {"x"}


def test_every_result_is_openai_shaped() -> None:
    """Whatever came in, code and param are strings or null and nothing else is added."""
    for case in CASES:
        status, body, _ = case.values
        error = normalise_error_body(status, raw(body))["error"]  # type: ignore[arg-type]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] in openai_errors.OPENAI_ERROR_TYPES
        assert error["code"] is None or isinstance(error["code"], str)
        assert error["param"] is None or isinstance(error["param"], str)


def test_openai_error_body_and_default_type() -> None:
    assert OpenAIError(400, "bad", code="c", param="p").body() == err(
        "bad", "invalid_request_error", "p", "c"
    )
    assert OpenAIError(401, "who?").type == "authentication_error"
    assert OpenAIError(502, "down").type == "server_error"
    assert OpenAIError(503, "busy", "service_unavailable").body() == err(
        "busy", "service_unavailable"
    )
    assert OpenAIError(429, "slow", headers={"Retry-After": "1"}).headers == {"Retry-After": "1"}


def test_hub_helpers() -> None:
    assert openai_errors.invalid_key().status == 401
    assert openai_errors.invalid_key().code == "invalid_api_key"
    assert openai_errors.bad_request("no", "model", "missing_model").body() == err(
        "no", "invalid_request_error", "model", "missing_model"
    )
    large = openai_errors.too_large(10, "image 'a.png'")
    assert (large.status, large.code) == (413, "request_too_large")
    assert "image 'a.png'" in large.message and "10 bytes" in large.message
    missing = openai_errors.model_not_found("m")
    assert (missing.status, missing.code, missing.param) == (404, "model_not_found", "model")


def test_plugin_api_reexports() -> None:
    """`from inferclub.engines import openai_error, normalise_error_body` is public API."""
    assert engines.normalise_error_body is normalise_error_body
    assert engines.openai_error("boom") == err("boom", "api_error")
    assert engines.openai_error("m", "server_error", "p", "c") == err("m", "server_error", "p", "c")
