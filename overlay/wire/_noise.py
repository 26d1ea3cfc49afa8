"""A pure, sans-IO Noise Protocol Framework core (revision 34): ``Noise_*_25519_ChaChaPoly_SHA256``.

Theory of operation
-------------------
This module follows the state machines of the Noise specification, section 5, literally:

* :class:`CipherState` holds a key ``k`` and a 64-bit nonce ``n``. The AEAD nonce is 4 zero bytes
  followed by ``n`` as 8 little-endian bytes. ``n`` only ever grows; ``2**64 - 1`` is reserved, so
  using it is an error. One ``ChaCha20Poly1305`` object is built per key (the hot path is a single
  AEAD call plus a struct pack).
* :class:`SymmetricState` holds the chaining key ``ck``, the handshake hash ``h`` and a
  :class:`CipherState`; ``MixKey`` / ``MixHash`` / ``MixKeyAndHash`` / ``EncryptAndHash`` /
  ``DecryptAndHash`` / ``Split`` are the spec's functions (HKDF is HMAC-SHA256 based).
* :class:`HandshakeState` runs a :class:`HandshakePattern` (pre-messages plus message token lists,
  parsed from the spec's notation). ``write_message`` / ``read_message`` must be called in turn
  (initiator writes first); after the last message :attr:`HandshakeState.is_complete` is true and
  :meth:`HandshakeState.split` yields the transport cipher states.

Invariants: no clock, no I/O, no global random state (keys come from the caller or from the
``cryptography`` CSPRNG). Every malformed input from the peer (short message, failed decryption,
low-order public key, message over 65535 bytes) raises :class:`~overlay.errors.HandshakeError`;
using the API out of turn raises :class:`~overlay.errors.LocalProtocolError`. After any error a
:class:`HandshakeState` is unusable and must be discarded (like the connection). PSK modifiers are
not supported. The deferred patterns (``X1N`` ... ``I1X1``) are supported too: they only differ in
their token lists.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from overlay.errors import HandshakeError, LocalProtocolError, MessageTooLarge, OverlayError

__all__ = [
    "CipherState",
    "DHLEN",
    "HASHLEN",
    "HandshakePattern",
    "HandshakeState",
    "KeyPair",
    "MAX_MESSAGE_LEN",
    "PATTERNS",
    "SymmetricState",
    "TAGLEN",
    "parse_protocol_name",
]

DHLEN = 32
"""Length of an X25519 public key / shared secret."""
HASHLEN = 32
"""Length of a SHA-256 digest."""
TAGLEN = 16
"""Length of a ChaCha20-Poly1305 authentication tag."""
MAX_MESSAGE_LEN = 65535
"""Largest Noise message (handshake or transport), in bytes."""
_MAX_NONCE = 2**64 - 1
_NONCE = struct.Struct("<4xQ")
_SUITE = "25519_ChaChaPoly_SHA256"
_Buffer = bytes | bytearray | memoryview


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp_key = _hmac(chaining_key, ikm)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    return out1, out2


class KeyPair:
    """An X25519 key pair with its raw 32-byte public key cached."""

    __slots__ = ("private", "public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self.private = private
        self.public: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        if len(data) != DHLEN:
            raise LocalProtocolError(f"X25519 private key must be {DHLEN} bytes, got {len(data)}")
        return cls(X25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def dh(self, public: bytes) -> bytes:
        """X25519 with a peer's raw public key; a low-order key is the peer's fault."""
        try:
            return self.private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:
            raise HandshakeError("invalid X25519 public key from peer") from exc

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()})"


class CipherState:
    """Noise CipherState: AEAD key plus nonce counter. Without a key it is the identity."""

    __slots__ = ("_aead", "_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._key: bytes | None = None
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0
        """Next nonce."""
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalProtocolError(f"cipher key must be 32 bytes, got {len(key)}")
        self._key = key
        self._aead = ChaCha20Poly1305(key)
        self.n = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt_with_ad(self, ad: bytes | None, plaintext: _Buffer) -> bytes:
        """Encrypt and advance the nonce (plaintext returned as-is while there is no key)."""
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        n = self.n
        if n >= _MAX_NONCE:
            raise OverlayError("Noise nonce space exhausted; the connection must be re-established")
        ciphertext = aead.encrypt(_NONCE.pack(n), plaintext, ad or None)
        self.n = n + 1
        return ciphertext

    def encrypt_into(self, ad: bytes | None, plaintext: _Buffer, out: memoryview) -> None:
        """Encrypt into ``out`` (exactly ``len(plaintext) + 16`` bytes) and advance the nonce."""
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("encrypt_into() needs a keyed CipherState")
        n = self.n
        if n >= _MAX_NONCE:
            raise OverlayError("Noise nonce space exhausted; the connection must be re-established")
        aead.encrypt_into(_NONCE.pack(n), plaintext, ad or None, out)
        self.n = n + 1

    def decrypt_with_ad(self, ad: bytes | None, ciphertext: _Buffer) -> bytes:
        """Decrypt and advance the nonce; failure raises HandshakeError (nonce not advanced)."""
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        n = self.n
        if n >= _MAX_NONCE:
            raise HandshakeError("Noise nonce space exhausted")
        try:
            plaintext = aead.decrypt(_NONCE.pack(n), ciphertext, ad or None)
        except InvalidTag:
            raise HandshakeError("decryption failed (bad key, tag or nonce)") from None
        self.n = n + 1
        return plaintext

    def __repr__(self) -> str:
        return f"CipherState(has_key={self.has_key()}, n={self.n})"


class SymmetricState:
    """Noise SymmetricState: chaining key, handshake hash and the handshake CipherState."""

    __slots__ = ("ck", "cipher", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _sha256(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        temp_key = _hmac(self.ck, ikm)
        self.ck = _hmac(temp_key, b"\x01")
        temp_h = _hmac(temp_key, self.ck + b"\x02")
        temp_k = _hmac(temp_key, temp_h + b"\x03")
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k)

    def get_handshake_hash(self) -> bytes:
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


_TOKENS = frozenset({"e", "s", "ee", "es", "se", "ss"})


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A handshake pattern in the spec's notation, e.g. ``"-> e\\n<- e, ee, s, es\\n-> s, se"``."""

    name: str
    """Pattern name, e.g. ``"XX"``."""
    initiator_pre: tuple[str, ...]
    """Pre-message tokens of the initiator (``()`` or ``("s",)``)."""
    responder_pre: tuple[str, ...]
    """Pre-message tokens of the responder."""
    messages: tuple[tuple[str, ...], ...]
    """Token lists; message ``i`` is sent by the initiator when ``i`` is even."""

    @classmethod
    def parse(cls, name: str, notation: str) -> HandshakePattern:
        lines = [line.strip() for line in notation.strip().splitlines() if line.strip()]
        if "..." in lines:
            split_at = lines.index("...")
            pre, body = lines[:split_at], lines[split_at + 1 :]
        else:
            pre, body = [], lines
        initiator_pre: tuple[str, ...] = ()
        responder_pre: tuple[str, ...] = ()
        for line in pre:
            arrow, tokens = _parse_line(line)
            if arrow == "->":
                initiator_pre = tokens
            else:
                responder_pre = tokens
        messages: list[tuple[str, ...]] = []
        for index, line in enumerate(body):
            arrow, tokens = _parse_line(line)
            if arrow != ("->" if index % 2 == 0 else "<-"):
                raise ValueError(f"pattern {name}: message {index} goes the wrong way")
            messages.append(tokens)
        return cls(name, initiator_pre, responder_pre, tuple(messages))

    @property
    def one_way(self) -> bool:
        """True for N, K, X: only the initiator sends transport messages."""
        return len(self.messages) == 1


def _parse_line(line: str) -> tuple[str, tuple[str, ...]]:
    arrow, _, rest = line.partition(" ")
    if arrow not in ("->", "<-"):
        raise ValueError(f"bad pattern line {line!r}")
    tokens = tuple(token.strip() for token in rest.split(","))
    if not set(tokens) <= _TOKENS:
        raise ValueError(f"bad tokens in pattern line {line!r}")
    return arrow, tokens


_NOTATION: dict[str, str] = {
    # One-way patterns (section 7.4).
    "N": "<- s\n...\n-> e, es",
    "K": "-> s\n<- s\n...\n-> e, es, ss",
    "X": "<- s\n...\n-> e, es, s, ss",
    # Fundamental interactive patterns (section 7.5).
    "NN": "-> e\n<- e, ee",
    "NK": "<- s\n...\n-> e, es\n<- e, ee",
    "NX": "-> e\n<- e, ee, s, es",
    "XN": "-> e\n<- e, ee\n-> s, se",
    "XK": "<- s\n...\n-> e, es\n<- e, ee\n-> s, se",
    "XX": "-> e\n<- e, ee, s, es\n-> s, se",
    "KN": "-> s\n...\n-> e\n<- e, ee, se",
    "KK": "-> s\n<- s\n...\n-> e, es, ss\n<- e, ee, se",
    "KX": "-> s\n...\n-> e\n<- e, ee, se, s, es",
    "IN": "-> e, s\n<- e, ee, se",
    "IK": "<- s\n...\n-> e, es, s, ss\n<- e, ee, se",
    "IX": "-> e, s\n<- e, ee, se, s, es",
    # Deferred patterns (section 18.2).
    "NK1": "<- s\n...\n-> e\n<- e, ee, es",
    "NX1": "-> e\n<- e, ee, s\n-> es",
    "X1N": "-> e\n<- e, ee\n-> s\n<- se",
    "X1K": "<- s\n...\n-> e, es\n<- e, ee\n-> s\n<- se",
    "XK1": "<- s\n...\n-> e\n<- e, ee, es\n-> s, se",
    "X1K1": "<- s\n...\n-> e\n<- e, ee, es\n-> s\n<- se",
    "X1X": "-> e\n<- e, ee, s, es\n-> s\n<- se",
    "XX1": "-> e\n<- e, ee, s\n-> es, s, se",
    "X1X1": "-> e\n<- e, ee, s\n-> es, s\n<- se",
    "K1N": "-> s\n...\n-> e\n<- e, ee\n-> se",
    "K1K": "-> s\n<- s\n...\n-> e, es\n<- e, ee\n-> se",
    "KK1": "-> s\n<- s\n...\n-> e\n<- e, ee, se, es",
    "K1K1": "-> s\n<- s\n...\n-> e\n<- e, ee, es\n-> se",
    "K1X": "-> s\n...\n-> e\n<- e, ee, s, es\n-> se",
    "KX1": "-> s\n...\n-> e\n<- e, ee, se, s\n-> es",
    "K1X1": "-> s\n...\n-> e\n<- e, ee, s\n-> se, es",
    "I1N": "-> e, s\n<- e, ee\n-> se",
    "I1K": "<- s\n...\n-> e, es, s\n<- e, ee\n-> se",
    "IK1": "<- s\n...\n-> e, s\n<- e, ee, se, es",
    "I1K1": "<- s\n...\n-> e, s\n<- e, ee, es\n-> se",
    "I1X": "-> e, s\n<- e, ee, s, es\n-> se",
    "IX1": "-> e, s\n<- e, ee, se, s\n-> es",
    "I1X1": "-> e, s\n<- e, ee, s\n-> se, es",
}

PATTERNS: dict[str, HandshakePattern] = {
    name: HandshakePattern.parse(name, notation) for name, notation in _NOTATION.items()
}
"""Every supported pattern by name."""


def parse_protocol_name(protocol_name: str) -> HandshakePattern:
    """``"Noise_XX_25519_ChaChaPoly_SHA256"`` -> the XX pattern; other suites are refused."""
    prefix, _, rest = protocol_name.partition("_")
    pattern_name, _, suite = rest.partition("_")
    if prefix != "Noise" or suite != _SUITE or pattern_name not in PATTERNS:
        raise LocalProtocolError(f"unsupported Noise protocol {protocol_name!r}")
    return PATTERNS[pattern_name]


def _as_keypair(key: KeyPair | X25519PrivateKey | bytes | None) -> KeyPair | None:
    if key is None or isinstance(key, KeyPair):
        return key
    if isinstance(key, X25519PrivateKey):
        return KeyPair(key)
    return KeyPair.from_private_bytes(key)


class HandshakeState:
    """Noise HandshakeState for one side of one handshake.

    ``s``/``e`` are our static/ephemeral keys (``KeyPair``, ``X25519PrivateKey`` or raw 32-byte
    private keys); missing ones are generated when the pattern needs them, except a static key
    that appears in a pre-message (the peer must already know it). ``rs``/``re`` are the peer's
    raw public keys known in advance (pre-messages).
    """

    __slots__ = (
        "_index",
        "_split",
        "_symmetric",
        "e",
        "initiator",
        "pattern",
        "protocol_name",
        "re",
        "rs",
        "s",
    )

    def __init__(
        self,
        pattern: HandshakePattern | str,
        initiator: bool,
        *,
        prologue: bytes = b"",
        s: KeyPair | X25519PrivateKey | bytes | None = None,
        e: KeyPair | X25519PrivateKey | bytes | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
    ) -> None:
        if isinstance(pattern, str):
            if pattern.startswith("Noise_"):
                pattern = parse_protocol_name(pattern)
            elif pattern in PATTERNS:
                pattern = PATTERNS[pattern]
            else:
                raise LocalProtocolError(f"unsupported Noise pattern {pattern!r}")
        self.pattern = pattern
        self.protocol_name = f"Noise_{pattern.name}_{_SUITE}"
        self.initiator = initiator
        self.s = _as_keypair(s)
        self.e = _as_keypair(e)
        for name, value in (("rs", rs), ("re", re)):
            if value is not None and len(value) != DHLEN:
                raise LocalProtocolError(f"{name} must be {DHLEN} bytes, got {len(value)}")
        self.rs = rs
        self.re = re
        self._index = 0
        self._split: tuple[CipherState, CipherState] | None = None
        self._symmetric = SymmetricState(self.protocol_name.encode("ascii"))
        self._symmetric.mix_hash(prologue)
        own_pre, peer_pre = (
            (pattern.initiator_pre, pattern.responder_pre)
            if initiator
            else (pattern.responder_pre, pattern.initiator_pre)
        )
        if "s" in own_pre and self.s is None:
            raise LocalProtocolError(f"{pattern.name}: our static key must be given (pre-message)")
        if "s" in peer_pre and self.rs is None:
            raise LocalProtocolError(f"{pattern.name}: the peer's static key (rs) must be given")
        if self.s is None and self._uses_own_static():
            self.s = KeyPair.generate()
        # Pre-messages are hashed initiator first, then responder.
        for tokens, local in (
            (pattern.initiator_pre, initiator),
            (pattern.responder_pre, not initiator),
        ):
            for token in tokens:
                self._symmetric.mix_hash(self._pre_key(token, local))

    def _uses_own_static(self) -> bool:
        own = "->" if self.initiator else "<-"
        for index, tokens in enumerate(self.pattern.messages):
            sender = "->" if index % 2 == 0 else "<-"
            for token in tokens:
                if token == "s" and sender == own:
                    return True
                if token == "ss":
                    return True
                if token == "es" and not self.initiator:
                    return True
                if token == "se" and self.initiator:
                    return True
        return False

    def _pre_key(self, token: str, local: bool) -> bytes:
        if token == "s":
            if local:
                assert self.s is not None
                return self.s.public
            assert self.rs is not None
            return self.rs
        if local:
            if self.e is None:
                raise LocalProtocolError("ephemeral pre-message key must be given")
            return self.e.public
        if self.re is None:
            raise LocalProtocolError("the peer's ephemeral pre-message key must be given")
        return self.re

    # -- state -----------------------------------------------------------------------------------

    @property
    def is_complete(self) -> bool:
        return self._index >= len(self.pattern.messages)

    @property
    def message_index(self) -> int:
        """Number of handshake messages written or read so far."""
        return self._index

    @property
    def is_our_turn(self) -> bool:
        """True when the next call must be :meth:`write_message`."""
        return not self.is_complete and (self._index % 2 == 0) == self.initiator

    @property
    def handshake_hash(self) -> bytes:
        """The handshake hash ``h`` (channel binding once the handshake is complete)."""
        return self._symmetric.h

    @property
    def remote_static(self) -> bytes | None:
        return self.rs

    def split(self) -> tuple[CipherState, CipherState]:
        """``(c1, c2)``: c1 encrypts initiator -> responder, c2 responder -> initiator."""
        if not self.is_complete:
            raise LocalProtocolError("split() before the handshake is complete")
        if self._split is None:
            self._split = self._symmetric.split()
        return self._split

    def transport_ciphers(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` cipher states for our role."""
        c1, c2 = self.split()
        return (c1, c2) if self.initiator else (c2, c1)

    # -- messages --------------------------------------------------------------------------------

    def _dh_for(self, token: str) -> bytes:
        if token == "ee":
            local, remote = self.e, self.re
        elif token == "ss":
            local, remote = self.s, self.rs
        elif (token == "es") == self.initiator:
            local, remote = self.e, self.rs
        else:
            local, remote = self.s, self.re
        if local is None or remote is None:
            raise LocalProtocolError(f"token {token!r}: a required key is missing")
        return local.dh(remote)

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying ``payload``."""
        if not self.is_our_turn:
            raise LocalProtocolError("write_message() out of turn or after the handshake")
        sym = self._symmetric
        out: list[bytes] = []
        for token in self.pattern.messages[self._index]:
            if token == "e":
                if self.e is None:
                    self.e = KeyPair.generate()
                out.append(self.e.public)
                sym.mix_hash(self.e.public)
            elif token == "s":
                if self.s is None:
                    raise LocalProtocolError("static key missing")
                out.append(sym.encrypt_and_hash(self.s.public))
            else:
                sym.mix_key(self._dh_for(token))
        out.append(sym.encrypt_and_hash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE_LEN:
            raise MessageTooLarge(
                f"Noise handshake message of {len(message)} bytes exceeds {MAX_MESSAGE_LEN}"
            )
        self._index += 1
        return message

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message; return its payload."""
        if self.is_complete or self.is_our_turn:
            raise LocalProtocolError("read_message() out of turn or after the handshake")
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeError(f"handshake message of {len(message)} bytes is too long")
        sym = self._symmetric
        pos = 0
        for token in self.pattern.messages[self._index]:
            if token == "e":
                if len(message) - pos < DHLEN:
                    raise HandshakeError("handshake message too short for an ephemeral key")
                self.re = bytes(message[pos : pos + DHLEN])
                pos += DHLEN
                sym.mix_hash(self.re)
            elif token == "s":
                size = DHLEN + TAGLEN if sym.cipher.has_key() else DHLEN
                if len(message) - pos < size:
                    raise HandshakeError("handshake message too short for a static key")
                self.rs = sym.decrypt_and_hash(bytes(message[pos : pos + size]))
                pos += size
            else:
                sym.mix_key(self._dh_for(token))
        rest = bytes(message[pos:])
        if sym.cipher.has_key() and len(rest) < TAGLEN:
            raise HandshakeError("handshake message too short for its authentication tag")
        payload = sym.decrypt_and_hash(rest)
        self._index += 1
        return payload
