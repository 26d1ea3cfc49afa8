"""The secure channel: Noise XX handshake + encrypted transport over anyio byte streams."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import anyio
import anyio.abc
import pytest
import trio.testing
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from overlay.errors import (
    AuthenticationError,
    FrameError,
    HandshakeError,
    HandshakeTimeout,
    LocalProtocolError,
    OverlayError,
)
from overlay.identity import NodeId, NodeKey, verify_signature
from overlay.transport._secure import (
    MAX_PLAINTEXT,
    SIGNATURE_PREFIX,
    PeerAttribute,
    ProofCache,
    SecureHandshake,
    SecureIdentity,
    SecureStream,
    TransportReader,
    encrypt_frames,
    secure_handshake,
)
from overlay.wire._noise import KeyPair
from proto import overlay_pb2 as pb

T = TypeVar("T")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte stream pair (test double for a socket)."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._pending = b""
        self.closed = False
        self.tamper_next = False
        """Flip a bit of the last byte of the next write."""
        self.cut_next = 0
        """Drop this many trailing bytes of the next write."""
        self.last_sent = b""
        """The last write, as it went out."""
        self.sends = 0

    async def send(self, item: bytes) -> None:
        data = bytes(item)
        if self.tamper_next:
            self.tamper_next = False
            data = data[:-1] + bytes([data[-1] ^ 0x80])
        if self.cut_next:
            data, self.cut_next = data[:-self.cut_next], 0
        self.sends += 1
        self.last_sent = data
        await self._send.send(data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            self._pending = await self._receive.receive()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        self.closed = True
        await self._send.aclose()
        await self._receive.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


_OPEN: list[MemoryObjectSendStream[bytes] | MemoryObjectReceiveStream[bytes]] = []


@pytest.fixture(autouse=True)
def _close_memory_streams() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def memory_pair(buffer: int = 100) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected ends; every underlying stream is closed when the test ends."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    _OPEN.extend((a_send, b_receive, b_send, a_receive))
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)


async def _outcome(fn: Callable[[], Awaitable[T]]) -> T | OverlayError:
    try:
        return await fn()
    except OverlayError as exc:
        return exc


async def both(
    first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]]
) -> tuple[Any, Any]:
    results: list[Any] = [None, None]

    async def run(index: int, fn: Callable[[], Awaitable[Any]]) -> None:
        results[index] = await _outcome(fn)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return results[0], results[1]


IDENT_A = SecureIdentity(NodeKey.from_seed(b"a" * 32))
IDENT_B = SecureIdentity(NodeKey.from_seed(b"b" * 32))
IDENT_C = SecureIdentity(NodeKey.from_seed(b"c" * 32))


async def connect_memory(
    expected: NodeId | None = None,
    dialer: SecureIdentity = IDENT_A,
    listener: SecureIdentity = IDENT_B,
) -> tuple[Any, Any, MemoryByteStream, MemoryByteStream]:
    a, b = memory_pair()
    sa, sb = await both(
        lambda: secure_handshake(
            a,
            dialer,
            initiator=True,
            expected_id=expected,
            remote_address=f"memory:{listener.node_id}",
        ),
        lambda: secure_handshake(b, listener, initiator=False),
    )
    return sa, sb, a, b


async def read_exactly(stream: SecureStream, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunks += await stream.receive()
    assert len(chunks) == size
    return bytes(chunks)


# -- handshake -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_both_sides_learn_each_other() -> None:
    sa, sb, a, _ = await connect_memory(expected=IDENT_B.node_id)
    assert isinstance(sa, SecureStream) and isinstance(sb, SecureStream)
    assert sa.node_id == IDENT_B.node_id and sb.node_id == IDENT_A.node_id
    assert sa.public_key == IDENT_B.public_key and sb.public_key == IDENT_A.public_key
    assert sa.handshake_hash == sb.handshake_hash and len(sa.handshake_hash) == 32
    assert sa.initiator and not sb.initiator
    assert sa.transport_stream is a
    assert sa.extra(PeerAttribute.node_id) == IDENT_B.node_id
    assert sa.extra(PeerAttribute.public_key) == IDENT_B.public_key
    assert sa.extra(PeerAttribute.initiator) is True
    assert sa.extra(PeerAttribute.remote_address) == f"memory:{IDENT_B.node_id}"
    assert sa.extra(PeerAttribute.remote_host) == ""
    assert sb.extra(PeerAttribute.initiator) is False
    assert sb.extra(PeerAttribute.remote_address) == "<unknown>"
    assert "memory" in repr(sa)
    await sa.aclose()
    await sb.aclose()


@pytest.mark.anyio
async def test_expected_id_mismatch() -> None:
    sa, sb, a, b = await connect_memory(expected=IDENT_C.node_id)
    assert isinstance(sa, AuthenticationError)
    assert str(sa) == f"expected {IDENT_C.node_id}, peer proved {IDENT_B.node_id}"
    assert isinstance(sb, HandshakeError)
    assert a.closed and b.closed


def _forged(identity: SecureIdentity) -> SecureIdentity:
    """A copy of ``identity`` whose payload signs another Noise static key."""
    other = KeyPair.generate()
    forged = SecureIdentity(identity.node_key, static=identity.static)
    forged.payload = pb.HandshakePayload(
        identity_key=identity.public_key,
        identity_sig=identity.node_key.sign(SIGNATURE_PREFIX + other.public),
    ).SerializeToString()
    return forged


@pytest.mark.anyio
async def test_forged_signature_from_responder() -> None:
    sa, sb, a, b = await connect_memory(listener=_forged(IDENT_B))
    assert isinstance(sa, AuthenticationError) and "signature" in str(sa)
    assert isinstance(sb, HandshakeError)
    assert a.closed and b.closed


@pytest.mark.anyio
async def test_forged_signature_from_initiator() -> None:
    sa, sb, _, b = await connect_memory(dialer=_forged(IDENT_A))
    assert isinstance(sb, AuthenticationError)
    assert b.closed


@pytest.mark.anyio
async def test_malformed_payload_is_handshake_error_not_authentication() -> None:
    bad = SecureIdentity(IDENT_B.node_key, static=IDENT_B.static)
    bad.payload = b"\xff\xff\xff"
    sa, _, _, _ = await connect_memory(listener=bad)
    assert isinstance(sa, HandshakeError) and not isinstance(sa, AuthenticationError)
    short_key = SecureIdentity(IDENT_B.node_key, static=IDENT_B.static)
    short_key.payload = pb.HandshakePayload(identity_key=b"k" * 31).SerializeToString()
    sa, _, _, _ = await connect_memory(listener=short_key)
    assert isinstance(sa, HandshakeError) and not isinstance(sa, AuthenticationError)


@pytest.mark.anyio
async def test_eof_during_handshake() -> None:
    a, b = memory_pair()

    async def hang_up() -> None:
        await b.receive()
        await b.aclose()

    sa, _ = await both(lambda: secure_handshake(a, IDENT_A, initiator=True), hang_up)
    assert isinstance(sa, HandshakeError) and "closed" in str(sa)
    assert a.closed


@pytest.mark.anyio
async def test_reset_during_handshake() -> None:
    a, b = memory_pair()
    await b.aclose()  # the peer is gone: our first send is refused
    with pytest.raises(HandshakeError, match="connection lost"):
        await secure_handshake(a, IDENT_A, initiator=True)
    assert a.closed


@pytest.mark.anyio
async def test_cancelled_handshake_closes_stream() -> None:
    a, _ = memory_pair()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await secure_handshake(a, IDENT_A, initiator=True)
    assert scope.cancelled_caught
    assert a.closed


@pytest.mark.anyio
async def test_garbage_message_one() -> None:
    a, b = memory_pair()
    await a.send(b"\x00\x05hello")
    with pytest.raises(HandshakeError):
        await secure_handshake(b, IDENT_B, initiator=False)
    assert b.closed


@pytest.mark.anyio
async def test_invalid_timeout() -> None:
    a, _ = memory_pair()
    with pytest.raises(LocalProtocolError):
        await secure_handshake(a, IDENT_A, initiator=True, timeout=0)


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio"),
    ],
)
@pytest.mark.anyio
async def test_silent_peer_times_out(anyio_backend: Any) -> None:
    a, b = memory_pair()
    # trio jumps its mock clock; asyncio really waits for this short deadline.
    timeout = 5.0 if anyio_backend[0] == "trio" else 0.1
    with pytest.raises(HandshakeTimeout):
        await secure_handshake(a, IDENT_A, initiator=True, timeout=timeout)
    assert a.closed
    assert len(await b.receive()) == 2 + 32  # message 1 was sent, nothing came back
    _, silent_dialer = memory_pair()
    with pytest.raises(HandshakeTimeout):
        await secure_handshake(silent_dialer, IDENT_B, initiator=False, timeout=timeout)
    assert silent_dialer.closed


# -- transport -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_data_integrity_both_ways() -> None:
    sa, sb, a, b = await connect_memory()
    big = os.urandom(1 << 20)
    sends_before = a.sends
    await sa.send(big)
    assert a.sends == sends_before + 1  # all frames of 1 MiB in one underlying send
    assert await read_exactly(sb, len(big)) == big
    await sb.send(big[::-1])
    assert await read_exactly(sa, len(big)) == big[::-1]
    # Small messages keep their boundaries.
    smalls = [os.urandom(n) for n in range(1, 300)]

    async def send_smalls() -> None:
        for item in smalls:
            await sb.send(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send_smalls)
        for item in smalls:
            assert await sa.receive() == item
    stats = sa.statistics()
    assert stats.bytes_sent == len(big) and stats.bytes_received == len(big) + sum(map(len, smalls))
    assert stats.messages_sent == -(-len(big) // MAX_PLAINTEXT)
    assert stats.messages_received == stats.messages_sent + len(smalls)


@pytest.mark.anyio
async def test_receive_max_bytes_and_empty_send() -> None:
    sa, sb, a, _ = await connect_memory()
    sends = a.sends
    await sa.send(b"")
    assert a.sends == sends
    await sa.send(b"0123456789")
    assert await sb.receive(3) == b"012"
    assert await sb.receive(3) == b"345"
    assert await sb.receive(100) == b"6789"
    with pytest.raises(LocalProtocolError):
        await sb.receive(0)


@pytest.mark.anyio
async def test_concurrent_sends_do_not_interleave() -> None:
    sa, sb, _, _ = await connect_memory()
    size = 3 * MAX_PLAINTEXT + 7

    async with anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(sa.send, bytes([index]) * size)
    data = await read_exactly(sb, 8 * size)
    seen = set()
    for start in range(0, len(data), size):
        chunk = data[start : start + size]
        assert chunk == chunk[:1] * size
        seen.add(chunk[0])
    assert seen == set(range(8))


@pytest.mark.anyio
async def test_tampered_ciphertext_raises_frame_error() -> None:
    sa, sb, a, _ = await connect_memory()
    await sa.send(b"fine")
    assert await sb.receive() == b"fine"
    a.tamper_next = True
    await sa.send(b"tampered")
    with pytest.raises(FrameError):
        await sb.receive()


@pytest.mark.anyio
async def test_replayed_frame_raises_frame_error() -> None:
    sa, sb, a, _ = await connect_memory()
    await sa.send(b"once")
    frame = a.last_sent
    assert await sb.receive() == b"once"
    await a.send(frame)
    with pytest.raises(FrameError):
        await sb.receive()


@pytest.mark.anyio
async def test_eof_at_boundary_and_mid_frame() -> None:
    sa, sb, a, _ = await connect_memory()
    await sa.send(b"last")
    await sa.send_eof()
    assert await sb.receive() == b"last"
    with pytest.raises(anyio.EndOfStream):
        await sb.receive()

    sa, sb, a, _ = await connect_memory()
    a.cut_next = 3
    await sa.send(b"cut")
    await a.send_eof()
    with pytest.raises(FrameError):
        await sb.receive()


@pytest.mark.anyio
async def test_short_frame_raises_frame_error() -> None:
    sa, sb, a, _ = await connect_memory()
    await a.send(b"\x00\x03abc")
    with pytest.raises(FrameError):
        await sb.receive()
    await sa.aclose()
    assert a.closed


@pytest.mark.anyio
async def test_cancelled_send_marks_stream_broken() -> None:
    a, b = memory_pair(buffer=0)
    sa, _ = await both(
        lambda: secure_handshake(a, IDENT_A, initiator=True),
        lambda: secure_handshake(b, IDENT_B, initiator=False),
    )
    assert isinstance(sa, SecureStream)
    with anyio.move_on_after(0.01):  # nobody reads: the rendezvous send blocks
        await sa.send(b"x")
    with pytest.raises(anyio.BrokenResourceError):
        await sa.send(b"y")


# -- sans-IO driver --------------------------------------------------------------------------


def test_sans_io_handshake_byte_by_byte_with_leftover() -> None:
    init = SecureHandshake(IDENT_A, initiator=True, expected_id=IDENT_B.node_id)
    resp = SecureHandshake(IDENT_B, initiator=False)
    msg1 = init.data_to_send()
    assert len(msg1) == 34 and init.data_to_send() == b""
    for byte in msg1:
        resp.receive_data(bytes([byte]))
    msg2 = resp.data_to_send()
    for byte in msg2[:-1]:
        init.receive_data(bytes([byte]))
    assert not init.is_complete and init.data_to_send() == b""
    init.receive_data(msg2[-1:])
    assert init.is_complete and init.remote_node_id == IDENT_B.node_id
    send, _ = init.transport_ciphers()
    msg3_and_data = init.data_to_send() + encrypt_frames(send, b"early data")
    resp.receive_data(msg3_and_data)
    assert resp.is_complete and resp.remote_node_id == IDENT_A.node_id
    assert resp.remote_public_key == IDENT_A.public_key
    assert resp.handshake_hash == init.handshake_hash
    _, recv = resp.transport_ciphers()
    reader = TransportReader(recv, resp.leftover)
    assert reader.next_message() == b"early data"
    assert reader.next_message() is None and reader.buffered == 0


def test_sans_io_failed_handshake_stays_failed() -> None:
    resp = SecureHandshake(IDENT_B, initiator=False)
    with pytest.raises(HandshakeError):
        resp.receive_data(b"\x00\x21" + bytes(33))  # message 1 with a non-empty payload
    with pytest.raises(HandshakeError):
        resp.receive_data(b"more")
    assert not resp.is_complete


def test_proof_cache_remembers_only_valid_proofs() -> None:
    calls: list[bytes] = []

    def counting(public_key: bytes, message: bytes, signature: bytes) -> bool:
        calls.append(message)
        return verify_signature(public_key, message, signature)

    cache = ProofCache(capacity=2, verify=counting)
    key = IDENT_A.node_key
    proofs = [(b"m%d" % i, key.sign(b"m%d" % i)) for i in range(3)]
    assert cache.verify(key.public_key, *proofs[0])
    assert cache.verify(key.public_key, *proofs[0])
    assert len(calls) == 1  # second check served from the cache
    assert not cache.verify(key.public_key, b"other", proofs[0][1])
    assert not cache.verify(key.public_key, b"other", proofs[0][1])
    assert len(calls) == 3 and len(cache) == 1  # failures are not cached
    assert cache.verify(key.public_key, *proofs[1])
    assert cache.verify(key.public_key, *proofs[2])
    assert len(cache) == 2  # bounded: the oldest proof was evicted
    calls.clear()
    assert cache.verify(key.public_key, *proofs[0])
    assert calls == [b"m0"]


def test_handshakes_reuse_verified_proofs() -> None:
    dialer = SecureIdentity(NodeKey.from_seed(b"e" * 32))
    listener = SecureIdentity(NodeKey.from_seed(b"f" * 32))
    for _ in range(3):
        init = SecureHandshake(dialer, initiator=True)
        resp = SecureHandshake(listener, initiator=False)
        resp.receive_data(init.data_to_send())
        init.receive_data(resp.data_to_send())
        resp.receive_data(init.data_to_send())
        assert init.is_complete and resp.is_complete
    assert len(dialer.proofs) == 1 and len(listener.proofs) == 1


def test_identity_signs_once() -> None:
    ident = SecureIdentity(NodeKey.from_seed(b"d" * 32))
    assert ident.node_id == NodeKey.from_seed(b"d" * 32).node_id
    assert repr(ident).startswith("SecureIdentity(")
    first = SecureHandshake(ident, initiator=True).data_to_send()
    second = SecureHandshake(ident, initiator=True).data_to_send()
    assert first != second  # fresh ephemeral keys each time


# -- real loopback TCP -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_loopback_tcp() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted: list[SecureStream] = []
    big = os.urandom(1 << 20)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        secure = await secure_handshake(stream, IDENT_B, initiator=False)
        accepted.append(secure)
        data = await read_exactly(secure, len(big))
        await secure.send(data[::-1])

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        raw = await anyio.connect_tcp("127.0.0.1", port)
        client = await secure_handshake(raw, IDENT_A, initiator=True, expected_id=IDENT_B.node_id)
        assert client.node_id == IDENT_B.node_id
        assert client.extra(PeerAttribute.remote_address) == f"127.0.0.1:{port}"
        assert client.extra(PeerAttribute.remote_host) == "127.0.0.1"
        assert client.extra(anyio.abc.SocketAttribute.remote_port) == port
        await client.send(big)
        assert await read_exactly(client, len(big)) == big[::-1]
        server = accepted[0]
        assert server.node_id == IDENT_A.node_id
        assert server.extra(PeerAttribute.remote_host) == "127.0.0.1"
        assert server.handshake_hash == client.handshake_hash
        await client.aclose()
        with pytest.raises(anyio.EndOfStream):
            await server.receive()
        await server.aclose()
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_first_data_rides_with_the_last_handshake_message() -> None:
    a, b = memory_pair()
    hello = b"first application bytes" * 10
    sa, sb = await both(
        lambda: secure_handshake(a, IDENT_A, initiator=True, expected_id=IDENT_B.node_id,
                                 first_data=hello),
        lambda: secure_handshake(b, IDENT_B, initiator=False),
    )
    assert isinstance(sa, SecureStream) and isinstance(sb, SecureStream)
    assert a.sends == 2  # message 1, then message 3 + the encrypted first data in one write
    assert await read_exactly(sb, len(hello)) == hello
    await sa.send(b"after")
    assert await sb.receive() == b"after"
    await sb.send(b"reply")
    assert await sa.receive() == b"reply"


@pytest.mark.anyio
async def test_without_first_data_the_initiator_sends_message_three_at_once() -> None:
    a, b = memory_pair()
    sa, sb = await both(
        lambda: secure_handshake(a, IDENT_A, initiator=True),
        lambda: secure_handshake(b, IDENT_B, initiator=False),
    )
    assert isinstance(sa, SecureStream) and isinstance(sb, SecureStream)
    assert a.sends == 2  # both handshakes completed without any application data
