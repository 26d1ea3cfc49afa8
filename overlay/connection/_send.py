"""The send side of the connection core: what goes out next, in which frames, how fast.

Theory of operation
-------------------
A :class:`Sender` is owned by the :class:`~overlay.connection._core.ConnectionCore` (pure: no
I/O, no clock; ``now`` is passed in). It holds the per-channel queues' scheduling (the priority
rings of the :class:`~overlay.connection._channels.ChannelTable`), the control queue, the ping
due to go out, our Disconnect frame once closing, and the send token bucket. ``data_to_send``
emits *one frame at a time*: the control queue first (the due ping, pongs, cancels, automatic
error replies), then the highest-priority channel with queued data, rotating round-robin among
channels of equal priority after every frame; a message longer than ``max_frame_payload`` goes
out as consecutive chunks. Frames are joined into a batch of at most ``max_write_batch`` bytes
(always at least one frame), only while the bucket holds enough tokens for the whole next frame;
when it holds one back, :meth:`Sender.refill_at` is when it can pay. Once the core leaves OPEN
(:meth:`Sender.stop`) only the Disconnect frame goes out, then ``b""`` forever.

A broadcast queues one shared entry in every connection (:meth:`Sender.queue_shared`): the entry
is read, never written, by ``data_to_send`` (one frame, uncompressed), so the message is encoded
and its queue entry built once for all peers.
"""

from __future__ import annotations

import zstandard

from overlay.connection._channels import ChannelTable
from overlay.connection._ratelimit import TokenBucket
from overlay.connection._types import (
    _CONTROL,
    CoreConfig,
    _Channel,
    _ControlQueue,
    _OutMsg,
    _Pings,
)
from overlay.errors import MessageTooLarge, WouldBlock
from overlay.wire._frames import FLAG_COMPRESSED, FLAG_MORE, HEADER, HEADER_SIZE
from overlay.wire._messages import Ping, encode_control

__all__ = ["Sender"]

_MAX_PINGS = 16  # outstanding pings remembered for RTT matching
_pack = HEADER.pack


class Sender:
    """The outgoing half of one connection's protocol state."""

    def __init__(
        self,
        config: CoreConfig,
        table: ChannelTable,
        control: _ControlQueue,
        pings: _Pings,
        *,
        now: float,
        compression: bool,
    ) -> None:
        self._max_payload = config.max_frame_payload
        self._max_batch = config.max_write_batch
        self._threshold = config.compression_threshold
        self._levels = table.levels
        self._ctrl = control.frames
        self._pings = pings
        self._bucket = TokenBucket(config.send_rate, config.send_burst, now)
        self._cctx: zstandard.ZstdCompressor | None = None
        if compression:
            self._cctx = zstandard.ZstdCompressor(
                level=config.compression_level, write_content_size=True
            )
        self.closing = False
        """The core left OPEN: nothing goes out but :attr:`disconnect_frame`."""
        self.disconnect_frame: bytes | None = None
        self.ping_due = 0
        """Nonce of a ping to send next (stamped in the pings' table when it actually leaves)."""
        self.blocked = 0
        """Size of the frame the send bucket could not pay for (0: none held back)."""
        self.bytes_out = 0
        self.frames_out = 0

    def stop(self) -> None:
        """The connection left OPEN: drop the due ping; only the Disconnect goes out."""
        self.closing = True
        self.ping_due = 0

    @property
    def wants_write(self) -> bool:
        """Whether ``data_to_send`` has something to hand out now (rate limits aside)."""
        if self.closing:
            return self.disconnect_frame is not None
        return bool(self._ctrl) or bool(self.ping_due) or any(self._levels)

    def refill_at(self) -> float | None:
        """When the send bucket can pay for the frame it held back (None: nothing held)."""
        return self._bucket.ready_at(self.blocked) if self.blocked else None

    def queue_shared(self, ch: _Channel, entry: _OutMsg) -> bool:
        """Queue a broadcast's shared entry on ``ch``; False (nothing queued) when it cannot go
        out as it is here (more than one frame, or worth compressing): the caller then queues
        the payload as a message of its own."""
        size = entry.size
        if size > self._max_payload or (self._cctx is not None and size >= self._threshold):
            return False
        if size > ch.max_size:
            raise MessageTooLarge(
                f"{size}-byte message exceeds channel {ch.id}'s maximum of {ch.max_size}"
            )
        queue = ch.queue
        if len(queue) >= ch.queue_size:
            raise WouldBlock(f"send queue of channel {ch.id} is full")
        queue.append(entry)
        if not ch.active:
            ch.active = True
            ch.level.append(ch)
        return True

    def enqueue(self, ch: _Channel, kind: int, request_id: int, payload: bytes) -> _OutMsg:
        size = len(payload)
        if size > ch.max_size:
            raise MessageTooLarge(
                f"{size}-byte message exceeds channel {ch.id}'s maximum of {ch.max_size}"
            )
        if len(ch.queue) >= ch.queue_size:
            raise WouldBlock(f"send queue of channel {ch.id} is full")
        if type(payload) is not bytes:
            payload = bytes(payload)
        flags = 0
        data = payload
        if self._cctx is not None and size >= self._threshold:
            packed = self._cctx.compress(payload)
            if len(packed) < size:
                data, flags = packed, FLAG_COMPRESSED
        msg = _OutMsg(ch, kind, request_id, data, flags, size)
        if len(data) > self._max_payload:
            msg.data = memoryview(data)  # chunks are sliced without copying
        ch.queue.append(msg)
        if not ch.active:
            ch.active = True
            ch.level.append(ch)
        return msg

    def _pick(self) -> _Channel | None:
        for level in self._levels:
            while level:
                ch = level[0]
                if ch.queue:
                    return ch
                del level[0]
                ch.active = False
        return None

    def data_to_send(self, now: float) -> bytes:
        """The next write batch (whole frames, ≤ max_write_batch unless one frame is larger);
        ``b""`` when nothing is ready or the send rate limit forbids the next frame."""
        self.blocked = 0
        if self.closing:
            frame, self.disconnect_frame = self.disconnect_frame, None
            if frame is None:
                return b""
            self.bytes_out += len(frame)
            self.frames_out += 1
            return frame
        out: list[bytes | memoryview] = []
        used = 0
        cap = self._max_batch
        bucket = self._bucket
        tokens = bucket.available(now) + 1e-6
        burst = bucket.burst  # a frame above the burst goes out alone, from a full bucket
        ctrl = self._ctrl
        max_payload = self._max_payload
        frames = 0
        if self.ping_due:
            nonce = self.ping_due
            ping = encode_control(Ping(nonce))
            size = len(ping) + HEADER_SIZE
            if size > tokens and tokens < burst:
                self.blocked = min(size, burst)
                return b""
            self.ping_due = 0
            out.append(_pack(size - 4, _CONTROL, 0, 0, 0) + ping)
            used = size
            frames = 1
            sent = self._pings.sent
            if len(sent) >= _MAX_PINGS:
                del sent[next(iter(sent))]
            sent[nonce] = now  # RTT counts from when the ping leaves, not when it is due
        while True:
            if ctrl:
                frame = ctrl[0]
                size = len(frame)
                if used + size > tokens and (used or tokens < burst):
                    self.blocked = min(size, burst)
                    break
                if used and used + size > cap:
                    break
                del ctrl[0]
                out.append(frame)
                used += size
                frames += 1
                continue
            ch = self._pick()
            if ch is None:
                break
            msg = ch.queue[0]
            data = msg.data
            offset = msg.offset
            n = len(data) - offset
            more = 0
            if n > max_payload:
                n = max_payload
                more = FLAG_MORE
            size = n + HEADER_SIZE
            if used + size > tokens and (used or tokens < burst):
                self.blocked = min(size, burst)
                break
            if used and used + size > cap:
                break
            out.append(_pack(n + 8, msg.kind, msg.flags | more, ch.id, msg.request_id))
            out.append(data if (n == len(data)) else data[offset : offset + n])
            used += size
            frames += 1
            level = ch.level
            del level[0]
            if more:
                msg.offset = offset + n
            else:  # (offset is not read again; a shared broadcast entry must keep it at 0)
                msg.queued = False
                del ch.queue[0]
                ch.messages_sent += 1
                ch.bytes_sent += msg.size
                if not ch.queue:
                    ch.active = False
                    continue
            level.append(ch)
        if not out:
            return b""
        bucket.consume(used, now)
        self.bytes_out += used
        self.frames_out += frames
        return b"".join(out)
