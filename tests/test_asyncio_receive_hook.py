"""The asyncio adapter's receive hook (plain asyncio and uvloop): while a ``receive`` waits with
nothing queued, small reads go to the hook from the transport's callback; the receiver is woken
(with ``b""``) only when the hook asks; large reads, and everything once the hook is removed,
reach the receiver as usual, in order."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from overlay.transport._asyncio import AsyncioSocketStream, AsyncioTcpListener, connect_tcp
from tests.support import wait_until

pytestmark = pytest.mark.anyio

_LOOPS: list[Any] = [pytest.param("asyncio", id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    _LOOPS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[AsyncioSocketStream, AsyncioSocketStream]]:
    """(client, server) streams over loopback TCP."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    (bound,) = multi.listeners
    assert isinstance(bound, anyio.abc.SocketListener)
    listener = AsyncioTcpListener(bound)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        accepted: list[AsyncioSocketStream] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        tg.start_soon(accept)
        client = await connect_tcp("127.0.0.1", port)
    server = accepted[0]
    try:
        yield client, server
    finally:
        await client.aclose()
        await server.aclose()
        await listener.aclose()


class _Hook:
    """Records what it is handed; asks for a wake-up when a piece ends with ``wake``."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def __call__(self, data: bytes) -> bool:
        self.pieces.append(data)
        return data.endswith(b"wake")

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


async def test_small_reads_go_to_the_hook_and_wake_the_receiver_only_when_asked() -> None:
    async with _pair() as (client, server):
        hook = _Hook()
        server.set_receive_hook(hook)
        got: list[bytes] = []

        async def receive() -> None:
            got.append(await server.receive())

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.wait_all_tasks_blocked()  # the receiver waits
                await client.send(b"first")
                await wait_until(lambda: hook.data == b"first")
                assert got == []  # taken by the hook; the receiver still waits
                await client.send(b"then wake")
                await wait_until(lambda: got != [])
            assert got == [b""]
            assert hook.data == b"firstthen wake"
            server.set_receive_hook(None)
            await client.send(b"plain")
            assert await server.receive() == b"plain"  # no hook: bytes as usual
            assert hook.data == b"firstthen wake"


async def test_large_reads_and_queued_bytes_reach_the_receiver_in_order() -> None:
    """A bulk write's large reads bypass the hook; whatever the split, the receiver and the
    hook together see every byte once, in order, and the hook only reads below 32 KiB."""
    payload = bytes(range(256)) * 1024  # 256 KiB
    async with _pair() as (client, server):
        seen: list[tuple[str, bytes]] = []

        def total() -> int:
            return sum(len(d) for _, d in seen)

        def hook(data: bytes) -> bool:
            seen.append(("hook", data))
            return total() >= len(payload)  # the last bytes: wake the receiver

        server.set_receive_hook(hook)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.send, payload)
                while total() < len(payload):
                    data = await server.receive()
                    if data:
                        seen.append(("receiver", data))
        assert b"".join(d for _, d in seen) == payload
        assert all(len(d) < 32768 for who, d in seen if who == "hook")
        assert any(who == "receiver" for who, _ in seen)
