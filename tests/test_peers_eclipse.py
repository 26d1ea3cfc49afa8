"""Eclipse resistance: an attacker with few netgroups cannot take over our outbound set."""

from __future__ import annotations

import random

import pytest

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers import DialPeer, PeerManager, PeerManagerConfig

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)
ATTACKER_GROUPS = ("66.6", "66.7", "66.8")  # three /16s the attacker really owns
HONEST = 30


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def honest_address(i: int) -> NodeAddress:
    return NodeAddress(nid(i), "tcp", f"{20 + i}.{i}.0.1", 7000)


def attacker_address(i: int) -> NodeAddress:
    group = ATTACKER_GROUPS[i % len(ATTACKER_GROUPS)]
    return NodeAddress(
        nid(1_000_000 + i), "tcp", f"{group}.{(i // 250) % 256}.{i % 250}", 7000 + i % 50
    )


def is_attacker(node: NodeId) -> bool:
    return int(node, 16) >= 1_000_000


def fill_outbound(m: PeerManager, now: float, max_outbound: int) -> set[NodeId]:
    """Poll and let every dial succeed until the ``max_outbound`` slots are full."""
    outbound: set[NodeId] = set()
    for step in range(50):
        actions = [a for a in m.poll(now + step) if isinstance(a, DialPeer) and not a.feeler]
        if not actions and len(outbound) >= max_outbound:
            break
        for dial in actions:
            m.dial_succeeded(dial.address.node_id, dial.address, now + step)
            outbound.add(dial.address.node_id)
    return outbound


@pytest.mark.parametrize("seed", range(5))
def test_address_flood_from_few_netgroups_cannot_eclipse(seed: int) -> None:
    config = PeerManagerConfig(max_outbound=8, max_concurrent_dials=8)
    m = PeerManager(config, SELF, now=T0, rng=random.Random(seed), secret=random.randbytes(32))
    # We know honest peers: a few from seeds, the rest from honest gossip; some we used before.
    for i in range(1, 4):
        m.add_address(honest_address(i), source="seed", now=T0)
    for i in range(1, 4):
        m.accept_inbound(nid(i), honest_address(i).host, T0)
    for i in range(4, HONEST + 1):
        m.add_address(honest_address(i), source=nid(1 + i % 3), now=T0)
    for i in range(1, 4):
        m.disconnected(nid(i), T0 + 1, reason="eof")
    honest_in_book = {a.address for a in m.address_book.entries()}
    # The attacker connects from its netgroups and floods us with its own addresses.
    attackers = [nid(900_000 + k) for k in range(4)]
    for k, node in enumerate(attackers):
        m.accept_inbound(node, f"{ATTACKER_GROUPS[k % 3]}.200.{k}", T0 + 2)
    kept = 0
    for i in range(6_000):
        kept += m.add_address(attacker_address(i), source=attackers[i % 4], now=T0 + 3)
    # The flood is bounded (per source and per source netgroup) and evicted nothing honest.
    assert kept <= 4 * config.max_addresses_per_source
    assert honest_in_book <= {a.address for a in m.address_book.entries()}
    outbound = fill_outbound(m, T0 + 100, config.max_outbound)
    assert len(outbound) == 8
    held = {n for n in outbound if is_attacker(n)}
    assert len(held) <= len(ATTACKER_GROUPS)  # one outbound per netgroup
    assert len(outbound - held) >= 8 - len(ATTACKER_GROUPS)


def test_attacker_sources_reach_only_a_fraction_of_the_new_table() -> None:
    config = PeerManagerConfig(max_addresses_per_source=100_000)
    m = PeerManager(config, SELF, now=T0, rng=random.Random(1), secret=b"e" * 32)
    source = nid(900_000)
    m.accept_inbound(source, "66.6.1.1", T0)
    # Even with addresses spread over many netgroups, one source netgroup gets 1/8 of buckets.
    for i in range(12_000):
        host = f"{1 + i % 200}.{(i // 200) % 256}.{i % 7}.1"
        m.add_address(NodeAddress(nid(2_000_000 + i), "tcp", host, 7000), source=source, now=T0)
    buckets = {e.bucket for e in m.address_book.entries() if not e.tried}
    assert len(buckets) <= config.new_buckets_per_source_group
    assert len(m.address_book) <= config.new_buckets_per_source_group * config.bucket_size
