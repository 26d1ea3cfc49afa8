"""The asyncio data path: TCP connections on an ``asyncio.BufferedProtocol`` (plain asyncio and
uvloop), behind the same anyio ``SocketStream`` interface as anyio's own streams.

The one module of overlay that imports ``asyncio`` (a contract in ``pyproject.toml`` keeps it so).
On trio, :class:`~overlay.transport._tcp.TcpTransport` keeps anyio's (trio's) socket streams.

Theory of operation
-------------------
anyio's asyncio socket stream pauses reading after every ``receive`` and resumes it on the next
one (an ``epoll_ctl`` pair per message), wakes its reader through an ``asyncio.Event`` and
yields to the loop once more after every ``send``. Here instead:

* **Reads** land in one preallocated buffer per event loop (``get_buffer`` hands it out;
  ``buffer_updated`` runs synchronously right after the ``recv_into``, so one buffer serves every
  connection of the loop and idle connections hold no read buffer). ``buffer_updated`` copies
  the bytes out once: straight into the future of a waiting ``receive`` when there is one,
  otherwise onto a queue. Reading is paused only when ``_HIGH_WATER`` bytes (one read) are
  queued unread, and resumed once ``receive`` took them: the backpressure of anyio's stream,
  which buffers about one read before the kernel's buffers fill up, without an ``epoll_ctl``
  pair per message while the reader keeps up. Reads are 64 KiB: with 256 KiB reads (anyio's)
  the kernel's window autotuning, fed by a reader that never pauses, absorbed several MiB more
  of a peer's data while nobody read it (tests/test_node_backpressure.py).
* **The receive hook** (:meth:`AsyncioSocketStream.set_receive_hook`, used by the connection
  through :meth:`~overlay.transport._secure.SecureStream.set_message_hook`): while the receiver
  waits with nothing queued, ``buffer_updated`` hands a read below 32 KiB to the hook
  synchronously (the connection decrypts, feeds its core and dispatches what needs no waiting
  right there) and wakes the receiver only when the hook asks for it; order is kept because
  the hook runs only when nothing is queued ahead of the bytes and the receiver is parked.
* **Writes** go straight to ``transport.write``. The write buffer limit is 0, as anyio sets it:
  when the kernel does not take everything at once the transport calls ``pause_writing`` and
  ``send`` waits until ``resume_writing`` (or the connection is lost). A write the kernel took at
  once returns without yielding.
* **Cancellation**: ``receive`` and ``send`` are cancellation points as with anyio (a cancelled
  caller raises before doing anything; a wait is interrupted). A ``send`` interrupted while
  waiting for the transport to drain may have queued part of its data (same as anyio).
* **EOF, resets, close**: ``eof_received`` keeps the transport open for writing; queued data is
  still returned before ``anyio.EndOfStream``. A lost connection raises
  ``anyio.BrokenResourceError`` (chained to the ``OSError``) from ``send``, and from ``receive``
  once the queue is empty (``EndOfStream`` when it was lost without an error); after our own
  ``aclose`` both raise ``anyio.ClosedResourceError``. ``aclose`` aborts the transport (anyio
  does the same). The stream publishes :attr:`~overlay.transport.StreamAbortAttribute.abort`:
  ``SO_LINGER`` 0 then ``transport.abort()``, so :func:`~overlay.transport.abort_stream` resets
  the connection at once even when unsent data is queued in the transport.
* Two tasks receiving (or sending) at once raise ``anyio.BusyResourceError``, as with anyio.

Connecting: an IP literal is one ``loop.create_connection`` (no resolver thread, no task group);
a host name is resolved with ``anyio.getaddrinfo`` and tried with anyio's Happy Eyeballs (IPv6
first, a new attempt every 250 ms). Failures raise ``OSError("All connection attempts failed")``
with the attempts' errors as ``__cause__``, the shape of ``anyio.connect_tcp``. Listening binds
with ``anyio.create_tcp_listener`` (the caller's) and accepts with ``loop.sock_accept``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from ipaddress import IPv6Address, ip_address
from typing import Any, Protocol, cast

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute

from overlay.transport._base import StreamAbortAttribute

__all__ = [
    "AsyncioSocketStream",
    "AsyncioTcpListener",
    "OneShotEvent",
    "asyncio_running",
    "connect_tcp",
    "current_clock",
    "event_factory",
    "flush_soon",
]

_BUFFER_SIZE = 65536
"""Bytes of the per-loop read buffer (one ``recv_into`` reads at most this much)."""
_HIGH_WATER = _BUFFER_SIZE
"""Unread bytes queued before reading pauses (one full read)."""
_HOOK_BELOW = 32768
"""Reads of at least this many bytes go to the receiver task even with a receive hook (bulk
transfers: see :meth:`AsyncioSocketStream.set_receive_hook`)."""
_HAPPY_EYEBALLS_DELAY = 0.25
_LINGER_RESET = struct.pack("ii", 1, 0)

logger = logging.getLogger(__name__)

_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


def asyncio_running() -> bool:
    """Whether the current task runs on an asyncio event loop (plain asyncio or uvloop), as
    anyio decides it (``sniffio`` when installed, else a running asyncio loop)."""
    try:
        import sniffio
    except ImportError:  # pragma: no cover - anyio's own fallback without sniffio
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True
    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def current_clock() -> Callable[[], float]:
    """A function returning ``anyio.current_time()``'s value, bound once: on asyncio the running
    loop's ``time`` (what anyio reads, without its per-call backend lookup), else
    ``anyio.current_time`` itself (trio, with its ``MockClock`` in tests)."""
    if asyncio_running():
        return asyncio.get_running_loop().time
    return anyio.current_time


class _FutureEvent:
    """A one-shot event on one ``asyncio`` future: what ``anyio.Event`` does for one waiter,
    without its backend lookup, the ``asyncio.Event`` (a loop check under a lock, a waiter
    deque) and a second future per wait. ``wait`` is a cancellation point only while it waits
    (a cancelled caller's future is cancelled; a later ``set`` is then a no-op)."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._future.done() and not self._future.cancelled()

    async def wait(self) -> None:
        if self._future.done():
            await anyio.lowlevel.checkpoint()  # as anyio.Event: a set event still checkpoints
            return
        await self._future


class OneShotEvent(Protocol):
    """``set`` / ``is_set`` / ``wait`` of an event set once (``anyio.Event``'s shape)."""

    def set(self) -> object: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


def event_factory() -> Callable[[], OneShotEvent]:
    """A factory of one-shot events for the running loop: on asyncio (and uvloop) events on a
    bare future, else (trio) ``anyio.Event``."""
    if asyncio_running():
        return functools.partial(_FutureEvent, asyncio.get_running_loop())
    return anyio.Event


class _FlushQueue:
    """Callbacks run together by one ``loop.call_soon`` (after the callers' current step): many
    connections queued to in one step (a broadcast) share one event-loop callback."""

    __slots__ = ("loop", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Callable[[], None]] = []
        self.scheduled = False

    def add(self, callback: Callable[[], None]) -> None:
        self.pending.append(callback)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        for callback in pending:
            try:
                callback()
            except Exception:  # the root of a loop callback: log, and run the others
                logger.exception("deferred flush %r failed", callback)


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _FlushQueue] = (
    weakref.WeakKeyDictionary()
)


def flush_soon() -> Callable[[Callable[[], None]], None] | None:
    """On asyncio, a function scheduling a synchronous callback to run soon (with the others
    scheduled in the same step, in one event-loop callback); None elsewhere (trio)."""
    if not asyncio_running():
        return None
    loop = asyncio.get_running_loop()
    queue = _flushers.get(loop)
    if queue is None:
        queue = _flushers[loop] = _FlushQueue(loop)
    return queue.add


def _loop_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    view = _buffers.get(loop)
    if view is None:
        view = _buffers[loop] = memoryview(bytearray(_BUFFER_SIZE))
    return view


try:
    import sniffio as _sniffio
except ImportError:  # pragma: no cover - sniffio comes with anyio
    _sniffio_local: Any = None
else:
    _sniffio_local = _sniffio.thread_local


def _run_hook(hook: Callable[[bytes], bool], data: bytes) -> bool:
    """Run a receive hook from the transport's callback, with anyio's library detection
    answering "asyncio" (outside a task it would find none): code the hook runs may call
    anyio's synchronous API (``anyio.current_time()``, ``Event.set``, ``send_nowait``)."""
    local = _sniffio_local
    if local is None:  # pragma: no cover
        return hook(data)
    previous = local.name
    local.name = "asyncio"
    try:
        return hook(data)
    finally:
        local.name = previous


class _Protocol(asyncio.BufferedProtocol):
    """The transport's callbacks: queue received bytes, wake the reader and the writer."""

    __slots__ = ("buffer", "eof", "error", "hook", "lost", "paused", "queue", "queued",
                 "reader", "transport", "writable")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buffer = _loop_buffer(loop)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.reader: asyncio.Future[bytes | None] | None = None
        """The future a waiting ``receive`` awaits (its result: bytes, or None: look again)."""
        self.writable: asyncio.Future[None] | None = None
        """Set while writing is paused; resolved by ``resume_writing`` or a lost connection."""
        self.hook: Callable[[bytes], bool] | None = None
        """The receive hook (see :meth:`AsyncioSocketStream.set_receive_hook`)."""
        self.paused = False
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(0)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes].tobytes()
        reader = self.reader
        if reader is not None and not self.queue and not reader.done():
            hook = self.hook
            if hook is not None and nbytes < _HOOK_BELOW:
                if not _run_hook(hook, data):
                    return  # consumed: the receiver goes on waiting
                data = b""  # consumed, and the receiver has work: wake it with nothing
                if reader.done():  # the hook cancelled the receiver (its connection closed)
                    self.reader = None
                    return
            self.reader = None
            reader.set_result(data)
            return
        self.queue.append(data)
        self.queued += nbytes
        if self.queued >= _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _wake_reader(self) -> None:
        reader = self.reader
        if reader is not None:
            self.reader = None
            if not reader.done():
                reader.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True  # keep the transport open: we may still write (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            self.error = exc
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable = self.writable
        if writable is not None:
            self.writable = None
            if not writable.done():
                writable.set_result(None)


class AsyncioSocketStream(anyio.abc.SocketStream):
    """An anyio socket stream over an asyncio transport and :class:`_Protocol`."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._receiving = False
        self._sending = False

    @property
    def _raw_socket(self) -> socket.socket:
        sock: socket.socket = self._transport.get_extra_info("socket")
        return sock

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, StreamAbortAttribute.abort: lambda: self._abort}

    def set_receive_hook(self, hook: Callable[[bytes], bool] | None) -> None:
        """Install (or remove, with None) a synchronous receive hook: while a :meth:`receive`
        waits with nothing queued, bytes that arrive are handed to ``hook`` from the transport's
        callback instead of waking the receiver (one event-loop step fewer per read). ``hook``
        takes the bytes in every case and returns whether the receiver must be woken; it is
        then woken with ``b""`` (the only case in which :meth:`receive` returns nothing). Bytes
        arriving while the receiver is not waiting are queued as usual, and so are reads of
        ``_HOOK_BELOW`` (32 KiB) or more: a bulk transfer is read by the receiver task, which
        pauses reading while it works (handled in the callback instead, the 1 MiB bulk
        benchmark took about twice the CPU per byte on uvloop). ``hook`` must not raise."""
        self._protocol.hook = hook

    def _abort(self) -> None:
        """Reset the connection now: ``SO_LINGER`` 0, then abort the transport (which closes
        the socket even when unsent data is queued)."""
        self._closed = True
        sock = self._transport.get_extra_info("socket")
        try:
            if sock is not None and sock.fileno() != -1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        finally:
            self._transport.abort()

    def _failure(self) -> Exception:
        if self._closed:
            return anyio.ClosedResourceError()
        error = self._protocol.error
        if error is not None:
            broken = anyio.BrokenResourceError()
            broken.__cause__ = error
            return broken
        return anyio.EndOfStream()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise anyio.BusyResourceError("reading from")
        protocol = self._protocol
        self._receiving = True
        try:
            if protocol.queue:
                await anyio.lowlevel.checkpoint_if_cancelled()
            elif self._closed or protocol.lost or protocol.eof:
                await anyio.lowlevel.checkpoint()
            else:
                reader: asyncio.Future[bytes | None] = self._loop.create_future()
                protocol.reader = reader
                try:
                    data = await reader
                except BaseException:
                    if protocol.reader is reader:
                        protocol.reader = None
                    elif reader.done() and not reader.cancelled():
                        # Cancelled after the data was handed over: keep it for the next call.
                        got = reader.result()
                        if got is not None:
                            protocol.queue.appendleft(got)
                            protocol.queued += len(got)
                    raise
                if data is not None:  # handed over directly: never queued
                    if len(data) > max_bytes:
                        protocol.queue.appendleft(data[max_bytes:])
                        protocol.queued += len(data) - max_bytes
                        data = data[:max_bytes]
                    return data
            queue = protocol.queue
            if not queue:
                raise self._failure()
            data = queue.popleft()
            if len(data) > max_bytes:
                queue.appendleft(data[max_bytes:])
                data = data[:max_bytes]
            protocol.queued -= len(data)
            if protocol.paused and protocol.queued < _HIGH_WATER and not protocol.lost:
                protocol.paused = False
                self._transport.resume_reading()
            return data
        finally:
            self._receiving = False

    async def send(self, item: bytes) -> None:
        if self._sending:
            raise anyio.BusyResourceError("writing to")
        protocol = self._protocol
        self._sending = True
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
            if protocol.writable is not None:
                await protocol.writable
            if self._closed or protocol.lost:
                raise self._broken()
            try:
                self._transport.write(item)
            except RuntimeError as exc:
                if self._transport.is_closing():
                    raise anyio.BrokenResourceError from exc
                raise
            writable = protocol.writable
            if writable is not None:
                await writable
                if self._closed or protocol.error is not None:
                    raise self._broken()
        finally:
            self._sending = False

    def _broken(self) -> Exception:
        if self._closed:
            return anyio.ClosedResourceError()
        broken = anyio.BrokenResourceError()
        broken.__cause__ = self._protocol.error
        return broken

    @property
    def write_ready(self) -> bool:
        """Whether :meth:`write_nowait` may be called: no ``send`` in progress, the transport
        not paused for writing, the connection neither closed nor lost."""
        return (not self._sending and self._protocol.writable is None and not self._closed
                and not self._protocol.lost)

    def write_nowait(self, data: bytes | bytearray) -> None:
        """Hand ``data`` to the transport now (only when :attr:`write_ready`): what does not fit
        in the kernel stays in the transport's buffer and pauses writing, so the next ``send``
        waits for it to drain (the backpressure of ``send``)."""
        try:
            self._transport.write(data)
        except RuntimeError as exc:
            if self._transport.is_closing():
                raise anyio.BrokenResourceError from exc
            raise

    async def send_eof(self) -> None:
        try:
            self._transport.write_eof()
        except OSError:
            pass
        except RuntimeError:  # uvloop, on a transport that is already closed
            if not self._transport.is_closing():
                raise

    async def aclose(self) -> None:
        self._closed = True
        self._transport.abort()
        await anyio.lowlevel.checkpoint()


async def _connect_one(
    loop: asyncio.AbstractEventLoop, host: str, port: int,
    local_address: tuple[str, int] | None,
) -> AsyncioSocketStream:
    transport, protocol = await loop.create_connection(
        lambda: _Protocol(loop), host, port, local_addr=local_address
    )
    return AsyncioSocketStream(transport, protocol)


def _literal(host: str) -> tuple[int, str] | None:
    try:
        addr = ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if isinstance(addr, IPv6Address) else socket.AF_INET
    return family, addr.compressed


async def connect_tcp(
    host: str, port: int, *, local_host: str | None = None
) -> AsyncioSocketStream:
    """Connect to ``host:port`` (see the module docstring); errors as ``anyio.connect_tcp``."""
    loop = asyncio.get_running_loop()
    local_address: tuple[str, int] | None = None
    family: int = socket.AF_UNSPEC
    if local_host:
        gai = await anyio.getaddrinfo(local_host, None)
        family, *_, sockaddr = gai[0]
        local_address = (str(sockaddr[0]), int(sockaddr[1]))
    literal = _literal(host)
    if literal is not None:
        targets = [literal[1]]
    else:
        gai_res = await anyio.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        # IPv6 first, then IPv4, then the rest (anyio's order).
        ordered: list[tuple[int, str]] = []
        v6_found = v4_found = False
        for af, *_, sa in gai_res:
            if af == socket.AF_INET6 and not v6_found:
                v6_found = True
                ordered.insert(0, (af, str(sa[0])))
            elif af == socket.AF_INET and not v4_found and v6_found:
                v4_found = True
                ordered.insert(1, (af, str(sa[0])))
            else:
                ordered.append((af, str(sa[0])))
        targets = [addr for _af, addr in ordered]
    errors: list[OSError] = []
    if len(targets) == 1:
        try:
            return await _connect_one(loop, targets[0], port, local_address)
        except OSError as exc:
            raise OSError("All connection attempts failed") from exc
    connected: AsyncioSocketStream | None = None

    async def attempt(target: str, event: anyio.Event, tg: anyio.abc.TaskGroup) -> None:
        nonlocal connected
        try:
            stream = await _connect_one(loop, target, port, local_address)
        except OSError as exc:
            errors.append(exc)
            return
        else:
            if connected is None:
                connected = stream
                tg.cancel_scope.cancel()
            else:
                await stream.aclose()
        finally:
            event.set()

    try:
        async with anyio.create_task_group() as tg:
            for target in targets:
                event = anyio.Event()
                tg.start_soon(attempt, target, event, tg)
                with anyio.move_on_after(_HAPPY_EYEBALLS_DELAY):
                    await event.wait()
        if connected is None:
            cause: BaseException = (
                errors[0] if len(errors) == 1
                else ExceptionGroup("multiple connection attempts failed", errors)
            )
            raise OSError("All connection attempts failed") from cause
    except BaseException:
        if connected is not None:
            await anyio.aclose_forcefully(connected)
        raise
    return connected


class AsyncioTcpListener:
    """Accepts on a socket bound by ``anyio.create_tcp_listener``; connections come back as
    :class:`AsyncioSocketStream`. ``aclose`` interrupts a pending ``accept`` with
    ``anyio.ClosedResourceError``."""

    def __init__(self, listener: anyio.abc.SocketListener) -> None:
        self._listener = listener
        self._raw = listener.extra(SocketAttribute.raw_socket)
        self._loop = asyncio.get_running_loop()
        _loop_buffer(self._loop)  # the loop's read buffer exists before the first connection
        self._scope: anyio.CancelScope | None = None
        self._closed = False

    def extra(self, attribute: Any) -> Any:
        return self._listener.extra(attribute)

    async def accept(self) -> AsyncioSocketStream:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._scope is not None:
            raise anyio.BusyResourceError("accepting connections from")
        loop = self._loop
        await anyio.lowlevel.checkpoint()
        with anyio.CancelScope() as self._scope:
            try:
                client, _addr = await loop.sock_accept(self._raw)
            except asyncio.CancelledError:
                try:  # https://bugs.python.org/issue41317
                    loop.remove_reader(self._raw)
                except (ValueError, NotImplementedError):
                    pass
                if self._closed:
                    raise anyio.ClosedResourceError from None
                raise
            finally:
                self._scope = None
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # reset already; the handshake will notice
            pass
        transport, protocol = await loop.connect_accepted_socket(
            lambda: _Protocol(loop), client
        )
        return AsyncioSocketStream(transport, protocol)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._scope is not None:
            try:  # https://bugs.python.org/issue41317
                self._loop.remove_reader(self._raw)
            except (ValueError, NotImplementedError):
                pass
            self._scope.cancel()
        await self._listener.aclose()
