"""Half-closing a stream that is already gone is not an error, on every backend and loop (uvloop
raises ``RuntimeError`` for a closed transport where asyncio raises ``OSError``); any other
``RuntimeError`` is a bug and propagates. The testnet's TCP relay and the admin API's HTTP
server half-close through it (``make testnet`` crashed on uvloop before)."""

from __future__ import annotations

import importlib.util

import anyio
import anyio.abc
import pytest
import sniffio

from overlay.transport import half_close

pytestmark = pytest.mark.anyio

BACKENDS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param("trio", id="trio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop", marks=pytest.mark.skipif(
        importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")),
]


async def _pair() -> tuple[
    anyio.abc.SocketStream, anyio.abc.SocketStream, anyio.abc.Listener[anyio.abc.SocketStream]
]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted: list[anyio.abc.SocketStream] = []

    async def accept() -> None:
        accepted.append(await listener.listeners[0].accept())  # type: ignore[attr-defined]

    async with anyio.create_task_group() as tg:
        tg.start_soon(accept)
        client = await anyio.connect_tcp("127.0.0.1", port)
    return client, accepted[0], listener


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_half_close_of_an_open_stream_reaches_the_peer() -> None:
    client, server, listener = await _pair()
    async with client, server, listener:
        assert await half_close(client)
        with pytest.raises(anyio.EndOfStream):
            await server.receive()


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_half_close_of_a_closed_stream_says_so_without_raising() -> None:
    client, server, listener = await _pair()
    async with server, listener:
        await client.aclose()
        # False where the backend reports it (trio, uvloop); plain asyncio ignores it itself.
        assert await half_close(client) in (False, anyio_backend_name() == "asyncio")


def anyio_backend_name() -> str:
    return sniffio.current_async_library()


class _Buggy(anyio.abc.ByteStream):
    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise AssertionError

    async def send(self, item: bytes) -> None:
        raise AssertionError

    async def send_eof(self) -> None:
        raise RuntimeError("a bug in the stream")

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_other_runtime_errors_propagate() -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        await half_close(_Buggy())
