"""The DHT inside real nodes (bench/_dhtnodes.py: full Nodes on one memory network, trio's mock
clock): provider lookups succeed, disjoint paths survive colluding liars, a spoofing node is
ignored and penalised, and transient connections stay out of the peer set and close when idle.

The suite runs 40 nodes; ``bench/test_dht_scale.py`` runs the same checks on 300 nodes
(``slow``, ``OVERLAY_SLOW_TESTS=1``). Rounds and messages per lookup are printed (``-s``).
"""

from __future__ import annotations

import statistics

import anyio
import pytest

from bench._dhtnodes import dht_network, liar, run_lookup
from discovery import (
    DhtNodes,
    DhtProviders,
    DhtRequest,
    DhtResponse,
    Penalty,
    SignedRecord,
    signing_input,
)
from overlay.errors import LocalProtocolError, PeerNotConnected
from overlay.identity import NodeId, NodeKey
from overlay.node import Node
from overlay.node._config import DhtSettings, DiscoveryConfig, NodeConfig
from overlay.router._channel import ChannelSpec
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork
from proto import discovery_pb2
from tests.support import virtual_time

pytestmark = pytest.mark.anyio
VIRTUAL = [virtual_time()]


def _report(label: str, rounds: list[int], messages: list[int]) -> None:
    print(f"\n{label}: rounds median {statistics.median(rounds)} max {max(rounds)}, "
          f"messages median {statistics.median(messages)} max {max(messages)}")


@pytest.mark.timeout(300)  # ~10 s of CPU; more on a loaded machine
@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_find_providers_for_a_capability_held_by_3_of_40_nodes() -> None:
    async with dht_network(40, seed=3, capabilities={"archive": 3, "relay": 3}) as net:
        rounds, messages = [], []
        for trial in range(10):
            capability = ("archive", "relay")[trial % 2]
            holders = set(net.holders[capability])
            origin = net.rng.choice([n for n in net.nodes if n.node_id not in holders])
            run = await run_lookup(origin, capability)
            assert set(run.found) == holders, f"trial {trial}"
            assert run.first_after is not None and run.first_after <= run.elapsed
            rounds.append(run.report.rounds)
            messages.append(run.report.messages)
        _report("40 real nodes, 3 providers", rounds, messages)
        stats = origin.dht.statistics() if origin.dht is not None else None
        assert stats is not None and stats.lookups_succeeded >= 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_disjoint_paths_survive_20_percent_colluding_liars() -> None:
    async with dht_network(40, seed=4, capabilities={"archive": 3}) as net:
        holders = set(net.holders["archive"])
        honest = [n for n in net.nodes if n.node_id not in holders]
        liars = net.rng.sample(honest[1:], len(net.nodes) // 5)
        records = [n.dht.record for n in liars if n.dht is not None and n.dht.record]
        for node in liars:
            assert node.dht is not None
            node.dht.set_responder(liar([r for r in records if r is not None], 16))
        askers = [n for n in honest if n not in liars]
        with_paths = without = 0
        trials = 10
        for _ in range(trials):
            origin = net.rng.choice(askers)
            with_paths += bool(set((await run_lookup(origin, "archive")).found) & holders)
            without += bool(set((await run_lookup(origin, "archive", paths=1)).found) & holders)
        print(f"\n20 % liars: success {with_paths}/{trials} with 2 disjoint paths, "
              f"{without}/{trials} with 1 path")
        assert with_paths / trials >= 0.99


def _spoofed(attacker: NodeKey, victim_id: bytes, template: SignedRecord) -> bytes:
    """A record signed by ``attacker`` that claims ``victim_id`` as its node id."""
    payload = discovery_pb2.CapabilityRecord()
    payload.ParseFromString(template.record.encode())
    payload.node_id = victim_id
    body = payload.SerializeToString(deterministic=True)
    return discovery_pb2.SignedRecord(
        payload=body, signature=attacker.sign(signing_input(body))
    ).SerializeToString(deterministic=True)


@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_a_node_that_spoofs_an_id_is_ignored_and_penalised() -> None:
    async with dht_network(24, seed=5, capabilities={"archive": 2}) as net:
        holders = set(net.holders["archive"])
        origin = next(n for n in net.nodes if n.node_id not in holders)
        spoofer = next(n for n in net.nodes if n.node_id in origin.connected_peers()
                       and n.node_id not in holders)
        assert spoofer.dht is not None and origin.dht is not None
        template = spoofer.dht.record
        assert template is not None
        fake = _spoofed(spoofer.key, bytes(20), template)

        def spoof(peer: NodeId, request: DhtRequest, record: SignedRecord | None) -> DhtResponse:
            assert spoofer.dht is not None
            answer = spoofer.dht.default_answer(peer, request, record)
            match answer:
                case DhtNodes(records):
                    return DhtNodes((fake, *records[:15]))
                case DhtProviders(providers, closer):
                    return DhtProviders(providers, (fake, *closer[:15]))
            return answer

        spoofer.dht.set_responder(spoof)
        before = origin.peering.manager.peer(spoofer.node_id, 0)
        assert before is not None
        score_before = before.score
        run = await run_lookup(origin, "archive")
        assert set(run.found) == holders
        stats = origin.dht.statistics()
        assert stats.penalties.get(Penalty.SPOOFED_ID, 0) >= 1
        assert origin.dht.service.table.closest(bytes(20), 1)[0] != bytes(20)
        after = origin.peering.manager.peer(spoofer.node_id, 0)
        assert after is None or after.score < score_before  # penalised (or banned and gone)


DHT_ONLY = DhtSettings(k=8, transient_idle=5.0)
APP: ChannelSpec[bytes, bytes] = ChannelSpec(id=0x20, name="app", codec=BytesCodec(),
                                             response_codec=BytesCodec())


def _node(network: MemoryNetwork, *capabilities: str, **dht: object) -> Node:
    settings = DhtSettings(**{"k": 8, "transient_idle": 5.0, **dht})  # type: ignore[arg-type]
    config = NodeConfig(listen=("memory:",), discovery=DiscoveryConfig(
        capabilities=capabilities, dht=settings))
    return Node(config, transports=[network.node_transport()])


CAPABILITY_FINDABLE_WITHIN = 2.0
"""Seconds (virtual, 5 ms links) from ``capabilities.set`` to lookups finding the node: the
DHT's SETTLE_DELAY (1 s) and one provide lookup (docs/discovery.md, "In the node")."""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_a_capability_set_at_run_time_is_found_by_lookups_within_the_stated_time() -> None:
    async with dht_network(30, seed=8, capabilities={"archive": 2}) as net:
        holders = set(net.holders["archive"])
        newcomer, asker = [n for n in net.nodes if n.node_id not in holders][:2]
        assert (await run_lookup(asker, "relay")).found == []
        started = anyio.current_time()
        newcomer.capabilities.set("relay", 2)
        await anyio.sleep(CAPABILITY_FINDABLE_WITHIN)
        run = await run_lookup(asker, "relay")
        assert run.found == [newcomer.node_id]
        assert anyio.current_time() - started - run.elapsed <= CAPABILITY_FINDABLE_WITHIN
        # Its other capabilities stay findable with the new record (seq) in place.
        newcomer.capabilities.set("archive")
        await anyio.sleep(CAPABILITY_FINDABLE_WITHIN)
        found = (await run_lookup(asker, "archive")).found
        assert set(found) == holders | {newcomer.node_id}


@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_transient_connections_are_never_peers_and_close_when_idle() -> None:
    network = MemoryNetwork()
    async with _node(network) as a, _node(network) as b, _node(network, "archive") as c:
        for node in (a, b, c):
            node.channel(APP)
        await a.dial(b.address)
        await c.dial(b.address)
        assert a.dht is not None and c.dht is not None and b.dht is not None
        for node in (a, b, c):
            assert node.dht is not None
            await node.dht.bootstrap()
        await c.dht.republish()
        run = await run_lookup(a, "archive")
        assert run.found == [c.node_id]
        # a reached c over a transient connection: not a peer on either side
        assert a.dht.transient.statistics().outbound >= 1
        snapshot = a.metrics_snapshot()
        assert snapshot.dht.transient_outbound >= 1 and snapshot.dht.lookups_succeeded >= 1
        assert snapshot.peers_inbound + snapshot.peers_outbound == 1
        assert c.dht.transient.statistics().inbound >= 1
        assert c.node_id not in a.connected_peers() and a.node_id not in c.connected_peers()
        for node in (a, c):
            stats = node.peering.manager.statistics()
            assert stats.connected_inbound + stats.connected_outbound == 1
        with pytest.raises(PeerNotConnected):  # no application traffic over it
            await a.channel(APP).request(c.node_id, b"hi", timeout=1)
        await anyio.sleep(DHT_ONLY.transient_idle + 1)
        assert a.dht.transient.statistics().outbound == 0
        assert c.dht.transient.statistics().inbound == 0
        assert a.dht.transient.statistics().idle_closed >= 1


@pytest.mark.parametrize("anyio_backend", VIRTUAL)
async def test_inbound_transient_connections_have_a_budget() -> None:
    network = MemoryNetwork()
    async with (_node(network, max_transient_connections=1) as server,
                _node(network) as first, _node(network) as second):
        assert first.dht is not None and second.dht is not None and server.dht is not None
        for client in (first, second):
            assert client.dht is not None
            client.dht.service.add_contact(server.dht.service.record, verified=True)
        await first.dht.service.find_closest(bytes(20))
        await second.dht.service.find_closest(bytes(20))
        stats = server.dht.transient.statistics()
        assert stats.inbound == 1 and stats.refused == 1
        assert server.connected_peers() == []


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_find_providers_needs_the_dht() -> None:
    config = NodeConfig(listen=("memory:",),
                        discovery=DiscoveryConfig(dht=DhtSettings(enabled=False)))
    async with Node(config, transports=[MemoryNetwork().node_transport()]) as node:
        assert node.dht is None
        with pytest.raises(LocalProtocolError):
            async with node.find_providers("archive"):
                pass

