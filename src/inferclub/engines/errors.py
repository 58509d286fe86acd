"""OpenAI-shaped error bodies, and normalisation of the shapes real engines send instead.

OpenAI clients expect `{"error": {"message", "type", "param", "code"}}` where `code` and `param`
are strings or null. Engines differ: vLLM puts the integer HTTP status in `code` (and older
releases send the fields flat, next to `"object": "error"`), whisper.cpp and native Ollama send
`{"error": "text"}`, FastAPI servers send `{"detail": ...}`, some send plain text.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

#: Error types OpenAI (and the OpenAI-compatible engines that copy it) use; kept as they are.
OPENAI_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "insufficient_quota",
        "server_error",
        "api_error",
        "timeout_error",
        "service_unavailable",
    }
)

_MAX_MESSAGE = 2000


def openai_error(
    message: str, type: str = "api_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Build an OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def type_for_status(status: int) -> str:
    """The OpenAI error type that goes with an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _code_for(status: int, message: str) -> str | None:
    if status == 404 and "model" in message.lower():
        return "model_not_found"
    return {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)


def _str_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _from_fields(status: int, fields: dict[str, Any]) -> dict[str, Any]:
    message = str(fields.get("message") or fields.get("msg") or _reason(status))[:_MAX_MESSAGE]
    etype = fields.get("type")
    code = fields.get("code")
    return openai_error(
        message,
        etype if etype in OPENAI_ERROR_TYPES else type_for_status(status),
        _str_or_none(fields.get("param")),
        code if isinstance(code, str) and code else _code_for(status, message),
    )


def _from_detail(status: int, detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        # Kokoro-FastAPI: {"detail": {"error": "invalid_model", "message": ..., "type": ...}}
        fields = dict(detail)
        if isinstance(detail.get("error"), str) and "code" not in detail:
            fields["code"] = detail["error"]
        return _from_fields(status, fields)
    if isinstance(detail, list) and detail:
        # FastAPI validation errors: [{"loc": ["body", "file"], "msg": "Field required", ...}]
        first = detail[0] if isinstance(detail[0], dict) else {}
        loc = first.get("loc") or []
        param = ".".join(str(p) for p in loc[1:]) if isinstance(loc, list) and loc else None
        messages = [
            ".".join(str(p) for p in d.get("loc", [])) + ": " + str(d.get("msg", ""))
            for d in detail
            if isinstance(d, dict)
        ]
        return openai_error(
            "; ".join(messages)[:_MAX_MESSAGE] or _reason(status),
            type_for_status(status),
            param or None,
            None,
        )
    return openai_error(
        str(detail)[:_MAX_MESSAGE], type_for_status(status), None, _code_for(status, str(detail))
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def normalise_error_body(status: int, body: bytes, content_type: str = "") -> dict[str, Any]:
    """Turn whatever an engine sent with an error status into an OpenAI error body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return _from_fields(status, err)
        if isinstance(err, str) and err:
            return openai_error(
                err[:_MAX_MESSAGE], type_for_status(status), None, _code_for(status, err)
            )
        if "detail" in data:
            return _from_detail(status, data["detail"])
        if "message" in data:
            return _from_fields(status, data)
    message = text[:_MAX_MESSAGE] if text and data is None else _reason(status)
    return openai_error(message, type_for_status(status), None, _code_for(status, message))
