"""Operator control, views, persistence batching and restart of the peer manager."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from overlay.address import NodeAddress
from overlay.errors import ConfigError, InvalidAddressError, LocalProtocolError
from overlay.identity import NodeId
from overlay.peers import (
    Action,
    DialPeer,
    DisconnectPeer,
    LoadedState,
    PeerFlag,
    PeerManager,
    PeerManagerConfig,
    PeerState,
    Persist,
    ScoreEvent,
    StoreChanges,
)

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)
SECRET = b"s" * 32


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def addr(i: int, host: str | None = None) -> NodeAddress:
    return NodeAddress(nid(i), "tcp", host or f"10.{i % 256}.{i // 256}.1", 7000)


def make(config: PeerManagerConfig | None = None, state: LoadedState | None = None) -> PeerManager:
    return PeerManager(
        config or PeerManagerConfig(),
        SELF,
        now=T0,
        rng=random.Random(1),
        secret=SECRET,
        store_state=state,
    )


def dials(actions: Sequence[Action]) -> list[DialPeer]:
    return [a for a in actions if isinstance(a, DialPeer)]


def disconnects(actions: Sequence[Action]) -> list[DisconnectPeer]:
    return [a for a in actions if isinstance(a, DisconnectPeer)]


def persists(actions: Sequence[Action]) -> list[StoreChanges]:
    return [a.changes for a in actions if isinstance(a, Persist)]


def test_dial_now_ignores_backoff_limits_and_diversity() -> None:
    m = make(PeerManagerConfig(max_outbound=1))
    m.add_address(addr(1, "10.1.0.1"), source="seed", now=T0)
    first = dials(m.poll(T0))
    m.dial_succeeded(first[0].address.node_id, first[0].address, T0)
    target = addr(2, "10.1.0.2")  # same netgroup, outbound already full
    m.add_address(target, source="seed", now=T0)
    m.poll(T0)
    assert m.dial_now(target, persistent=False, now=T0 + 1).accepted
    assert m.next_deadline() == T0 + 1
    actions = dials(m.poll(T0 + 1))
    assert [(d.address, d.reason) for d in actions] == [(target, "operator")]
    m.dial_failed(target.node_id, target, T0 + 2, "refused")
    assert dials(m.poll(T0 + 3)) == []  # a one-off: not retried
    assert m.dial_now(NodeAddress(SELF, "memory"), persistent=False, now=T0).reason == "self"


def test_dial_now_persistent_survives_restart() -> None:
    m = make()
    target = addr(3)
    m.dial_now(target, persistent=True, now=T0)
    changes = persists(m.poll(T0))
    assert changes and any(
        p.node_id == target.node_id and "persistent" in p.flags for p in changes[0].peers_upsert
    )
    state = LoadedState(
        secret=SECRET, peers=changes[0].peers_upsert, addresses=changes[0].addresses_upsert
    )
    again = make(state=state)
    actions = dials(again.poll(T0 + 100))
    assert [(d.address, d.reason) for d in actions] == [(target, "persistent")]


def test_ban_and_unban_peer() -> None:
    m = make()
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    m.poll(T0)
    m.ban_peer(nid(1), T0 + 600, "spam", T0 + 0.5)
    actions = m.poll(T0 + 0.5)
    assert [(d.node_id, d.reason) for d in disconnects(actions)] == [(nid(1), "banned")]
    assert persists(actions)  # immediately, not after the batching interval
    snap = m.peer(nid(1), T0 + 1)
    assert snap is not None and snap.state is PeerState.BANNED and snap.ban_reason == "spam"
    assert not m.add_address(addr(1), source="operator", now=T0 + 1)
    m.disconnected(nid(1), T0 + 1, reason="banned")
    assert m.unban_peer(nid(1), T0 + 2)
    assert not m.unban_peer(nid(1), T0 + 2)
    assert m.accept_inbound(nid(1), "10.0.0.1", T0 + 3).accepted
    with pytest.raises(LocalProtocolError):
        m.ban_peer(SELF, T0 + 10, "no", T0)
    with pytest.raises(LocalProtocolError):
        m.ban_peer(nid(2), T0 - 1, "past", T0)
    with pytest.raises(InvalidAddressError):
        m.ban_peer(NodeId("zz"), T0 + 10, "bad id", T0)


def test_ban_ip_disconnects_its_peers_and_blocks_dials() -> None:
    m = make()
    m.accept_inbound(nid(1), "198.51.100.1", T0)
    m.accept_inbound(nid(2), "198.51.100.2", T0)
    m.ban_ip("198.51.100.1", T0 + 60, "abuse", T0)
    assert [d.node_id for d in disconnects(m.poll(T0))] == [nid(1)]
    assert m.check_inbound("198.51.100.1", T0).reason == "ip_banned"
    assert not m.add_address(addr(5, "198.51.100.1"), source="seed", now=T0)
    assert m.dial_now(addr(5, "198.51.100.1"), persistent=False, now=T0).reason == "ip_banned"
    assert m.unban_ip("198.51.100.1", T0 + 1)
    assert not m.unban_ip("198.51.100.1", T0 + 1)
    assert m.check_inbound("198.51.100.1", T0 + 1).accepted
    with pytest.raises(InvalidAddressError):
        m.ban_ip("example.org", T0 + 60, "names are not IPs", T0)


def test_operator_disconnect_has_a_cooldown() -> None:
    m = make(PeerManagerConfig(max_outbound=1, disconnect_cooldown=10.0))
    m.add_address(addr(1), source="seed", now=T0)
    first = dials(m.poll(T0))
    m.dial_succeeded(nid(1), first[0].address, T0)
    assert m.disconnect_peer(nid(1), T0 + 1)
    assert not m.disconnect_peer(nid(1), T0 + 1)  # already asked
    assert [d.reason for d in disconnects(m.poll(T0 + 1))] == ["operator"]
    m.disconnected(nid(1), T0 + 2, reason="operator")
    assert dials(m.poll(T0 + 5)) == []
    assert dials(m.poll(T0 + 12))
    assert not m.disconnect_peer(nid(9), T0)


def test_private_peers_are_never_gossiped() -> None:
    m = make(PeerManagerConfig(private_peer_ids=(str(nid(2)),)))
    for i in range(1, 6):
        m.add_address(addr(i), source="seed", now=T0)
    m.set_flag(nid(3), PeerFlag.PRIVATE, True, T0)
    m.ban_peer(nid(4), T0 + 100, "x", T0)
    shared = {a.node_id for a in m.gossip_addresses(T0)}
    assert shared == {nid(1), nid(5)}
    assert len(m.gossip_addresses(T0, limit=1)) == 1
    assert m.gossip_addresses(T0, exclude=nid(1)) == [addr(5)]
    snap = m.peer(nid(2), T0)
    assert snap is not None and PeerFlag.PRIVATE in snap.flags
    with pytest.raises(LocalProtocolError):
        m.set_flag(nid(1), PeerFlag.UNCONDITIONAL, True, T0)
    with pytest.raises(LocalProtocolError):
        m.set_flag(nid(99), PeerFlag.PRIVATE, True, T0)


def test_add_seed_flags_and_source() -> None:
    m = make(PeerManagerConfig(seeds=(str(addr(1)),)))
    assert m.add_seed(addr(2), T0)
    for i in (1, 2):
        snap = m.peer(nid(i), T0)
        assert snap is not None and snap.source == "seed" and PeerFlag.SEED in snap.flags


def test_remove_seed_clears_only_the_operator_flag() -> None:
    m = make(PeerManagerConfig(seeds=(str(addr(1)),)))
    assert m.add_seed(addr(2), T0)
    assert m.add_seed(addr(1), T0)  # also an operator seed, but the config names it too
    assert m.remove_seed(nid(2), T0)
    snap = m.peer(nid(2), T0)
    assert snap is not None and PeerFlag.SEED not in snap.flags
    assert str(addr(2)) in {str(a) for a in snap.addresses}  # the address stays known
    assert m.remove_seed(nid(1), T0)
    snap = m.peer(nid(1), T0)
    assert snap is not None and PeerFlag.SEED in snap.flags  # the configuration still says so
    assert not m.remove_seed(nid(2), T0)  # nothing left to remove
    assert not m.remove_seed(nid(99), T0)


def test_seeds_that_lost_their_book_slot_are_still_dialed() -> None:
    seeds = tuple(str(addr(i)) for i in range(1, 151))
    config = PeerManagerConfig(
        seeds=seeds, max_connections=200, max_outbound=150, max_concurrent_dials=150
    )
    m = make(config)
    assert len(m.address_book) < 150  # some seeds collided in the new table
    dialed = {str(d.address) for d in dials(m.poll(T0))}
    assert dialed == set(seeds)


def test_snapshot_of_a_connected_peer() -> None:
    m = make()
    m.add_address(addr(1), source="seed", now=T0)
    m.poll(T0)
    m.dial_succeeded(nid(1), addr(1), T0 + 1)
    m.connected(nid(1), outbound=True, address=addr(1), remote_ip="10.1.0.1", now=T0 + 1)
    m.record_latency(nid(1), 0.05)
    m.report(nid(1), ScoreEvent.USEFUL_RESPONSE, T0 + 2)
    snap = m.peer(nid(1), T0 + 3)
    assert snap is not None
    assert snap.state is PeerState.CONNECTED and snap.direction == "outbound"
    assert snap.connected_since == T0 + 1 and snap.latency == 0.05
    assert snap.netgroup == "v4:10.1" and snap.remote_ip == "10.1.0.1"
    assert snap.addresses == (addr(1),) and snap.source == "seed" and snap.first_seen == T0
    assert snap.score == pytest.approx(1.0, abs=0.01) and len(snap.recent_events) == 1
    assert [s.node_id for s in m.snapshot(T0 + 3)] == [nid(1)]
    stats = m.statistics()
    assert stats.connected_outbound == 1 and stats.address_book_tried == 1
    assert stats.dials_started == 1 and stats.dials_succeeded == 1


def test_routine_changes_are_batched() -> None:
    m = make(PeerManagerConfig(persist_interval=1.0, max_outbound=0))
    for i in range(1, 30):
        m.add_address(addr(i), source="seed", now=T0 + i * 0.01)
    assert persists(m.poll(T0 + 0.5)) == []  # within the interval
    assert m.next_deadline() == pytest.approx(T0 + 1.0)
    batch = persists(m.poll(T0 + 1.0))
    assert len(batch) == 1
    assert len(batch[0].peers_upsert) == 29 and len(batch[0].addresses_upsert) == 29
    assert persists(m.poll(T0 + 3.0)) == []  # nothing changed since
    # A failed write is retried with the next batch.
    m.persist_failed(batch[0])
    retry = persists(m.poll(T0 + 4.0))
    assert len(retry) == 1 and len(retry[0].peers_upsert) == 29
    assert len(retry[0].addresses_upsert) == 29


def test_restart_restores_peers_scores_bans_and_placement() -> None:
    m = make()
    for i in range(1, 40):
        m.add_address(addr(i), source="seed", now=T0)
    m.poll(T0)
    m.dial_succeeded(nid(1), addr(1), T0 + 1)
    m.report(nid(1), ScoreEvent.TIMEOUT, T0 + 1)
    m.ban_peer(nid(2), T0 + 10_000, "operator", T0 + 1)
    m.ban_ip("192.0.2.9", T0 + 10_000, "operator", T0 + 1)
    peers, addresses, bans = {}, {}, {}
    now = T0 + 2
    for changes in persists(m.poll(now)):
        peers.update({p.node_id: p for p in changes.peers_upsert})
        addresses.update({a.address: a for a in changes.addresses_upsert})
        bans.update({b.ip: b for b in changes.ip_bans_upsert})
    state = LoadedState(
        secret=SECRET,
        peers=tuple(peers.values()),
        addresses=tuple(addresses.values()),
        ip_bans=tuple(bans.values()),
    )
    again = make(state=state)
    assert again.statistics().address_book_tried == 1
    assert again.statistics().address_book_new == m.statistics().address_book_new
    old_place = {(e.address, e.bucket, e.position) for e in m.address_book.entries()}
    assert {(e.address, e.bucket, e.position) for e in again.address_book.entries()} == old_place
    snap = again.peer(nid(1), now)
    assert snap is not None and snap.score == pytest.approx(-5.0, abs=0.01)
    assert snap.state is not PeerState.CONNECTED  # connections are not restored
    banned = again.peer(nid(2), now)
    assert banned is not None and banned.state is PeerState.BANNED
    assert again.check_inbound("192.0.2.9", now).reason == "ip_banned"
    with pytest.raises(ConfigError):
        PeerManager(
            PeerManagerConfig(),
            SELF,
            now=T0,
            rng=random.Random(1),
            secret=b"t" * 32,
            store_state=state,
        )


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError):
        PeerManager(PeerManagerConfig(), SELF, now=T0, rng=random.Random(1), secret=b"short")


def test_peer_records_are_bounded() -> None:
    m = make(PeerManagerConfig(max_peer_records=100))
    for i in range(1, 2000):
        assert m.accept_inbound(nid(i), f"10.{i % 250}.{i // 250}.1", T0 + i).accepted
        m.disconnected(nid(i), T0 + i, reason="eof")
    assert m.statistics().known_peers <= 100 + 16
    # The most recently seen survive.
    assert m.peer(nid(1999), T0 + 3000) is not None
    assert m.peer(nid(1), T0 + 3000) is None


def test_gossip_source_is_validated() -> None:
    m = make()
    with pytest.raises(InvalidAddressError):
        m.add_address(addr(1), source="somebody", now=T0)  # type: ignore[arg-type]
    assert not m.add_address(NodeAddress(SELF, "memory"), source="seed", now=T0)
