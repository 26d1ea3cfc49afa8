"""Per-connection rate limits on running nodes: a send held back by the send bucket is retried
once at its ready time (the timer task never spins at one instant), and the receive side's pause
is computed from the time after waiting for inbox space (no stale debt slept twice)."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from overlay.connection._driver import PeerConnection
from overlay.node._config import ConnectionConfig
from overlay.router._channel import ChannelSpec
from overlay.router._codec import BytesCodec
from tests.support import node_pair, virtual_time, wait_until

pytestmark = pytest.mark.anyio

BULK = ChannelSpec(id=9, name="bulk", codec=BytesCodec(), response_codec=BytesCodec(),
                   send_queue_size=16)

SMALL_INBOX = ChannelSpec(id=12, name="small-inbox", codec=BytesCodec(),
                          response_codec=BytesCodec(), recv_queue_size=1)


def _count_timer_calls(conn: PeerConnection, limit: int = 20) -> Counter[float]:
    """Wrap the public ``conn.on_timer`` (the timer service's entry point): count calls per
    ``now``; after ``limit`` calls at one instant close the connection, so a timer task stuck
    at one instant gets out of its loop (the test then fails on the count)."""
    calls: Counter[float] = Counter()
    original = conn.on_timer

    def on_timer(now: float) -> None:
        calls[now] += 1
        original(now)
        if calls[now] >= limit:
            conn.close()

    conn.on_timer = on_timer  # type: ignore[method-assign]
    return calls


# asyncio only: the subject is the real event loop not freezing in the timer task (a livelock at
# one instant would stop a mock clock from ever advancing, hiding the failure as a hang).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_send_rate_limit_does_not_spin_the_timer_task() -> None:
    """After a send held back by the send rate limit, the connection's timer is re-armed for
    the send bucket's ready time and fires once per instant (rescheduling at a time <= now
    would make the timer service fire it again and again in one pass)."""
    conf = ConnectionConfig(send_rate=2_000_000.0, send_burst=4096)
    async with node_pair("memory", [BULK], connection=conf) as (a, b):
        await a.dial(b.address)
        await wait_until(lambda: a.node_id in b.connected_peers())
        conn = a.router.get_peer(b.node_id)
        assert conn is not None
        calls = _count_timer_calls(conn)
        sender = a.channel(BULK)
        for _ in range(3):  # 3 KB each, 4 KB burst: the second waits ~1 ms for tokens
            await sender.send(b.node_id, bytes(3000))
        inbox = b.channel(BULK)
        with anyio.fail_after(5):
            for _ in range(3):
                await inbox.receive()
        assert max(calls.values(), default=0) <= 1, calls


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_reader_does_not_oversleep_after_backpressure() -> None:
    """The reader computes the receive-rate pause from the time *after* waiting for inbox
    space: the bucket refilled while the consumer was busy, so the next message is read at
    once (computing it from the time before the wait would sleep the stale debt, ~3.5 s,
    again)."""
    conf = ConnectionConfig(recv_rate=1000.0, recv_burst=1000)
    async with node_pair("memory", [SMALL_INBOX], connection=conf) as (a, b):
        await a.dial(b.address)
        await wait_until(lambda: a.node_id in b.connected_peers())
        out, inbox = a.channel(SMALL_INBOX), b.channel(SMALL_INBOX)
        for _ in range(3):  # one write, ~4.5 KB: B's bucket is ~3.5 s in debt
            out.send_nowait(b.node_id, bytes(1500))
        await anyio.sleep(10)  # the consumer is busy; the reader waits for inbox space
        for _ in range(3):
            await inbox.receive()
        await anyio.sleep(0.01)
        sent_at = anyio.current_time()
        out.send_nowait(b.node_id, b"ping")  # the bucket refilled long ago
        await inbox.receive()
        assert anyio.current_time() - sent_at < 0.5
