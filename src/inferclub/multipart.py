"""Surgical edits of `multipart/form-data` bodies (used by the hub and the agent).

Uploads are forwarded byte for byte; when an engine must see a different `model` (an alias) or
an extra field, only that part changes. Parts are found by RFC 7578 framing: each part starts
with `--boundary CRLF`, has headers up to a blank line, and its content ends before
`CRLF --boundary`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?\bname="([^"]*)"')
_FILENAME = re.compile(rb"(?i)content-disposition:[^\r\n]*?\bfilename")


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` content type, or None."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    m = re.search(r'(?i)boundary=("?)([^";]+)\1', content_type)
    return m.group(2).encode("latin-1") if m else None


def _field_spans(body: bytes, boundary: bytes, name: str) -> Iterator[tuple[int, int]]:
    """Start and end offsets of the content of each non-file part called `name`."""
    delim = b"--" + boundary
    pos = body.find(delim)
    while pos != -1:
        head_start = pos + len(delim)
        if body[head_start : head_start + 2] == b"--":
            return  # closing delimiter
        head_end = body.find(b"\r\n\r\n", head_start)
        if head_end == -1:
            return
        headers = body[head_start:head_end]
        nxt = body.find(b"\r\n" + delim, head_end + 4)
        if nxt == -1:
            return
        m = _NAME.search(headers)
        if m and m.group(1).decode("utf-8", "replace") == name and not _FILENAME.search(headers):
            yield head_end + 4, nxt
        pos = nxt + 2


def _field_span(body: bytes, boundary: bytes, name: str) -> tuple[int, int] | None:
    """Start and end offsets of the content of the first non-file part called `name`."""
    return next(_field_spans(body, boundary, name), None)


def get_field(body: bytes, content_type: str, name: str) -> str | None:
    """The text value of form field `name`, or None when absent or not multipart."""
    boundary = boundary_of(content_type)
    span = _field_span(body, boundary, name) if boundary else None
    return body[span[0] : span[1]].decode("utf-8", "replace") if span else None


def get_fields(body: bytes, content_type: str, name: str) -> list[str]:
    """The text values of every form field `name` (list fields such as
    `timestamp_granularities[]` repeat), in order; empty when absent or not multipart."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return []
    return [body[a:b].decode("utf-8", "replace") for a, b in _field_spans(body, boundary, name)]


def set_field(body: bytes, content_type: str, name: str, value: str) -> bytes:
    """`body` with field `name` set to `value`; every other byte is kept.

    The field is replaced in place when present, else appended as a new part before the
    closing delimiter. Bodies that are not multipart are returned unchanged.
    """
    boundary = boundary_of(content_type)
    if boundary is None:
        return body
    span = _field_span(body, boundary, name)
    encoded = value.encode("utf-8")
    if span:
        return body[: span[0]] + encoded + body[span[1] :]
    closing = body.rfind(b"--" + boundary + b"--")
    if closing == -1:
        return body
    part = (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="'
        + name.encode("utf-8")
        + b'"\r\n\r\n'
        + encoded
        + b"\r\n"
    )
    return body[:closing] + part + body[closing:]


def remove_field(body: bytes, content_type: str, name: str) -> bytes:
    """`body` without any non-file part called `name`; every other byte is kept."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return body
    while (span := _field_span(body, boundary, name)) is not None:
        # The part runs from its opening delimiter to the CRLF before the next one.
        start = body.rfind(b"--" + boundary, 0, span[0])
        body = body[:start] + body[span[1] + 2 :]
    return body
