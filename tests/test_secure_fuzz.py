"""Fuzzing the secure channel's decoders: only RemoteProtocolError subclasses may come out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.errors import AuthenticationError, FrameError, HandshakeError, RemoteProtocolError
from overlay.identity import NodeKey
from overlay.transport._secure import (
    SIGNATURE_PREFIX,
    SecureHandshake,
    SecureIdentity,
    SecureStream,
    TransportReader,
    encrypt_frames,
    verify_handshake_payload,
)
from overlay.wire._noise import CipherState, KeyPair
from proto import overlay_pb2 as pb

IDENT_A = SecureIdentity(NodeKey.from_seed(b"A" * 32))
IDENT_B = SecureIdentity(NodeKey.from_seed(b"B" * 32))
KEY = bytes(range(32))

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the (sorted, de-duplicated) cut points."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, start = [], 0
    for point in [*points, len(data)]:
        out.append(data[start:point])
        start = point
    return out


def feed_handshake(handshake: SecureHandshake, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            handshake.receive_data(chunk)
            handshake.data_to_send()
    except RemoteProtocolError:
        assert not handshake.is_complete
        with pytest.raises(HandshakeError):
            handshake.receive_data(b"x")


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


def _frames(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(framed((body * (size // max(len(body), 1) + 1))[:size]) for size, body in items)


# Arbitrary bytes rarely contain a complete frame, so half of the inputs are well-framed
# sequences of random bodies with small lengths (including lengths below a tag or a key).
wire = st.one_of(
    st.binary(max_size=300),
    st.lists(st.tuples(st.integers(0, 120), st.binary(min_size=1, max_size=40)), max_size=4).map(
        _frames
    ),
)


# -- handshake messages ----------------------------------------------------------------------


@FUZZ
@given(wire, st.lists(st.integers(0, 400), max_size=8))
def test_responder_message_one_arbitrary(data: bytes, cuts: list[int]) -> None:
    feed_handshake(SecureHandshake(IDENT_B, initiator=False), [data])
    feed_handshake(SecureHandshake(IDENT_B, initiator=False), pieces(data, cuts))


@FUZZ
@given(wire, st.lists(st.integers(0, 400), max_size=8))
def test_responder_message_three_arbitrary(data: bytes, cuts: list[int]) -> None:
    init = SecureHandshake(IDENT_A, initiator=True)
    msg1 = init.data_to_send()
    for chunks in ([msg1 + data], [msg1, *pieces(data, cuts)]):
        feed_handshake(SecureHandshake(IDENT_B, initiator=False), chunks)


@FUZZ
@given(st.binary(min_size=0, max_size=200), st.integers(0, 150))
def test_responder_message_three_framed_garbage(body: bytes, extra: int) -> None:
    """Well-framed message 3 bodies of plausible sizes reach decryption and payload checks."""
    init = SecureHandshake(IDENT_A, initiator=True)
    resp = SecureHandshake(IDENT_B, initiator=False)
    resp.receive_data(init.data_to_send())
    resp.data_to_send()
    feed_handshake(resp, [framed((body + bytes(48 + 16 + extra))[: 48 + 16 + extra])])


@FUZZ
@given(wire, st.lists(st.integers(0, 400), max_size=8))
def test_initiator_message_two_arbitrary(data: bytes, cuts: list[int]) -> None:
    for chunks in ([data], pieces(data, cuts)):
        init = SecureHandshake(IDENT_A, initiator=True)
        init.data_to_send()
        feed_handshake(init, chunks)


@FUZZ
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200))
def test_initiator_message_two_framed_garbage(ephemeral: bytes, rest: bytes) -> None:
    init = SecureHandshake(IDENT_A, initiator=True)
    init.data_to_send()
    feed_handshake(init, [framed(ephemeral + (rest + bytes(64))[: max(64, len(rest))])])


@FUZZ
@given(st.binary(max_size=200), st.binary(min_size=32, max_size=32))
def test_payload_arbitrary_bytes(payload: bytes, static: bytes) -> None:
    try:
        verify_handshake_payload(payload, static)
    except HandshakeError:
        pass


@FUZZ
@given(st.binary(max_size=40), st.binary(max_size=70), st.binary(min_size=32, max_size=32))
def test_payload_structured_fields(key: bytes, sig: bytes, static: bytes) -> None:
    payload = pb.HandshakePayload(identity_key=key, identity_sig=sig).SerializeToString()
    with pytest.raises(HandshakeError) as info:
        verify_handshake_payload(payload, static)
    assert isinstance(info.value, AuthenticationError) == (len(key) == 32)


def test_payload_valid_signature_accepted() -> None:
    static = KeyPair.generate().public
    node_key = IDENT_A.node_key
    payload = pb.HandshakePayload(
        identity_key=node_key.public_key,
        identity_sig=node_key.sign(SIGNATURE_PREFIX + static),
    ).SerializeToString()
    assert verify_handshake_payload(payload, static) == (node_key.node_id, node_key.public_key)


# -- transport reader ------------------------------------------------------------------------


def drain(reader: TransportReader) -> list[bytes]:
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    return out


@FUZZ
@given(wire, st.lists(st.integers(0, 700), max_size=10))
def test_transport_reader_arbitrary(data: bytes, cuts: list[int]) -> None:
    for chunks in ([data], pieces(data, cuts)):
        reader = TransportReader(CipherState(KEY))
        try:
            for chunk in chunks:
                reader.feed(chunk)
                drain(reader)
        except FrameError:
            pass


@FUZZ
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.lists(st.integers(0, 3000), max_size=12),
)
def test_transport_roundtrip_in_pieces(messages: list[bytes], cuts: list[int]) -> None:
    sender = CipherState(KEY)
    wire = b"".join(encrypt_frames(sender, m) for m in messages)
    reader = TransportReader(CipherState(KEY))
    received: list[bytes] = []
    for chunk in pieces(wire, cuts):
        reader.feed(chunk)
        received.extend(drain(reader))
    assert received == messages
    assert reader.buffered == 0
    # All chunks queued before draining (several pending chunks, straddling frames).
    reader = TransportReader(CipherState(KEY))
    for chunk in pieces(wire, cuts):
        reader.feed(chunk)
    if wire:
        assert reader.buffered == len(wire)
    assert drain(reader) == messages
    assert reader.buffered == 0


@FUZZ
@given(
    st.lists(st.binary(max_size=100), min_size=1, max_size=5),
    st.integers(0, 10_000),
    st.integers(1, 255),
)
def test_transport_bit_flip_detected(messages: list[bytes], where: int, mask: int) -> None:
    sender = CipherState(KEY)
    wire = bytearray(b"".join(encrypt_frames(sender, m) for m in messages))
    wire[where % len(wire)] ^= mask
    reader = TransportReader(CipherState(KEY))
    reader.feed(bytes(wire))
    with pytest.raises(FrameError):
        # A corrupted length may leave the reader waiting for more bytes; supply them.
        for _ in range(2):
            drain(reader)
            reader.feed(bytes(65537))


def test_large_message_split_into_max_size_frames() -> None:
    sender = CipherState(KEY)
    data = bytes(range(256)) * 1024
    wire = encrypt_frames(sender, memoryview(data))
    reader = TransportReader(CipherState(KEY))
    reader.feed(wire)
    parts = drain(reader)
    assert [len(p) for p in parts] == [65519] * 4 + [len(data) - 4 * 65519]
    assert b"".join(parts) == data


# -- the async reader over a byte stream -----------------------------------------------------


class ScriptedStream(anyio.abc.ByteStream):
    """Returns the given chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = [c for c in chunks if c]

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._chunks:
            raise anyio.EndOfStream
        return self._chunks.pop(0)

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def scripted_secure_stream(chunks: list[bytes]) -> SecureStream:
    return SecureStream(
        ScriptedStream(chunks),
        CipherState(KEY),
        CipherState(KEY),
        node_id=IDENT_A.node_id,
        public_key=IDENT_A.public_key,
        initiator=True,
        handshake_hash=bytes(32),
    )


@pytest.mark.anyio
@FUZZ
@given(data=wire, cuts=st.lists(st.integers(0, 500), max_size=8))
async def test_secure_stream_receive_arbitrary(data: bytes, cuts: list[int]) -> None:
    for chunks in ([data], pieces(data, cuts)):
        stream = scripted_secure_stream(chunks)
        try:
            while True:
                assert await stream.receive(7)
        except (RemoteProtocolError, anyio.EndOfStream):
            pass


@pytest.mark.anyio
@FUZZ
@given(
    messages=st.lists(st.binary(max_size=200), max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    max_bytes=st.integers(1, 300),
)
async def test_secure_stream_receive_valid_in_pieces(
    messages: list[bytes], cuts: list[int], max_bytes: int
) -> None:
    sender = CipherState(KEY)
    wire = b"".join(encrypt_frames(sender, m) for m in messages)
    stream = scripted_secure_stream(pieces(wire, cuts))
    received = bytearray()
    with pytest.raises(anyio.EndOfStream):
        while True:
            chunk = await stream.receive(max_bytes)
            assert 0 < len(chunk) <= max_bytes
            received += chunk
    assert bytes(received) == b"".join(messages)
