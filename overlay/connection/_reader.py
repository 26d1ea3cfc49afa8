"""The read side of one peer connection: bytes in, the core's events out.

Theory of operation
-------------------
A :class:`Reader` pumps the connection's plaintext into its
:class:`~overlay.connection._core.ConnectionCore` and hands the core's events to its
:class:`ReaderHost` (the :class:`~overlay.connection._driver.PeerConnection`): messages to
``deliver_message_nowait`` (or, when that would have to wait for a full inbox,
``deliver_message``: backpressure towards the peer), every other event to ``handle_event``.
The answers queued while one read's events are dispatched leave in one write at its end
(:meth:`~overlay.connection._writer.Writer.flush_now`; kicks meanwhile only queue).

It reads on two paths, one at a time:

* the **reader task** (:meth:`Reader.run`, in the connection's own task): ``receive``, feed,
  dispatch, write; it waits out the core's receive rate limit and a full inbox;
* on asyncio, the **synchronous read path** (:meth:`Reader.receive_nowait`, the secure
  stream's message hook): while the task waits in ``receive`` with nothing buffered, the
  transport's callback hands each decrypted message here; what needs no waiting is done at
  once (no event-loop step between the bytes and their handling: a response wakes its caller
  directly, a plain handler's answer is written from the callback). A message that would wait
  for a full inbox is *held* and the task woken: it delivers the held message before anything
  later, so the order of events is the core's whichever path ran them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc

from overlay.connection._core import ConnectionCore, Event, MessageReceived
from overlay.connection._writer import STREAM_CLOSED, Writer
from overlay.errors import RemoteProtocolError
from overlay.transport._secure import SecureStream

__all__ = ["Reader", "ReaderHost"]


class ReaderHost(Protocol):
    """What a :class:`Reader` hands its events to (the connection)."""

    @property
    def is_open(self) -> bool: ...

    def handle_event(self, event: Event) -> bool:
        """Dispatch an event other than a message, synchronously; False: the connection
        stopped (the reader stops dispatching)."""

    def deliver_message_nowait(self, channel_id: int, payload: bytes) -> bool:
        """Deliver a message without waiting; False (nothing done) if it would have to."""

    async def deliver_message(self, channel_id: int, payload: bytes) -> None:
        """Deliver a message, waiting for room."""

    def stream_closed(self) -> None:
        """The peer closed (or reset) the stream."""

    def protocol_violation(self, exc: RemoteProtocolError) -> None:
        """The peer broke the protocol (the reader stops)."""


class Reader:
    """Reads one connection's stream (see the module docstring)."""

    __slots__ = ("_clock", "_core", "_held", "_host", "_stream", "_writer")

    def __init__(
        self,
        core: ConnectionCore,
        stream: anyio.abc.ByteStream,
        writer: Writer,
        clock: Callable[[], float],
        host: ReaderHost,
    ) -> None:
        self._core = core
        self._stream = stream
        self._writer = writer
        self._clock = clock
        self._host = host
        self._held: MessageReceived | None = None
        """A message the synchronous path could not deliver without waiting: the task
        delivers it before any later event."""

    async def run(self) -> None:
        """The reader task: read until the connection is no longer open, the stream ends or
        the peer breaks the protocol. On asyncio, the synchronous path runs meanwhile."""
        stream = self._stream
        hooked = isinstance(stream, SecureStream) and stream.set_message_hook(
            self.receive_nowait)
        try:
            await self._read_loop()
        except RemoteProtocolError as exc:
            self._host.protocol_violation(exc)
        finally:
            if hooked:
                assert isinstance(stream, SecureStream)
                stream.set_message_hook(None)

    async def _read_loop(self) -> None:
        core = self._core
        stream = self._stream
        clock = self._clock
        host = self._host
        now = clock()
        await self._dispatch()  # bytes that arrived with the hello exchange
        if core.wants_write:
            self._writer.flush_now()
        while host.is_open:
            # ``now`` is from the last receive: a bucket that could pay then can pay now (it
            # only refills); if it could not, read the clock afresh (delivering may have waited
            # for inbox space) before sleeping.
            if core.receive_paused_until(now) is not None:
                now = clock()
                paused = core.receive_paused_until(now)
                if paused is not None:
                    await anyio.sleep(max(0.0, paused - now))
            try:
                data = await stream.receive()
            except STREAM_CLOSED:
                host.stream_closed()  # nothing left to flush
                return
            now = clock()
            if data:  # else the synchronous path fed the core and left us the rest
                core.receive_data(data, now)
            await self._dispatch()
            if core.wants_write:  # answers, a pong or a CANCEL answer to send
                self._writer.flush_now()

    async def _dispatch(self) -> None:
        host = self._host
        held = self._held
        if held is not None:
            self._held = None
            await host.deliver_message(held.channel_id, held.payload)
        core = self._core
        writer = self._writer
        writer.batching = True  # answers queued by the batch leave in one write (flush_now)
        try:
            while (event := core.next_event()) is not None:
                if type(event) is MessageReceived:
                    if not host.deliver_message_nowait(event.channel_id, event.payload):
                        writer.batching = False  # others may write while this waits
                        await host.deliver_message(event.channel_id, event.payload)
                        writer.batching = True
                elif not host.handle_event(event):
                    return
        finally:
            writer.batching = False

    def receive_nowait(self, plaintext: bytes) -> bool:
        """The synchronous read path (the stream's message hook; the task waits in
        ``receive``): feed the core, dispatch every event that needs no waiting, write the
        answers. True when the task must take over (a message for a full inbox, a receive
        rate limit to wait out, the connection no longer open); a protocol violation raises,
        and the task's ``receive`` raises it again."""
        host = self._host
        if not host.is_open:
            return True
        core = self._core
        now = self._clock()
        core.receive_data(plaintext, now)
        writer = self._writer
        writer.batching = True
        try:
            done = self._dispatch_nowait()
        finally:
            writer.batching = False
        if core.wants_write:
            writer.flush_now(now)
        return not done or not host.is_open or core.receive_paused_until(now) is not None

    def _dispatch_nowait(self) -> bool:
        """Dispatch the core's events synchronously; False when one needs the task (a
        message for a full inbox, then held) or the connection stopped."""
        core = self._core
        host = self._host
        while (event := core.next_event()) is not None:
            if type(event) is MessageReceived:
                if not host.deliver_message_nowait(event.channel_id, event.payload):
                    self._held = event
                    return False
            elif not host.handle_event(event):
                return False
        return True
