"""``node.discovery.candidates``: the node's one way to ask "who serves X?" (connected peers,
the record store, PEX, then the DHT, within a budget), on real nodes (bench/_dhtnodes.py) on
trio's mock clock."""

from __future__ import annotations

import pytest

from bench._dhtnodes import dht_network
from discovery import Budget, CandidateSource
from overlay.errors import LocalProtocolError, NodeClosed
from overlay.node import Node
from overlay.node._config import NodeConfig
from overlay.testing import MemoryNetwork
from tests.support import virtual_time

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
VIRTUAL = [virtual_time()]
ORDER = list(CandidateSource)


@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_candidates_come_cheapest_source_first_and_found_ones_are_kept() -> None:
    async with dht_network(24, seed=12, capabilities={"archive": 3}) as net:
        holders = set(net.holders["archive"])
        origin = next(n for n in net.nodes if n.node_id not in holders
                      and not holders & {c.node_id for c in n.router.peers()})
        async with origin.discovery.candidates("archive", limit=3) as found:
            first = [candidate async for candidate in found]
        assert {c.node_id for c in first} == holders
        sources = [ORDER.index(c.source) for c in first]
        assert sources == sorted(sources)
        assert all(not c.connected and not c.confirmed for c in first)
        assert found.messages <= Budget().max_messages  # PEX and DHT unless the book knew them
        assert {s.node_id for s in origin.discovery.records.candidates(
            "archive", 0.0)} >= holders  # PEX and DHT finds are kept
        # Asked again: the record store answers, free.
        async with origin.discovery.candidates("archive", limit=3) as again:
            second = [candidate async for candidate in again]
        assert {c.node_id for c in second} == holders and again.messages == 0
        assert {c.source for c in second} == {CandidateSource.ADDRESS_BOOK}
        stats = origin.discovery.statistics()
        assert stats.calls == 2 and sum(stats.candidates.values()) == 6


@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_connected_and_confirmed_holders_come_first_without_messages() -> None:
    async with dht_network(16, seed=13, capabilities={"archive": 3}) as net:
        holders = net.holders["archive"]
        origin = next(n for n in net.nodes if n.node_id not in holders)
        for holder in holders[:2]:
            await origin.dial(net.node(holder).address)
        origin.discovery.confirm(holders[1], "archive")
        async with origin.discovery.candidates("archive", limit=2) as found:
            got = [candidate async for candidate in found]
        assert [c.node_id for c in got] == [holders[1], holders[0]]  # confirmed first
        assert [c.confirmed for c in got] == [True, False]
        assert all(c.connected and c.source is CandidateSource.CONNECTED for c in got)
        assert found.messages == 0
        excluded = await origin.discovery.collect("archive", limit=1, exclude=holders[:2])
        assert [c.node_id for c in excluded] == [holders[2]]


@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_candidates_need_a_running_node_and_a_capability_name() -> None:
    node = Node(NodeConfig(listen=("memory:",)), transports=[MemoryNetwork().node_transport()])
    with pytest.raises(NodeClosed):
        node.discovery.candidates("archive")
    async with node:
        with pytest.raises(LocalProtocolError):
            await node.discovery.collect("Not A Name")
        assert await node.discovery.collect("archive", budget=Budget(max_messages=0)) == []
    with pytest.raises(NodeClosed):
        node.discovery.candidates("archive")
