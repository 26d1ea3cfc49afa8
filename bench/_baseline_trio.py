"""Baselines on trio: the workloads of ``bench/_baseline.py`` over plain trio.

Used by ``bench/run.py --backend trio``, where ours runs on anyio's trio backend: the baselines
then use what a plain trio program would, on the same ``trio.run``: ``trio.SocketStream``
(``trio.open_tcp_stream`` / ``trio.serve_listeners``; trio sets TCP_NODELAY on both ends) in
place of asyncio streams, and a trio memory channel in place of the anyio memory object stream
for the LOCAL case. Every TCP baseline uses loopback and no encryption.

The pipelined case mirrors the asyncio baseline's system calls: each request is one
``send_all`` (a trio stream allows one at a time, so the senders take turns through a
``trio.StrictFIFOLock``), and the echo server sends each frame back with its own ``send_all``,
as asyncio's ``StreamWriter.write`` sends each write at once when its buffer is empty.
A trio program may batch instead (one writer task sending everything queued): that variant is
measured too, as a reference (``trio_batched_pipeline``); it is several times faster.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import anyio.abc
import trio

from bench._baseline import channel_rate
from bench._common import Counter, Rate, measure_rate

__all__ = [
    "trio_batched_pipeline",
    "trio_bulk",
    "trio_connect_times",
    "trio_memory_channel_rate",
    "trio_pipelined",
    "trio_round_trips",
]

_LEN = struct.Struct(">I")
_Handler = Callable[[trio.SocketStream], Awaitable[None]]


@contextlib.asynccontextmanager
async def _server(handler: _Handler) -> AsyncIterator[trio.SocketStream]:
    """A loopback server running ``handler`` per connection, and one client stream to it."""

    async def serve(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                await handler(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
            nursery.cancel_scope.cancel()


async def _receive_exactly(stream: trio.SocketStream, size: int) -> None:
    got = 0
    while got < size:
        data = await stream.receive_some(size - got)
        if not data:
            raise trio.BrokenResourceError("end of stream")
        got += len(data)


async def trio_round_trips(payload: bytes, warmup: float, duration: float) -> Rate:
    """Round trips/s: send 64 bytes, read the 64-byte echo, repeat (one connection)."""
    size = len(payload)

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async with _server(echo) as client_stream:

        async def client(counter: Counter) -> None:
            while True:
                await client_stream.send_all(payload)
                await _receive_exactly(client_stream, size)
                counter.n += 1

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            tg.start_soon(client, counter)

        return await measure_rate(start, warmup, duration)


def _frames(buffer: bytearray) -> list[bytes]:
    """Remove and return every complete length-prefixed frame (header included) at the front
    of ``buffer``."""
    frames = []
    offset = 0
    while len(buffer) - offset >= 4:
        end = offset + 4 + _LEN.unpack_from(buffer, offset)[0]
        if end > len(buffer):
            break
        frames.append(bytes(buffer[offset:end]))
        offset = end
    del buffer[:offset]
    return frames


async def _echo_batched(stream: trio.SocketStream) -> None:
    buffer = bytearray()
    while data := await stream.receive_some():
        buffer += data
        if frames := _frames(buffer):
            await stream.send_all(b"".join(frames))


async def _echo_framed(stream: trio.SocketStream) -> None:
    buffer = bytearray()
    while data := await stream.receive_some():
        buffer += data
        for frame in _frames(buffer):
            await stream.send_all(frame)


async def trio_pipelined(payload: bytes, in_flight: int, warmup: float,
                         duration: float, *, batched: bool = False) -> Rate:
    """Requests/s with ``in_flight`` tasks each looping: send one length-prefixed message, wait
    for its echo (a reader task completes the waiting requests in FIFO order).

    ``batched``: the requesters append to one buffer and a writer task sends everything queued
    with one ``send_all``, and the echo server answers each read with one ``send_all`` (a
    reference printed next to case 2, not its baseline: see the module docstring)."""
    message = _LEN.pack(len(payload)) + payload
    async with _server(_echo_batched if batched else _echo_framed) as stream:
        pending: deque[trio.Event] = deque()  # the futures of the asyncio baseline
        sending = trio.StrictFIFOLock()
        outgoing = bytearray()
        queued = trio.Event()

        async def write_requests() -> None:
            nonlocal queued
            while True:
                await queued.wait()
                queued = trio.Event()
                data = bytes(outgoing)
                outgoing.clear()
                await stream.send_all(data)

        async def read_responses() -> None:
            buffer = bytearray()
            while data := await stream.receive_some():
                buffer += data
                for _frame in _frames(buffer):
                    pending.popleft().set()

        async def client(counter: Counter) -> None:
            while True:
                reply = trio.Event()
                if batched:
                    pending.append(reply)
                    outgoing.extend(message)
                    queued.set()
                else:
                    async with sending:
                        pending.append(reply)
                        await stream.send_all(message)
                await reply.wait()
                counter.n += 1

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            tg.start_soon(read_responses)
            if batched:
                tg.start_soon(write_requests)
            for _ in range(in_flight):
                tg.start_soon(client, counter)

        return await measure_rate(start, warmup, duration)


async def trio_batched_pipeline(payload: bytes, in_flight: int, warmup: float,
                                duration: float) -> Rate:
    """:func:`trio_pipelined` with batched writes (a reference for case 2)."""
    return await trio_pipelined(payload, in_flight, warmup, duration, batched=True)


async def trio_bulk(chunk: bytes, warmup: float, duration: float) -> Rate:
    """Bytes/s received when the client sends ``chunk`` after ``chunk`` (``send_all`` each)."""
    counter_box: list[Counter] = []

    async def sink(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(1 << 20):
            if counter_box:
                counter_box[0].n += len(data)

    async with _server(sink) as stream:

        async def client() -> None:
            while True:
                await stream.send_all(chunk)

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            counter_box.append(counter)
            tg.start_soon(client)

        return await measure_rate(start, warmup, duration)


async def trio_connect_times(count: int, warm: int) -> list[float]:
    """Seconds of ``count`` plain TCP connects (``trio.open_tcp_stream``) on loopback."""

    async def close_at_eof(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some():
                pass
        await stream.aclose()

    times: list[float] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, close_at_eof, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        for i in range(count + warm):
            started = time.perf_counter()
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            elapsed = time.perf_counter() - started
            await stream.aclose()
            if i >= warm:
                times.append(elapsed)
        nursery.cancel_scope.cancel()
    return times


async def trio_memory_channel_rate(buffer: int, item: Any, warmup: float,
                                   duration: float) -> Rate:
    """Items/s through a bare trio memory channel (one producer, one consumer)."""
    send, receive = trio.open_memory_channel[Any](buffer)
    return await channel_rate(send, receive, item, warmup, duration)
