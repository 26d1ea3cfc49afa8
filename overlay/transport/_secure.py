"""The authenticated secure channel: Noise XX over any anyio byte stream.

Wire protocol (version 1)
-------------------------
* The handshake (``Noise_XX_25519_ChaChaPoly_SHA256``, prologue ``b"overlay/noise/1"``, each
  side's ed25519 identity signed over its Noise static key, ``Split()``) is specified in
  ``overlay/wire/_handshake.py``, which implements it sans-IO.
* Every Noise message, handshake and transport alike, is framed as a 2-byte big-endian length
  followed by that many bytes (at most 65535). A transport message is a ChaCha20-Poly1305
  ciphertext: at most 65519 bytes of plaintext plus a 16-byte tag, so a frame length below 16
  is invalid. Transport messages use empty associated data and the Noise nonce counter.
* The transport has no authenticated end-of-stream: a TCP FIN is just EOF. Upper layers close
  connections with their own (encrypted) disconnect frame.

Errors
------
``secure_handshake`` raises :class:`~overlay.errors.HandshakeTimeout` after ``timeout``
seconds, :class:`~overlay.errors.HandshakeError` for a malformed message, failed decryption, or
EOF / reset during the handshake, and :class:`~overlay.errors.AuthenticationError` for a bad
identity proof or an unexpected node id; on any failure the underlying stream is closed first.
On an established :class:`SecureStream`, a frame that fails to decrypt or is shorter than a tag
raises :class:`~overlay.errors.FrameError`, as does EOF in the middle of a frame; EOF at a frame
boundary raises ``anyio.EndOfStream``. After any error the stream must be closed.

Theory of operation
-------------------
:class:`~overlay.wire._handshake.SecureHandshake` (``overlay/wire/_handshake.py``) is the sans-IO
handshake; :func:`secure_handshake` pumps it over a stream under a deadline and wraps the result
in a :class:`SecureStream`, whose :class:`PeerAttribute` typed attributes carry the proven peer.
The transport half is sans-IO too: :func:`encrypt_frames` and :class:`TransportReader`;
:class:`SecureStream` is the thin async layer over them. :meth:`SecureStream.send` encrypts each
<= 65519-byte piece with one AEAD call straight into one output buffer and writes it with one
``send`` (``send(b"")`` writes nothing; a received empty message is skipped).
:class:`TransportReader` queues received chunks without copying and decrypts from memoryviews;
only frames straddling two chunks are copied once into a reusable assembly buffer. The public
names of ``overlay.wire._handshake`` are re-exported here.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import anyio
import anyio.abc
from anyio import TypedAttributeSet, typed_attribute

from overlay.errors import (
    FrameError,
    HandshakeError,
    HandshakeTimeout,
    LocalProtocolError,
    OverlayError,
)
from overlay.identity import NodeId
from overlay.transport._config import TransportConfig
from overlay.transport._failures import STREAM_ERRORS, stream_failure
from overlay.wire._handshake import (
    NOISE_PROTOCOL,
    PROLOGUE,
    SIGNATURE_PREFIX,
    ProofCache,
    SecureHandshake,
    SecureIdentity,
    verify_handshake_payload,
)
from overlay.wire._noise import MAX_MESSAGE_LEN, TAGLEN, CipherState

__all__ = [
    "MAX_PLAINTEXT",
    "NOISE_PROTOCOL",
    "NowaitWriter",
    "PROLOGUE",
    "PeerAttribute",
    "ProofCache",
    "SIGNATURE_PREFIX",
    "SecureHandshake",
    "SecureIdentity",
    "SecureStream",
    "SecureStreamStatistics",
    "TransportReader",
    "encrypt_frames",
    "secure_handshake",
    "verify_handshake_payload",
]

logger = logging.getLogger(__name__)

MAX_PLAINTEXT = MAX_MESSAGE_LEN - TAGLEN
"""Largest plaintext carried by one transport message (65519)."""

_LEN = struct.Struct(">H")
_READ_SIZE = 262144
_SMALL = 8192  # below this, ``header + ciphertext`` concatenation beats encrypt_into
_CLOSE_TIMEOUT = 1.0
_UNKNOWN_ADDRESS = "<unknown>"


class PeerAttribute(TypedAttributeSet):
    """Typed attributes of a :class:`SecureStream` (``stream.extra(PeerAttribute.node_id)``)."""

    node_id: NodeId = typed_attribute()
    """The node id the peer proved."""
    public_key: bytes = typed_attribute()
    """The peer's raw 32-byte ed25519 identity key."""
    remote_address: str = typed_attribute()
    """Printable peer address: ``"127.0.0.1:4321"``, ``"[::1]:4321"``, ``"memory:<id>"``, or
    ``"<unknown>"``."""
    remote_host: str = typed_attribute()
    """The peer's IP address (for per-IP limits); ``""`` when unknown."""
    initiator: bool = typed_attribute()
    """True when we dialed (we were the Noise initiator)."""
    handshake_hash: bytes = typed_attribute()
    """The Noise handshake hash: identical on both ends of one connection (channel binding)."""


# -- transport -------------------------------------------------------------------------------


def encrypt_frames(cipher: CipherState, data: bytes | bytearray | memoryview) -> bytes | bytearray:
    """Encrypt ``data`` as framed transport messages of <= 65519 plaintext bytes each.

    One AEAD call per piece; beyond a few KiB the ciphertexts are written straight into one fresh
    output buffer (never reused, so it may be handed to a transport that keeps a reference).
    """
    size = len(data)
    if size <= _SMALL:
        ciphertext = cipher.encrypt_with_ad(None, data)
        return _LEN.pack(len(ciphertext)) + ciphertext
    count = -(-size // MAX_PLAINTEXT)
    out = bytearray(size + count * (2 + TAGLEN))
    view = memoryview(out)
    source = memoryview(data)
    pos = 0
    for offset in range(0, size, MAX_PLAINTEXT):
        piece = source[offset : offset + MAX_PLAINTEXT]
        length = len(piece) + TAGLEN
        _LEN.pack_into(out, pos, length)
        pos += 2
        cipher.encrypt_into(None, piece, view[pos : pos + length])
        pos += length
    return out


class TransportReader:
    """Sans-IO decoder of framed transport messages: :meth:`feed` bytes, pop :meth:`next_message`.

    Fed chunks are queued without copying; a frame lying inside one chunk is decrypted straight
    from a memoryview of it. Only a frame that straddles chunks is copied, once, into a reusable
    65537-byte assembly buffer. Raises :class:`~overlay.errors.FrameError` for a frame shorter
    than a tag or one that fails to decrypt; the reader is unusable afterwards.
    """

    __slots__ = ("_asm", "_cipher", "_data", "_fill", "_pending", "_pos")

    def __init__(self, cipher: CipherState, initial: bytes = b"") -> None:
        self._cipher = cipher
        self._data: bytes | bytearray | memoryview = b""
        """Current chunk; ``_pos`` is the first unconsumed byte."""
        self._pos = 0
        self._pending: deque[bytes | bytearray | memoryview] = deque()
        self._asm: memoryview | None = None
        """Assembly buffer for straddling frames (allocated on first use)."""
        self._fill = 0
        """Bytes of the straddling frame in the assembly buffer (0 = not assembling)."""
        if initial:
            self.feed(initial)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (a partial frame)."""
        return len(self._data) - self._pos + self._fill + sum(map(len, self._pending))

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._pos >= len(self._data) and not self._fill and not self._pending:
            self._data, self._pos = data, 0  # everything consumed: no queueing needed
        else:
            self._pending.append(data)

    def _decrypt(self, ciphertext: memoryview) -> bytes:
        if len(ciphertext) < TAGLEN:
            raise FrameError(f"transport frame of {len(ciphertext)} bytes is shorter than its tag")
        try:
            return self._cipher.decrypt_with_ad(None, ciphertext)
        except HandshakeError:
            raise FrameError("transport message failed to decrypt") from None

    def _next_chunk(self) -> bool:
        if not self._pending:
            return False
        self._data = self._pending.popleft()
        self._pos = 0
        return True

    def next_message(self) -> bytes | None:
        """The next decrypted plaintext (maybe empty), or None if no whole frame is buffered."""
        while True:
            data, pos = self._data, self._pos
            avail = len(data) - pos
            if not self._fill:
                if avail >= 2:
                    end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
                    if end <= len(data):
                        self._pos = end
                        return self._decrypt(memoryview(data)[pos + 2 : end])
                if not self._pending:
                    return None  # keep the partial frame in place until more data arrives
                if avail:
                    if self._asm is None:
                        self._asm = memoryview(bytearray(2 + MAX_MESSAGE_LEN))
                    self._asm[:avail] = memoryview(data)[pos:]
                    self._fill = avail
                self._next_chunk()
                continue
            asm = self._asm
            assert asm is not None
            fill = self._fill
            if fill < 2:
                take = min(2 - fill, avail)
                asm[fill : fill + take] = memoryview(data)[pos : pos + take]
                fill += take
                pos += take
                avail -= take
                if fill < 2:
                    self._fill, self._pos = fill, pos
                    if not self._next_chunk():
                        return None
                    continue
            total = 2 + ((asm[0] << 8) | asm[1])
            take = min(total - fill, avail)
            asm[fill : fill + take] = memoryview(data)[pos : pos + take]
            fill += take
            self._pos = pos + take
            if fill == total:
                self._fill = 0
                return self._decrypt(asm[2:total])
            self._fill = fill
            if not self._next_chunk():
                return None


@dataclass(frozen=True, slots=True)
class SecureStreamStatistics:
    """Counters of one :class:`SecureStream`."""

    messages_sent: int
    """Noise transport messages encrypted (the send nonce)."""
    messages_received: int
    """Noise transport messages decrypted (the receive nonce)."""
    bytes_sent: int
    """Plaintext bytes sent."""
    bytes_received: int
    """Plaintext bytes received."""


@runtime_checkable
class NowaitWriter(Protocol):
    """A byte stream that can also take data synchronously (the asyncio data path)."""

    @property
    def write_ready(self) -> bool: ...

    def write_nowait(self, data: bytes | bytearray) -> None: ...


@functools.lru_cache(maxsize=64)
def _writes_nowait(cls: type) -> bool:
    """Whether streams of type ``cls`` are :class:`NowaitWriter` s (once per type: a runtime
    protocol check walks the protocol's attributes, ≈ 50 µs per connection)."""
    return callable(getattr(cls, "write_nowait", None)) and hasattr(cls, "write_ready")


class SecureStream(anyio.abc.ByteStream):
    """An encrypted, authenticated byte stream (built by :func:`secure_handshake`).

    ``send`` keeps message boundaries up to 65519 bytes (larger data is split);
    ``receive`` returns the plaintext of the next message, at most ``max_bytes`` of it (the rest
    is returned by the following calls). Concurrent ``send`` calls are serialised. A ``send``
    interrupted by cancellation may have written part of its frames, so the stream is marked
    broken and later sends raise ``anyio.BrokenResourceError``.
    """

    def __init__(
        self,
        transport_stream: anyio.abc.ByteStream,
        send_cipher: CipherState,
        receive_cipher: CipherState,
        *,
        node_id: NodeId,
        public_key: bytes,
        initiator: bool,
        handshake_hash: bytes,
        remote_address: str = _UNKNOWN_ADDRESS,
        remote_host: str = "",
        buffered: bytes = b"",
    ) -> None:
        self._transport = transport_stream
        self._send_cipher = send_cipher
        self._receive_cipher = receive_cipher
        self._reader = TransportReader(receive_cipher, buffered)
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._send_broken = False
        self._head: bytes | None = None
        self._head_pos = 0
        self.node_id = node_id
        self.public_key = public_key
        self.initiator = initiator
        self.handshake_hash = handshake_hash
        """Noise handshake hash: identical on both ends (channel binding)."""
        self.remote_address = remote_address
        self.remote_host = remote_host
        self._bytes_sent = 0
        self._bytes_received = 0
        self._nowait: NowaitWriter | None = (
            cast(NowaitWriter, transport_stream)
            if _writes_nowait(type(transport_stream)) else None
        )
        self._message_hook: Callable[[bytes], bool] | None = None
        self._hook_error: Exception | None = None
        self._merged_attributes: dict[Any, Callable[[], Any]] | None = None
        self._attributes: dict[Any, Callable[[], Any]] = {
            PeerAttribute.node_id: lambda: node_id,
            PeerAttribute.public_key: lambda: public_key,
            PeerAttribute.initiator: lambda: initiator,
            PeerAttribute.handshake_hash: lambda: handshake_hash,
            PeerAttribute.remote_address: lambda: remote_address,
            PeerAttribute.remote_host: lambda: remote_host,
        }

    @property
    def transport_stream(self) -> anyio.abc.ByteStream:
        return self._transport

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        merged = self._merged_attributes
        if merged is None:  # built once: the transport's own mapping is rebuilt on every call
            merged = {**self._transport.extra_attributes, **self._attributes}
            self._merged_attributes = merged
        return merged

    def statistics(self) -> SecureStreamStatistics:
        sent, received = self._send_cipher.n, self._receive_cipher.n
        return SecureStreamStatistics(sent, received, self._bytes_sent, self._bytes_received)

    async def send(self, item: bytes) -> None:
        """Encrypt and write ``item`` (one underlying ``send``); ``b""`` sends nothing."""
        if not item:
            return
        async with self._send_lock:
            if self._send_broken:
                raise anyio.BrokenResourceError("an earlier send was interrupted")
            data = encrypt_frames(self._send_cipher, item)
            try:
                # A fresh bytearray: every anyio byte stream accepts buffers; saves a copy.
                await self._transport.send(data)  # type: ignore[arg-type]
            except BaseException:
                self._send_broken = True
                raise
            self._bytes_sent += len(item)

    @property
    def supports_send_nowait(self) -> bool:
        """Whether the underlying stream can take data synchronously (:meth:`send_nowait`)."""
        return self._nowait is not None

    def send_ready(self) -> bool:
        """Whether :meth:`send_nowait` may be called now: no ``send`` in progress or broken and
        the underlying stream ready to take data at once."""
        nowait = self._nowait
        return (nowait is not None and nowait.write_ready and not self._send_broken
                and not self._send_lock.locked())

    def send_nowait(self, item: bytes) -> None:
        """Encrypt and hand ``item`` to the underlying stream now (only when
        :meth:`send_ready`); ``anyio.BrokenResourceError`` if the connection is gone."""
        nowait = self._nowait
        assert nowait is not None
        if not item:
            return
        try:
            nowait.write_nowait(encrypt_frames(self._send_cipher, item))
        except BaseException:
            self._send_broken = True
            raise
        self._bytes_sent += len(item)

    def set_message_hook(self, hook: Callable[[bytes], bool] | None) -> bool:
        """Have decrypted messages handed to ``hook`` synchronously, from the transport's
        callback, while a :meth:`receive` waits with nothing buffered (the asyncio data path:
        no event-loop step between the bytes arriving and their handling). ``hook`` returns
        whether the receiver must be woken: :meth:`receive` then returns ``b""`` (the only
        case in which it returns nothing), and messages decrypted after that one are left for
        the following calls. An exception raised by ``hook``, or a frame that fails to decrypt,
        is raised by that :meth:`receive`. False (and no hook) when the underlying stream has
        no receive hook (trio, memory streams). None removes the hook."""
        transport = self._transport
        set_hook = getattr(transport, "set_receive_hook", None)
        if set_hook is None:
            return False
        self._message_hook = hook
        set_hook(None if hook is None else self._on_transport_data)
        return True

    def _on_transport_data(self, data: bytes) -> bool:
        """The transport's receive hook: decrypt and hand on whole messages (see
        :meth:`set_message_hook`). Called only while :meth:`receive` waits on the transport,
        so nothing decrypted is pending ahead of ``data``."""
        hook = self._message_hook
        if hook is None:
            self._reader.feed(data)
            return True
        reader = self._reader
        try:
            reader.feed(data)
            while (plaintext := reader.next_message()) is not None:
                size = len(plaintext)
                if not size:
                    continue
                self._bytes_received += size
                if hook(plaintext):
                    return True
        except Exception as exc:  # raised by the receiver, as a receive would have
            self._hook_error = exc
            return True
        return False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return the next plaintext bytes (at most ``max_bytes``; never empty unless a
        message hook asks the receiver to go on, see :meth:`set_message_hook`)."""
        if max_bytes < 1:
            raise LocalProtocolError("max_bytes must be a positive integer")
        head = self._head
        if head is not None:
            pos = self._head_pos
            end = pos + max_bytes
            if end >= len(head):
                self._head = None
                return head[pos:]
            self._head_pos = end
            return head[pos:end]
        reader = self._reader
        while True:
            plaintext = reader.next_message()
            if plaintext is None:
                try:
                    data = await self._transport.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    if reader.buffered:
                        raise FrameError("connection closed in the middle of a frame") from None
                    raise
                if not data:  # the message hook took the bytes and wakes us
                    error = self._hook_error
                    if error is not None:
                        self._hook_error = None
                        raise error
                    return b""
                reader.feed(data)
                continue
            size = len(plaintext)
            if not size:
                continue
            self._bytes_received += size
            if size > max_bytes:
                self._head = plaintext
                self._head_pos = max_bytes
                return plaintext[:max_bytes]
            return plaintext

    async def send_eof(self) -> None:
        """Half-close the underlying stream (unauthenticated; see the module docstring)."""
        async with self._send_lock:
            await self._transport.send_eof()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"SecureStream(node_id={self.node_id}, remote_address={self.remote_address!r})"


# -- the async handshake ---------------------------------------------------------------------

_DEFAULTS = TransportConfig()  # the one default of ``handshake_timeout``


def _socket_address(stream: anyio.abc.ByteStream) -> tuple[str | None, str | None]:
    raw = stream.extra(anyio.abc.SocketAttribute.remote_address, None)
    if isinstance(raw, tuple) and len(raw) >= 2:
        host = str(raw[0])
        printable = f"[{host}]:{raw[1]}" if ":" in host else f"{host}:{raw[1]}"
        return printable, host
    if isinstance(raw, str) and raw:
        return raw, ""
    return None, None


async def _close_quietly(stream: anyio.abc.ByteStream) -> None:
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await stream.aclose()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            logger.debug("closing a stream after a failed handshake: %r", exc)


async def _pump(stream: anyio.abc.ByteStream, handshake: SecureHandshake, hold_last: bool) -> bytes:
    """Run the handshake. With ``hold_last`` the initiator's last message is returned unsent,
    to be written together with its first application data (one write, one read fewer)."""
    out = handshake.data_to_send()
    if out:
        await stream.send(out)
    while not handshake.is_complete:
        handshake.receive_data(await stream.receive(_READ_SIZE))
        out = handshake.data_to_send()
        if out:
            if hold_last and handshake.is_complete:
                return out
            await stream.send(out)
    return b""


def _failure(exc: BaseException, timeout: float) -> BaseException:
    """The one mapping of what the handshake's I/O raised into overlay's errors (the transport
    boundary): a deadline → HandshakeTimeout; a backend stream error → HandshakeError with
    reason CONNECTION; anything else (overlay's own errors, cancellation) unchanged."""
    if isinstance(exc, TimeoutError) and not isinstance(exc, OverlayError):
        return HandshakeTimeout(f"secure handshake did not finish within {timeout:g} s")
    if isinstance(exc, STREAM_ERRORS):
        return stream_failure(exc, "the handshake")
    return exc


async def secure_handshake(
    stream: anyio.abc.ByteStream,
    identity: SecureIdentity,
    *,
    initiator: bool,
    expected_id: NodeId | None = None,
    timeout: float = _DEFAULTS.handshake_timeout,
    remote_address: str | None = None,
    remote_host: str | None = None,
    first_data: bytes = b"",
) -> SecureStream:
    """Run the Noise XX handshake over ``stream`` and return the secure stream.

    ``expected_id`` (dialers) makes a peer proving another id fail with AuthenticationError.
    ``remote_address``/``remote_host`` are used when ``stream`` has no socket address.
    ``first_data`` (initiators) is sent encrypted in the same write as the handshake's last
    message, saving the responder a read (the node's hello goes this way).
    """
    if not timeout > 0:  # also refuses NaN
        raise LocalProtocolError(f"handshake timeout must be positive, got {timeout!r}")
    handshake = SecureHandshake(identity, initiator=initiator, expected_id=expected_id)
    try:
        with anyio.fail_after(timeout):
            pending = await _pump(stream, handshake, bool(first_data) and initiator)
            send_cipher, receive_cipher = handshake.transport_ciphers()
            if first_data:  # with the handshake's held last message (initiator), in one write
                await stream.send(pending + encrypt_frames(send_cipher, first_data))
    except BaseException as exc:
        await _close_quietly(stream)
        mapped = _failure(exc, timeout)
        if mapped is exc:
            raise
        raise mapped from exc
    socket_address, socket_host = _socket_address(stream)
    node_id, public_key = handshake.remote_node_id, handshake.remote_public_key
    assert node_id is not None and public_key is not None
    secure = SecureStream(
        stream,
        send_cipher,
        receive_cipher,
        node_id=node_id,
        public_key=public_key,
        initiator=initiator,
        handshake_hash=handshake.handshake_hash,
        remote_address=socket_address or remote_address or _UNKNOWN_ADDRESS,
        remote_host=socket_host or remote_host or "",
        buffered=handshake.leftover,
    )
    secure._bytes_sent = len(first_data)
    return secure
