"""Frame header codec, FrameDecoder validation rules, MessageAssembler, and the _wire codecs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import overlay.wire._nodeinfo
from overlay.errors import ErrorCode, FrameError
from overlay.wire._frames import (
    DISCARDED,
    FLAG_COMPRESSED,
    FLAG_MORE,
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    FrameKind,
    MessageAssembler,
    encode_frame,
)
from overlay.wire._messages import (
    MAX_DISCONNECT_MESSAGE_BYTES,
    Disconnect,
    DisconnectReason,
    ErrorPayload,
    Ping,
    Pong,
    decode_control,
    decode_error,
    encode_control,
    encode_error,
    truncate_utf8,
)
from proto import overlay_pb2

MAX = 1024


def decode_all(data: bytes, *, max_payload: int = MAX, compression: bool = True) -> list[Frame]:
    d = FrameDecoder(max_payload, compression=compression)
    d.feed(data)
    return list(d)


def raw_header(length: int, kind: int, flags: int, channel: int, rid: int) -> bytes:
    return struct.pack(">IBBHI", length, kind, flags, channel, rid)


# ---------------------------------------------------------------------------------- encoding


def test_header_layout_is_exactly_as_documented() -> None:
    data = encode_frame(FrameKind.REQUEST, FLAG_MORE, 0x0102, 0x03040506, b"xyz")
    assert HEADER_SIZE == 12
    assert data == b"\x00\x00\x00\x0b" + b"\x02" + b"\x01" + b"\x01\x02" + b"\x03\x04\x05\x06xyz"


def test_frame_kinds_match_the_proto_enum() -> None:
    for kind in FrameKind:
        assert overlay_pb2.FrameKind.Value(f"FRAME_KIND_{kind.name}") == kind.value


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameKind.MESSAGE, 0, 1, 0, b"hello"),
        Frame(FrameKind.MESSAGE, FLAG_MORE | FLAG_COMPRESSED, 65535, 0, b"x" * MAX),
        Frame(FrameKind.REQUEST, 0, 7, 1, b""),
        Frame(FrameKind.RESPONSE, FLAG_MORE, 7, 0xFFFFFFFF, b"r"),
        Frame(FrameKind.ERROR, 0, 7, 9, encode_error(ErrorCode.NOT_FOUND, "nope")),
        Frame(FrameKind.CANCEL, 0, 7, 9, b""),
        Frame(FrameKind.CONTROL, 0, 0, 0, encode_control(Ping(5))),
    ],
)
def test_round_trip_whole_and_byte_by_byte(frame: Frame) -> None:
    data = frame.encode()
    assert decode_all(data) == [frame]
    d = FrameDecoder(MAX)
    got: list[Frame] = []
    for i in range(len(data)):
        d.feed(data[i : i + 1])
        got.extend(d)
    assert got == [frame]
    assert d.buffered == 0


def test_many_frames_in_one_piece_and_split_anywhere() -> None:
    frames = [Frame(FrameKind.MESSAGE, 0, c, 0, bytes([c]) * c) for c in range(1, 40)]
    data = b"".join(f.encode() for f in frames)
    assert decode_all(data) == frames
    for cut in (1, 11, 12, 13, 100, len(data) - 1):
        d = FrameDecoder(MAX)
        d.feed(data[:cut])
        first = list(d)
        d.feed(data[cut:])
        assert first + list(d) == frames


def test_next_raw_returns_plain_tuples() -> None:
    d = FrameDecoder(MAX)
    d.feed(encode_frame(FrameKind.RESPONSE, 0, 3, 4, b"ok"))
    assert d.next_raw() == (3, 0, 3, 4, b"ok")
    assert d.next_raw() is None


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (raw_header(7, 1, 0, 1, 0), "length 7 < 8"),
        (raw_header(0, 1, 0, 1, 0), "length 0 < 8"),
        (raw_header(8, 0, 0, 1, 0), "unknown frame kind 0"),
        (raw_header(8, 7, 0, 1, 0), "unknown frame kind 7"),
        (raw_header(8, 255, 0, 1, 0), "unknown frame kind"),
        (raw_header(8, 1, 0x04, 1, 0), "unknown frame flags"),
        (raw_header(8, 1, 0x80, 1, 0), "unknown frame flags"),
        (raw_header(8, 6, 0, 1, 0), "CONTROL frame on channel 1"),
        (raw_header(8, 6, FLAG_MORE, 0, 0), "CONTROL frame with flags"),
        (raw_header(8, 6, FLAG_COMPRESSED, 0, 0), "CONTROL frame with flags"),
        (raw_header(8, 6, 0, 0, 1), "CONTROL frame with a request id"),
        (raw_header(8, 1, 0, 0, 0), "on the control channel"),
        (raw_header(8, 2, 0, 0, 1), "on the control channel"),
        (raw_header(8, 1, 0, 1, 5), "MESSAGE frame with a request id"),
        (raw_header(8, 2, 0, 1, 0), "REQUEST frame with request id 0"),
        (raw_header(8, 3, 0, 1, 0), "RESPONSE frame with request id 0"),
        (raw_header(8, 4, 0, 1, 0), "ERROR frame with request id 0"),
        (raw_header(8, 5, 0, 1, 0), "CANCEL frame with request id 0"),
        (raw_header(8, 5, FLAG_MORE, 1, 1), "CANCEL frame with flags"),
        (raw_header(9, 5, 0, 1, 1), "CANCEL frame with a payload"),
    ],
)
def test_header_violations_are_rejected_before_the_body(header: bytes, match: str) -> None:
    d = FrameDecoder(MAX)
    with pytest.raises(FrameError, match=match):
        d.feed(header)  # only the 12 header bytes: no body needed to reject


def test_oversized_frame_rejected_as_soon_as_length_is_in() -> None:
    d = FrameDecoder(MAX)
    d.feed(b"\x00\x00")  # not enough to judge yet
    with pytest.raises(FrameError, match="exceeds the maximum"):
        d.feed(raw_header(8 + MAX + 1, 1, 0, 1, 0)[2:4])  # the 4 length bytes are complete
    assert d.buffered == 4  # nothing else was buffered


def test_max_size_header_alone_is_rejected() -> None:
    d = FrameDecoder(MAX)
    with pytest.raises(FrameError):
        d.feed(raw_header(0xFFFFFFFF, 1, 0, 1, 0))
    exactly_max = encode_frame(FrameKind.MESSAGE, 0, 1, 0, b"m" * MAX)
    assert decode_all(exactly_max)[0].payload == b"m" * MAX


def test_compressed_flag_requires_negotiated_compression() -> None:
    data = encode_frame(FrameKind.MESSAGE, FLAG_COMPRESSED, 1, 0, b"zz")
    with pytest.raises(FrameError, match="without compression"):
        decode_all(data, compression=False)
    assert decode_all(data, compression=True)[0].flags == FLAG_COMPRESSED


def test_decoder_stays_failed() -> None:
    d = FrameDecoder(MAX)
    with pytest.raises(FrameError) as first:
        d.feed(raw_header(8, 9, 0, 1, 0))
    with pytest.raises(FrameError) as again:
        d.feed(encode_frame(FrameKind.MESSAGE, 0, 1, 0, b"fine"))
    assert again.value is first.value
    with pytest.raises(FrameError):
        d.next_frame()


def test_valid_frames_before_a_bad_one_are_returned_first() -> None:
    good = encode_frame(FrameKind.MESSAGE, 0, 1, 0, b"good")
    d = FrameDecoder(MAX)
    d.feed(good + raw_header(8, 9, 0, 1, 0))
    assert d.next_frame() == Frame(FrameKind.MESSAGE, 0, 1, 0, b"good")
    with pytest.raises(FrameError):
        d.next_frame()


def test_drain_raw_returns_good_frames_then_raises() -> None:
    good = encode_frame(FrameKind.MESSAGE, 0, 1, 0, b"good")
    cancel = encode_frame(FrameKind.CANCEL, 0, 2, 9, b"")
    d = FrameDecoder(MAX)
    d.feed(good + cancel + raw_header(8, 1, 0x10, 1, 0))
    assert d.drain_raw() == [(1, 0, 1, 0, b"good"), (5, 0, 2, 9, b"")]
    with pytest.raises(FrameError, match="flags"):
        d.drain_raw()
    with pytest.raises(FrameError):
        d.feed(good)


def test_drain_raw_checks_a_pending_oversized_length_early() -> None:
    d = FrameDecoder(MAX)
    d.feed(encode_frame(FrameKind.MESSAGE, 0, 1, 0, b"ok") + raw_header(MAX + 9, 1, 0, 1, 0)[:4])
    assert d.drain_raw() == [(1, 0, 1, 0, b"ok")]
    with pytest.raises(FrameError, match="exceeds the maximum"):
        d.drain_raw()


def test_drain_raw_partial_then_rest() -> None:
    frame = encode_frame(FrameKind.REQUEST, FLAG_MORE, 3, 4, b"x" * 100)
    d = FrameDecoder(MAX)
    d.feed(frame[:50])
    assert d.drain_raw() == []
    d.feed(frame[50:] + frame[:12])
    assert d.drain_raw() == [(2, FLAG_MORE, 3, 4, b"x" * 100)]
    assert d.buffered == 12
    d.feed(frame[12:])
    assert d.drain_raw() == [(2, FLAG_MORE, 3, 4, b"x" * 100)]
    assert d.drain_raw() == [] and d.buffered == 0


def test_decoder_parameter_range() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(-1)


# ---------------------------------------------------------------------------------- assembler


def test_assembler_joins_chunks_per_channel_and_interleaves_channels() -> None:
    a = MessageAssembler()
    assert a.add(1, FLAG_MORE, 1, 0, b"ab", limit=100) is None
    assert a.add(2, FLAG_MORE, 2, 7, b"12", limit=100) is None
    assert a.in_progress(1) and a.in_progress(2)
    assert a.add(1, 0, 1, 0, b"cd", limit=100) == b"abcd"
    assert a.add(2, 0, 2, 7, b"3", limit=100) == b"123"
    assert not a.in_progress(1)
    assert a.add(1, 0, 1, 0, b"single", limit=100) == b"single"


@pytest.mark.parametrize(
    ("kind", "flags", "rid"),
    [(2, 0, 7), (1, 0, 0), (2, FLAG_MORE | FLAG_COMPRESSED, 7), (2, 0, 8)],
)
def test_assembler_rejects_interleaving_on_a_channel(kind: int, flags: int, rid: int) -> None:
    a = MessageAssembler()
    a.add(2, FLAG_MORE, 5, 7, b"part", limit=100)
    if (kind, flags, rid) == (2, 0, 7):
        assert a.add(kind, flags, 5, rid, b"end", limit=100) == b"partend"
        return
    with pytest.raises(FrameError, match="interleaved"):
        a.add(kind, flags, 5, rid, b"x", limit=100)


def test_assembler_size_limit_checked_before_appending() -> None:
    a = MessageAssembler()
    with pytest.raises(FrameError, match="exceeds 10"):
        a.add(1, 0, 1, 0, b"x" * 11, limit=10)
    a.add(1, FLAG_MORE, 1, 0, b"x" * 6, limit=10)
    with pytest.raises(FrameError, match="exceeds 10"):
        a.add(1, FLAG_MORE, 1, 0, b"x" * 5, limit=10)


def test_assembler_discard_mode_counts_but_does_not_buffer() -> None:
    a = MessageAssembler(max_discarding=2)
    assert a.add(1, 0, 9, 0, b"x", limit=10, keep=False) is DISCARDED
    assert a.add(1, FLAG_MORE, 9, 0, b"x" * 5, limit=10, keep=False) is None
    with pytest.raises(FrameError):
        a.add(1, FLAG_MORE, 9, 0, b"x" * 6, limit=10)
    b = MessageAssembler(max_discarding=2)
    b.add(1, FLAG_MORE, 1, 0, b"x", limit=10, keep=False)
    b.add(1, FLAG_MORE, 2, 0, b"x", limit=10, keep=False)
    with pytest.raises(FrameError, match="too many"):
        b.add(1, FLAG_MORE, 3, 0, b"x", limit=10, keep=False)
    assert b.add(1, 0, 1, 0, b"y", limit=10) is DISCARDED  # frees a slot
    assert b.add(1, FLAG_MORE, 3, 0, b"x", limit=10, keep=False) is None


def test_assembler_abort() -> None:
    a = MessageAssembler()
    a.add(2, FLAG_MORE, 1, 5, b"x", limit=10)
    assert not a.abort(1, 2, 6)
    assert not a.abort(1, 1, 5)
    assert a.abort(1, 2, 5)
    assert a.add(1, 0, 1, 0, b"fresh", limit=10) == b"fresh"


# ---------------------------------------------------------------------------------- _wire


def test_error_payload_round_trip_and_unknown_code() -> None:
    for code in ErrorCode:
        assert decode_error(encode_error(code, "why")) == ErrorPayload(code, "why")
        assert overlay_pb2.ErrorCode.Value(f"ERROR_CODE_{code.name}") == code.value
    future = overlay_pb2.ErrorResponse(code=77, message="new")  # type: ignore[arg-type]
    assert decode_error(future.SerializeToString()) == ErrorPayload(ErrorCode.UNKNOWN, "new")


def test_error_message_truncated_at_char_boundary() -> None:
    payload = encode_error(ErrorCode.INTERNAL, "é" * 100, max_message_bytes=11)
    decoded = decode_error(payload)
    assert decoded.message == "é" * 5
    assert len(payload) <= 11 + 5
    assert len(encode_error(ErrorCode.INTERNAL, "text", max_message_bytes=-3)) == 2
    assert truncate_utf8("abc", 10) == b"abc"
    assert truncate_utf8("aé", 2) == b"a"


@pytest.mark.parametrize(
    "msg",
    [
        Ping(0),
        Ping(2**64 - 1),
        Pong(12345),
        Disconnect(DisconnectReason.SHUTDOWN, "bye"),
        Disconnect(DisconnectReason.UNSPECIFIED, ""),
        Disconnect(DisconnectReason.SELF, "the last known value"),
    ],
)
def test_control_round_trip(msg: Ping | Pong | Disconnect) -> None:
    assert decode_control(encode_control(msg)) == msg


def test_disconnect_message_is_bounded() -> None:
    payload = encode_control(Disconnect(DisconnectReason.PROTOCOL_VIOLATION, "x" * 10_000))
    msg = decode_control(payload)
    assert isinstance(msg, Disconnect)
    assert len(msg.message) == MAX_DISCONNECT_MESSAGE_BYTES
    assert len(payload) <= MAX_DISCONNECT_MESSAGE_BYTES + 16
    small = encode_control(Disconnect(DisconnectReason.BANNED, "y" * 100), max_message_bytes=10)
    assert len(small) <= 10 + 16
    assert decode_control(small) == Disconnect(DisconnectReason.BANNED, "y" * 10)


@pytest.mark.parametrize("raw", [13, 999, -1, -(1 << 31), (1 << 31) - 1])
def test_unknown_disconnect_reasons_decode_as_unspecified(raw: int) -> None:
    """A peer may send a reason this version does not know: it is accepted, never a crash."""
    pb = overlay_pb2.Control()
    pb.disconnect.reason = raw  # type: ignore[assignment]
    pb.disconnect.message = "from the future"
    decoded = decode_control(pb.SerializeToString())
    assert decoded == Disconnect(DisconnectReason.UNSPECIFIED, "from the future")
    assert DisconnectReason.from_wire(raw) is DisconnectReason.UNSPECIFIED


def test_disconnect_reasons_match_the_proto_enum() -> None:
    known = {member.name: int(member) for member in DisconnectReason}
    wire = {
        name.removeprefix("DISCONNECT_REASON_"): int(value)
        for name, value in overlay_pb2.DisconnectReason.items()
    }
    assert known == wire
    for member in DisconnectReason:
        assert member.label == member.name.lower()
        assert DisconnectReason.from_wire(int(member)) is member


@pytest.mark.parametrize("data", [b"\xff", b"\x0a\x05", b"\x12\x02\xff\xfe", b"\x08"])
def test_malformed_error_payloads(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_error(data)


@pytest.mark.parametrize("data", [b"", b"\xff", b"\x0a\x05", b"\x1a\x02\x12\x01", b"\x20\x01"])
def test_malformed_or_empty_control_payloads(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_control(data)


def test_drain_raw_parses_fed_bytes_in_place_and_views_only_chunks() -> None:
    message = bytes(range(256)) * 40  # 10240 bytes in chunks of 4000
    chunks = [message[i : i + 4000] for i in range(0, len(message), 4000)]
    wire = b"".join(
        encode_frame(1, FLAG_MORE if i < len(chunks) - 1 else 0, 5, 0, chunk)
        for i, chunk in enumerate(chunks)
    ) + encode_frame(1, 0, 6, 0, b"whole")
    for feed_as_bytes in (True, False):
        decoder = FrameDecoder(65_507)
        cut = len(wire) - 3  # the last frame arrives in two pieces
        decoder.feed(wire[:cut] if feed_as_bytes else bytearray(wire[:cut]))
        first = decoder.drain_raw()
        assert decoder.buffered == len(encode_frame(1, 0, 6, 0, b"whole")) - 3
        decoder.feed(wire[cut:])
        frames = first + decoder.drain_raw()
        assert decoder.buffered == 0
        kinds = [type(f[4]) for f in frames]
        if feed_as_bytes:  # chunks with MORE are views of the received bytes; the rest bytes
            assert kinds == [memoryview, memoryview, bytes, bytes]
        else:
            assert kinds == [bytes] * 4
        assembler = MessageAssembler()
        whole = [
            assembler.add(k, f, c, r, p, limit=1 << 20) for k, f, c, r, p in frames
        ]
        assert whole == [None, None, message, b"whole"]
        assert all(type(w) is bytes for w in whole if w is not None)


def test_disconnect_reason_has_one_definition() -> None:
    """The wire codecs and the hello share one DisconnectReason."""
    assert overlay.wire._nodeinfo.DisconnectReason is DisconnectReason
    assert int(DisconnectReason.BANNED) == 7
    assert DisconnectReason.EVICTED.label == "evicted"
    assert DisconnectReason.from_wire(12345) is DisconnectReason.UNSPECIFIED
    assert "class DisconnectReason" not in Path(overlay.wire._nodeinfo.__file__).read_text()
