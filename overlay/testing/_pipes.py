"""The byte pipes of the in-memory network: one bounded chunk queue per direction, and the
anyio byte stream made of two of them (also usable alone: :func:`memory_stream_pair`).

A connection is two :class:`Pipe` objects, one per direction. A pipe is a deque of byte chunks
bounded by ``max_chunks`` chunks and (softly) ``max_buffered`` bytes: a sender blocks while it is
full (backpressure: a reader that stops reading stops its writer), one chunk is always admitted
into an empty pipe so any size can be sent. Both sides wait on one shared :class:`anyio.Event`
that is replaced after each wake-up; every state change wakes all waiters, which re-check.
Stream semantics follow anyio's socket streams:

* ``send_eof()`` / ``aclose()`` on one end → the other end drains the buffer, then its
  ``receive()`` raises :class:`anyio.EndOfStream`;
* ``aclose()`` → the other end's ``send()`` raises :class:`anyio.BrokenResourceError`;
* a network break (:meth:`MemoryNetwork.disconnect`, :meth:`MemoryNetwork.partition`) acts as a
  reset: both ends' pending and later ``send``/``receive`` raise ``BrokenResourceError``;
* ``abort()`` on one end (:func:`overlay.transport.abort_stream`) resets the connection the
  same way and closes that end;
* any operation on an end closed locally raises :class:`anyio.ClosedResourceError`.

Link conditions (:class:`LinkConditions`, per node pair via :meth:`MemoryNetwork.set_link`):
``latency`` delays every chunk (and the connect, by one round trip) without limiting throughput
beyond the pipe window; ``loss`` models TCP loss as a retransmission delay (a stream transport
never loses bytes): with that probability a chunk is delivered ``retransmit_delay`` later, and
later chunks never overtake it. A perfect link (the default) reads no clock at all.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from overlay.errors import ConfigError, LocalProtocolError
from overlay.transport import StreamAbortAttribute

__all__ = [
    "EndListener",
    "LinkConditions",
    "MemoryByteStream",
    "PERFECT_LINK",
    "Pipe",
    "memory_stream_pair",
]


class EndListener(Protocol):
    """Told when one end of a connection closes (the network's record of a live link)."""

    def end_closed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkConditions:
    """How a link between two nodes behaves (both directions)."""

    latency: float = 0.0
    """One-way delay in seconds added to every chunk; connecting takes one round trip."""
    loss: float = 0.0
    """Probability that a chunk needs a retransmission (delivered ``retransmit_delay`` late)."""
    retransmit_delay: float = 0.2
    """Extra delay of a "lost" chunk, in seconds."""

    def __post_init__(self) -> None:
        for key in ("latency", "retransmit_delay"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(key, "must be a finite number >= 0")
        if not (isinstance(self.loss, int | float) and 0 <= self.loss <= 1):
            raise ConfigError("loss", "must be a probability in [0, 1]")

    @property
    def perfect(self) -> bool:
        """True when the link adds no delay at all."""
        return self.latency == 0 and self.loss == 0


PERFECT_LINK = LinkConditions()


class Pipe:
    """One direction of a connection: a bounded chunk queue. See the module docstring."""

    __slots__ = (
        "_broken",
        "_buffered",
        "_chunks",
        "_eof",
        "_event",
        "_last_at",
        "_max_buffered",
        "_max_chunks",
        "_offset",
        "_reader_closed",
        "_rng",
        "_times",
        "conditions",
    )

    def __init__(self, max_chunks: int, max_buffered: int, rng: random.Random | None) -> None:
        self._chunks: list[bytes] = []  # not a deque: an empty one costs 624 B per pipe
        self._times: deque[float] | None = None  # due times, only on imperfect links
        self._offset = 0
        self._buffered = 0
        self._max_chunks = max_chunks
        self._max_buffered = max_buffered
        self._eof = False
        self._reader_closed = False
        self._broken = False
        self._event: anyio.Event | None = None
        self._last_at = 0.0
        self._rng = rng
        self.conditions = PERFECT_LINK

    def _notify(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def _wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    async def send(self, data: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        while True:
            if self._eof:
                raise anyio.ClosedResourceError
            if self._broken or self._reader_closed:
                raise anyio.BrokenResourceError
            if not self._chunks or (
                len(self._chunks) < self._max_chunks and self._buffered < self._max_buffered
            ):
                break
            await self._wait()
        if not data:
            return
        chunk = bytes(data)
        conditions = self.conditions
        times = self._times
        if not conditions.perfect or times:
            delay = conditions.latency
            if conditions.loss:
                if self._rng is None:
                    self._rng = random.Random(0)
                if self._rng.random() < conditions.loss:
                    delay += conditions.retransmit_delay
            self._last_at = max(self._last_at, anyio.current_time() + delay)
            if times is None:
                times = self._times = deque()
            # keep _times aligned with _chunks: earlier perfect-link chunks are due at once
            while len(times) < len(self._chunks):
                times.appendleft(0.0)
            times.append(self._last_at)
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._notify()

    async def receive(self, max_bytes: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        while True:
            if self._reader_closed:
                raise anyio.ClosedResourceError
            if self._broken:
                raise anyio.BrokenResourceError
            if self._chunks:
                if self._times:
                    wait = self._times[0] - anyio.current_time()
                    if wait > 0:
                        with anyio.move_on_after(wait):
                            await self._wait()
                        continue
                return self._take(max_bytes)
            if self._eof:
                raise anyio.EndOfStream
            await self._wait()

    def _take(self, max_bytes: int) -> bytes:
        head = self._chunks[0]
        offset = self._offset
        if len(head) - offset <= max_bytes:
            data = head[offset:] if offset else head
            del self._chunks[0]
            if self._times:
                self._times.popleft()
            self._offset = 0
        else:
            data = head[offset : offset + max_bytes]
            self._offset = offset + max_bytes
        self._buffered -= len(data)
        self._notify()
        return data

    def close_writer(self) -> None:
        self._eof = True
        self._notify()

    def close_reader(self) -> None:
        self._reader_closed = True
        self._chunks.clear()
        self._times = None
        self._buffered = 0
        self._notify()

    def break_(self) -> None:
        self._broken = True
        self._chunks.clear()
        self._times = None
        self._buffered = 0
        self._notify()


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory connection (an anyio byte stream; see the module docstring)."""

    def __init__(self, incoming: Pipe, outgoing: Pipe, link: EndListener | None = None) -> None:
        self._in = incoming
        self._out = outgoing
        self._link = link
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise LocalProtocolError("max_bytes must be a positive integer")
        if self._closed:
            raise anyio.ClosedResourceError
        return await self._in.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await self._out.send(item)

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._out.close_writer()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {StreamAbortAttribute.abort: lambda: self.abort}

    def abort(self) -> None:
        """Reset the connection (as a TCP reset does) and close this end."""
        if self._closed:
            return
        self._in.break_()
        self._out.break_()
        self.close_now()

    def close_now(self) -> None:
        """Close synchronously (what :meth:`aclose` does, minus the checkpoint)."""
        if self._closed:
            return
        self._closed = True
        self._in.close_reader()
        self._out.close_writer()
        if self._link is not None:
            self._link.end_closed()

    async def aclose(self) -> None:
        self.close_now()
        await anyio.lowlevel.checkpoint()


def memory_stream_pair(
    *, max_chunks: int = 16, max_buffered: int = 256 * 1024, rng: random.Random | None = None
) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected in-memory byte streams, outside any network (handy in unit tests)."""
    ab = Pipe(max_chunks, max_buffered, rng)
    ba = Pipe(max_chunks, max_buffered, rng)
    return MemoryByteStream(ba, ab), MemoryByteStream(ab, ba)
