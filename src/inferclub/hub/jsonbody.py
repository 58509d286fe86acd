"""The one JSON loader of the hub's request bodies.

``json.loads`` alone turns two hostile inputs into a 500: nesting deep enough to exhaust the
recursion limit, and lone surrogates (``"\\ud800"``), which decode fine but then fail
wherever the text is encoded again (the history writer, the database). Both are refused
here, as a 400, before any handler sees the data. So are ``NaN``, ``Infinity`` and numbers
too large for a float (``1e999``): Python reads them, but they are not JSON, and written back
out (a provider's health on the dashboard) they break every strict parser, browsers' included.
Bodies of more than :data:`MAX_CONTAINERS` arrays and objects are refused too: 10 MB of
``[],[],...`` is 3.3 million lists, a second of the event loop to decode (and as much again
for the garbage collector), during which every other user's request waited. The depth,
container and surrogate checks cost nothing for ordinary bodies: each runs only when a cheap
count says it could matter."""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deepest nesting of arrays and objects a body may have.
MAX_DEPTH = 64
#: Most arrays and objects a body may hold in all: a chat of thousands of messages, or an
#: embeddings batch of 2,048 token arrays, is far below it; checking and decoding this many
#: empty arrays takes ~40 ms.
MAX_CONTAINERS = 100_000

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JSONBodyError(ValueError):
    """The body is not JSON the hub accepts; the message says why."""


def loads(raw: bytes) -> Any:
    """``raw`` decoded: strict UTF-8, nesting at most :data:`MAX_DEPTH`, at most
    :data:`MAX_CONTAINERS` arrays and objects, no lone surrogates."""
    try:
        text = raw.decode("utf-8")  # strict: encoded surrogates are refused here
    except UnicodeDecodeError as exc:
        raise JSONBodyError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    check_shape(raw)
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise JSONBodyError(str(exc)) from None
    if _SURROGATE_ESCAPE.search(raw):
        _check_surrogates(data)
    return data


def _refuse_constant(name: str) -> float:
    raise JSONBodyError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONBodyError(f"the number {text[:20]} is too large")
    return value


#: One decoder for every body: ``json.loads`` with any option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def check_shape(raw: bytes) -> None:
    """A :class:`JSONBodyError` if ``raw`` nests deeper than :data:`MAX_DEPTH` or holds more
    than :data:`MAX_CONTAINERS` arrays and objects; nothing else is checked. For JSON the hub
    only reads (an agent's answer), where :func:`loads`'s other rules are not its business."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    # Brackets inside strings do not count; what is left is counted, then peeled one level
    # at a time (the count first: peeling millions of pairs took half a second).
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if brackets.count(b"[") + brackets.count(b"{") > MAX_CONTAINERS:
        raise JSONBodyError(f"more than {MAX_CONTAINERS:,} arrays and objects")
    for _ in range(MAX_DEPTH):
        brackets, n = _EMPTY_PAIR.subn(b"", brackets)
        if not brackets:
            return
        if not n:  # valid JSON always has an innermost pair left
            raise JSONBodyError("unbalanced brackets")
    raise JSONBodyError(f"nested deeper than {MAX_DEPTH} levels")


def _check_surrogates(data: Any) -> None:
    # Escaped pairs (an emoji as "\ud83d\ude00") are fine; a lone half cannot be encoded.
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JSONBodyError("a string holds a lone surrogate (invalid Unicode)") from None
