"""Codecs turn a channel's message objects into bytes and back.

A codec is only used when a message crosses the network; ``LOCAL`` delivery hands the object
itself to the receiver. ``decode`` must raise :class:`~overlay.errors.DecodeError` for bytes it
cannot decode, and ``encode`` a :class:`~overlay.errors.LocalProtocolError` for objects of the
wrong type.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message

from overlay.errors import DecodeError, LocalProtocolError

__all__ = ["BytesCodec", "Codec", "ProtobufCodec"]

T = TypeVar("T")
PM = TypeVar("PM", bound=Message)


class Codec(Protocol[T]):
    """Encodes and decodes one message type."""

    def encode(self, message: T, /) -> bytes: ...

    def decode(self, data: bytes, /) -> T: ...


class ProtobufCodec(Generic[PM]):
    """Codec for one protobuf message class (the user's own generated class)."""

    __slots__ = ("_cls",)

    def __init__(self, message_class: type[PM]) -> None:
        self._cls = message_class

    def encode(self, message: PM, /) -> bytes:
        if type(message) is not self._cls:
            raise LocalProtocolError(
                f"expected a {self._cls.__name__} message, got {type(message).__name__}"
            )
        return message.SerializeToString()

    def decode(self, data: bytes, /) -> PM:
        msg = self._cls()
        try:
            msg.ParseFromString(data)
        except (_PbDecodeError, RuntimeError, ValueError) as exc:
            raise DecodeError(f"undecodable {self._cls.__name__}: {exc}") from exc
        return msg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProtobufCodec) and other._cls is self._cls

    def __hash__(self) -> int:
        return hash((ProtobufCodec, self._cls))

    def __repr__(self) -> str:
        return f"ProtobufCodec({self._cls.__name__})"


class BytesCodec:
    """The identity codec: messages are ``bytes``."""

    __slots__ = ()

    def encode(self, message: bytes, /) -> bytes:
        if type(message) is bytes:
            return message  # immutable: no copy
        if not isinstance(message, bytes | bytearray | memoryview):
            raise LocalProtocolError(f"expected bytes, got {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes, /) -> bytes:
        return data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BytesCodec)

    def __hash__(self) -> int:
        return hash(BytesCodec)

    def __repr__(self) -> str:
        return "BytesCodec()"
