"""OpenAI's error object, once for the hub, the agent and the dashboard.

OpenAI clients expect ``{"error": {"message", "type", "param", "code"}}`` where ``code`` and
``param`` are strings or null. Handlers raise :class:`OpenAIError`; each program's base handler
renders it with :meth:`OpenAIError.body`. Engines answer errors in their own shapes: vLLM puts
the integer HTTP status in ``code`` and a class name in ``type`` (older releases send the fields
flat, next to ``"object": "error"``), whisper.cpp and native Ollama send ``{"error": "text"}``,
FastAPI servers send ``{"detail": ...}``, proxies send HTML or plain text.
:func:`normalise_error_body` turns each of them into OpenAI's shape, on the agent (engine
answers) and again on the hub (agent answers), so both give a client the same error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

#: Error types OpenAI (and the OpenAI-compatible engines that copy it) use; kept as they are.
#: Any other type (vLLM's ``BadRequestError``) becomes the type for the status.
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

#: Longest message taken from an engine's error body: an HTML error page or a stack trace
#: must not blow up a client's log line.
MAX_MESSAGE = 2000
#: An error body with more ``[`` and ``{`` than this is taken as text, not decoded: an error
#: object has a handful, and an agent's 32 MiB of ``[],[],...`` took seconds to decode.
MAX_ERROR_CONTAINERS = 10_000
#: An engine's ``code`` or ``param`` longer than this is dropped: they are identifiers, and a
#: code is kept in every history row.
MAX_CODE = 100
MAX_PARAM = 256


def error_body(
    message: str, type: str = "api_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``."""
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


class OpenAIError(Exception):
    """An error answered with ``status`` and OpenAI's error body.

    ``type`` defaults to the type for the status. ``headers`` go on the response (for example
    ``Retry-After``). The positional order (status, message, type, code, param) is the one both
    programs used before they shared this class.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or type_for_status(status)
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


# -- the hub's common errors -------------------------------------------------------------------


def invalid_key() -> OpenAIError:
    return OpenAIError(
        401,
        "Incorrect API key provided. Create one in the dashboard or with `inferclub keys create`.",
        "invalid_request_error",
        "invalid_api_key",
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", code, param)


def too_large(limit: int, what: str = "request body") -> OpenAIError:
    return OpenAIError(
        413,
        f"The {what} is larger than the limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


# -- normalising engine and agent error bodies -------------------------------------------------


def normalise_error_body(status: int, body: bytes, content_type: str = "") -> dict[str, Any]:
    """Turn whatever an engine or agent sent with an error ``status`` into OpenAI's error body.

    Never raises: invalid UTF-8 is replaced, unknown shapes keep their text as the message,
    and an empty body gets the status's reason phrase. ``content_type`` is accepted for engines
    that override :meth:`Engine.normalise_error` and pass it on; the body decides the shape.
    """
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return _from_message(status, _reason(status))
    if text.count("[") + text.count("{") > MAX_ERROR_CONTAINERS:
        # Not decoded: millions of arrays took seconds of the hub's event loop (every user's).
        return _from_message(status, text)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to decode
        return _from_message(status, text)
    if isinstance(data, dict):
        return _from_object(status, data, text)
    if isinstance(data, str) and data:
        return _from_message(status, data)
    return _from_message(status, text)


def _from_object(status: int, data: dict[str, Any], text: str) -> dict[str, Any]:
    err = data.get("error")
    if isinstance(err, dict):
        return _from_fields(status, err)
    if isinstance(err, str) and err:
        return _from_message(status, err)
    if data.get("detail"):
        return _from_detail(status, data["detail"])
    if "message" in data:
        # vLLM's old flat {"object": "error", "message", "type", "code"} and openedai-speech.
        return _from_fields(status, data)
    return _from_message(status, text)


def _from_fields(status: int, fields: dict[str, Any]) -> dict[str, Any]:
    message = _first_text(fields, ("message", "msg", "error", "detail")) or _reason(status)
    etype = fields.get("type")
    code = fields.get("code")
    return error_body(
        message[:MAX_MESSAGE],
        etype if etype in OPENAI_ERROR_TYPES else type_for_status(status),
        _param(fields.get("param")),
        # Integer codes (vLLM's HTTP status) are not OpenAI codes: derive one or leave null.
        code if isinstance(code, str) and 0 < len(code) <= MAX_CODE else _code_for(status, message),
    )


def _from_detail(status: int, detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        # Kokoro-FastAPI: {"detail": {"error": "invalid_model", "message": ..., "type": ...}}
        fields = dict(detail)
        if isinstance(detail.get("error"), str) and "code" not in detail:
            fields["code"] = detail["error"]
        return _from_fields(status, fields)
    if isinstance(detail, list):
        return _from_validation(status, [d for d in detail if isinstance(d, dict)])
    return _from_message(status, str(detail))


def _from_validation(status: int, problems: list[dict[str, Any]]) -> dict[str, Any]:
    """FastAPI validation errors: ``[{"loc": ["body", "file"], "msg": "Field required"}]``
    become ``body.file: Field required`` with param ``file`` (the first problem's field)."""
    messages = [_dotted(d.get("loc")) + ": " + str(d.get("msg", "")) for d in problems]
    loc = problems[0].get("loc") if problems else None
    param = _dotted(loc[1:]) if isinstance(loc, list) else ""
    return error_body(
        "; ".join(messages)[:MAX_MESSAGE] or _reason(status),
        type_for_status(status),
        param or None,
        None,
    )


def _from_message(status: int, message: str) -> dict[str, Any]:
    message = message[:MAX_MESSAGE]
    return error_body(message, type_for_status(status), None, _code_for(status, message))


def _first_text(fields: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = fields.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _dotted(loc: Any) -> str:
    return ".".join(str(p) for p in loc) if isinstance(loc, list) else ""


def _param(value: Any) -> str | None:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        text = str(value)  # a huge int would not even convert (Python's digit limit)
    else:
        return None
    return text if 0 < len(text) <= MAX_PARAM else None


def _code_for(status: int, message: str) -> str | None:
    if status == 404 and "model" in message.lower():
        return "model_not_found"
    return {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
