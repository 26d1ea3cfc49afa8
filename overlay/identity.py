"""Node identity: ed25519 keys, node ids, key files.

A node id is the lowercase hex of the first 20 bytes of SHA-256 of the node's raw 32-byte ed25519
public key (40 hex characters). Key files hold the raw 32-byte private seed, hex encoded, and are
written with mode 0600.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import NewType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from overlay.errors import ConfigError, InvalidAddressError

__all__ = [
    "NODE_ID_HEX_LEN",
    "NodeId",
    "NodeKey",
    "node_id_from_public_key",
    "parse_node_id",
    "verify_signature",
]

NodeId = NewType("NodeId", str)
"""40 lowercase hex characters: ``sha256(ed25519_public_key)[:20].hex()``."""

NODE_ID_HEX_LEN = 40
_NODE_ID_RE = re.compile(r"^[0-9a-f]{40}$")


def node_id_from_public_key(public_key: bytes) -> NodeId:
    """Derive the node id of a raw 32-byte ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError(f"ed25519 public key must be 32 bytes, got {len(public_key)}")
    return NodeId(hashlib.sha256(public_key).digest()[:20].hex())


def parse_node_id(text: str) -> NodeId:
    """Validate ``text`` as a node id (lowercased); raise :class:`InvalidAddressError`."""
    lowered = text.strip().lower()
    if not _NODE_ID_RE.match(lowered):
        raise InvalidAddressError(
            f"invalid node id {text!r}: expected {NODE_ID_HEX_LEN} hex characters"
        )
    return NodeId(lowered)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class NodeKey:
    """A node's ed25519 private key, with its public key and node id."""

    __slots__ = ("_private", "node_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id: NodeId = node_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """Build a key from its raw 32-byte private seed (deterministic, for tests)."""
        if len(seed) != 32:
            raise ValueError(f"ed25519 seed must be 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file atomically with mode 0600 (never readable by others)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (self.seed().hex() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeKey:
        """Read a key file written by :meth:`save`; raise :class:`ConfigError` if unusable."""
        target = Path(path)
        try:
            text = target.read_text().strip()
        except OSError as exc:
            raise ConfigError("node_key_file", f"cannot read {target}: {exc}") from exc
        try:
            seed = bytes.fromhex(text)
        except ValueError as exc:
            raise ConfigError("node_key_file", f"{target} is not a hex key file") from exc
        if len(seed) != 32:
            raise ConfigError("node_key_file", f"{target} must hold a 32-byte seed")
        mode = target.stat().st_mode & 0o077
        if mode:
            raise ConfigError(
                "node_key_file", f"{target} is readable by others (mode {oct(mode)}); chmod 600"
            )
        return cls.from_seed(seed)

    @classmethod
    def load_or_generate(cls, path: str | os.PathLike[str]) -> NodeKey:
        if Path(path).exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path)
        return key

    def __repr__(self) -> str:
        return f"NodeKey(node_id={self.node_id})"
