"""Inbound admission: IP bans, per-IP / per-netgroup limits, capacity and eviction."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Sequence

from overlay.identity import NodeId
from overlay.peers import (
    Action,
    DisconnectPeer,
    PeerManager,
    PeerManagerConfig,
    PeerSnapshot,
    ScoreEvent,
)

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def make(config: PeerManagerConfig | None = None) -> PeerManager:
    return PeerManager(
        config or PeerManagerConfig(), SELF, now=T0, rng=random.Random(1), secret=b"s" * 32
    )


def disconnects(actions: Sequence[Action]) -> list[DisconnectPeer]:
    return [a for a in actions if isinstance(a, DisconnectPeer)]


def test_per_ip_and_per_netgroup_limits() -> None:
    m = make(PeerManagerConfig(max_inbound_per_ip=2, max_inbound_per_netgroup=3))
    assert m.accept_inbound(nid(1), "203.0.113.1", T0).accepted
    assert m.accept_inbound(nid(2), "203.0.113.1", T0).accepted
    assert m.check_inbound("203.0.113.1", T0).reason == "per_ip_limit"
    assert m.accept_inbound(nid(3), "203.0.113.1", T0).reason == "per_ip_limit"
    assert m.accept_inbound(nid(4), "203.0.7.7", T0).accepted
    assert m.check_inbound("203.0.9.9", T0).reason == "per_netgroup_limit"
    assert m.check_inbound("203.1.9.9", T0).accepted
    # A disconnect frees the per-IP slot.
    m.disconnected(nid(1), T0 + 1, reason="eof")
    assert m.check_inbound("203.0.113.1", T0 + 1).accepted
    assert m.accept_inbound(nid(5), "203.0.113.1", T0 + 1).accepted
    assert m.check_inbound("203.0.1.1", T0 + 1).reason == "per_netgroup_limit"
    stats = m.statistics()
    assert stats.inbound_rejected == {"per_ip_limit": 2, "per_netgroup_limit": 2}
    assert stats.connected_inbound == 3


def test_ipv6_per_ip_limit_is_per_slash64() -> None:
    m = make(PeerManagerConfig(max_inbound_per_ip=1))
    assert m.accept_inbound(nid(1), "2001:db8:1:2::1", T0).accepted
    assert m.check_inbound("2001:db8:1:2::ffff", T0).reason == "per_ip_limit"
    assert m.check_inbound("2001:db8:1:3::1", T0).accepted


def test_exempt_networks_skip_limits_but_not_bans() -> None:
    m = make(PeerManagerConfig(max_inbound_per_ip=1, exempt_networks=("127.0.0.0/8",)))
    for i in range(1, 6):
        assert m.accept_inbound(nid(i), "127.0.0.1", T0).accepted
    m.ban_ip("127.0.0.1", T0 + 60, "test", T0)
    assert m.check_inbound("127.0.0.1", T0).reason == "ip_banned"
    assert len(disconnects(m.poll(T0))) == 5


def test_a_flood_from_one_ip_is_refused_without_growing_state() -> None:
    m = make()
    for i in range(1, 5):
        assert m.accept_inbound(nid(i), "198.51.100.7", T0).accepted
    known = m.statistics().known_peers
    check = m.check_inbound  # warm up lookups before measuring
    check("198.51.100.7", T0)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(1000):
            decision = check("198.51.100.7", T0)
            assert not decision.accepted and decision.reason == "per_ip_limit"
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if "overlay" in str(stat.traceback)
    )
    assert grown < 4096
    # Even after a handshake, new identities from that IP create no records.
    for i in range(100, 1100):
        assert not m.accept_inbound(nid(i), "198.51.100.7", T0).accepted
    stats = m.statistics()
    assert stats.known_peers == known
    assert stats.inbound_rejected["per_ip_limit"] == 2001


def test_accept_inbound_rejections() -> None:
    m = make()
    assert m.accept_inbound(SELF, "10.0.0.1", T0).reason == "self"
    assert m.accept_inbound(nid(1), "10.0.0.1", T0).accepted
    assert m.accept_inbound(nid(1), "10.9.0.1", T0).reason == "duplicate"
    m.ban_peer(nid(2), T0 + 100, "test", T0)
    assert m.accept_inbound(nid(2), "10.1.0.1", T0).reason == "banned"
    assert m.accept_inbound(nid(2), "10.1.0.1", T0 + 101).accepted
    m.accept_inbound(nid(3), "10.3.0.1", T0)
    for _ in range(3):
        m.report(nid(3), ScoreEvent.INVALID_MESSAGE, T0)  # -75: disconnect, not ban
    m.disconnected(nid(3), T0 + 1, reason="low score")
    assert m.accept_inbound(nid(3), "10.3.0.1", T0 + 2).reason == "low_score"
    # Decay: -75 halves every 30 minutes; after an hour it is above -50 again.
    assert m.accept_inbound(nid(3), "10.3.0.1", T0 + 3700).accepted


def _fill_inbound(m: PeerManager, count: int, start: float = T0) -> list[NodeId]:
    ids = []
    for i in range(count):
        node = nid(1000 + i)
        assert m.accept_inbound(node, f"10.{i}.0.1", start + i).accepted
        ids.append(node)
    return ids


def test_full_inbound_evicts_per_the_rules() -> None:
    config = PeerManagerConfig(max_connections=12, max_outbound=2)  # 10 inbound slots
    m = make(config)
    ids = _fill_inbound(m, 10)
    decision = m.accept_inbound(nid(1), "192.0.2.1", T0 + 100)
    assert decision.accepted and decision.evict is not None
    out = disconnects(m.poll(T0 + 100))
    assert [(d.node_id, d.reason, d.evict) for d in out] == [(decision.evict, "evicted", True)]
    # Youngest half unprotected (netgroups all distinct): victim is one of the 5 youngest
    # among those not shielded for netgroup diversity.
    assert decision.evict in ids[5:]
    assert m.statistics().evictions == 1


def test_eviction_refuses_when_everyone_is_protected() -> None:
    ids = [nid(1000 + i) for i in range(3)]
    config = PeerManagerConfig(
        max_connections=5,
        max_outbound=2,
        unconditional_peer_ids=(),
        persistent_peers=tuple(f"memory:{i}" for i in ids),
    )
    m = make(config)
    for i, node in enumerate(ids):
        assert m.accept_inbound(node, f"10.{i}.0.1", T0).accepted
    assert m.accept_inbound(nid(1), "192.0.2.1", T0).reason == "full"


class _Scarce:
    """Protects the only carrier of a (pretend) scarce capability."""

    name = "scarce-capability"

    def __init__(self, carrier: NodeId) -> None:
        self.carrier = carrier
        self.calls = 0

    def protected(self, peers: Sequence[PeerSnapshot]) -> set[NodeId]:
        self.calls += 1
        return {p.node_id for p in peers if p.node_id == self.carrier}


def test_protection_hook_shields_its_peers() -> None:
    config = PeerManagerConfig(
        max_connections=6,
        max_outbound=2,
        protect_netgroups=0,
        protect_low_latency=0,
        protect_recently_useful=0,
        protect_longest_connected=0.0,
    )
    m = make(config)
    # All four inbound peers share a netgroup; the scarce carrier is the youngest and worst.
    for i in range(4):
        assert m.accept_inbound(nid(10 + i), f"10.0.0.{i + 1}", T0 + i).accepted
    m.report(nid(13), ScoreEvent.TIMEOUT, T0 + 5)
    hook = _Scarce(nid(13))
    m.add_protection(hook)
    decision = m.accept_inbound(nid(99), "192.0.2.1", T0 + 10)
    assert decision.accepted and decision.evict not in (None, nid(13))
    assert hook.calls == 1
    m.remove_protection("scarce-capability")
    m.disconnected(decision.evict or nid(0), T0 + 11, reason="evicted")
    decision = m.accept_inbound(nid(98), "192.0.2.2", T0 + 12)
    assert decision.evict == nid(13)  # unprotected now: lowest score goes first


def test_unconditional_peers_bypass_limits_and_eviction() -> None:
    special = nid(7)
    config = PeerManagerConfig(
        max_connections=3,
        max_outbound=2,
        max_inbound_per_ip=1,
        unconditional_peer_ids=(str(special),),
        protect_netgroups=0,
    )
    m = make(config)
    assert m.accept_inbound(nid(1), "10.0.0.1", T0).accepted  # the one inbound slot
    assert m.accept_inbound(special, "10.0.0.1", T0).accepted  # same IP, no slot left: fine
    stats = m.statistics()
    assert stats.connected_inbound == 1 and stats.connected_unconditional == 1
    # It never counts, so it is never picked for eviction either.
    decision = m.accept_inbound(nid(2), "10.5.0.1", T0 + 1)
    assert decision.evict == nid(1)
    # It is not banned by its score (only disconnected).
    for _ in range(5):
        m.report(special, ScoreEvent.PROTOCOL_VIOLATION, T0 + 2)
    snap = m.peer(special, T0 + 2)
    assert snap is not None and snap.ban_until is None
    assert special in {d.node_id for d in disconnects(m.poll(T0 + 2))}


def test_connected_without_accept_registers_and_counts() -> None:
    m = make(PeerManagerConfig(max_inbound_per_ip=1))
    m.connected(nid(1), outbound=False, address=None, remote_ip="10.0.0.1", now=T0)
    assert m.check_inbound("10.0.0.1", T0).reason == "per_ip_limit"
    m.connected(nid(1), outbound=False, address=None, remote_ip="10.0.0.1", now=T0)  # idempotent
    assert m.statistics().connected_inbound == 1
    m.disconnected(nid(1), T0 + 1, reason="eof")
    m.disconnected(nid(1), T0 + 1, reason="eof")  # idempotent
    assert m.check_inbound("10.0.0.1", T0 + 1).accepted
