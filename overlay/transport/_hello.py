"""The hello exchange's I/O: length-prefixed hello messages over an authenticated stream.

The message format and checks are pure (:mod:`overlay.wire._nodeinfo`); this module only moves
the bytes.
"""

from __future__ import annotations

import anyio
import anyio.abc

from overlay.errors import FrameError
from overlay.transport._failures import STREAM_ERRORS, stream_failure
from overlay.wire._nodeinfo import MAX_HELLO_SIZE, hello_frame, hello_length

__all__ = ["receive_hello", "send_hello"]


async def send_hello(stream: anyio.abc.ByteSendStream, payload: bytes) -> None:
    """Send one length-prefixed hello message.

    A peer that hung up (a closed, reset or broken stream) raises
    :class:`~overlay.errors.HandshakeError` with ``reason`` ``CONNECTION``, like a receive.
    """
    try:
        await stream.send(hello_frame(payload))
    except STREAM_ERRORS as exc:
        raise stream_failure(exc, "the hello exchange") from exc


async def receive_hello(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> bytes:
    """Read one length-prefixed hello message; leftover bytes stay in ``buffer``.

    The length is validated before the body is read. EOF or a broken stream raises
    :class:`~overlay.errors.HandshakeError` with ``reason`` ``CONNECTION``.
    """
    while len(buffer) < 4:
        await _fill(stream, buffer)
    size = hello_length(buffer)
    if size > MAX_HELLO_SIZE:
        raise FrameError(f"hello message of {size} bytes exceeds {MAX_HELLO_SIZE}")
    while len(buffer) < 4 + size:
        await _fill(stream, buffer)
    body = bytes(buffer[4 : 4 + size])
    del buffer[: 4 + size]
    return body


async def _fill(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> None:
    try:
        buffer += await stream.receive()
    except STREAM_ERRORS as exc:
        raise stream_failure(exc, "the hello exchange") from exc
