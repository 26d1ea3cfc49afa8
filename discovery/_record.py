"""Signed capability records: what a node serves, where, until when, signed by its key.

Theory of operation
-------------------
A record travels as the bytes of a ``SignedRecord`` envelope (``proto/discovery.proto``): the
``payload`` is a ``CapabilityRecord`` message, the ``signature`` an ed25519 signature by the
record's own key over :func:`signing_input` (a length-prefixed domain, then the length-prefixed
payload). Both the payload and the envelope must be the *canonical* encoding of their content
(capabilities sorted by name, attributes by key, addresses in the given order, protobuf's
deterministic serialisation, no unknown or repeated fields), so a record has exactly one
encoding: equal records are equal bytes, and no bit of the envelope can change unnoticed.

:func:`verify_record` checks, in this order (the first failure is the reason):

1. size (``OVERSIZED``), before any parsing or signature work;
2. envelope and payload decode (``MALFORMED``) and are canonical (``NOT_CANONICAL``);
3. the key is 32 bytes, the id 20 bytes (``MALFORMED``), and the id is the key's
   (``ID_MISMATCH``); the signature verifies (``BAD_SIGNATURE``).
   Every later reason is about a record the key holder really signed;
4. the id is the one expected, e.g. the authenticated peer (``ID_MISMATCH``), the network is ours
   (``WRONG_NETWORK``);
5. content: counts (``OVERSIZED``), names and attributes (``MALFORMED``), addresses
   (``BAD_ADDRESS``), lifetime (``MALFORMED`` when it ends before it starts, ``TOO_LONG_LIVED``);
6. time against ``now``: ``FUTURE``, ``EXPIRED``; then ``STALE_SEQ`` when the caller already
   holds a sequence number at least as high.

Sequence numbers: the issuer uses :func:`next_seq` (``max(previous + 1, unix_ms(now))``) so a
node that restarts and lost its last seq still moves forward.

Nothing here reads a clock: ``now`` (unix seconds) is always an argument.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import DecodeError as _PbDecodeError

from discovery._keys import (
    MAX_ATTRIBUTES,
    NODE_ID_BYTES,
    node_id_from_bytes,
    valid_attribute_key,
    valid_attribute_value,
    valid_capability_name,
)
from overlay.address import NodeAddress
from overlay.errors import InvalidAddressError, LocalProtocolError, RemoteProtocolError
from overlay.identity import NodeId, NodeKey, node_id_from_public_key, verify_signature
from proto import discovery_pb2 as _pb

__all__ = [
    "CapabilityInfo",
    "CapabilityRecord",
    "MAX_ADDRESSES",
    "MAX_CAPABILITIES",
    "MAX_CLOCK_SKEW",
    "MAX_LIFETIME",
    "MAX_RECORD_BYTES",
    "RECORD_DOMAIN",
    "RecordError",
    "RecordRejection",
    "SignedRecord",
    "check_newer",
    "next_seq",
    "parse_record_address",
    "sign_record",
    "signing_input",
    "verify_record",
    "verify_signed_record",
]

RECORD_DOMAIN = b"overlay-capability-record/v1"
"""Domain-separation prefix of the signing input (never valid as another signed message)."""
MAX_RECORD_BYTES = 1024
"""Largest accepted ``SignedRecord`` envelope, in bytes (checked before parsing)."""
MAX_ADDRESSES = 8
MAX_CAPABILITIES = 32
MAX_CLOCK_SKEW = 60
"""Seconds a record's ``issued_at`` may lie in our future (clock skew between nodes)."""
MAX_LIFETIME = 7 * 24 * 3600
"""Longest ``expires_at - issued_at``, in seconds (7 days)."""
_PUBLIC_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_U64 = 1 << 64
_U32 = 1 << 32
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class RecordRejection(enum.Enum):
    """Why a record was refused (the value is a stable metrics label)."""

    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify against the record's key."""
    ID_MISMATCH = "id_mismatch"
    """The node id is not the key's, or not the id we expected (the authenticated peer)."""
    WRONG_NETWORK = "wrong_network"
    EXPIRED = "expired"
    """``expires_at`` is not after ``now``."""
    FUTURE = "future"
    """``issued_at`` is more than ``MAX_CLOCK_SKEW`` after ``now``."""
    OVERSIZED = "oversized"
    """Over ``MAX_RECORD_BYTES``, ``MAX_ADDRESSES`` or ``MAX_CAPABILITIES``."""
    MALFORMED = "malformed"
    """Does not decode, or a field breaks its grammar."""
    BAD_ADDRESS = "bad_address"
    """An address is malformed, not an IP literal, unspecified, multicast or broadcast."""
    NOT_CANONICAL = "not_canonical"
    """The bytes are not the one canonical encoding of their content."""
    TOO_LONG_LIVED = "too_long_lived"
    """``expires_at - issued_at`` exceeds ``MAX_LIFETIME``."""
    STALE_SEQ = "stale_seq"
    """A record with this or a higher sequence number is already known (a replay)."""


class RecordError(RemoteProtocolError):
    """A record from a peer was refused; ``reason`` says why."""

    def __init__(self, reason: RecordRejection, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CapabilityInfo:
    """A capability's version and attributes (stored sorted, read-only)."""

    version: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "attributes", MappingProxyType(dict(sorted(dict(self.attributes).items())))
        )


@dataclass(frozen=True, slots=True)
class CapabilityRecord:
    """A node's record, as parsed (see the module docstring for what was checked)."""

    node_id: NodeId
    public_key: bytes
    seq: int
    network: str
    addresses: tuple[str, ...]
    """``HOST:PORT`` / ``[IPv6]:PORT`` with IP literal hosts, in the issuer's order."""
    capabilities: Mapping[str, CapabilityInfo]
    """Capability name to version and attributes, sorted by name (read-only)."""
    issued_at: int
    expires_at: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))
        object.__setattr__(
            self, "capabilities", MappingProxyType(dict(sorted(dict(self.capabilities).items())))
        )

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def dial_addresses(self) -> tuple[NodeAddress, ...]:
        """The addresses as dialable :class:`NodeAddress` values (of a verified record)."""
        return tuple(parse_record_address(a, self.node_id) for a in self.addresses)

    def encode(self) -> bytes:
        """The canonical payload bytes (what the signature covers)."""
        return _to_pb(self).SerializeToString(deterministic=True)


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A verified (or freshly signed) record together with its envelope bytes."""

    data: bytes
    """The ``SignedRecord`` envelope exactly as it travels."""
    record: CapabilityRecord

    @property
    def node_id(self) -> NodeId:
        return self.record.node_id

    @property
    def seq(self) -> int:
        return self.record.seq


def signing_input(payload: bytes) -> bytes:
    """``u16be(len(domain)) || domain || u32be(len(payload)) || payload``."""
    return (
        struct.pack(">H", len(RECORD_DOMAIN))
        + RECORD_DOMAIN
        + struct.pack(">I", len(payload))
        + payload
    )


def next_seq(previous: int | None, now: float) -> int:
    """The sequence number an issuer uses next: ``max(previous + 1, unix_ms(now))``."""
    unix_ms = math.floor(now * 1000)
    return unix_ms if previous is None else max(previous + 1, unix_ms)


def check_newer(record: CapabilityRecord, known_seq: int | None) -> None:
    """Raise ``RecordError(STALE_SEQ)`` unless ``record.seq`` beats ``known_seq``."""
    if known_seq is not None and record.seq <= known_seq:
        raise RecordError(
            RecordRejection.STALE_SEQ, f"seq {record.seq} is not above the known {known_seq}"
        )


def parse_record_address(text: str, node_id: NodeId) -> NodeAddress:
    """Check one record address and return it as a :class:`NodeAddress` of ``node_id``.

    Accepted: ``A.B.C.D:PORT`` or ``[IPv6]:PORT`` in canonical text (no leading zeros, no
    whitespace, compressed IPv6, no zone), port 1..65535, an IP that is neither unspecified,
    multicast, broadcast nor IPv4-mapped. Raises ``RecordError(BAD_ADDRESS)``.
    """

    def bad(why: str) -> RecordError:
        return RecordError(RecordRejection.BAD_ADDRESS, f"{text!r}: {why}")

    if not isinstance(text, str):
        raise bad("not a string")
    try:
        address = NodeAddress.parse(f"{node_id}@{text}")
    except InvalidAddressError as exc:
        raise bad(str(exc)) from exc
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError as exc:
        raise bad("the host must be an IP literal") from exc
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise bad("IPv6 zone ids are meaningless to other nodes")
        if ip.ipv4_mapped is not None:
            raise bad("write IPv4-mapped addresses as IPv4")
    if ip.is_unspecified or ip.is_multicast or ip == _BROADCAST:
        raise bad("unspecified, multicast and broadcast addresses cannot be dialed")
    if str(ip) != address.host or str(address) != f"{node_id}@{text}":
        raise bad("not in canonical form")
    return address


def sign_record(
    key: NodeKey,
    *,
    network: str,
    seq: int,
    issued_at: int,
    expires_at: int,
    addresses: tuple[str, ...] | list[str] = (),
    capabilities: Mapping[str, CapabilityInfo | int] | None = None,
) -> SignedRecord:
    """Build, check and sign our own record; :class:`LocalProtocolError` if it is invalid.

    ``capabilities`` maps names to a :class:`CapabilityInfo` or a bare version number.
    The result passes :func:`verify_record` for any ``now`` in ``[issued_at - 60, expires_at)``.
    """
    caps = {
        name: info if isinstance(info, CapabilityInfo) else CapabilityInfo(info)
        for name, info in (capabilities or {}).items()
    }
    for label, value, bound in (
        ("seq", seq, _U64),
        ("issued_at", issued_at, _U64),
        ("expires_at", expires_at, _U64),
        *((f"version of {n!r}", i.version, _U32) for n, i in caps.items()),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
            raise LocalProtocolError(
                f"cannot sign the record: {label} must be an int in [0, {bound})"
            )
    record = CapabilityRecord(
        node_id=key.node_id,
        public_key=key.public_key,
        seq=seq,
        network=network,
        addresses=tuple(addresses),
        capabilities=caps,
        issued_at=issued_at,
        expires_at=expires_at,
    )
    try:
        _check_content(record)
    except RecordError as exc:
        raise LocalProtocolError(f"cannot sign the record: {exc}") from exc
    payload = record.encode()
    envelope = _pb.SignedRecord(payload=payload, signature=key.sign(signing_input(payload)))
    data = envelope.SerializeToString(deterministic=True)
    if len(data) > MAX_RECORD_BYTES:
        raise LocalProtocolError(
            f"cannot sign the record: {len(data)} bytes, over the {MAX_RECORD_BYTES}-byte cap"
        )
    return SignedRecord(data, record)


def verify_record(
    data: bytes,
    *,
    network: str,
    now: float,
    expected_id: NodeId | None = None,
    newer_than: int | None = None,
) -> CapabilityRecord:
    """Parse and check a ``SignedRecord`` envelope from a peer (see the module docstring).

    ``expected_id``: the id the record must carry (e.g. the authenticated peer's);
    ``newer_than``: a seq already known for that node (the record must be higher).
    Raises :class:`RecordError`; never anything else for any ``data``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RecordError(RecordRejection.MALFORMED, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(
            RecordRejection.OVERSIZED, f"{len(data)} bytes, over the {MAX_RECORD_BYTES}-byte cap"
        )
    envelope = _pb.SignedRecord()
    message = _pb.CapabilityRecord()
    try:
        envelope.ParseFromString(data)
        message.ParseFromString(envelope.payload)
        # Re-encoded from the fields alone: unknown fields are not carried over.
        canonical_envelope = _pb.SignedRecord(
            payload=envelope.payload, signature=envelope.signature
        ).SerializeToString(deterministic=True)
    except (_PbDecodeError, RuntimeWarning, ValueError) as exc:
        raise RecordError(RecordRejection.MALFORMED, f"does not decode: {exc}") from exc
    if canonical_envelope != data:
        raise RecordError(RecordRejection.NOT_CANONICAL, "the envelope is not canonical")
    record = _from_pb(message)
    if record.encode() != envelope.payload:
        raise RecordError(RecordRejection.NOT_CANONICAL, "the payload is not canonical")
    if node_id_from_public_key(record.public_key) != record.node_id:
        raise RecordError(RecordRejection.ID_MISMATCH, "the node id is not the key's")
    if not verify_signature(record.public_key, signing_input(envelope.payload), envelope.signature):
        raise RecordError(RecordRejection.BAD_SIGNATURE, f"record of {record.node_id}")
    if expected_id is not None and record.node_id != expected_id:
        raise RecordError(
            RecordRejection.ID_MISMATCH, f"record of {record.node_id}, expected {expected_id}"
        )
    if record.network != network:
        raise RecordError(
            RecordRejection.WRONG_NETWORK, f"network {record.network!r}, ours is {network!r}"
        )
    _check_content(record)
    if record.issued_at > now + MAX_CLOCK_SKEW:
        raise RecordError(
            RecordRejection.FUTURE, f"issued at {record.issued_at}, now is {math.floor(now)}"
        )
    if record.expires_at <= now:
        raise RecordError(
            RecordRejection.EXPIRED, f"expired at {record.expires_at}, now is {math.floor(now)}"
        )
    check_newer(record, newer_than)
    return record


def verify_signed_record(
    data: bytes,
    *,
    network: str,
    now: float,
    expected_id: NodeId | None = None,
    newer_than: int | None = None,
) -> SignedRecord:
    """:func:`verify_record`, keeping the envelope bytes (to store and pass on)."""
    record = verify_record(
        data, network=network, now=now, expected_id=expected_id, newer_than=newer_than
    )
    return SignedRecord(bytes(data), record)


# -- internals ---------------------------------------------------------------------------------


def _to_pb(record: CapabilityRecord) -> _pb.CapabilityRecord:
    return _pb.CapabilityRecord(
        node_id=bytes.fromhex(record.node_id),
        public_key=record.public_key,
        seq=record.seq,
        network=record.network,
        addresses=list(record.addresses),
        capabilities=[
            _pb.Capability(name=name, version=info.version, attributes=dict(info.attributes))
            for name, info in sorted(record.capabilities.items())
        ],
        issued_at=record.issued_at,
        expires_at=record.expires_at,
    )


def _from_pb(message: _pb.CapabilityRecord) -> CapabilityRecord:
    """Structural decoding only; duplicate names collapse (the canonical check catches it)."""
    if len(message.public_key) != _PUBLIC_KEY_BYTES:
        raise RecordError(RecordRejection.MALFORMED, "the public key must be 32 bytes")
    if len(message.node_id) != NODE_ID_BYTES:
        raise RecordError(RecordRejection.MALFORMED, "the node id must be 20 bytes")
    return CapabilityRecord(
        node_id=node_id_from_bytes(message.node_id),
        public_key=bytes(message.public_key),
        seq=message.seq,
        network=message.network,
        addresses=tuple(message.addresses),
        capabilities={
            c.name: CapabilityInfo(c.version, dict(c.attributes)) for c in message.capabilities
        },
        issued_at=message.issued_at,
        expires_at=message.expires_at,
    )


def _check_content(record: CapabilityRecord) -> None:
    """Counts, grammar, addresses and lifetime (everything that does not need ``now``)."""
    if len(record.addresses) > MAX_ADDRESSES:
        raise RecordError(
            RecordRejection.OVERSIZED, f"{len(record.addresses)} addresses (max {MAX_ADDRESSES})"
        )
    if len(record.capabilities) > MAX_CAPABILITIES:
        raise RecordError(
            RecordRejection.OVERSIZED,
            f"{len(record.capabilities)} capabilities (max {MAX_CAPABILITIES})",
        )
    for name, info in record.capabilities.items():
        if not valid_capability_name(name):
            raise RecordError(RecordRejection.MALFORMED, f"bad capability name {name!r}")
        if len(info.attributes) > MAX_ATTRIBUTES:
            raise RecordError(
                RecordRejection.MALFORMED, f"{name!r} has more than {MAX_ATTRIBUTES} attributes"
            )
        for key, value in info.attributes.items():
            if not valid_attribute_key(key) or not valid_attribute_value(value):
                raise RecordError(RecordRejection.MALFORMED, f"bad attribute {key!r} of {name!r}")
    if len(set(record.addresses)) != len(record.addresses):
        raise RecordError(RecordRejection.BAD_ADDRESS, "duplicate addresses")
    for text in record.addresses:
        parse_record_address(text, record.node_id)
    if record.expires_at <= record.issued_at:
        raise RecordError(RecordRejection.MALFORMED, "expires before it is issued")
    if record.expires_at - record.issued_at > MAX_LIFETIME:
        raise RecordError(
            RecordRejection.TOO_LONG_LIVED,
            f"lives {record.expires_at - record.issued_at} s (max {MAX_LIFETIME})",
        )
