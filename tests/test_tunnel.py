"""The tunnel's frame codec and flow-control windows: pure, no sockets."""

from __future__ import annotations

import asyncio
import struct

import pytest

from inferclub import tunnel
from inferclub.tunnel import FrameType, ProtocolError, ReceiveWindow, SendWindow


def test_frames_round_trip() -> None:
    for ftype in FrameType:
        frame = tunnel.decode(tunnel.encode(ftype, 7, b"payload"))
        assert (frame.type, frame.stream, frame.payload) == (ftype, 7, b"payload")
    head = tunnel.decode(tunnel.encode_json(FrameType.OPEN, 3, {"method": "POST"}))
    assert head.json() == {"method": "POST"}
    assert tunnel.decode(tunnel.encode_window(9, 4096)).credit() == 4096


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "shorter than its header"),
        (b"\x02\x00\x00", "shorter than its header"),
        (struct.pack("!BI", 99, 1), "unknown frame type 99"),
        (struct.pack("!BI", 2, 0), "stream id 0"),
        (struct.pack("!BI", 2, 1) + b"x" * tunnel.MAX_FRAME, "over the"),
    ],
)
def test_malformed_frames_are_protocol_errors(message: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        tunnel.decode(message)


def test_bad_payloads_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        tunnel.decode(tunnel.encode(FrameType.OPEN, 1, b"{nope")).json()
    with pytest.raises(ProtocolError, match="not a JSON object"):
        tunnel.decode(tunnel.encode(FrameType.RESPONSE, 1, b"[1]")).json()
    with pytest.raises(ProtocolError, match="4-byte credit"):
        tunnel.decode(tunnel.encode(FrameType.WINDOW, 1, b"\x01")).credit()
    with pytest.raises(ProtocolError, match="grants nothing"):
        tunnel.decode(tunnel.encode_window(1, 0)).credit()


def test_an_oversized_frame_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="over the limit"):
        tunnel.encode(FrameType.DATA, 1, b"x" * (tunnel.MAX_DATA + 100))


def test_receive_window_refuses_an_overrun_and_grants_in_batches() -> None:
    window = ReceiveWindow(1000)
    window.received(600)
    assert window.consumed(400) == 0  # under half a window: no frame yet
    assert window.consumed(200) == 600
    window.received(1000)  # 400 left + 600 granted
    with pytest.raises(ProtocolError, match="overruns the window"):
        window.received(1)


def test_send_window_waits_for_credit() -> None:
    async def scenario() -> list[int]:
        window = SendWindow(100)
        seen = [await window.wait()]
        window.spend(100)
        waiting = asyncio.ensure_future(window.wait())
        await asyncio.sleep(0)
        assert not waiting.done()  # no credit: the sender waits
        window.grant(30)
        seen.append(await waiting)
        window.spend(30)
        closed = asyncio.ensure_future(window.wait())
        await asyncio.sleep(0)
        window.close()
        seen.append(await closed)
        return seen

    assert asyncio.run(scenario()) == [100, 30, 0]


def test_send_window_peak_is_what_was_sent_and_not_granted_back() -> None:
    window = SendWindow(100)
    window.spend(60)
    window.grant(60)
    window.spend(100)
    assert window.peak == 100
    with pytest.raises(ValueError, match="past the window"):
        window.spend(1)


def test_send_window_refuses_to_grow_without_bound() -> None:
    window = SendWindow(0)
    with pytest.raises(ProtocolError, match="window grown past"):
        window.grant(tunnel.MAX_WINDOW + 1)


def test_text_messages_are_typed_json() -> None:
    assert tunnel.text_message("goodbye") == '{"type":"goodbye"}'
