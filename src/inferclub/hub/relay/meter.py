"""The request meter: the one owner of a request's history row.

A proxy handler creates one meter per request and tells it what happens (routed, first byte,
bytes sent, usage, failed, cancelled by the client, cut by the hub); the relay does the same
while it relays. Nothing else writes the row's fields, so the rules of what a row says live
here:

- The first ending wins. A stream that failed and whose client then left stays failed; a
  request the hub cut at shutdown stays cut when its connection closes a moment later.
- A failure after the first byte still records the failure's 5xx status, although the client
  saw ``200`` headers: the history tells how the request ended, not how it began.
- ``cancelled`` is only ever set for a client that left. A cut by the hub at shutdown is
  recorded as ``503`` with code ``server_shutting_down``.
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from typing import Any

from inferclub.hub.liveness import is_provisional
from inferclub.hub.store import RequestRecord

#: The status of a request whose client left before the answer began (nginx's convention).
CLIENT_CLOSED = 499
#: How a request cut by the hub's shutdown deadline is recorded.
SERVER_CUT_STATUS = 503
SERVER_CUT_CODE = "server_shutting_down"

#: Error types and codes come from the agent; a history row keeps at most this much of each.
MAX_ERROR_FIELD = 100
#: The largest count a history row takes (the store's columns are 64-bit; a larger number
#: from an agent made the store refuse the whole row).
MAX_COUNT = 2**53

_TOKEN_FIELDS = (
    ("prompt_tokens", "prompt_tokens"),
    ("input_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("output_tokens", "completion_tokens"),
)


def new_request_id() -> str:
    """``req_`` and 24 random hex digits."""
    return "req_" + secrets.token_hex(12)


class Outcome(enum.Enum):
    """How a request ended."""

    OK = "ok"
    FAILED = "failed"
    CANCELLED_BY_CLIENT = "cancelled_by_client"
    CUT_BY_SERVER = "cut_by_server"


class RequestMeter:
    """Measures one proxied request; :meth:`finished` hands its row to the history writer.

    Created when the request starts: its id (``req_`` + 24 hex digits, new unless the
    handler gives the one it already sent in ``X-Request-Id``), start time and the clock for
    time to first byte and duration are taken here.
    """

    def __init__(
        self,
        *,
        user_id: int,
        key_id: int | None,
        endpoint: str,
        type: str,
        bytes_in: int,
        id: str = "",
    ) -> None:
        self._row = RequestRecord(
            id=id or new_request_id(),
            user_id=user_id,
            key_id=key_id,
            endpoint=endpoint,
            started_at=time.time(),
            type=type,
            bytes_in=bytes_in,
        )
        # perf_counter: uvloop's loop.time() ticks in whole milliseconds.
        self._t0 = time.perf_counter()
        self._outcome: Outcome | None = None

    @property
    def id(self) -> str:
        return self._row.id

    @property
    def type(self) -> str | None:
        return self._row.type

    @property
    def outcome(self) -> Outcome | None:
        """How the request ended, once it did (``None`` while it runs)."""
        return self._outcome

    # -- what the handler learns -------------------------------------------------------

    def asked_for(self, model: str) -> None:
        self._row.model = model

    def routed(self, provider_id: int, service: str) -> None:
        # A provisional id (the provider is not in the store yet) would name nothing later.
        self._row.provider_id = None if is_provisional(provider_id) else provider_id
        self._row.service = service

    def served_as(self, model: str) -> None:
        """The model that serves: ``model`` asked for, or its fallback."""
        self._row.served_model = model

    def attempted(self, attempts: int) -> None:
        """The request goes to its ``attempts``-th provider (failover); the row keeps the
        last one routed to, which is the one that served."""
        self._row.attempts = attempts

    # -- what the relay sees -----------------------------------------------------------

    def first_byte(self) -> None:
        """The upstream's response headers arrived."""
        self._row.ttfb_ms = (time.perf_counter() - self._t0) * 1000

    def answered(self, status: int) -> None:
        """The status the client is sent; a failure recorded before or after takes precedence."""
        if self._outcome is None:
            self._row.status = status

    def sent(self, size: int) -> None:
        self._row.bytes_out += size

    def usage(self, obj: Any) -> bool:
        """Take token counts, audio seconds or an image count from one parsed response object.

        True when ``obj`` carries a ``usage`` object (the caller may then drop a usage-only
        stream chunk the client did not ask for).
        """
        if not isinstance(obj, dict):
            return False
        row = self._row
        if row.type == "image" and isinstance(obj.get("data"), list):
            row.images = len(obj["data"])
        duration = obj.get("duration")
        if row.type == "stt" and duration is not None:
            # vLLM sends it as a string.
            row.audio_seconds = _seconds(duration, row.audio_seconds)
        usage = obj.get("usage")
        response = obj.get("response")
        if usage is None and isinstance(response, dict):
            usage = response.get("usage")  # a Responses stream's response.completed event
        if not isinstance(usage, dict):
            return False
        for field, attr in _TOKEN_FIELDS:
            value = usage.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
                setattr(row, attr, value)
        seconds = usage.get("seconds")
        if usage.get("type") == "duration" and isinstance(seconds, (int, float)):
            row.audio_seconds = _seconds(seconds, row.audio_seconds)
        return True

    # -- endings: the first one wins ---------------------------------------------------

    def failed(self, status: int, error_type: str, code: str | None = None) -> None:
        """The request failed: before the first byte, or as a stream the upstream broke."""
        if self._end(Outcome.FAILED):
            row = self._row
            row.status = status
            row.error_type = error_type[:MAX_ERROR_FIELD]
            row.error_code = None if code is None else code[:MAX_ERROR_FIELD]

    def cancelled_by_client(self) -> None:
        """The client disconnected. A stream that had begun keeps its status."""
        if self._end(Outcome.CANCELLED_BY_CLIENT):
            self._row.cancelled = True
            self._row.status = self._row.status or CLIENT_CLOSED

    def cut_by_server(self) -> None:
        """The hub closed the connection: its shutdown deadline passed mid-request."""
        if self._end(Outcome.CUT_BY_SERVER):
            row = self._row
            row.status, row.error_type = SERVER_CUT_STATUS, "server_error"
            row.error_code = SERVER_CUT_CODE

    def finished(self) -> RequestRecord:
        """The row, complete: call once, when the handler is done with the request."""
        row = self._row
        row.duration_ms = (time.perf_counter() - self._t0) * 1000
        if self._outcome is None:
            if row.status:
                self._outcome = Outcome.OK
            else:
                # Nothing answered and nothing failed on record: the hub itself broke.
                self.failed(500, "server_error")
        return row

    def _end(self, outcome: Outcome) -> bool:
        if self._outcome is not None:
            return False
        self._outcome = outcome
        return True


def _seconds(value: Any, default: float | None) -> float | None:
    """``value`` as a number of seconds, or ``default`` when it is none (an agent's ``NaN``,
    ``1e999`` or a 5,000-digit integer must not reach the store, or the row is refused)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return seconds if math.isfinite(seconds) and seconds >= 0 else default
