"""Frame layer: the fixed 12-byte header and a streaming, allocation-bounded frame decoder.

Theory of operation
-------------------
After the secure handshake, each direction of a connection is a stream of *frames*. A frame is a
12-byte header followed by a payload::

    offset  size  field       meaning
    0       4     length      u32 big-endian: bytes after this field = 8 + payload length
    4       1     kind        u8 FrameKind: MESSAGE=1 REQUEST=2 RESPONSE=3 ERROR=4 CANCEL=5
                              CONTROL=6 (the values of ``FrameKind`` in proto/overlay.proto)
    5       1     flags       u8 bit set: MORE=0x01 (more chunks of this message follow),
                              COMPRESSED=0x02 (the message is zstd-compressed); other bits 0
    6       2     channel_id  u16 big-endian; 0 is the control channel
    8       4     request_id  u32 big-endian; 0 for MESSAGE and CONTROL, non-zero otherwise
    12      ...   payload     length - 8 bytes

(``struct`` format ``">IBBHI"``.) Payloads by kind: MESSAGE, REQUEST and RESPONSE carry
application bytes (a chunk of them when the message is split); ERROR carries a protobuf
``ErrorResponse{code, message}``; CANCEL is empty; CONTROL carries a protobuf ``Control`` (ping,
pong or disconnect).

A message larger than the maximum frame payload is split into consecutive chunks on its channel;
every chunk but the last has MORE set, and every chunk of a compressed message has COMPRESSED set.
Chunks of different messages on the same channel are never interleaved (other channels' frames
and control frames may be).

Validation rules (each violation raises :class:`~overlay.errors.FrameError`):

* ``length < 8``;
* payload length (``length - 8``) above the receiver's maximum frame payload, checked as soon as
  the 4 length bytes have arrived, before any of the body is buffered;
* unknown kind (0 or > 6); any flag bit other than MORE and COMPRESSED;
* COMPRESSED on a connection that did not negotiate compression;
* CONTROL not on channel 0, or with any flag set; any other kind on channel 0;
* request id not 0 on MESSAGE/CONTROL, or 0 on REQUEST/RESPONSE/ERROR/CANCEL;
* CANCEL with a flag set or a non-empty payload.

Invariants of :class:`FrameDecoder`: it never buffers more than one header plus the maximum
payload beyond what it has already returned; the header is validated as soon as its 12 bytes are
in; once it has raised, the stream is unusable and every later call raises the same error.
Buffering is linear: pieces are appended to a ``bytearray`` and consumed from the front.

:class:`MessageAssembler` is the receiving half of chunking: it joins the chunks of each
channel's message in progress and enforces the per-message size limit and the no-interleaving
rule.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from overlay.errors import FrameError

__all__ = [
    "BatchFrame",
    "DISCARDED",
    "Discarded",
    "FLAG_COMPRESSED",
    "FLAG_MORE",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "HEADER",
    "HEADER_SIZE",
    "KNOWN_FLAGS",
    "MAX_FRAME_PAYLOAD_LIMIT",
    "MessageAssembler",
    "RawFrame",
    "encode_frame",
    "validate_header",
]

HEADER = struct.Struct(">IBBHI")
"""The precompiled header struct: length, kind, flags, channel_id, request_id."""
HEADER_SIZE = HEADER.size  # 12
FLAG_MORE = 0x01
"""More chunks of this message follow."""
FLAG_COMPRESSED = 0x02
"""The message (all of its chunks, concatenated) is one zstd frame."""
KNOWN_FLAGS = FLAG_MORE | FLAG_COMPRESSED
MAX_FRAME_PAYLOAD_LIMIT = 0xFFFFFFFF - 8
"""The largest payload the u32 length field can describe."""


class FrameKind(enum.IntEnum):
    """Frame kinds; the same values as ``FrameKind`` in proto/overlay.proto."""

    MESSAGE = 1
    REQUEST = 2
    RESPONSE = 3
    ERROR = 4
    CANCEL = 5
    CONTROL = 6


_MESSAGE = 1
_REQUEST = 2
_ERROR = 4
_CANCEL = 5
_CONTROL = 6

RawFrame = tuple[int, int, int, int, bytes]
BatchFrame = tuple[int, int, int, int, bytes | memoryview]
"""A frame from ``drain_raw``: the payload of a chunk with the MORE flag may be a read-only
view of the received bytes (joined into ``bytes`` with its message); every other payload is
``bytes``."""
"""``(kind, flags, channel_id, request_id, payload)``: the decoder's allocation-light form."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame."""

    kind: FrameKind
    """What the frame carries."""
    flags: int
    """Bit set of FLAG_MORE / FLAG_COMPRESSED."""
    channel_id: int
    """Channel (0 = control)."""
    request_id: int
    """Request id (0 for MESSAGE and CONTROL)."""
    payload: bytes
    """The frame's payload bytes (one chunk of a message when MORE is involved)."""

    def encode(self) -> bytes:
        """The frame's wire bytes."""
        return encode_frame(self.kind, self.flags, self.channel_id, self.request_id, self.payload)


def validate_header(
    kind: int, flags: int, channel_id: int, request_id: int, *, compression: bool = True
) -> None:
    """Check the header fields (everything but the length); raise FrameError on a violation."""
    if not _MESSAGE <= kind <= _CONTROL:
        raise FrameError(f"unknown frame kind {kind}")
    if flags & ~KNOWN_FLAGS:
        raise FrameError(f"unknown frame flags 0x{flags:02x}")
    if flags & FLAG_COMPRESSED and not compression:
        raise FrameError("compressed frame on a connection without compression")
    if kind == _CONTROL:
        if channel_id != 0:
            raise FrameError(f"CONTROL frame on channel {channel_id}")
        if flags:
            raise FrameError("CONTROL frame with flags set")
        if request_id != 0:
            raise FrameError("CONTROL frame with a request id")
        return
    if channel_id == 0:
        raise FrameError(f"{FrameKind(kind).name} frame on the control channel 0")
    if kind == _MESSAGE:
        if request_id != 0:
            raise FrameError("MESSAGE frame with a request id")
    elif request_id == 0:
        raise FrameError(f"{FrameKind(kind).name} frame with request id 0")
    if kind == _CANCEL and flags:
        raise FrameError("CANCEL frame with flags set")


def encode_frame(kind: int, flags: int, channel_id: int, request_id: int, payload: bytes) -> bytes:
    """Encode one frame (no validation beyond what ``struct`` enforces on field ranges)."""
    return HEADER.pack(len(payload) + 8, kind, flags, channel_id, request_id) + payload


class FrameDecoder:
    """Incremental frame parser: ``feed()`` byte pieces of any size, then pull frames.

    ``next_frame()`` returns the next complete :class:`Frame` or ``None``; iterating the decoder
    yields frames until none is complete. ``next_raw()`` is the same without the dataclass, and
    ``drain_raw()`` returns every complete frame in one pass (the connection core's hot path).
    Errors are raised when the offending header bytes are parsed (``feed`` checks the first
    pending header eagerly), never before the valid frames preceding them were returned.
    """

    __slots__ = ("_buf", "_compression", "_error", "_held", "_max_payload", "_need")

    def __init__(self, max_frame_payload: int, *, compression: bool = True) -> None:
        if not 0 <= max_frame_payload <= MAX_FRAME_PAYLOAD_LIMIT:
            raise ValueError(f"max_frame_payload out of range: {max_frame_payload}")
        self._max_payload = max_frame_payload
        self._compression = compression
        self._buf = bytearray()
        # Immutable bytes fed while the buffer was empty, kept as they are: ``drain_raw``
        # parses whole frames straight out of them and copies only an incomplete tail into
        # ``_buf`` (a bulk transfer's data is then never copied into the buffer at all).
        self._held: bytes | None = None
        self._error: FrameError | None = None
        # Total size (header + payload) of the frame at the front of the buffer, once its
        # header was validated; 0 when not yet known.
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        held = self._held
        return len(self._buf) + (len(held) if held is not None else 0)

    def _unhold(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._buf += held

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; raise FrameError if the pending header is already invalid."""
        if self._error is not None:
            raise self._error
        if type(data) is bytes and not self._buf and self._held is None:
            self._held = data
        else:
            self._unhold()
            self._buf += data
        if not self._need:
            self._check_header()

    def _fail(self, message: str) -> FrameError:
        self._error = FrameError(message)
        return self._error

    def _check_header(self) -> None:
        buf: bytes | bytearray = self._held if self._held is not None else self._buf
        n = len(buf)
        if n < 4:
            return
        length = int.from_bytes(buf[:4], "big")
        if length < 8:
            raise self._fail(f"frame length {length} < 8")
        if length - 8 > self._max_payload:
            raise self._fail(
                f"frame payload of {length - 8} bytes exceeds the maximum {self._max_payload}"
            )
        if n < HEADER_SIZE:
            return
        _, kind, flags, channel_id, request_id = HEADER.unpack_from(buf)
        try:
            validate_header(kind, flags, channel_id, request_id, compression=self._compression)
        except FrameError as exc:
            self._error = exc
            raise
        if kind == _CANCEL and length != 8:
            raise self._fail("CANCEL frame with a payload")
        self._need = length + 4

    def next_raw(self) -> RawFrame | None:
        """The next complete frame as a ``(kind, flags, channel_id, request_id, payload)`` tuple."""
        if self._error is not None:
            raise self._error
        self._unhold()
        if not self._need:
            self._check_header()
            if not self._need:
                return None
        need = self._need
        buf = self._buf
        if len(buf) < need:
            return None
        _, kind, flags, channel_id, request_id = HEADER.unpack_from(buf)
        with memoryview(buf) as view:
            payload = bytes(view[HEADER_SIZE:need])
        del buf[:need]  # O(1) amortised: CPython bytearrays consume from the front lazily
        self._need = 0
        return kind, flags, channel_id, request_id, payload

    def drain_raw(self) -> list[BatchFrame]:
        """All complete frames buffered so far, as raw tuples, in one pass (the fast path).

        If an invalid header follows some valid frames, those frames are returned and the error
        is raised by the next call; an empty list means more bytes are needed.
        """
        if self._error is not None:
            raise self._error
        held = self._held
        buf: bytes | bytearray = held if held is not None else self._buf
        end_of_data = len(buf)
        out: list[BatchFrame] = []
        pos = 0
        unpack_from = HEADER.unpack_from
        max_payload = self._max_payload
        compression = self._compression
        try:
            with memoryview(buf) as view:
                while end_of_data - pos >= HEADER_SIZE:
                    length, kind, flags, channel_id, request_id = unpack_from(buf, pos)
                    if length < 8 or length - 8 > max_payload:
                        break  # reported by _check_header below
                    if kind != _MESSAGE or flags or not channel_id or request_id:
                        validate_header(
                            kind, flags, channel_id, request_id, compression=compression
                        )
                        if kind == _CANCEL and length != 8:
                            raise FrameError("CANCEL frame with a payload")
                    end = pos + 4 + length
                    if end > end_of_data:
                        break
                    if flags & FLAG_MORE and held is not None:
                        # A chunk of a larger message: a view of the immutable received bytes,
                        # copied once when the message is joined (not once more here).
                        out.append((kind, flags, channel_id, request_id, view[pos + 12 : end]))
                    else:
                        out.append(
                            (kind, flags, channel_id, request_id, bytes(view[pos + 12 : end]))
                        )
                    pos = end
        except FrameError as exc:
            self._error = exc
        if held is not None:
            self._held = None
            if pos < end_of_data:
                self._buf += memoryview(held)[pos:]  # only the incomplete tail is copied
        elif pos:
            del self._buf[:pos]
        self._need = 0
        if self._error is None:
            try:
                self._check_header()
            except FrameError:
                pass  # recorded in self._error
        if not out and self._error is not None:
            raise self._error
        return out

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed."""
        raw = self.next_raw()
        if raw is None:
            return None
        kind, flags, channel_id, request_id, payload = raw
        return Frame(FrameKind(kind), flags, channel_id, request_id, payload)

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame


class _Partial:
    __slots__ = ("compressed", "keep", "kind", "limit", "parts", "request_id", "size")

    def __init__(
        self, kind: int, request_id: int, compressed: bool, limit: int, keep: bool
    ) -> None:
        self.kind = kind
        self.request_id = request_id
        self.compressed = compressed
        self.limit = limit
        self.keep = keep
        self.parts: list[bytes | memoryview] = []
        self.size = 0


class Discarded:
    """Marker returned by :meth:`MessageAssembler.add` for a completed *discarded* message."""

    __slots__ = ()


DISCARDED = Discarded()


class MessageAssembler:
    """Per-channel reassembly of chunked messages (receiver side of the MORE flag).

    ``add`` takes one data frame (MESSAGE/REQUEST/RESPONSE/ERROR) and returns ``None`` while the
    message is incomplete, the whole (still compressed, if it was) payload when it completes, or
    :data:`DISCARDED` when it completes but was started with ``keep=False`` (its bytes are counted
    against the limit but not buffered: messages nobody will read). ``keep`` and ``limit`` are
    only consulted on a message's first frame. While a message is in progress on a channel, the
    next frame there must have the same kind, request id and COMPRESSED flag; the running total
    is checked against ``limit`` before appending. At most ``max_discarding`` discarded messages
    may be in progress at once. All violations raise FrameError.
    """

    __slots__ = ("_discarding", "_max_discarding", "_partial")

    def __init__(self, *, max_discarding: int = 256) -> None:
        self._partial: dict[int, _Partial] = {}
        self._discarding = 0
        self._max_discarding = max_discarding

    @property
    def partial(self) -> Mapping[int, object]:
        """Channels with a message in progress (a live read-only view; values are opaque)."""
        return self._partial

    def in_progress(self, channel_id: int) -> bool:
        """Whether a message is partially received on ``channel_id``."""
        return channel_id in self._partial

    def add(
        self,
        kind: int,
        flags: int,
        channel_id: int,
        request_id: int,
        payload: bytes | memoryview,
        *,
        limit: int,
        keep: bool = True,
    ) -> bytes | Discarded | None:
        """Feed one frame; see the class docstring for the three outcomes."""
        compressed = bool(flags & FLAG_COMPRESSED)
        p = self._partial.get(channel_id)
        if p is None:
            if len(payload) > limit:
                raise FrameError(f"message on channel {channel_id} exceeds {limit} bytes")
            if not flags & FLAG_MORE:
                if not keep:
                    return DISCARDED
                return payload if type(payload) is bytes else bytes(payload)
            if not keep:
                if self._discarding >= self._max_discarding:
                    raise FrameError("too many partial messages being discarded")
                self._discarding += 1
            p = _Partial(kind, request_id, compressed, limit, keep)
            p.size = len(payload)
            if keep:
                p.parts.append(payload)
            self._partial[channel_id] = p
            return None
        if p.kind != kind or p.request_id != request_id or p.compressed != compressed:
            raise FrameError(
                f"frame (kind {kind}, request {request_id}) interleaved with a partial message "
                f"(kind {p.kind}, request {p.request_id}) on channel {channel_id}"
            )
        p.size += len(payload)
        if p.size > p.limit:
            raise FrameError(f"message on channel {channel_id} exceeds {p.limit} bytes")
        if p.keep:
            p.parts.append(payload)
        if flags & FLAG_MORE:
            return None
        self._drop(channel_id, p)
        return b"".join(p.parts) if p.keep else DISCARDED

    def _drop(self, channel_id: int, p: _Partial) -> None:
        del self._partial[channel_id]
        if not p.keep:
            self._discarding -= 1

    def abort(self, channel_id: int, kind: int, request_id: int) -> bool:
        """Forget the partial message on ``channel_id`` if it is ``(kind, request_id)``."""
        p = self._partial.get(channel_id)
        if p is None or p.kind != kind or p.request_id != request_id:
            return False
        self._drop(channel_id, p)
        return True
