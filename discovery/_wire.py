"""Codecs of the PEX, DHT and record-update messages (``proto/discovery.proto``).

The generated classes stay here: the rest of discovery sees frozen dataclasses. Decoders are
total: any input gives a message or :class:`~overlay.errors.DecodeError` (a
``RemoteProtocolError``). They check structure only (lengths, counts, names); records inside
are SignedRecord bytes that the caller verifies with ``verify_record`` one by one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message as _PbMessage

from discovery._keys import NODE_ID_BYTES, valid_capability_name
from overlay.errors import DecodeError, LocalProtocolError
from proto import discovery_pb2 as _pb

__all__ = [
    "DhtAck",
    "DhtAddProvider",
    "DhtError",
    "DhtErrorCode",
    "DhtFindNode",
    "DhtGetProviders",
    "DhtNodes",
    "DhtPing",
    "DhtProviders",
    "DhtRequest",
    "DhtResponse",
    "MAX_RECORDS_PER_MESSAGE",
    "MAX_WANTED_CAPABILITIES",
    "PexRequest",
    "PexResponse",
    "RecordUpdate",
    "decode_dht_request",
    "decode_dht_response",
    "decode_pex_request",
    "decode_pex_response",
    "decode_record_update",
    "encode_dht_request",
    "encode_dht_response",
    "encode_pex_request",
    "encode_pex_response",
    "encode_record_update",
]

MAX_RECORDS_PER_MESSAGE = 64
"""Records in one PEX response or DHT answer (per list); more is a protocol violation."""
MAX_WANTED_CAPABILITIES = 32
"""Capability names in one PEX request."""
_MAX_ERROR_MESSAGE = 256
_M = TypeVar("_M", bound=_PbMessage)


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    """A connected peer's new record (SignedRecord bytes), pushed when it changes."""

    record: bytes


@dataclass(frozen=True, slots=True)
class PexRequest:
    """Ask for up to ``max`` records, preferably of nodes serving ``wanted_capabilities``."""

    max: int
    wanted_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PexResponse:
    records: tuple[bytes, ...]
    """SignedRecord bytes, each to verify."""


@dataclass(frozen=True, slots=True)
class DhtFindNode:
    target: bytes
    """20 bytes."""


@dataclass(frozen=True, slots=True)
class DhtGetProviders:
    key: bytes
    """``provider_key(network, capability)``, 20 bytes."""


@dataclass(frozen=True, slots=True)
class DhtAddProvider:
    key: bytes
    record: bytes
    """The provider's SignedRecord bytes."""


@dataclass(frozen=True, slots=True)
class DhtPing:
    pass


DhtRequest = DhtFindNode | DhtGetProviders | DhtAddProvider | DhtPing


@dataclass(frozen=True, slots=True)
class DhtNodes:
    records: tuple[bytes, ...]
    """Contacts closest to the target, as SignedRecord bytes."""


@dataclass(frozen=True, slots=True)
class DhtProviders:
    providers: tuple[bytes, ...]
    closer: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DhtAck:
    pass


class DhtErrorCode(enum.IntEnum):
    """Wire values of ``DhtErrorCode`` (unknown values decode as ``UNSPECIFIED``)."""

    UNSPECIFIED = 0
    BAD_REQUEST = 1
    RECORD_REJECTED = 2
    STORE_FULL = 3
    RATE_LIMITED = 4


@dataclass(frozen=True, slots=True)
class DhtError:
    code: DhtErrorCode
    message: str = ""


DhtResponse = DhtNodes | DhtProviders | DhtAck | DhtError


# -- encoding ----------------------------------------------------------------------------------


def _key(value: bytes, what: str) -> bytes:
    if len(value) != NODE_ID_BYTES:
        raise LocalProtocolError(f"{what} must be {NODE_ID_BYTES} bytes, got {len(value)}")
    return bytes(value)


def encode_record_update(message: RecordUpdate) -> bytes:
    return _pb.RecordUpdate(record=message.record).SerializeToString(deterministic=True)


def encode_pex_request(message: PexRequest) -> bytes:
    if not 0 <= message.max < 1 << 32:
        raise LocalProtocolError(f"PexRequest.max out of range: {message.max}")
    return _pb.PexRequest(
        max=message.max, wanted_capabilities=list(message.wanted_capabilities)
    ).SerializeToString(deterministic=True)


def encode_pex_response(message: PexResponse) -> bytes:
    return _pb.PexResponse(records=list(message.records)).SerializeToString(deterministic=True)


def encode_dht_request(message: DhtRequest) -> bytes:
    out = _pb.DhtRequest()
    match message:
        case DhtFindNode(target):
            out.find_node.target = _key(target, "target")
        case DhtGetProviders(key):
            out.get_providers.key = _key(key, "key")
        case DhtAddProvider(key, record):
            out.add_provider.key = _key(key, "key")
            out.add_provider.record = record
        case DhtPing():
            out.ping.SetInParent()
    return out.SerializeToString(deterministic=True)


def encode_dht_response(message: DhtResponse) -> bytes:
    out = _pb.DhtResponse()
    match message:
        case DhtNodes(records):
            out.nodes.records.extend(records)
            out.nodes.SetInParent()
        case DhtProviders(providers, closer):
            out.providers.providers.extend(providers)
            out.providers.closer.extend(closer)
            out.providers.SetInParent()
        case DhtAck():
            out.ack.SetInParent()
        case DhtError(code, text):
            out.error.code = int(code)  # type: ignore[assignment]
            out.error.message = text[:_MAX_ERROR_MESSAGE]
            out.error.SetInParent()
    return out.SerializeToString(deterministic=True)


# -- decoding (total) --------------------------------------------------------------------------


def _parse(message: _M, data: bytes, what: str) -> _M:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        message.ParseFromString(bytes(data))
    except (_PbDecodeError, RuntimeWarning, ValueError) as exc:
        raise DecodeError(f"{what} does not decode: {exc}") from exc
    return message


def _records(values: Iterable[bytes], what: str) -> tuple[bytes, ...]:
    records = tuple(bytes(v) for v in values)
    if len(records) > MAX_RECORDS_PER_MESSAGE:
        raise DecodeError(f"{what}: {len(records)} records (max {MAX_RECORDS_PER_MESSAGE})")
    return records


def _wire_key(value: bytes, what: str) -> bytes:
    if len(value) != NODE_ID_BYTES:
        raise DecodeError(f"{what} must be {NODE_ID_BYTES} bytes, got {len(value)}")
    return bytes(value)


def decode_record_update(data: bytes) -> RecordUpdate:
    return RecordUpdate(bytes(_parse(_pb.RecordUpdate(), data, "RecordUpdate").record))


def decode_pex_request(data: bytes) -> PexRequest:
    message = _parse(_pb.PexRequest(), data, "PexRequest")
    wanted = tuple(message.wanted_capabilities)
    if len(wanted) > MAX_WANTED_CAPABILITIES:
        raise DecodeError(f"PexRequest: {len(wanted)} wanted capabilities")
    for name in wanted:
        if not valid_capability_name(name):
            raise DecodeError(f"PexRequest: bad capability name {name!r}")
    return PexRequest(message.max, wanted)


def decode_pex_response(data: bytes) -> PexResponse:
    message = _parse(_pb.PexResponse(), data, "PexResponse")
    return PexResponse(_records(message.records, "PexResponse"))


def decode_dht_request(data: bytes) -> DhtRequest:
    message = _parse(_pb.DhtRequest(), data, "DhtRequest")
    match message.WhichOneof("request"):
        case "find_node":
            return DhtFindNode(_wire_key(message.find_node.target, "FindNode.target"))
        case "get_providers":
            return DhtGetProviders(_wire_key(message.get_providers.key, "GetProviders.key"))
        case "add_provider":
            return DhtAddProvider(
                _wire_key(message.add_provider.key, "AddProvider.key"),
                bytes(message.add_provider.record),
            )
        case "ping":
            return DhtPing()
        case _:
            raise DecodeError("DhtRequest: no request set")


def decode_dht_response(data: bytes) -> DhtResponse:
    message = _parse(_pb.DhtResponse(), data, "DhtResponse")
    match message.WhichOneof("response"):
        case "nodes":
            return DhtNodes(_records(message.nodes.records, "Nodes"))
        case "providers":
            return DhtProviders(
                _records(message.providers.providers, "Providers.providers"),
                _records(message.providers.closer, "Providers.closer"),
            )
        case "ack":
            return DhtAck()
        case "error":
            raw = int(message.error.code)
            known = raw in DhtErrorCode._value2member_map_
            code = DhtErrorCode(raw) if known else DhtErrorCode.UNSPECIFIED
            return DhtError(code, message.error.message[:_MAX_ERROR_MESSAGE])
        case _:
            raise DecodeError("DhtResponse: no response set")
