"""The secure channel's handshake, sans-IO: Noise XX with each side's ed25519 identity bound in.

Wire protocol (version 1)
-------------------------
* Pattern ``Noise_XX_25519_ChaChaPoly_SHA256``, prologue ``b"overlay/noise/1"``.
* Every handshake message is framed as a 2-byte big-endian length followed by that many bytes
  (at most 65535), like the transport messages that follow it (see
  ``overlay/transport/_secure.py``).
* XX message 1 (initiator -> responder): ``e`` with an empty payload (exactly 32 bytes).
* XX message 2 (responder) and message 3 (initiator) carry, as their encrypted payload, the
  protobuf ``HandshakePayload{identity_key, identity_sig}``: the sender's raw 32-byte ed25519
  public key and its signature over ``b"overlay-noise-static-key:" || noise_static_public_key``
  (the sender's 32-byte X25519 static key, as transmitted by the ``s`` token). The receiver checks
  that the payload decodes and the key is 32 bytes (else :class:`~overlay.errors.HandshakeError`)
  and that the signature is valid (else :class:`~overlay.errors.AuthenticationError`); the peer's
  node id is ``node_id_from_public_key(identity_key)``. A dialer that expected another node id
  fails with ``AuthenticationError("expected <id>, peer proved <id>")`` before sending message 3.
* After message 3 both sides ``Split()``: the initiator sends with c1 and receives with c2.

Errors
------
:meth:`SecureHandshake.receive_data` raises :class:`~overlay.errors.HandshakeError` for a
malformed message or payload, a non-empty message 1 or a failed decryption, and
:class:`~overlay.errors.AuthenticationError` for a bad identity proof or an unexpected node id.
The handshake then stays failed: every later ``receive_data`` raises ``HandshakeError``.

Theory of operation
-------------------
:class:`SecureHandshake` is the state machine: bytes in (``receive_data``), framed bytes out
(``data_to_send``), no I/O and no clock; :func:`overlay.transport._secure.secure_handshake` pumps
it over a
stream under a deadline. The initiator queues message 1 on construction; each side queues its
next message as soon as the peer's message before it has been read and verified, so
``data_to_send`` after every ``receive_data`` is the whole driver. ``remote_node_id`` and
``remote_public_key`` are set only once a proof has verified. Bytes that arrive after the last
handshake message are kept in ``leftover`` for the transport reader (the initiator may send
transport data right behind message 3).

The Noise static key and the identity signature over it are made once per
:class:`SecureIdentity` (its ``payload``), and valid peer proofs are remembered in its
:class:`ProofCache` (a bounded LRU set; failures are never cached), so a handshake costs one
X25519 key generation, three X25519 operations and at most one ed25519 verification per side.
Every public name here is also importable from ``overlay.transport._secure``.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable

from google.protobuf.message import DecodeError as _PbDecodeError

from overlay.errors import AuthenticationError, HandshakeError
from overlay.identity import NodeId, NodeKey, node_id_from_public_key, verify_signature
from overlay.wire._noise import CipherState, HandshakeState, KeyPair
from proto import overlay_pb2 as pb

__all__ = [
    "NOISE_PROTOCOL",
    "PROLOGUE",
    "ProofCache",
    "SIGNATURE_PREFIX",
    "SecureHandshake",
    "SecureIdentity",
    "verify_handshake_payload",
]

NOISE_PROTOCOL = "Noise_XX_25519_ChaChaPoly_SHA256"
"""The Noise protocol name of the channel."""
PROLOGUE = b"overlay/noise/1"
"""Noise prologue; a peer with another prologue fails the handshake."""
SIGNATURE_PREFIX = b"overlay-noise-static-key:"
"""Prefix of the message the identity key signs (followed by the Noise static public key)."""

_LEN = struct.Struct(">H")


class ProofCache:
    """Bounded LRU set of identity proofs already verified (ed25519 verification is the most
    expensive step of a handshake, and a peer's proof is identical on every reconnect while its
    process lives). Only valid proofs are remembered, keyed by their exact bytes."""

    __slots__ = ("_entries", "_verify", "capacity")

    def __init__(
        self,
        capacity: int = 1024,
        *,
        verify: Callable[[bytes, bytes, bytes], bool] = verify_signature,
    ) -> None:
        """``verify(public_key, message, signature)`` checks a proof the cache does not hold
        (ed25519 by default; tests pass a counting wrapper)."""
        self.capacity = capacity
        self._verify = verify
        self._entries: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        entry = public_key + signature + message
        if entry in self._entries:
            self._entries.move_to_end(entry)
            return True
        if not self._verify(public_key, message, signature):
            return False
        self._entries[entry] = None
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return True


class SecureIdentity:
    """A node's identity prepared for handshakes: a fresh Noise static key, signed once.

    It also carries the :class:`ProofCache` of peer identity proofs its handshakes verified.
    """

    __slots__ = ("node_key", "payload", "proofs", "static")

    def __init__(self, node_key: NodeKey, *, static: KeyPair | None = None) -> None:
        self.node_key = node_key
        self.proofs = ProofCache()
        self.static = static if static is not None else KeyPair.generate()
        """Noise static key (not persisted; one per ``SecureIdentity``)."""
        signature = node_key.sign(SIGNATURE_PREFIX + self.static.public)
        self.payload: bytes = pb.HandshakePayload(
            identity_key=node_key.public_key, identity_sig=signature
        ).SerializeToString()
        """Encoded ``HandshakePayload`` sent in XX message 2 or 3."""

    @property
    def node_id(self) -> NodeId:
        return self.node_key.node_id

    @property
    def public_key(self) -> bytes:
        return self.node_key.public_key

    def __repr__(self) -> str:
        return f"SecureIdentity(node_id={self.node_id})"


def verify_handshake_payload(
    payload: bytes,
    noise_static: bytes,
    expected_id: NodeId | None = None,
    *,
    proofs: ProofCache | None = None,
) -> tuple[NodeId, bytes]:
    """Check a peer's ``HandshakePayload``; return its ``(node_id, ed25519_public_key)``."""
    try:
        message = pb.HandshakePayload.FromString(payload)
    except _PbDecodeError:
        raise HandshakeError("malformed handshake payload") from None
    key = message.identity_key
    if len(key) != 32:
        raise HandshakeError(f"identity key must be 32 bytes, got {len(key)}")
    signed = SIGNATURE_PREFIX + noise_static
    sig = message.identity_sig
    valid = (
        proofs.verify(key, signed, sig)
        if proofs is not None
        else verify_signature(key, signed, sig)
    )
    if not valid:
        raise AuthenticationError("invalid identity signature over the Noise static key")
    node_id = node_id_from_public_key(key)
    if expected_id is not None and node_id != expected_id:
        raise AuthenticationError(f"expected {expected_id}, peer proved {node_id}")
    return node_id, key


class SecureHandshake:
    """Sans-IO XX handshake driver: feed :meth:`receive_data`, write :meth:`data_to_send`.

    Bytes that arrive after the last handshake message are kept in :attr:`leftover` (the
    initiator may send transport data right behind message 3).
    """

    __slots__ = (
        "_expected_id",
        "_failed",
        "_identity",
        "_inbuf",
        "_noise",
        "_out",
        "initiator",
        "remote_node_id",
        "remote_public_key",
    )

    def __init__(
        self, identity: SecureIdentity, *, initiator: bool, expected_id: NodeId | None = None
    ) -> None:
        self._identity = identity
        self._expected_id = expected_id
        self.initiator = initiator
        self._noise = HandshakeState(
            NOISE_PROTOCOL, initiator, prologue=PROLOGUE, s=identity.static
        )
        self._inbuf = bytearray()
        self._out: list[bytes] = []
        self._failed = False
        self.remote_node_id: NodeId | None = None
        """The peer's node id, once proven."""
        self.remote_public_key: bytes | None = None
        """The peer's ed25519 public key, once proven."""
        if initiator:
            self._write(b"")

    @property
    def is_complete(self) -> bool:
        return self._noise.is_complete and not self._failed

    @property
    def handshake_hash(self) -> bytes:
        return self._noise.handshake_hash

    @property
    def leftover(self) -> bytes:
        """Bytes received after the final handshake message (only meaningful once complete)."""
        return bytes(self._inbuf)

    def transport_ciphers(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` cipher states; only after completion."""
        return self._noise.transport_ciphers()

    def data_to_send(self) -> bytes:
        """Framed handshake bytes to write now (may be empty)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _write(self, payload: bytes) -> None:
        message = self._noise.write_message(payload)
        self._out.append(_LEN.pack(len(message)))
        self._out.append(message)

    def receive_data(self, data: bytes) -> None:
        """Consume bytes from the peer; raise HandshakeError / AuthenticationError on failure."""
        if self._failed:
            raise HandshakeError("the handshake already failed")
        self._inbuf += data
        if self._noise.is_complete:
            return
        try:
            self._process()
        except BaseException:
            self._failed = True
            raise

    def _process(self) -> None:
        buf = self._inbuf
        noise = self._noise
        while not noise.is_complete and not noise.is_our_turn:
            if len(buf) < 2:
                return
            end = 2 + ((buf[0] << 8) | buf[1])
            if len(buf) < end:
                return
            message = bytes(buf[2:end])
            del buf[:end]
            index = noise.message_index
            payload = noise.read_message(message)
            if index == 0:
                if payload:
                    raise HandshakeError("XX message 1 must have an empty payload")
            else:
                assert noise.rs is not None
                self.remote_node_id, self.remote_public_key = verify_handshake_payload(
                    payload, noise.rs, self._expected_id, proofs=self._identity.proofs
                )
            if not noise.is_complete:
                self._write(self._identity.payload)
