"""Typed API errors. ``handlers.base.ApiHandler.write_error`` is the one place that shapes
them into OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid_key() -> ApiError:
    return ApiError(
        401,
        "Incorrect API key provided. Create one in the dashboard or with `inferclub keys create`.",
        "invalid_request_error",
        "invalid_api_key",
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def too_large(limit: int, what: str = "request body") -> ApiError:
    return ApiError(
        413,
        f"The {what} is larger than the limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )
