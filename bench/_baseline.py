"""Baselines: the same workloads over plain asyncio streams and a bare anyio memory stream.

They run on the event loop of the benchmark (``anyio.run`` with the asyncio backend, plain or
uvloop), so ours and the baseline always share one loop implementation. Every TCP baseline uses
loopback, ``asyncio.start_server`` + ``asyncio.open_connection`` (asyncio enables TCP_NODELAY on
TCP transports), and no encryption.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from bench._common import Counter, Rate, measure_rate

__all__ = [
    "anyio_round_trips",
    "asyncio_bulk",
    "asyncio_connect_times",
    "asyncio_pipelined",
    "asyncio_round_trips",
    "channel_rate",
    "memory_stream_rate",
]

_LEN = struct.Struct(">I")
_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _server(
    handler: _Handler,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A loopback server running ``handler`` per connection, and one client connection to it."""
    writers: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Future[None]] = []
    loop = asyncio.get_running_loop()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        done: asyncio.Future[None] = loop.create_future()
        handlers.append(done)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await handler(reader, writer)
        finally:
            done.set_result(None)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        for w in writers:
            w.close()
        server.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()
            if handlers:  # let the handlers see EOF (not be cancelled at loop shutdown)
                await asyncio.wait(handlers, timeout=1.0)


async def _echo_fixed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        writer.write(await reader.readexactly(64))


async def asyncio_round_trips(payload: bytes, warmup: float, duration: float) -> Rate:
    """Round trips/s: write 64 bytes, read the 64-byte echo, repeat (one connection)."""
    size = len(payload)
    async with _server(_echo_fixed) as (reader, writer):

        async def client(counter: Counter) -> None:
            while True:
                writer.write(payload)
                await reader.readexactly(size)
                counter.n += 1

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            tg.start_soon(client, counter)

        return await measure_rate(start, warmup, duration)


async def anyio_round_trips(payload: bytes, warmup: float, duration: float) -> Rate:
    """Like :func:`asyncio_round_trips` over anyio TCP streams (a reference, not a target:
    it shows what anyio's stream layer alone costs on this loop)."""
    size = len(payload)

    async def echo(stream: anyio.abc.SocketStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            async with stream:
                buffered = b""
                while True:
                    buffered += await stream.receive()
                    while len(buffered) >= size:
                        await stream.send(buffered[:size])
                        buffered = buffered[size:]

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as server_tg:
        server_tg.start_soon(listener.serve, echo)
        async with await anyio.connect_tcp("127.0.0.1", port) as client_stream:

            async def client(counter: Counter) -> None:
                while True:
                    await client_stream.send(payload)
                    got = 0
                    while got < size:
                        got += len(await client_stream.receive(size - got))
                    counter.n += 1

            def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
                tg.start_soon(client, counter)

            rate = await measure_rate(start, warmup, duration)
        server_tg.cancel_scope.cancel()
    return rate


async def _echo_framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        header = await reader.readexactly(4)
        body = await reader.readexactly(_LEN.unpack(header)[0])
        writer.write(header + body)


async def asyncio_pipelined(payload: bytes, in_flight: int, warmup: float,
                            duration: float) -> Rate:
    """Requests/s with ``in_flight`` tasks each looping: write one length-prefixed message,
    wait for its echo (a reader task completes the waiting futures in FIFO order)."""
    message = _LEN.pack(len(payload)) + payload
    loop = asyncio.get_running_loop()
    async with _server(_echo_framed) as (reader, writer):
        pending: deque[asyncio.Future[bytes]] = deque()

        async def read_responses() -> None:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(_LEN.unpack(header)[0])
                fut = pending.popleft()
                if not fut.done():  # a client cancelled at the end of the window
                    fut.set_result(body)

        async def client(counter: Counter) -> None:
            while True:
                fut: asyncio.Future[bytes] = loop.create_future()
                pending.append(fut)
                writer.write(message)
                await fut
                counter.n += 1

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            tg.start_soon(read_responses)
            for _ in range(in_flight):
                tg.start_soon(client, counter)

        return await measure_rate(start, warmup, duration)


async def asyncio_bulk(chunk: bytes, warmup: float, duration: float) -> Rate:
    """Bytes/s received when the client writes ``chunk`` after ``chunk`` (drain after each)."""
    counter_box: list[Counter] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            if counter_box:
                counter_box[0].n += len(data)

    async with _server(sink) as (_reader, writer):

        async def client() -> None:
            while True:
                writer.write(chunk)
                await writer.drain()

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            counter_box.append(counter)
            tg.start_soon(client)

        return await measure_rate(start, warmup, duration)


async def asyncio_connect_times(count: int, warm: int) -> list[float]:
    """Seconds of ``count`` plain TCP connects (``asyncio.open_connection``) on loopback."""

    async def close_at_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(close_at_eof, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    times: list[float] = []
    try:
        for i in range(count + warm):
            started = time.perf_counter()
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            elapsed = time.perf_counter() - started
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if i >= warm:
                times.append(elapsed)
    finally:
        server.close()
        await server.wait_closed()
    return times


async def memory_stream_rate(buffer: int, item: Any, warmup: float, duration: float) -> Rate:
    """Items/s through a bare anyio memory object stream (one producer, one consumer)."""
    send, receive = anyio.create_memory_object_stream[Any](buffer)
    return await channel_rate(send, receive, item, warmup, duration)


async def channel_rate(send: Any, receive: Any, item: Any, warmup: float,
                       duration: float) -> Rate:
    """Items/s from one producer to one consumer through ``send``/``receive`` (a memory
    channel's two ends, closed at the end)."""

    async def produce() -> None:
        while True:
            await send.send(item)

    async def consume(counter: Counter) -> None:
        while True:
            await receive.receive()
            counter.n += 1

    def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
        tg.start_soon(produce)
        tg.start_soon(consume, counter)

    with send, receive:
        return await measure_rate(start, warmup, duration)
