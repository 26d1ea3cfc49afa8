"""The write side of one peer connection: the writer task, the deferred flush, queue space.

Theory of operation
-------------------
Callers queue frames into the :class:`~overlay.connection._core.ConnectionCore` synchronously and
then :meth:`Writer.kick`. An idle writer task sleeps on its *wake* event; on asyncio, when the
stream can take data synchronously (:class:`~overlay.transport._secure.SecureStream` with
``supports_send_nowait``), a kick does not wake it: the first kick writes what is queued at
once, from the caller (no task hop), and opens a *batching window*: one deferred loop callback
(shared by every connection kicked in the same step, e.g. by a broadcast) writes whatever later
kicks of the step queued, in one write (:meth:`_flush`). The read path writes the answers to a
batch of received frames once, at the end of the batch (:meth:`flush_now`). Both leave to the
task only what needs waiting (a paused transport, the Disconnect written, a broken stream).
Otherwise a kick wakes the task, which writes ``core.data_to_send`` batches until nothing is
left.

Queue space: senders that find a channel queue (or the in-flight limit) full wait on the *space*
event (:meth:`wait_space`); every write, answered request and close sets it
(:meth:`release_space`, :meth:`wake_senders`), so every queue stays bounded.

The writer never decides the connection's life: a broken stream calls ``on_broken`` (the
connection stops), and once the core is no longer OPEN and its Disconnect was written the task
ends (``on_broken`` too: the connection then finishes closing).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from overlay.connection._core import ConnectionCore, ConnectionState
from overlay.transport._asyncio import flush_soon
from overlay.transport._secure import SecureStream

__all__ = ["STREAM_CLOSED", "Writer"]

STREAM_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
"""What a stream raises once the connection is gone."""


class Writer:
    """The writer task of one connection and the events its senders wait on."""

    __slots__ = (
        "_clock",
        "_core",
        "_direct",
        "_flush_callback",
        "_flush_soon",
        "_on_broken",
        "_on_held_back",
        "_space",
        "_space_waiters",
        "_stream",
        "_wake",
        "batching",
        "flush_pending",
        "waiting",
    )

    def __init__(
        self,
        core: ConnectionCore,
        stream: anyio.abc.ByteStream,
        clock: Callable[[], float],
        *,
        on_broken: Callable[[], None],
        on_held_back: Callable[[], None],
    ) -> None:
        """``on_broken``: the stream broke or the writer finished (the connection stops);
        ``on_held_back``: the send rate limit held a write back (the connection's timer may need
        to fire earlier)."""
        self._core = core
        self._stream = stream
        self._clock = clock
        self._on_broken = on_broken
        self._on_held_back = on_held_back
        self._space = anyio.Event()
        self._space_waiters = 0
        self._wake = anyio.Event()
        self.waiting = False
        """The writer task sleeps (nothing was left to write)."""
        self._direct: SecureStream | None = (
            stream if isinstance(stream, SecureStream) and stream.supports_send_nowait else None
        )
        self._flush_soon = flush_soon() if self._direct is not None else None
        self.batching = False
        """The read path is dispatching a batch of received events: kicks only queue, and it
        writes what they queued once, at the end (:meth:`flush_now`)."""
        self.flush_pending = False
        """A deferred flush is scheduled (a kick until it runs has nothing to add)."""
        self._flush_callback = self._flush  # bound once: queued by every kick

    # ------------------------------------------------------------------------------ waking

    def kick(self) -> None:
        """Something was queued: have it written. On asyncio, with the writer idle and no
        deferred flush pending, it is written *now* (encrypted and handed to the transport by
        the caller, no task hop) and a deferred flush is scheduled: kicks until it runs (the
        rest of this step: more callers, a broadcast) only queue, and it writes them in one
        write. Otherwise (trio, a busy writer) the writer task is woken. While
        :attr:`batching`, nothing: the read path ends its batch with :meth:`flush_now`."""
        if self.waiting and not self.batching:
            flush_soon = self._flush_soon
            if flush_soon is not None:
                if not self.flush_pending:
                    self.flush_pending = True
                    flush_soon(self._flush_callback)
                    self._write_queued()
                return
            self.waiting = False
            self._wake.set()

    def kick_deferred(self) -> None:
        """As :meth:`kick`, but never writing now: the deferred flush writes it (a broadcast:
        every connection it queued to writes in the one shared callback, after the step)."""
        if self.waiting and not self.batching:
            flush_soon = self._flush_soon
            if flush_soon is not None:
                if not self.flush_pending:
                    self.flush_pending = True
                    flush_soon(self._flush_callback)
                return
            self.waiting = False
            self._wake.set()

    def flush_now(self, now: float | None = None) -> None:
        """Write what is queued now if the writer is idle and the stream takes data
        synchronously (the read path after a batch of events: whatever it queued leaves in one
        write); otherwise as :meth:`kick`. ``now``: the clock's time, when the caller just
        read it."""
        if self.waiting and self._direct is not None:
            self._write_queued(now)
        else:
            self.kick()

    def wake(self) -> None:
        """Wake the writer task itself (a wait only it can do, or closing)."""
        if self.waiting:
            self.waiting = False
            self._wake.set()

    # ------------------------------------------------------------------------- queue space

    def release_space(self) -> None:
        """Something left a queue (written, answered): wake senders waiting for room."""
        if self._space_waiters:
            self._space.set()
            self._space = anyio.Event()

    def wake_senders(self, *, renew: bool = False) -> None:
        """Wake every waiting sender (they re-check the connection and the channel); with
        ``renew`` later senders wait afresh (the connection stays open)."""
        self._space.set()
        if renew:
            self._space = anyio.Event()

    async def wait_space(self) -> None:
        """Wait until something left a queue (the caller then retries)."""
        self._space_waiters += 1
        try:
            await self._space.wait()
        finally:
            self._space_waiters -= 1

    # ------------------------------------------------------------------------------ writing

    def _flush(self) -> None:
        """The deferred flush: a loop callback run after the step that kicked, so frames queued
        in one step (after the first, written at once) still leave in one write; the
        connections of one broadcast share the callback."""
        self.flush_pending = False
        self._write_queued()

    def _write_queued(self, now: float | None = None) -> None:
        """Write what is queued, synchronously, while the writer task sleeps (never while it
        is writing: :meth:`SecureStream.send_ready` is false then, so the order of the bytes
        is the core's). Anything that needs waiting (a paused transport, a send in progress,
        the Disconnect written, a broken stream) is left to the writer task, woken for it."""
        stream = self._direct
        core = self._core
        if not self.waiting or stream is None or core.state.final:
            return
        while core.wants_write:
            if not stream.send_ready():
                self.wake()
                return
            data = core.data_to_send(self._clock() if now is None else now)
            now = None  # a later batch reads the clock afresh
            if not data:
                self._on_held_back()  # held back by the send rate limit
                break
            try:
                stream.send_nowait(data)
            except STREAM_CLOSED:
                core.connection_lost()
                self._on_broken()
                return
            self.release_space()
        if core.state is not ConnectionState.OPEN:
            self.wake()  # CLOSING with the Disconnect written: the writer finishes

    async def run(self) -> None:
        """The writer task: write until the connection is no longer OPEN and the Disconnect
        went out (or the stream broke)."""
        core = self._core
        stream = self._stream
        clock = self._clock
        try:
            while True:
                if core.wants_write:
                    data = core.data_to_send(clock())
                    if data:
                        # Unbounded here: when closing, the node's timer task aborts a write
                        # the peer does not take by the close deadline (see the driver).
                        await stream.send(data)
                        self.release_space()
                        continue
                    self._on_held_back()  # held back by the send rate limit
                if core.state is not ConnectionState.OPEN:
                    break  # CLOSING with the Disconnect written, or final
                self._wake = anyio.Event()
                self.waiting = True
                await self._wake.wait()
        except STREAM_CLOSED:
            pass
        finally:
            core.connection_lost()
            self._on_broken()
