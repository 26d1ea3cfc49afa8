"""Names and keys shared by records, PEX and the DHT: one 160-bit XOR space.

* A node id is ``sha256(ed25519 public key)[:20]``; :data:`~overlay.identity.NodeId` is its hex
  text, :func:`node_id_bytes` / :func:`node_id_from_bytes` convert.
* The DHT key of a capability's providers is :func:`provider_key` (defined here once).
* Capability names and attributes follow the grammar below; the ``valid_*`` predicates are total
  (any input gives a bool), so they serve both local checks and the checks of remote input.
"""

from __future__ import annotations

import hashlib
import re
import struct

from overlay.identity import NodeId

__all__ = [
    "CAPABILITY_NAME_PATTERN",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "NODE_ID_BYTES",
    "PROVIDER_KEY_DOMAIN",
    "node_id_bytes",
    "node_id_from_bytes",
    "provider_key",
    "valid_attribute_key",
    "valid_attribute_value",
    "valid_capability_name",
]

NODE_ID_BYTES = 20
"""Length of a node id, a DHT target and a provider key (160 bits)."""
PROVIDER_KEY_DOMAIN = b"overlay/provider/v1\x00"
"""Domain-separation prefix of :func:`provider_key`."""
MAX_ATTRIBUTES = 4
"""Attributes per capability."""
MAX_ATTRIBUTE_VALUE_BYTES = 64
"""UTF-8 length of one attribute value."""

CAPABILITY_NAME_PATTERN = "^[a-z][a-z0-9_.-]{0,31}$"
"""What a capability name looks like (the same rule everywhere: records, targets, roles)."""
_CAPABILITY_RE = re.compile(CAPABILITY_NAME_PATTERN)
_ATTRIBUTE_KEY_RE = re.compile(r"[a-z][a-z0-9_.-]{0,15}")


def _u16_prefixed(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"{len(raw)} bytes do not fit a u16 length prefix")
    return struct.pack(">H", len(raw)) + raw


def provider_key(network: str, capability: str) -> bytes:
    """The 20-byte DHT key under which providers of ``capability`` on ``network`` are stored.

    ``sha256(b"overlay/provider/v1\\x00" + u16be(len(network)) + network + u16be(len(cap)) +
    cap)[:20]`` with both strings UTF-8 encoded.
    """
    digest = hashlib.sha256(
        PROVIDER_KEY_DOMAIN + _u16_prefixed(network) + _u16_prefixed(capability)
    ).digest()
    return digest[:NODE_ID_BYTES]


def node_id_bytes(node_id: NodeId) -> bytes:
    """The 20 raw bytes of a node id (its position in the XOR space)."""
    return bytes.fromhex(node_id)


def node_id_from_bytes(raw: bytes) -> NodeId:
    """The :data:`NodeId` text of 20 raw bytes; ValueError for any other length."""
    if len(raw) != NODE_ID_BYTES:
        raise ValueError(f"a node id is {NODE_ID_BYTES} bytes, got {len(raw)}")
    return NodeId(raw.hex())


def valid_capability_name(name: object) -> bool:
    """``^[a-z][a-z0-9_.-]{0,31}$``."""
    return isinstance(name, str) and _CAPABILITY_RE.fullmatch(name) is not None


def valid_attribute_key(key: object) -> bool:
    """``^[a-z][a-z0-9_.-]{0,15}$``."""
    return isinstance(key, str) and _ATTRIBUTE_KEY_RE.fullmatch(key) is not None


def valid_attribute_value(value: object) -> bool:
    """A string of at most 64 bytes in UTF-8 (and encodable: no lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        return len(value.encode("utf-8")) <= MAX_ATTRIBUTE_VALUE_BYTES
    except UnicodeEncodeError:
        return False
