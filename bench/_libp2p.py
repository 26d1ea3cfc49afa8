"""py-libp2p as an optional second baseline (64-byte round trips over TCP + Noise + yamux).

Only used when ``import libp2p`` works. py-libp2p runs on trio only, so this case runs in its own
``trio.run`` after the main (asyncio) run: its figure is labelled with the trio loop. Any failure
(an API change, a missing extra) is reported as a note, never as a crash of the benchmark.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

__all__ = ["libp2p_available", "libp2p_round_trips"]

_PROTOCOL = "/overlay-bench/echo/1.0.0"


def libp2p_available() -> bool:
    return importlib.util.find_spec("libp2p") is not None


async def _read_exactly(stream: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.read(size - len(data))
        if not chunk:
            raise EOFError("libp2p stream closed")
        data += chunk
    return bytes(data)


async def _run(payload: bytes, warmup: float, duration: float) -> float:
    multiaddr: Any = importlib.import_module("multiaddr")
    libp2p: Any = importlib.import_module("libp2p")
    peerinfo: Any = importlib.import_module("libp2p.peer.peerinfo")
    new_host = libp2p.new_host
    info_from_p2p_addr = peerinfo.info_from_p2p_addr

    size = len(payload)

    async def echo(stream: Any) -> None:
        try:
            while True:
                await stream.write(await _read_exactly(stream, size))
        except Exception:  # the client went away: the benchmark is over
            return

    server, client = new_host(), new_host()
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with server.run(listen_addrs=[listen]), client.run(listen_addrs=[listen]):
        server.set_stream_handler(_PROTOCOL, echo)
        info = info_from_p2p_addr(server.get_addrs()[0])
        await client.connect(info)
        stream = await client.new_stream(info.peer_id, [_PROTOCOL])
        end_warmup = time.perf_counter() + warmup
        while time.perf_counter() < end_warmup:
            await stream.write(payload)
            await _read_exactly(stream, size)
        count = 0
        started = time.perf_counter()
        end = started + duration
        while time.perf_counter() < end:
            await stream.write(payload)
            await _read_exactly(stream, size)
            count += 1
        elapsed = time.perf_counter() - started
        await stream.close()
    return count / elapsed


def libp2p_round_trips(payload: bytes, warmup: float, duration: float) -> float:
    """Round trips/s on one libp2p stream (runs its own ``trio.run``)."""
    import trio

    result: float = trio.run(_run, payload, warmup, duration)
    return result
