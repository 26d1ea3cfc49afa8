"""PEX between nodes: signed records exchanged on channel 2, verified, stored with their source
in the record store, the address book and the peer store; the responder's rate limit (refusal,
back-off, penalty), forged records rejected by reason with a penalty, private peers never
gossiped, the ``PexClient`` a ``CapabilityView`` asks through, the asker loop, and metrics.

Runs on both backends over the memory network (nodes at IP addresses, see tests/pex_support.py);
the asker loop's timing is asserted on trio's mock clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from discovery import (
    CapabilityView,
    OfferOutcome,
    PexConfig,
    PexRequest,
    PexResponse,
    RecordRejection,
)
from discovery import DiscoveryConfig as ViewConfig
from discovery._service_types import Penalty
from overlay.errors import ErrorCode, RequestError
from overlay.identity import NodeKey
from overlay.node._config import MetricsConfig
from overlay.peers import PeerFlag, PeerManagerConfig, ScoreEvent
from overlay.router._channel import Envelope
from overlay.testing import MemoryNetwork
from tests.pex_support import (
    PexTestNode,
    host_of,
    pex_node,
    publish_own_record,
    sign_for,
    wait_virtual,
)
from tests.support import both_backends, virtual_time, wait_until

pytestmark = pytest.mark.anyio

anyio_backend = both_backends()


@contextlib.asynccontextmanager
async def running(*nodes: PexTestNode) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for test_node in nodes:
            await stack.enter_async_context(test_node.node)
            publish_own_record(test_node)
        yield


async def connect(a: PexTestNode, b: PexTestNode) -> None:
    await a.node.dial(b.address)
    await wait_until(lambda: a.node.node_id in b.node.connected_peers())


def offer(holder: PexTestNode, *others: PexTestNode) -> None:
    """``holder`` knows the others' records (as if it had met them)."""
    for other in others:
        assert holder.node.discovery.records.offer(other.record, holder.node.wall_clock(),
                                                   "test").stored


def score_events(holder: PexTestNode, peer: PexTestNode) -> list[ScoreEvent]:
    snap = holder.node.peering.manager.peer(peer.node.node_id, holder.node.wall_clock())
    assert snap is not None
    return [event.event for event in snap.recent_events]


async def test_records_are_exchanged_and_reach_the_address_book() -> None:
    net = MemoryNetwork()
    a, b = pex_node(net, 1), pex_node(net, 2, capabilities={"archive": 1})
    c = pex_node(net, 3, capabilities={"relay": 2})
    async with running(a, b, c):
        offer(b, c)
        await connect(a, b)
        assert await a.node.pex.ask(b.node.node_id) == 2
        store = a.node.discovery.records
        assert store.get(b.key.node_id, a.node.wall_clock()) == b.record
        assert store.get(c.key.node_id, a.node.wall_clock()) == c.record
        assert store.source(c.key.node_id) == b.key.node_id
        # The address book learned C's address with B as its source, the peer store its record.
        manager = a.node.peering.manager
        snap = manager.peer(c.key.node_id, a.node.wall_clock())
        assert snap is not None and snap.source == b.key.node_id
        assert [str(x) for x in snap.addresses] == [c.address]
        assert manager.capability_record(c.key.node_id) == c.record.data
        # Asking again brings nothing new: the same records are known already.
        assert await a.node.pex.ask(b.node.node_id) == 0
        stats = a.node.pex.statistics()
        assert stats.records_received == 4 and stats.records_accepted == 2
        assert stats.records_rejected == {OfferOutcome.STALE: 2}
        assert stats.requests_sent == {"answered": 2}
        assert b.node.pex.statistics().requests_served == 2


async def test_the_asker_is_never_sent_its_own_record() -> None:
    net = MemoryNetwork()
    a, b = pex_node(net, 1), pex_node(net, 2)
    async with running(a, b):
        offer(b, a)
        await connect(a, b)
        raw = await a.node.pex.request_records(b.key.node_id, (), max_records=64, timeout=5)
        assert list(raw) == [b.record.data]


async def test_rate_limit_refuses_backs_off_and_penalises_persistent_askers() -> None:
    net = MemoryNetwork()
    a, b = pex_node(net, 1), pex_node(net, 2)
    async with running(a, b):
        await connect(a, b)
        peer = b.key.node_id
        for _ in range(3):  # the burst
            await a.node.pex.ask(peer)
        with pytest.raises(RequestError) as refused:
            await a.node.pex.ask(peer)
        assert refused.value.code is ErrorCode.UNAVAILABLE
        assert a.node.pex.statistics().requests_sent == {"answered": 3, "refused": 1}
        # An honest asker backs off: it does not even send while the peer would refuse.
        with pytest.raises(RequestError):
            await a.node.pex.request_records(peer, (), max_records=8, timeout=5)
        assert a.node.pex.statistics().requests_sent["refused"] == 1
        assert b.node.pex.statistics().requests_refused == 1
        assert ScoreEvent.RATE_LIMIT_EXCEEDED not in score_events(b, a)
        # A peer that keeps asking regardless is penalised every third refusal in a row.
        for _ in range(2):
            with pytest.raises(RequestError):
                await a.node.pex.channel.request(peer, PexRequest(max=8), timeout=5)
        assert b.node.pex.statistics().requests_refused == 3
        assert score_events(b, a).count(ScoreEvent.RATE_LIMIT_EXCEEDED) == 1


async def test_forged_and_foreign_records_are_rejected_and_the_sender_penalised() -> None:
    net = MemoryNetwork()
    a, evil, honest = pex_node(net, 1), pex_node(net, 2), pex_node(net, 3)
    async with running(a, evil, honest):
        good = honest.record.data
        forged = good[:-1] + bytes([good[-1] ^ 1])  # one bit of the signature flipped
        other = sign_for(NodeKey.from_seed(b"o" * 32), host_of(9), network="othernet")
        impostor_key = NodeKey.from_seed(b"i" * 32)
        expired = sign_for(impostor_key, host_of(8), ttl=50.0, age=100.0)

        async def lying(env: Envelope[PexRequest]) -> PexResponse:
            return PexResponse((forged, other.data, expired.data, good, b"\x00garbage"))

        evil.node.pex.channel.handle_requests(lying)
        await connect(a, evil)
        assert await a.node.pex.ask(evil.key.node_id) == 1  # only the genuine record
        store = a.node.discovery.records
        assert store.get(honest.key.node_id, a.node.wall_clock()) == honest.record
        assert impostor_key.node_id not in store
        stats = a.node.pex.statistics()
        assert stats.records_rejected == {
            RecordRejection.BAD_SIGNATURE: 1,
            RecordRejection.WRONG_NETWORK: 1,
            RecordRejection.EXPIRED: 1,
            RecordRejection.MALFORMED: 1,
        }
        assert stats.penalties == {Penalty.FORGED_RECORD: 1}  # one penalty per answer
        assert score_events(a, evil).count(ScoreEvent.INVALID_MESSAGE) == 1


async def test_an_expired_record_alone_costs_the_sender_nothing() -> None:
    net = MemoryNetwork()
    a, b = pex_node(net, 1), pex_node(net, 2)
    async with running(a, b):
        stale = sign_for(NodeKey.from_seed(b"s" * 32), host_of(7), ttl=50.0, age=100.0)

        async def old_news(env: Envelope[PexRequest]) -> PexResponse:
            return PexResponse((stale.data,))

        b.node.pex.channel.handle_requests(old_news)
        await connect(a, b)
        assert await a.node.pex.ask(b.key.node_id) == 0
        assert a.node.pex.statistics().penalties == {}
        assert ScoreEvent.INVALID_MESSAGE not in score_events(a, b)


async def test_private_peers_are_never_gossiped() -> None:
    net = MemoryNetwork()
    secret, public = pex_node(net, 3), pex_node(net, 4)
    b = pex_node(net, 2, peers=PeerManagerConfig(private_peer_ids=(str(secret.key.node_id),)))
    a = pex_node(net, 1)
    async with running(a, b, secret, public):
        offer(b, secret, public)
        await connect(a, b)
        for _ in range(2):
            raw = await a.node.pex.request_records(b.key.node_id, (), max_records=64, timeout=5)
            assert set(raw) == {b.record.data, public.record.data}
        # The operator's runtime ``private`` flag hides a known peer too.
        manager = b.node.peering.manager
        manager.add_address(public.record.record.dial_addresses()[0], source="operator",
                            now=b.node.wall_clock())
        manager.set_flag(public.key.node_id, PeerFlag.PRIVATE, True, b.node.wall_clock())
        raw = await a.node.pex.request_records(b.key.node_id, (), max_records=64, timeout=5)
        assert list(raw) == [b.record.data]


async def test_capability_view_asks_peers_through_the_pex_client() -> None:
    net = MemoryNetwork()
    a, b = pex_node(net, 1), pex_node(net, 2)
    holder = pex_node(net, 3, capabilities={"archive": 1})
    async with running(a, b, holder):
        offer(b, holder)
        await connect(a, b)
        view = CapabilityView(
            ViewConfig(network=a.node.config.network), local_id=a.key.node_id,
            connected=lambda: [b.record], address_book=a.node.discovery.records,
            wall_clock=a.node.wall_clock, pex=a.node.pex,
        )
        async with view.candidates("archive", limit=1) as found:
            got = [candidate async for candidate in found]
        assert [c.node_id for c in got] == [holder.key.node_id]
        assert a.node.pex.statistics().requests_sent == {"answered": 1}


async def test_metrics_count_exchanges_and_records() -> None:
    net = MemoryNetwork()
    metrics = MetricsConfig(enabled=True, listen="127.0.0.1:0")
    a, b = pex_node(net, 1, metrics=metrics), pex_node(net, 2)
    async with running(a, b):
        await connect(a, b)
        await a.node.pex.ask(b.key.node_id)
        registry = a.node.peering.metrics
        assert registry is not None
        text = registry.render().decode()
        assert 'overlay_pex_requests_sent_total{outcome="answered"} 1.0' in text
        assert "overlay_pex_records_received_total 1.0" in text
        assert "overlay_pex_records_accepted_total 1.0" in text


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_the_asker_loop_asks_new_peers_fast_while_thin_then_on_its_interval() -> None:
    net = MemoryNetwork()
    pex = PexConfig(min_interval=5.0, max_interval=120.0, thin_below=3, full_at=6, jitter=0.0)
    a = pex_node(net, 1, pex=pex)
    b = pex_node(net, 2)
    others = [pex_node(net, i) for i in range(3, 7)]
    async with running(a, b, *others):
        offer(b, *others)
        start = anyio.current_time()
        await connect(a, b)
        await wait_until(lambda: len(a.node.discovery.records) == 6, timeout=30)
        assert anyio.current_time() - start <= 1.5  # asked at the next tick, not in 5 s
        # A dialed the nodes it learned of; the store is no longer thin, so they wait for the
        # round planned while it was: min_interval after the start...

        def sent() -> int:
            return sum(a.node.pex.statistics().requests_sent.values())

        await wait_virtual(lambda: sent() == 2, step=0.1, timeout=30)
        assert 4.0 <= anyio.current_time() - start <= 6.0
        # ...and, the store being full (6 records), the next one max_interval after that.
        await wait_virtual(lambda: sent() == 3, step=0.1, timeout=300)
        assert 124.0 <= anyio.current_time() - start <= 126.0

