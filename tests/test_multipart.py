"""Byte-exact edits of multipart/form-data bodies (inferclub.multipart, used by hub and agent).

Each edit is checked twice: with Tornado's own parser (an independent reading of the body),
and byte for byte (everything but the edited part is what the client sent).
"""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPFile, parse_body_arguments

from inferclub import multipart

BOUNDARY = "----inferclub-test-7a1f"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"
#: Upload bytes that look like framing: CRLFs, a delimiter-like line, a `name="model"` header.
AUDIO = (
    b"RIFF\x00\x01\r\n\r\n--" + BOUNDARY[:-1].encode() + b"\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\nnot-a-field\r\n' + bytes(range(256))
)


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


BODY = form(
    part("file", AUDIO, "clip.wav"),
    part("model", b"whisper-1"),
    part("timestamp_granularities[]", b"word"),
    part("response_format", b"verbose_json"),
    part("timestamp_granularities[]", b"segment"),
)


def parsed(body: bytes) -> tuple[dict[str, list[str]], dict[str, list[HTTPFile]]]:
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    parse_body_arguments(CTYPE, body, fields, files)
    return {k: [v.decode() for v in vs] for k, vs in fields.items()}, files


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (CTYPE, BOUNDARY.encode()),
        ('multipart/form-data; boundary="quoted b"; charset=utf-8', b"quoted b"),
        ("Multipart/Form-Data; BOUNDARY=x", b"x"),
        ("multipart/form-data", None),
        ("application/json", None),
        ("multipart/mixed; boundary=x", None),
    ],
)
def test_boundary_of(content_type: str, boundary: bytes | None) -> None:
    assert multipart.boundary_of(content_type) == boundary


def test_fields_are_read_and_file_contents_are_not_fields() -> None:
    assert multipart.get_field(BODY, CTYPE, "model") == "whisper-1"
    assert multipart.get_fields(BODY, CTYPE, "timestamp_granularities[]") == ["word", "segment"]
    assert multipart.get_field(BODY, CTYPE, "file") is None, "a file part is not a field"
    assert multipart.get_field(BODY, CTYPE, "language") is None
    assert multipart.get_field(BODY, "application/json", "model") is None
    assert multipart.get_fields(BODY, "application/json", "model") == []


def test_set_field_replaces_only_the_value_bytes() -> None:
    edited = multipart.set_field(BODY, CTYPE, "model", "Qwen/Qwen3-ASR-1.7B")
    assert edited == BODY.replace(b"\r\n\r\nwhisper-1\r\n", b"\r\n\r\nQwen/Qwen3-ASR-1.7B\r\n")
    fields, files = parsed(edited)
    assert fields["model"] == ["Qwen/Qwen3-ASR-1.7B"]
    assert files["file"][0].body == AUDIO and files["file"][0].filename == "clip.wav"


def test_set_field_appends_a_missing_field_before_the_closing_delimiter() -> None:
    edited = multipart.set_field(BODY, CTYPE, "language", "fr — ça va")
    closing = f"--{BOUNDARY}--\r\n".encode()
    assert edited.startswith(BODY[: -len(closing)]) and edited.endswith(closing)
    fields, files = parsed(edited)
    assert fields["language"] == ["fr — ça va"]
    assert fields["model"] == ["whisper-1"] and files["file"][0].body == AUDIO


def test_remove_field_drops_every_repeat_and_keeps_the_rest_byte_for_byte() -> None:
    edited = multipart.remove_field(BODY, CTYPE, "timestamp_granularities[]")
    assert edited == form(
        part("file", AUDIO, "clip.wav"),
        part("model", b"whisper-1"),
        part("response_format", b"verbose_json"),
    )
    assert multipart.remove_field(edited, CTYPE, "timestamp_granularities[]") == edited
    assert multipart.remove_field(BODY, CTYPE, "file") == BODY, "files are never removed"


def test_bodies_that_are_not_multipart_or_not_closed_are_left_alone() -> None:
    raw = b'{"model": "whisper-1"}'
    assert multipart.set_field(raw, "application/json", "model", "x") == raw
    assert multipart.remove_field(raw, "application/json", "model") == raw
    unclosed = BODY[: -len(f"--{BOUNDARY}--\r\n")]
    assert multipart.set_field(unclosed, CTYPE, "language", "en") == unclosed
    truncated = BODY[: BODY.index(b"whisper-1") + 3]
    assert multipart.get_field(truncated, CTYPE, "model") is None
