"""A second, minimal implementation of the wire protocol, written from docs/protocol.md alone.

It uses none of overlay's protocol modules (``_noise``, ``_secure``, ``_frames``, ``_wire``,
``_conncore``, ``_nodeinfo``): only ``cryptography`` primitives, ``proto.overlay_pb2``,
hashlib/hmac/struct and anyio sockets. It talks to a real :class:`overlay.Node` over loopback
TCP, as initiator (section 5: Noise XX, identity binding; section 6: hello; sections 7-9:
frames) and as responder, and checks the node's reaction to bad input (section 11).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from overlay import (
    BytesCodec,
    ChannelSpec,
    Envelope,
    ErrorCode,
    Node,
    NodeConfig,
    NodeId,
    RequestError,
)
from proto import overlay_pb2 as pb

pytestmark = pytest.mark.anyio

# -- constants (docs/protocol.md section 4) ------------------------------------------------------

NOISE_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"  # 32 bytes: h = name, not hashed
PROLOGUE = b"overlay/noise/1"
SIG_PREFIX = b"overlay-noise-static-key:"
MAX_PLAINTEXT = 65519
MAX_HELLO = 65536
HEADER = struct.Struct(">IBBHI")  # length, kind, flags, channel_id, request_id
MESSAGE, REQUEST, RESPONSE, ERROR, CANCEL, CONTROL = 1, 2, 3, 4, 5, 6
MORE, COMPRESSED = 0x01, 0x02
Frame = tuple[int, int, int, int, bytes]


def node_id_of(identity_key: bytes) -> str:
    """Section 3: lowercase hex of the first 20 bytes of SHA-256 of the ed25519 key."""
    return hashlib.sha256(identity_key).digest()[:20].hex()


def frame(kind: int, channel: int, rid: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """Section 7.2: ``length`` counts the 8 header bytes after it plus the payload."""
    return HEADER.pack(8 + len(payload), kind, flags, channel, rid) + payload


def control(msg: pb.Control) -> bytes:
    return frame(CONTROL, 0, 0, msg.SerializeToString())


# -- Noise (section 5) ---------------------------------------------------------------------------


def _raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(key: X25519PrivateKey, public: bytes) -> bytes:
    return key.exchange(X25519PublicKey.from_public_bytes(public))


def _hkdf(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = hmac.digest(ck, ikm, "sha256")
    out1 = hmac.digest(temp, b"\x01", "sha256")
    return out1, hmac.digest(temp, out1 + b"\x02", "sha256")


class Cipher:
    """ChaCha20-Poly1305; nonce = 4 zero bytes + 64-bit little-endian counter (section 5.6)."""

    def __init__(self, key: bytes) -> None:
        self.aead = ChaCha20Poly1305(key)
        self.n = 0

    def encrypt(self, ad: bytes, data: bytes) -> bytes:
        self.n += 1
        return self.aead.encrypt(struct.pack("<4xQ", self.n - 1), data, ad)

    def decrypt(self, ad: bytes, data: bytes) -> bytes:
        self.n += 1
        return self.aead.decrypt(struct.pack("<4xQ", self.n - 1), data, ad)


class Symmetric:
    """Noise SymmetricState, initialised with the protocol name and the prologue (5.1)."""

    def __init__(self) -> None:
        self.h = self.ck = NOISE_NAME
        self.cipher: Cipher | None = None
        self.mix_hash(PROLOGUE)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = _hkdf(self.ck, ikm)
        self.cipher = Cipher(key)

    def encrypt_and_hash(self, data: bytes) -> bytes:
        out = data if self.cipher is None else self.cipher.encrypt(self.h, data)
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, data: bytes) -> bytes:
        out = data if self.cipher is None else self.cipher.decrypt(self.h, data)
        self.mix_hash(data)
        return out

    def split(self) -> tuple[Cipher, Cipher]:
        k1, k2 = _hkdf(self.ck, b"")
        return Cipher(k1), Cipher(k2)


class Identity:
    """An ed25519 identity plus a Noise static key bound to it by a signature (5.4)."""

    def __init__(self) -> None:
        key = Ed25519PrivateKey.generate()
        self.public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.node_id = node_id_of(self.public)
        self.static = X25519PrivateKey.generate()
        signature = key.sign(SIG_PREFIX + _raw(self.static))
        self.payload = pb.HandshakePayload(
            identity_key=self.public, identity_sig=signature
        ).SerializeToString()


def verify_payload(payload: bytes, rs: bytes) -> str:
    """Section 5.5: decode, check the key size and the signature; return the proven node id."""
    msg = pb.HandshakePayload.FromString(payload)
    assert len(msg.identity_key) == 32 and len(msg.identity_sig) == 64
    Ed25519PublicKey.from_public_bytes(msg.identity_key).verify(msg.identity_sig, SIG_PREFIX + rs)
    return node_id_of(msg.identity_key)


class Conn:
    """u16-framed Noise messages over a byte stream; after the handshake, a plaintext stream."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.raw = bytearray()
        self.plain = bytearray()
        self.tx: Cipher | None = None
        self.rx: Cipher | None = None

    async def send_noise(self, body: bytes) -> None:
        await self.stream.send(struct.pack(">H", len(body)) + body)

    async def read_noise(self) -> bytes | None:
        """One Noise message body; None on EOF at a message boundary."""
        while len(self.raw) < 2 or len(self.raw) < 2 + int.from_bytes(self.raw[:2], "big"):
            try:
                self.raw += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                assert not self.raw, "EOF inside a Noise message"
                return None
        end = 2 + int.from_bytes(self.raw[:2], "big")
        body = bytes(self.raw[2:end])
        del self.raw[:end]
        return body

    async def send(self, data: bytes) -> None:
        """Encrypt ``data`` as transport messages of <= 65519 plaintext bytes, in one write."""
        assert self.tx is not None
        out = b""
        for i in range(0, len(data), MAX_PLAINTEXT):
            ciphertext = self.tx.encrypt(b"", data[i : i + MAX_PLAINTEXT])
            out += struct.pack(">H", len(ciphertext)) + ciphertext
        await self.stream.send(out)

    async def read_exact(self, n: int) -> bytes | None:
        """``n`` bytes of the decrypted byte stream; None on EOF (clean, at a boundary)."""
        assert self.rx is not None
        while len(self.plain) < n:
            body = await self.read_noise()
            if body is None:
                return None
            self.plain += self.rx.decrypt(b"", body)
        out = bytes(self.plain[:n])
        del self.plain[:n]
        return out

    async def read_frame(self) -> Frame | None:
        """Section 7.2; None on EOF. Pings from the node are skipped (section 9)."""
        while True:
            head = await self.read_exact(12)
            if head is None:
                return None
            length, kind, flags, channel, rid = HEADER.unpack(head)
            payload = await self.read_exact(length - 8)
            assert payload is not None, "EOF inside a frame"
            if kind == CONTROL and pb.Control.FromString(payload).WhichOneof("kind") == "ping":
                continue
            return kind, flags, channel, rid, payload

    async def send_hello(self, msg: bytes) -> None:
        await self.send(struct.pack(">I", len(msg)) + msg)  # section 6.1

    async def read_hello(self) -> bytes:
        size = int.from_bytes(await self.read_exact(4) or b"", "big")
        assert size <= MAX_HELLO
        body = await self.read_exact(size)
        assert body is not None
        return body


async def handshake_initiator(conn: Conn, me: Identity) -> str:
    """XX as initiator (5.1, 5.3); returns the responder's proven node id."""
    sym, e = Symmetric(), X25519PrivateKey.generate()
    sym.mix_hash(_raw(e))
    sym.encrypt_and_hash(b"")  # empty payload of message 1
    await conn.send_noise(_raw(e))
    m2 = await conn.read_noise()
    assert m2 is not None
    re = m2[:32]
    sym.mix_hash(re)
    sym.mix_key(_dh(e, re))
    rs = sym.decrypt_and_hash(m2[32:80])
    sym.mix_key(_dh(e, rs))
    peer = verify_payload(sym.decrypt_and_hash(m2[80:]), rs)
    m3 = sym.encrypt_and_hash(_raw(me.static))
    sym.mix_key(_dh(me.static, re))
    await conn.send_noise(m3 + sym.encrypt_and_hash(me.payload))
    conn.tx, conn.rx = sym.split()
    return peer


async def handshake_responder(conn: Conn, me: Identity) -> str:
    """XX as responder; returns the initiator's proven node id."""
    sym, e = Symmetric(), X25519PrivateKey.generate()
    m1 = await conn.read_noise()
    assert m1 is not None and len(m1) == 32
    sym.mix_hash(m1)
    sym.decrypt_and_hash(b"")
    sym.mix_hash(_raw(e))
    sym.mix_key(_dh(e, m1))
    m2 = _raw(e) + sym.encrypt_and_hash(_raw(me.static))
    sym.mix_key(_dh(me.static, m1))
    await conn.send_noise(m2 + sym.encrypt_and_hash(me.payload))
    m3 = await conn.read_noise()
    assert m3 is not None
    rs = sym.decrypt_and_hash(m3[:48])
    sym.mix_key(_dh(e, rs))
    peer = verify_payload(sym.decrypt_and_hash(m3[48:]), rs)
    conn.rx, conn.tx = sym.split()
    return peer


# -- the node under test -------------------------------------------------------------------------

ECHO = ChannelSpec(id=0x20, name="echo", codec=BytesCodec(), response_codec=BytesCodec())
NETWORK = NodeConfig().network


def node_info(**overrides: object) -> bytes:
    fields = {"protocol_version": 1000, "network": NETWORK, "channels": [1, ECHO.id]} | overrides
    return pb.NodeInfo(**fields).SerializeToString()  # type: ignore[arg-type]


async def _whoami(env: Envelope[bytes]) -> bytes:
    return env.sender.encode() + b"|" + env.message.upper()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def running_node() -> AsyncIterator[Node]:
    async with Node(NodeConfig(listen=("tcp://127.0.0.1:0",))) as node:
        node.channel(ECHO).handle_requests(_whoami)
        with anyio.fail_after(10):
            yield node


async def dial(node: Node, me: Identity, hello: bytes | None = None) -> tuple[Conn, pb.HelloReply]:
    """Connect to the node's address (section 3 format), run Noise, send our NodeInfo."""
    peer_id, _, host_port = str(node.address).partition("@")
    host, _, port = host_port.rpartition(":")
    conn = Conn(await anyio.connect_tcp(host, int(port)))
    assert await handshake_initiator(conn, me) == peer_id == node.node_id
    await conn.send_hello(node_info() if hello is None else hello)
    return conn, pb.HelloReply.FromString(await conn.read_hello())


async def next_frame(conn: Conn) -> Frame:
    got = await conn.read_frame()
    assert got is not None, "unexpected EOF"
    return got


async def connect(node: Node, me: Identity) -> Conn:
    conn, reply = await dial(node, me)
    assert reply.WhichOneof("result") == "node_info", reply
    return conn


# -- tests ---------------------------------------------------------------------------------------


def test_worked_examples_of_the_spec() -> None:
    assert frame(REQUEST, 0x20, 1, b"hi").hex(" ") == "00 00 00 0a 02 00 00 20 00 00 00 01 68 69"
    assert control(pb.Control(ping=pb.Ping(nonce=1))).hex(" ") == (
        "00 00 00 0c 06 00 00 00 00 00 00 00 0a 02 08 01"
    )
    assert frame(CANCEL, 0x20, 1).hex(" ") == "00 00 00 08 05 00 00 20 00 00 00 01"


async def test_hello_request_ping_and_node_view_of_our_id() -> None:
    async with running_node() as node:
        me = Identity()
        conn, reply = await dial(node, me)
        info = reply.node_info
        assert info.protocol_version // 1000 == 1 and info.network == NETWORK
        assert {1, ECHO.id} <= set(info.channels) and list(info.compression) == []
        assert list(info.listen_addrs) == [str(node.address)]
        assert info.listen_addrs[0].startswith(node.node_id + "@127.0.0.1:")

        await conn.send(frame(REQUEST, ECHO.id, 7, b"hello"))
        assert await conn.read_frame() == (RESPONSE, 0, ECHO.id, 7, me.node_id.encode() + b"|HELLO")
        assert me.node_id in node.connected_peers()  # the node derived the same id from our key

        nonce = 2**64 - 1
        await conn.send(control(pb.Control(ping=pb.Ping(nonce=nonce))))
        kind, _, channel, rid, payload = await next_frame(conn)
        assert (kind, channel, rid) == (CONTROL, 0, 0)
        assert pb.Control.FromString(payload) == pb.Control(pong=pb.Pong(nonce=nonce))

        # Two frames coalesced in one Noise message: unknown channel, then the built-in echo.
        await conn.send(frame(REQUEST, 0x99, 8, b"?") + frame(REQUEST, 1, 9, b"echo me"))
        answers = {}
        for _ in range(2):
            got = await next_frame(conn)
            answers[got[3]] = got
        assert answers[8][:3] == (ERROR, 0, 0x99)
        assert pb.ErrorResponse.FromString(answers[8][4]).code == pb.ERROR_CODE_NO_HANDLER
        assert answers[9] == (RESPONSE, 0, 1, 9, b"echo me")

        await conn.send(control(pb.Control(
            disconnect=pb.Disconnect(reason=pb.DISCONNECT_REASON_SHUTDOWN, message="bye"))))
        assert await conn.read_frame() is None  # the node closes without answering (section 10)
        await conn.stream.aclose()


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (node_info(network="elsewhere"), pb.DISCONNECT_REASON_WRONG_NETWORK),
        (node_info(protocol_version=2000), pb.DISCONNECT_REASON_INCOMPATIBLE_VERSION),
        (node_info(protocol_version=0), pb.DISCONNECT_REASON_INCOMPATIBLE_VERSION),
        (node_info(channels=[0x77]), pb.DISCONNECT_REASON_NO_COMMON_CHANNEL),
    ],
)
async def test_incompatible_hello_is_refused_with_a_reason(hello: bytes, reason: int) -> None:
    async with running_node() as node:
        conn, reply = await dial(node, Identity(), hello)
        assert reply.WhichOneof("result") == "refused"
        assert reply.refused.reason == reason
        assert await conn.read_exact(1) is None  # then the responder closes
        await conn.stream.aclose()


async def test_chunked_request_and_chunked_response() -> None:
    """Section 7.6: a 100000-byte request in two chunks; the answer comes back chunked too."""
    async with running_node() as node:
        me = Identity()
        conn = await connect(node, me)
        body = bytes(range(256)) * 390 + b"tail"
        first, rest = body[:65507], body[65507:]
        await conn.send(frame(REQUEST, ECHO.id, 3, first, MORE) + frame(REQUEST, ECHO.id, 3, rest))
        chunks: list[Frame] = [await next_frame(conn)]
        while chunks[-1][1] & MORE:
            chunks.append(await next_frame(conn))
        assert len(chunks) == 2 and all(c[0] == RESPONSE and c[3] == 3 for c in chunks)
        assert len(chunks[0][4]) == 65507  # the node's max_frame_payload (section 4)
        expected = me.node_id.encode() + b"|" + body.upper()
        assert b"".join(c[4] for c in chunks) == expected
        await conn.stream.aclose()


BAD_FRAMES = {
    "unknown kind": frame(9, ECHO.id, 0, b"x"),
    "kind 0": frame(0, ECHO.id, 0),
    "control on a channel": frame(CONTROL, ECHO.id, 0, b"\x0a\x00"),
    "message with a request id": frame(MESSAGE, ECHO.id, 3, b"x"),
    "request id 0": frame(REQUEST, ECHO.id, 0, b"x"),
    "data on channel 0": frame(MESSAGE, 0, 0, b"x"),
    "cancel with payload": frame(CANCEL, ECHO.id, 3, b"x"),
    "unknown flag": frame(MESSAGE, ECHO.id, 0, b"x", flags=0x04),
    "compressed, not negotiated": frame(MESSAGE, ECHO.id, 0, b"x", flags=COMPRESSED),
    "length below 8": struct.pack(">I", 7) + bytes(8),
    "oversized (header only)": HEADER.pack(8 + 65508, MESSAGE, 0, ECHO.id, 0),
    "empty control": frame(CONTROL, 0, 0, b""),
    "interleaved chunks": frame(MESSAGE, ECHO.id, 0, b"a", flags=MORE)
    + frame(REQUEST, ECHO.id, 4, b"b"),
    "message over max_message_size": frame(REQUEST, 1, 5, bytes(1025)),
}


@pytest.mark.parametrize("bad", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_malformed_frame_closes_only_that_connection(bad: bytes) -> None:
    async with running_node() as node:
        conn = await connect(node, Identity())
        await conn.send(bad)
        got = await next_frame(conn)
        assert got[:4] == (CONTROL, 0, 0, 0)
        disconnect = pb.Control.FromString(got[4]).disconnect
        assert disconnect.reason == pb.DISCONNECT_REASON_PROTOCOL_VIOLATION
        assert await conn.read_frame() is None  # nothing after a Disconnect; then EOF
        await conn.stream.aclose()

        second = Identity()
        conn = await connect(node, second)
        await conn.send(frame(REQUEST, ECHO.id, 1, b"still there?"))
        assert await conn.read_frame() == (
            RESPONSE, 0, ECHO.id, 1, second.node_id.encode() + b"|STILL THERE?")
        await conn.stream.aclose()


async def test_node_dials_us() -> None:
    """The node as initiator: we listen, run XX as responder and answer the hello (6.2)."""
    me = Identity()
    async with running_node() as node, await anyio.create_tcp_listener(
        local_host="127.0.0.1"
    ) as listener:
        sock = listener.listeners[0]
        assert isinstance(sock, anyio.abc.SocketListener)
        port = sock.extra(anyio.abc.SocketAttribute.local_port)
        dialed: list[str] = []

        async def dial_us() -> None:
            dialed.append(await node.dial(f"{me.node_id}@127.0.0.1:{port}"))

        async def request_us() -> None:
            answer = await node.channel(ECHO).request(NodeId(me.node_id), b"question", timeout=5)
            assert answer == b"answer to question"

        async with anyio.create_task_group() as tg:
            tg.start_soon(dial_us)
            conn = Conn(await sock.accept())
            assert await handshake_responder(conn, me) == node.node_id
            theirs = pb.NodeInfo.FromString(await conn.read_hello())
            assert theirs.network == NETWORK and ECHO.id in theirs.channels
            reply = pb.HelloReply(node_info=pb.NodeInfo.FromString(node_info()))
            await conn.send_hello(reply.SerializeToString())
        assert dialed == [me.node_id] and me.node_id in node.connected_peers()

        async with anyio.create_task_group() as tg:
            tg.start_soon(request_us)
            kind, flags, channel, rid, payload = await next_frame(conn)
            assert (kind, flags, channel, payload) == (REQUEST, 0, ECHO.id, b"question")
            assert rid != 0
            await conn.send(frame(RESPONSE, ECHO.id, rid, b"answer to " + payload)
                            + frame(REQUEST, 1, 1, b"ping"))
            assert await conn.read_frame() == (RESPONSE, 0, 1, 1, b"ping")
        await conn.stream.aclose()


# -- node-info updates (section "Node-info updates") ---------------------------------------------

LATE = ChannelSpec(id=0x30, name="late", codec=BytesCodec(), response_codec=BytesCodec())


def info_update(seq: int, **overrides: object) -> bytes:
    info = pb.NodeInfo.FromString(node_info(**overrides))
    return control(pb.Control(node_info_update=pb.NodeInfoUpdate(info_seq=seq, node_info=info)))


async def next_update(conn: Conn) -> pb.NodeInfoUpdate:
    while True:
        kind, _, channel, rid, payload = await next_frame(conn)
        if kind == CONTROL:
            msg = pb.Control.FromString(payload)
            if msg.WhichOneof("kind") == "node_info_update":
                return msg.node_info_update


async def test_node_announces_channels_it_opens_and_closes() -> None:
    async with running_node() as node:
        conn = await connect(node, Identity())
        node.channel(LATE).handle_requests(_whoami)
        first = await next_update(conn)
        assert first.info_seq >= 1 and LATE.id in first.node_info.channels
        assert first.node_info.network == NETWORK
        await conn.send(frame(REQUEST, LATE.id, 1, b"now"))
        kind, _, channel, rid, payload = await next_frame(conn)
        assert (kind, channel, rid) == (RESPONSE, LATE.id, 1) and payload.endswith(b"|NOW")

        node.close_channel(LATE)
        second = await next_update(conn)
        assert second.info_seq > first.info_seq and LATE.id not in second.node_info.channels
        await conn.send(frame(REQUEST, LATE.id, 2, b"gone?"))
        kind, _, channel, rid, payload = await next_frame(conn)
        assert (kind, channel, rid) == (ERROR, LATE.id, 2)
        assert pb.ErrorResponse.FromString(payload).code == pb.ERROR_CODE_NO_HANDLER
        await conn.stream.aclose()


async def test_our_updates_change_the_nodes_view_and_replays_are_ignored() -> None:
    async with running_node() as node:
        me = Identity()
        conn = await connect(node, me)
        peer = NodeId(me.node_id)

        def channels() -> set[int]:
            return set(node.router.peer_channels(peer))

        await conn.send(info_update(5, channels=[1, ECHO.id, 0x40], capability_record=b"rec"))
        await conn.send(frame(REQUEST, 1, 1, b"sync"))  # the echo proves the update was read
        assert await next_frame(conn) == (RESPONSE, 0, 1, 1, b"sync")
        assert channels() == {1, ECHO.id, 0x40}
        assert node.router.get_peer(peer).info.capability_record == b"rec"  # type: ignore[union-attr]

        await conn.send(info_update(5, channels=[1]) + info_update(4, channels=[1]))  # replays
        await conn.send(frame(REQUEST, 1, 2, b"sync"))
        assert await next_frame(conn) == (RESPONSE, 0, 1, 2, b"sync")
        assert channels() == {1, ECHO.id, 0x40}

        await conn.send(info_update(9, channels=[1]))
        await conn.send(frame(REQUEST, 1, 3, b"sync"))
        assert await next_frame(conn) == (RESPONSE, 0, 1, 3, b"sync")
        assert channels() == {1}
        with pytest.raises(RequestError) as info:  # the node fails fast: we no longer serve it
            await node.channel(ECHO).request(peer, b"?", timeout=5)
        assert info.value.code == ErrorCode.NO_HANDLER
        await conn.stream.aclose()


BAD_UPDATES = {
    "network change": info_update(1, network="elsewhere"),
    "version change": info_update(1, protocol_version=1001),
    "seq 0": info_update(0),
    "no node_info": control(pb.Control(node_info_update=pb.NodeInfoUpdate(info_seq=1))),
    "channel 0": info_update(1, channels=[0, 1]),
    "oversized": info_update(1, software_version="x" * 40000),
    "flood": b"".join(info_update(seq) for seq in range(1, 18)),
}


@pytest.mark.parametrize("bad", BAD_UPDATES.values(), ids=BAD_UPDATES.keys())
async def test_bad_update_closes_only_that_connection(bad: bytes) -> None:
    async with running_node() as node:
        conn = await connect(node, Identity())
        await conn.send(bad)
        while True:  # skip a pong or an update the node may have queued first
            got = await next_frame(conn)
            msg = pb.Control.FromString(got[4]) if got[0] == CONTROL else None
            if msg is not None and msg.WhichOneof("kind") == "disconnect":
                break
        assert msg.disconnect.reason == pb.DISCONNECT_REASON_PROTOCOL_VIOLATION
        assert await conn.read_frame() is None
        await conn.stream.aclose()
        other = await connect(node, Identity())
        await other.send(frame(REQUEST, 1, 1, b"still there?"))
        assert await other.read_frame() == (RESPONSE, 0, 1, 1, b"still there?")
        await other.stream.aclose()
