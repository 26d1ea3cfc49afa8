"""PEX at network scale, on trio's mock clock: seed mode (ask every peer once, serve, hang up
within the stated grace, crawl the nodes whose records it holds) and a 50-node memory network
bootstrapped from 3 seeds in which every node learns a record for every capability.

Records: each node's own record is signed in the test and put into its own record store (the
stand-in for the handshake path, see tests/pex_support.py); everything else a node learns, it
learns through PEX.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from discovery import OfferOutcome, PexConfig
from overlay.node._pex_seed import SeedConfig
from overlay.peers import PeerManagerConfig
from overlay.testing import MemoryNetwork
from tests.pex_support import PexTestNode, pex_node, publish_own_record, wait_virtual
from tests.support import virtual_time, wait_until

pytestmark = pytest.mark.anyio

COMMON = ("archive", "relay", "index", "blocksync")
RARE = "oracle"
RARE_HOLDERS = (17, 41)
"""Two of the 47 nodes serve the rare capability."""
FAST = PexConfig(min_interval=2.0, max_interval=30.0, thin_below=16, full_at=48)


@contextlib.asynccontextmanager
async def running(nodes: list[PexTestNode]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for test_node in nodes:
            await stack.enter_async_context(test_node.node)
            publish_own_record(test_node)
        yield


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_seed_asks_serves_and_hangs_up_within_its_grace() -> None:
    net = MemoryNetwork()
    seed = pex_node(net, 1, seed_mode=True)
    a = pex_node(net, 2, pex=FAST)
    async with running([seed, a]):
        start = anyio.current_time()
        await a.node.dial(seed.address)
        # Both directions: the seed asks at once, A asks at its next tick (its store is thin).
        await wait_until(lambda: a.key.node_id in seed.node.discovery.records, timeout=5)
        await wait_until(lambda: seed.key.node_id in a.node.discovery.records, timeout=5)
        await wait_until(lambda: not seed.node.connected_peers(), timeout=15)
        # Asked at once both ways, so the seed hangs up answer_grace later (plus its tick).
        limits = SeedConfig()
        assert anyio.current_time() - start <= limits.answer_grace + limits.tick + 0.1
        stats = seed.node.pex.statistics()
        assert stats.seed_hang_ups == 1 and stats.requests_served == 1
        assert stats.requests_sent == {"answered": 1}


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_seed_hangs_up_on_a_peer_that_asks_nothing_after_linger() -> None:
    net = MemoryNetwork()
    seed = pex_node(net, 1, seed_mode=True)
    quiet = pex_node(net, 2)  # its asker loop stays silent
    async with running([seed, quiet]):
        start = anyio.current_time()
        await quiet.node.dial(seed.address)
        await wait_until(lambda: not seed.node.connected_peers(), timeout=15)
        elapsed = anyio.current_time() - start
        assert SeedConfig().linger <= elapsed <= SeedConfig().linger + 1.0
        assert quiet.key.node_id in seed.node.discovery.records


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_seed_crawls_the_nodes_it_has_records_of() -> None:
    net = MemoryNetwork()
    seed = pex_node(net, 1, seed_mode=True)
    far = [pex_node(net, i, capabilities={"relay": 1}) for i in range(3, 6)]
    async with running([seed, *far]):
        for node in far:  # records the seed holds (from a DHT answer, say), not in its book
            assert seed.node.discovery.records.offer(node.record, seed.node.wall_clock(),
                                                     "dht").stored
        # The seed dials each of them, asks for records, and hangs up.
        await wait_virtual(
            lambda: all(n.node.pex.statistics().requests_served for n in far),
            step=0.25, timeout=60,
        )
        assert seed.node.pex.statistics().crawl_dials == len(far)
        await wait_virtual(lambda: not seed.node.connected_peers(), step=0.25, timeout=30)
        assert seed.node.pex.statistics().seed_hang_ups == len(far)
        # Crawled nodes are not dialed again within recrawl_after.
        await anyio.sleep(SeedConfig().recrawl_after / 2)
        assert seed.node.pex.statistics().crawl_dials == len(far)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_fifty_nodes_learn_a_record_for_every_capability_from_three_seeds() -> None:
    net = MemoryNetwork()
    seeds = [pex_node(net, i, seed_mode=True) for i in range(3)]
    peers = PeerManagerConfig(seeds=tuple(s.address for s in seeds), max_outbound=4,
                              max_connections=16)

    def capabilities(i: int) -> dict[str, int]:
        caps = {COMMON[i % len(COMMON)]: 1}
        if i in RARE_HOLDERS:
            caps[RARE] = 1
        return caps

    nodes = [pex_node(net, i, pex=FAST, peers=peers, capabilities=capabilities(i))
             for i in range(3, 50)]
    wanted = {*COMMON, RARE}

    def complete(node: PexTestNode) -> bool:
        return wanted <= set(node.node.discovery.records.capabilities())

    async with running(seeds + nodes):
        start = anyio.current_time()
        await wait_virtual(lambda: all(complete(n) for n in nodes), step=0.5, timeout=120)
        elapsed = anyio.current_time() - start
        assert elapsed <= 60.0, f"took {elapsed:.1f} virtual seconds"
        # The seeds did their job: each holds every node's record, served, and hangs up.
        ids = {n.key.node_id for n in nodes}
        for seed in seeds:
            known = seed.node.discovery.records.records(seed.node.wall_clock())
            assert ids <= {s.node_id for s in known}
        assert sum(s.node.pex.statistics().requests_served for s in seeds) >= len(nodes)

        def hung_up() -> int:
            return sum(s.node.pex.statistics().seed_hang_ups for s in seeds)

        await wait_virtual(lambda: hung_up() >= len(nodes), step=0.5,
                           timeout=SeedConfig().max_stay + 5)
        for node in nodes:
            stats = node.node.pex.statistics()
            assert stats.records_accepted > 0 and not stats.penalties
            assert OfferOutcome.SOURCE_LIMIT not in stats.records_rejected
