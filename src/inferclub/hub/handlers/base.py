"""Base handler of the ``/v1`` API: bearer-key auth, body limits, OpenAI-shaped errors."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import tornado.web

from inferclub import openai_errors
from inferclub.hub.store import KeyOwner
from inferclub.openai_errors import OpenAIError

if TYPE_CHECKING:
    from inferclub.hub.app import Hub

log = logging.getLogger("inferclub.api")

#: An oversize body up to this many times its limit is drained before the 413 is sent.
DISCARD_FACTOR = 4


def finish_json(handler: tornado.web.RequestHandler, data: Any, status: int = 200) -> None:
    """Finish ``handler``'s response with ``data`` as compact JSON."""
    handler.set_status(status)
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps(data, separators=(",", ":")))


@tornado.web.stream_request_body
class ApiHandler(tornado.web.RequestHandler):
    """Authenticates with ``Authorization: Bearer <key>`` only: cookies are ignored and XSRF
    does not apply. The body is streamed in so an oversize upload is refused with a 413 from
    its ``Content-Length`` before it is read, and counted while it arrives otherwise."""

    #: Largest body this endpoint accepts; ``None`` means the JSON limit.
    body_limit_setting = "max_json_body"

    owner: KeyOwner

    @property
    def hub(self) -> Hub:
        return self.application.settings["hub"]  # type: ignore[no-any-return]

    def check_xsrf_cookie(self) -> None:
        """Bearer-authenticated API: no cookies, so no XSRF."""

    def body_limit(self) -> int:
        return int(getattr(self.hub.settings, self.body_limit_setting))

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._limit = self.body_limit()
        self.owner = await self.authenticate()
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._limit:
            # The agent is never contacted. A body up to a few times the limit is read and
            # dropped, so the client gets its 413 on a healthy connection instead of a reset
            # while it is still sending; anything larger is refused before it is read.
            if int(length) > DISCARD_FACTOR * self._limit:
                raise openai_errors.too_large(self._limit)
            self._too_large = True
            self.request.connection.set_max_body_size(int(length))  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self._finished or self._too_large:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if self._too_large:
            raise openai_errors.too_large(self._limit)
        return b"".join(self._chunks)

    async def authenticate(self) -> KeyOwner:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(
                401,
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                "invalid_request_error",
                "missing_api_key",
            )
        owner = await self.hub.keys.authenticate(token.strip())
        if owner is None:
            raise openai_errors.invalid_key()
        return owner

    def json_body(self) -> dict[str, Any]:
        raw = self.body
        if not raw:
            raise openai_errors.bad_request("The request body is empty; expected a JSON object.")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise openai_errors.bad_request(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise openai_errors.bad_request("The request body must be a JSON object.")
        return data

    def write_json(self, data: Any, status: int = 200) -> None:
        finish_json(self, data, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The one place the hub's API shapes an error: OpenAI's error object."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, OpenAIError):
            err = exc
        elif isinstance(exc, tornado.web.HTTPError):
            err = OpenAIError(
                exc.status_code,
                exc.log_message or self._reason,
                # Not type_for_status: Tornado's 401/403 (XSRF) have always been request errors.
                "invalid_request_error" if exc.status_code < 500 else "server_error",
            )
        else:
            err = OpenAIError(500, "The hub failed to handle this request.", "server_error")
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps(err.body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, OpenAIError):
            level = logging.WARNING if value.status >= 500 else logging.DEBUG
            log.log(
                level,
                "%s %s -> %d %s",
                self.request.method,
                self.request.path,
                value.status,
                value.message,
            )
        else:
            super().log_exception(typ, value, tb)


class NotFoundHandler(ApiHandler):
    """Unknown ``/v1`` paths get an OpenAI-shaped 404, after authentication."""

    async def prepare(self) -> None:
        await super().prepare()
        raise OpenAIError(
            404, f"Unknown endpoint {self.request.path}.", "invalid_request_error", "unknown_url"
        )
