"""Property tests: decoders never crash on hostile bytes, and valid traffic round-trips.

Allowed outcomes for any input: parsed values, or a RemoteProtocolError subclass (FrameError).
"""

from __future__ import annotations

import random
import struct
from typing import Any

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.connection._core import (
    ChannelParams,
    ConnectionCore,
    CoreConfig,
    Event,
    MessageReceived,
    RequestReceived,
)
from overlay.errors import ErrorCode, FrameError, RemoteProtocolError
from overlay.wire._frames import (
    FLAG_COMPRESSED,
    FLAG_MORE,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_frame,
    validate_header,
)
from overlay.wire._messages import (
    Disconnect,
    DisconnectReason,
    ErrorPayload,
    Ping,
    Pong,
    decode_control,
    decode_error,
    encode_control,
    encode_error,
)

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100)
MAX_PAYLOAD = 256
CHANNELS = [
    ChannelParams(1, priority=1, max_message_size=2000, max_concurrent_inbound=2),
    ChannelParams(2, max_message_size=600),
]
CONFIG = CoreConfig(max_frame_payload=MAX_PAYLOAD, ping_interval=1.0, idle_timeout=2.0)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given (sorted, de-duplicated) offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def decode_pieces(pieces: list[bytes]) -> tuple[list[Frame], bool]:
    decoder = FrameDecoder(MAX_PAYLOAD, compression=True)
    frames: list[Frame] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            frames.extend(decoder)
    except FrameError:
        return frames, True
    return frames, False


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def drain_pieces(pieces: list[bytes]) -> tuple[list[Frame], bool]:
    """Like decode_pieces, through the batch path ``drain_raw``."""
    decoder = FrameDecoder(MAX_PAYLOAD, compression=True)
    frames: list[Frame] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            while raw := decoder.drain_raw():
                frames.extend(
                    Frame(FrameKind(r[0]), r[1], r[2], r[3], bytes(r[4])) for r in raw
                )
    except FrameError:
        return frames, True
    return frames, False


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """Frames that are mostly well-formed (so deep states are reached), sometimes hostile."""
    hostile = draw(st.integers(0, 9)) == 0
    if hostile:
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 255]))
        flags = draw(st.sampled_from([0, FLAG_MORE, FLAG_COMPRESSED, 3, 4, 0x80]))
        channel = draw(st.sampled_from([0, 1, 2, 3]))
        rid = draw(st.sampled_from([0, 1, 2, 0xFFFFFFFF]))
    else:
        kind = draw(st.sampled_from([1, 1, 2, 2, 3, 4, 5, 6]))
        flags = draw(st.sampled_from([0, 0, 0, FLAG_MORE, FLAG_COMPRESSED]))
        channel = draw(st.sampled_from([1, 1, 2, 3]))  # 3 is a channel the core doesn't have
        rid = 0 if kind == 1 else draw(st.sampled_from([1, 2, 3]))
        if kind in (5, 6):
            flags = 0
        if kind == 6:
            channel, rid = 0, 0
    if kind == 6:
        payload = draw(
            st.one_of(
                st.builds(lambda n: encode_control(Ping(n)), st.integers(0, 2**64 - 1)),
                st.builds(lambda n: encode_control(Pong(n)), st.integers(0, 5)),
                st.builds(lambda r: encode_control(Disconnect(r, "bye")),
                          st.sampled_from(list(DisconnectReason))),
                st.binary(max_size=20),
            )
        )
    elif kind == 4:
        payload = draw(
            st.one_of(
                st.builds(lambda c: encode_error(c, "e"), st.sampled_from(list(ErrorCode))),
                st.binary(max_size=20),
            )
        )
    elif kind == 5:
        payload = b"x" if hostile and draw(st.booleans()) else b""
    elif flags & FLAG_COMPRESSED and draw(st.booleans()):
        payload = _zstd(draw(st.sampled_from([b"", b"abc" * 100, bytes(5000), bytes(100_000)])))
    else:
        payload = draw(st.binary(max_size=MAX_PAYLOAD + (2 if hostile else 0)))
    length = len(payload) + 8
    if hostile and draw(st.booleans()):
        length = draw(st.integers(0, 2**32 - 1))
    return struct.pack(">IBBHI", length, kind, flags, channel, rid) + payload


# ---------------------------------------------------------------------------------- FrameDecoder


@FAST
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=10))
def test_decoder_arbitrary_bytes_whole_vs_pieces(data: bytes, cuts: list[int]) -> None:
    whole = decode_pieces([data])
    pieces = decode_pieces(split(data, cuts))
    assert whole == pieces  # same frames and same verdict however the bytes arrive
    assert drain_pieces([data]) == drain_pieces(split(data, cuts)) == whole


@FAST
@given(frames=st.lists(hostile_frames(), max_size=12))
def test_decoder_hostile_frames_byte_by_byte(frames: list[bytes]) -> None:
    data = b"".join(frames)
    whole = decode_pieces([data])
    one_by_one = decode_pieces([data[i : i + 1] for i in range(len(data))])
    assert whole == one_by_one
    assert drain_pieces([data]) == whole
    assert drain_pieces([data[i : i + 1] for i in range(len(data))]) == whole
    for frame in whole[0]:
        validate_header(frame.kind, frame.flags, frame.channel_id, frame.request_id)
        assert len(frame.payload) <= MAX_PAYLOAD


valid_frames = st.builds(
    lambda kind, flags, ch, rid, payload: Frame(
        kind,
        0 if kind in (FrameKind.CONTROL, FrameKind.CANCEL) else flags,
        0 if kind == FrameKind.CONTROL else ch,
        0 if kind in (FrameKind.MESSAGE, FrameKind.CONTROL) else rid,
        b"" if kind == FrameKind.CANCEL else payload,
    ),
    st.sampled_from(list(FrameKind)),
    st.sampled_from([0, FLAG_MORE, FLAG_COMPRESSED, FLAG_MORE | FLAG_COMPRESSED]),
    st.integers(1, 0xFFFF),
    st.integers(1, 0xFFFFFFFF),
    st.binary(max_size=MAX_PAYLOAD),
)


@FAST
@given(frames=st.lists(valid_frames, max_size=10), cuts=st.lists(st.integers(), max_size=8))
def test_valid_frames_round_trip(frames: list[Frame], cuts: list[int]) -> None:
    data = b"".join(f.encode() for f in frames)
    assert decode_pieces(split(data, cuts)) == (frames, False)
    assert drain_pieces(split(data, cuts)) == (frames, False)
    assert b"".join(encode_frame(*dataclass_fields(f)) for f in frames) == data


def dataclass_fields(f: Frame) -> tuple[int, int, int, int, bytes]:
    return f.kind, f.flags, f.channel_id, f.request_id, f.payload


# ---------------------------------------------------------------------------------- _wire


@FAST
@given(data=st.binary(max_size=100))
def test_wire_decoders_total(data: bytes) -> None:
    for decode in (decode_error, decode_control):
        try:
            value = decode(data)
        except FrameError:
            continue
        assert isinstance(value, ErrorPayload | Ping | Pong | Disconnect)


@settings(deadline=None, max_examples=50)
@given(code=st.sampled_from(list(ErrorCode)), text=st.text(max_size=1100))
def test_error_payload_round_trip(code: ErrorCode, text: str) -> None:
    decoded = decode_error(encode_error(code, text))
    assert decoded.code == code
    assert text.encode().startswith(decoded.message.encode())
    assert len(decoded.message.encode()) <= 1024


# ---------------------------------------------------------------------------------- core


def feed_core(pieces: list[bytes], *, compression: bool) -> tuple[list[Event], bool]:
    core = ConnectionCore(CONFIG, CHANNELS, now=0.0, compression=compression)
    for channel in (1, 1, 2):  # outbound request ids 1, 2, 3: responses to them are expected
        core.send_request(channel, b"q")
    core.data_to_send(0.0)
    events: list[Event] = []
    failed = False
    now = 0.0
    for piece in pieces:
        now += 0.5
        try:
            core.receive_data(piece, now)
        except RemoteProtocolError:
            failed = True
            break
        finally:
            events.extend(core.events())
        core.handle_timer(now)
        events.extend(core.events())
        core.data_to_send(now)  # the replies (pongs, auto-errors) must encode fine
    # The application answers at the end (answering earlier would change what is a duplicate).
    for event in events:
        if isinstance(event, RequestReceived):
            core.send_response(event.channel_id, event.request_id, b"ok")
    core.data_to_send(now)
    core.statistics()
    return events, failed


@FAST
@given(
    frames=st.lists(hostile_frames(), max_size=12),
    cuts=st.lists(st.integers(), max_size=6),
    compression=st.booleans(),
)
def test_core_hostile_frames_whole_and_split(
    frames: list[bytes], cuts: list[int], compression: bool
) -> None:
    data = b"".join(frames)
    whole = feed_core([data], compression=compression)
    pieces = feed_core(split(data, cuts), compression=compression)
    assert [e for e in whole[0] if not _timing(e)] == [e for e in pieces[0] if not _timing(e)]
    assert whole[1] == pieces[1]


def _timing(event: Event) -> bool:
    return type(event).__name__ in ("IdleTimeout", "LatencyMeasured")


@FAST
@given(data=st.binary(max_size=400), compression=st.booleans())
def test_core_arbitrary_bytes_byte_by_byte(data: bytes, compression: bool) -> None:
    feed_core([data], compression=compression)
    feed_core([data[i : i + 1] for i in range(len(data))], compression=compression)


@FAST
@given(
    messages=st.lists(
        st.tuples(st.sampled_from([1, 2]), st.binary(max_size=600) | st.just(b"a" * 1500)),
        max_size=12,
    ),
    compression=st.booleans(),
    cuts=st.lists(st.integers(), max_size=8),
)
def test_core_round_trip_messages(
    messages: list[tuple[int, bytes]], compression: bool, cuts: list[int]
) -> None:
    a = ConnectionCore(CONFIG, CHANNELS, now=0.0, compression=compression)
    b = ConnectionCore(CONFIG, CHANNELS, now=0.0, compression=compression)
    expected: dict[int, list[bytes]] = {1: [], 2: []}
    for channel, payload in messages:
        payload = payload[: 600 if channel == 2 else 2000]
        if not a.has_space(channel):
            continue
        a.send_message(channel, payload)
        expected[channel].append(payload)
    wire = b""
    while data := a.data_to_send(0.0):
        wire += data
    for piece in split(wire, cuts):
        b.receive_data(piece, 0.0)
    got: dict[int, list[bytes]] = {1: [], 2: []}
    for event in b.events():
        assert isinstance(event, MessageReceived)
        got[event.channel_id].append(event.payload)
    assert got == expected


# --------------------------------------------------- decoder: piece types and held bytes


def _frames(draw_payloads: list[tuple[bool, bytes]]) -> bytes:
    out = []
    for i, (more, payload) in enumerate(draw_payloads):
        out.append(encode_frame(1, FLAG_MORE if more else 0, 1 + i % 3, 0, payload))
    return b"".join(out)


def _reference(data: bytes) -> tuple[list[tuple[Any, ...]], bool]:
    decoder = FrameDecoder(1000)
    out: list[tuple[Any, ...]] = []
    try:
        decoder.feed(bytearray(data))
        while (raw := decoder.next_raw()) is not None:
            out.append(raw)
    except FrameError:
        return out, True
    return out, False


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=8),
    junk=st.binary(max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoder_mixed_piece_types_and_calls_match_the_copying_decoder(
    frames: list[tuple[bool, bytes]], junk: bytes, cuts: list[int], seed: int
) -> None:
    """bytes / bytearray / memoryview pieces, next_raw and drain_raw interleaved, pieces mutated
    after feeding: same frames, same verdict, ``buffered`` exact, and no view aliases a buffer
    the caller may reuse."""
    rng = random.Random(seed)
    data = _frames(frames) + junk
    expected, expected_error = _reference(data)
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    decoder = FrameDecoder(1000)
    got: list[tuple[Any, ...]] = []
    fed = consumed = 0
    error = False
    reused = bytearray()
    try:
        for start, end in zip(points, points[1:], strict=False):
            piece = data[start:end]
            kind = rng.randrange(3)
            if kind == 0:
                decoder.feed(piece)
            elif kind == 1:
                reused[:] = piece
                decoder.feed(reused)
            else:
                decoder.feed(memoryview(bytearray(piece)))
            reused[:] = b"\xff" * len(reused)  # the caller reuses its receive buffer
            fed += len(piece)
            if rng.randrange(2):
                while (raw := decoder.next_raw()) is not None:
                    got.append(raw)
                    consumed += 12 + len(raw[4])
            else:
                while batch := decoder.drain_raw():
                    got.extend(batch)
                    consumed += sum(12 + len(r[4]) for r in batch)
            assert decoder.buffered == fed - consumed
    except FrameError:
        error = True
    if not error:
        try:
            while (raw := decoder.next_raw()) is not None:
                got.append(raw)
        except FrameError:
            error = True
    assert [(*r[:4], bytes(r[4])) for r in got] == expected
    assert error == expected_error
