"""Outbound dialing rules of the peer manager, with a fake clock (plain ``now`` values)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers import (
    Action,
    DialPeer,
    DisconnectPeer,
    PeerManager,
    PeerManagerConfig,
    PeerSnapshot,
    PeerState,
    RefreshAddresses,
    ScoreEvent,
)
from overlay.peers._records import backoff_delay

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def addr(i: int, host: str | None = None) -> NodeAddress:
    return NodeAddress(nid(i), "tcp", host or f"10.{i % 256}.{i // 256}.1", 7000)


def make(config: PeerManagerConfig | None = None, seed: int = 1) -> PeerManager:
    return PeerManager(
        config or PeerManagerConfig(), SELF, now=T0, rng=random.Random(seed), secret=b"s" * 32
    )


def dials(actions: Sequence[Action]) -> list[DialPeer]:
    return [a for a in actions if isinstance(a, DialPeer)]


def disconnects(actions: Sequence[Action]) -> list[DisconnectPeer]:
    return [a for a in actions if isinstance(a, DisconnectPeer)]


def connect_all(m: PeerManager, actions: Sequence[Action], now: float) -> None:
    for d in dials(actions):
        m.dial_succeeded(d.address.node_id, d.address, now)


@pytest.mark.parametrize("cap", [600.0, 30.0])
def test_backoff_delay_sequence(cap: float) -> None:
    rng = random.Random(3)
    assert backoff_delay(0, base=1.0, cap=cap, rng=rng) == 0.0
    for failures in range(1, 40):
        ceiling = min(cap, 2.0 ** (failures - 1))
        delay = backoff_delay(failures, base=1.0, cap=cap, rng=rng)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(10_000, base=1.0, cap=cap, rng=rng) <= cap


def test_failed_dials_back_off_exponentially_up_to_the_cap() -> None:
    m = make(PeerManagerConfig(max_outbound=1))
    target = addr(1)
    m.add_address(target, source="seed", now=T0)
    now = T0
    for failures in range(1, 15):
        actions = m.poll(now)
        assert [d.address for d in dials(actions)] == [target]
        m.dial_failed(target.node_id, target, now, "refused")
        snap = m.peer(target.node_id, now)
        assert snap is not None and snap.failures == failures and snap.state is PeerState.BACKOFF
        assert snap.next_dial is not None
        delay = snap.next_dial - now
        ceiling = min(600.0, 2.0 ** (failures - 1))
        assert ceiling / 2 <= delay <= ceiling
        assert dials(m.poll(now + delay * 0.99)) == []  # still backing off
        now = snap.next_dial
    # Success resets the failure count.
    m.poll(now)
    m.dial_succeeded(target.node_id, target, now)
    snap = m.peer(target.node_id, now)
    assert snap is not None and snap.failures == 0 and snap.state is PeerState.CONNECTED


def test_persistent_peers_are_redialed_forever_with_a_short_cap() -> None:
    target = addr(1)
    m = make(PeerManagerConfig(persistent_peers=(str(target),), max_outbound=0))
    now, last_dial, attempts = T0, None, 0
    while attempts < 60:
        actions = dials(m.poll(now))
        if actions:
            assert [(d.address, d.reason) for d in actions] == [(target, "persistent")]
            if last_dial is not None:
                assert now - last_dial <= 30.0 + 1e-6
            last_dial, attempts = now, attempts + 1
            m.dial_failed(target.node_id, target, now, "refused")
        deadline = m.next_deadline()
        assert deadline is not None and deadline >= now
        now = deadline  # the driver sleeps until the deadline and polls
    snap = m.peer(target.node_id, now)
    assert snap is not None and snap.failures == 60 and "persistent" in snap.flags
    assert now - T0 > 20 * 15  # it did back off (mostly 15-30 s apart)


def test_disconnect_cooldown() -> None:
    m = make(PeerManagerConfig(max_outbound=1, disconnect_cooldown=10.0))
    target = addr(1)
    m.add_address(target, source="seed", now=T0)
    connect_all(m, m.poll(T0), T0)
    m.disconnected(target.node_id, T0 + 100, reason="eof")
    assert dials(m.poll(T0 + 105)) == []
    assert [d.address for d in dials(m.poll(T0 + 110))] == [target]


def test_concurrent_dials_are_bounded() -> None:
    m = make(PeerManagerConfig(max_outbound=40, max_concurrent_dials=8))
    for i in range(1, 60):
        m.add_address(addr(i), source="seed", now=T0)
    first = dials(m.poll(T0))
    assert len(first) == 8
    assert dials(m.poll(T0 + 0.5)) == []
    m.dial_failed(first[0].address.node_id, first[0].address, T0 + 1, "refused")
    m.dial_succeeded(first[1].address.node_id, first[1].address, T0 + 1)
    assert len(dials(m.poll(T0 + 1))) == 2
    assert m.statistics().dialing == 8


def test_unreported_dials_time_out_and_free_their_slot() -> None:
    m = make(PeerManagerConfig(max_outbound=40, max_concurrent_dials=2, dial_timeout=5.0))
    for i in range(1, 10):
        m.add_address(addr(i), source="seed", now=T0)
    first = dials(m.poll(T0))
    assert len(first) == 2 and all(d.timeout == 5.0 for d in first)
    assert m.next_deadline() == pytest.approx(T0 + 6.0)
    assert dials(m.poll(T0 + 5.9)) == []
    again = dials(m.poll(T0 + 6.0))
    assert len(again) == 2 and {d.address for d in again}.isdisjoint({d.address for d in first})
    stats = m.statistics()
    assert stats.dial_timeouts == 2 and stats.dials_failed == 2
    # A late failure report for the expired dial is ignored.
    m.dial_failed(first[0].address.node_id, first[0].address, T0 + 7, "refused")
    assert m.statistics().dials_failed == 2


def test_one_outbound_per_netgroup() -> None:
    m = make(PeerManagerConfig(max_outbound=8))
    for i in range(1, 11):
        m.add_address(addr(i, f"10.1.{i}.1"), source="seed", now=T0)
    for i in range(20, 23):
        m.add_address(addr(i, f"10.{i}.0.1"), source="seed", now=T0)
    hosts = [d.address.host for d in dials(m.poll(T0))]
    assert len(hosts) == 4
    assert sum(1 for h in hosts if h.startswith("10.1.")) == 1


def test_netgroup_allowance_and_exempt_networks() -> None:
    for config, expected in (
        (PeerManagerConfig(max_outbound=8, max_outbound_per_netgroup=3), 3),
        (PeerManagerConfig(max_outbound=8, exempt_networks=("10.1.0.0/16",)), 8),
    ):
        m = make(config)
        for i in range(1, 11):
            m.add_address(addr(i, f"10.1.{i}.1"), source="seed", now=T0)
        assert len(dials(m.poll(T0))) == expected


def test_outbound_stops_at_max_outbound_and_refills() -> None:
    m = make(PeerManagerConfig(max_outbound=3))
    for i in range(1, 20):
        m.add_address(addr(i), source="seed", now=T0)
    first = dials(m.poll(T0))
    assert len(first) == 3
    connect_all(m, first, T0 + 1)
    assert dials(m.poll(T0 + 2)) == []
    m.disconnected(first[0].address.node_id, T0 + 3, reason="eof")
    refill = dials(m.poll(T0 + 3))
    assert len(refill) == 1 and refill[0].address != first[0].address  # cooldown on the old one
    assert m.statistics().connected_outbound == 2


def test_refresh_when_the_address_book_is_exhausted() -> None:
    m = make(PeerManagerConfig(max_outbound=4, refresh_interval=60.0))
    assert any(isinstance(a, RefreshAddresses) for a in m.poll(T0))
    assert not any(isinstance(a, RefreshAddresses) for a in m.poll(T0 + 30))
    assert any(isinstance(a, RefreshAddresses) for a in m.poll(T0 + 61))
    m.add_address(addr(1), source="seed", now=T0 + 62)
    actions = m.poll(T0 + 200)
    assert len(dials(actions)) == 1
    # Still 3 free slots and nothing else to dial: ask again (rate-limited).
    assert any(isinstance(a, RefreshAddresses) for a in actions)
    assert m.statistics().refreshes == 3


def _full_outbound(config: PeerManagerConfig, extra: int) -> tuple[PeerManager, list[DialPeer]]:
    m = make(config)
    for i in range(1, config.max_outbound + 1 + extra):
        m.add_address(addr(i), source="seed", now=T0)
    first = dials(m.poll(T0))
    assert len(first) == config.max_outbound
    connect_all(m, first, T0)
    return m, first


def test_feelers_run_when_outbound_is_full_and_disconnect_at_once() -> None:
    m, first = _full_outbound(PeerManagerConfig(max_outbound=2, feeler_interval=120.0), extra=5)
    feeler = None
    now = T0
    for _ in range(200):
        now += 30.0
        found = [d for d in dials(m.poll(now)) if d.feeler]
        if found:
            feeler = found[0]
            break
    assert feeler is not None and feeler.reason == "feeler"
    assert feeler.address not in {d.address for d in first}
    m.dial_succeeded(feeler.address.node_id, feeler.address, now + 1)
    assert m.statistics().connected_outbound == 2  # a feeler is not an outbound slot
    out = disconnects(m.poll(now + 1))
    assert [(d.node_id, d.reason) for d in out] == [(feeler.address.node_id, "feeler")]
    m.disconnected(feeler.address.node_id, now + 2, reason="feeler")
    entry = m.address_book.get(feeler.address)
    assert entry is not None and entry.last_success == now + 1
    assert m.statistics().feelers_started >= 1


def test_no_feelers_while_outbound_slots_are_free() -> None:
    m = make(PeerManagerConfig(max_outbound=8, feeler_interval=1.0))
    m.add_address(addr(1), source="seed", now=T0)
    for step in range(1, 100):
        assert not any(d.feeler for d in dials(m.poll(T0 + step * 10)))


def test_upgrade_dials_a_better_peer_then_evicts_the_worst() -> None:
    config = PeerManagerConfig(max_outbound=2, upgrade_slots=1, upgrade_interval=60.0)
    m, first = _full_outbound(config, extra=3)
    bad = first[0].address.node_id
    for k in range(3):
        m.report(bad, ScoreEvent.TIMEOUT, T0 + 1 + k)  # -15: below a neutral candidate - margin
    upgrade = [d for d in dials(m.poll(T0 + 61)) if d.reason == "upgrade"]
    assert len(upgrade) == 1
    m.dial_succeeded(upgrade[0].address.node_id, upgrade[0].address, T0 + 62)
    evicted = disconnects(m.poll(T0 + 62))
    assert [(d.node_id, d.reason, d.evict) for d in evicted] == [(bad, "upgrade", True)]
    m.disconnected(bad, T0 + 63, reason="evicted")
    stats = m.statistics()
    assert stats.connected_outbound == 2 and stats.upgrades_started == 1 and stats.evictions == 1


def test_no_upgrade_without_a_clearly_better_candidate() -> None:
    config = PeerManagerConfig(max_outbound=2, upgrade_slots=2, upgrade_interval=60.0)
    m, _ = _full_outbound(config, extra=3)
    for step in range(1, 20):
        assert not [d for d in dials(m.poll(T0 + step * 61)) if d.reason == "upgrade"]


def test_persistent_peers_bypass_max_outbound_and_displace_automatic_ones() -> None:
    persistent = addr(100, "10.100.0.1")
    config = PeerManagerConfig(max_outbound=2, persistent_peers=(str(persistent),))
    m = make(config)
    # The persistent peer is down at first; automatic peers take both slots.
    actions = dials(m.poll(T0))
    assert [d.address for d in actions] == [persistent]
    m.dial_failed(persistent.node_id, persistent, T0, "refused")
    for i in range(1, 6):
        m.add_address(addr(i), source="seed", now=T0)
    automatic = dials(m.poll(T0 + 0.1))
    assert len(automatic) == 2
    connect_all(m, automatic, T0 + 0.2)
    now = T0 + 40
    persistent_dial = [d for d in dials(m.poll(now)) if d.reason == "persistent"]
    assert [d.address for d in persistent_dial] == [persistent]
    m.dial_succeeded(persistent.node_id, persistent, now)
    evicted = disconnects(m.poll(now + 1))
    assert len(evicted) == 1 and evicted[0].node_id != persistent.node_id and evicted[0].evict


class _Prefer:
    def __init__(self, favourite: NodeId) -> None:
        self.favourite = favourite

    def rank(self, peer: PeerSnapshot) -> float:
        return 100.0 if peer.node_id == self.favourite else 0.0


def test_dial_preference_hook_ranks_candidates() -> None:
    hits = 0
    for seed in range(20):
        m = make(PeerManagerConfig(max_outbound=1), seed=seed)
        for i in range(1, 4):
            m.add_address(addr(i), source="seed", now=T0)
        m.set_dial_preference(_Prefer(nid(2)))
        hits += [d.address.node_id for d in dials(m.poll(T0))] == [nid(2)]
    assert hits == 20  # 3 candidates, 4 samples: the favourite is always among them


def test_next_deadline_does_not_spin_when_blocked() -> None:
    target = addr(1)
    m = make(PeerManagerConfig(persistent_peers=(str(target),), max_concurrent_dials=1))
    m.add_address(addr(2), source="seed", now=T0)
    m.poll(T0)  # the only dial slot goes to the persistent peer
    deadline = m.next_deadline()
    assert deadline is not None and deadline > T0
    m.poll(deadline)
    later = m.next_deadline()
    assert later is not None and later > deadline


def test_dial_succeeded_rejects_mismatched_identity() -> None:
    from overlay.errors import LocalProtocolError

    m = make()
    with pytest.raises(LocalProtocolError):
        m.dial_succeeded(nid(1), addr(2), T0)


class CountingRandom(random.Random):
    """Counts the random numbers drawn (each address-book probe draws some)."""

    draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()

    def getrandbits(self, k: int, /) -> int:
        self.draws += 1
        return super().getrandbits(k)


def test_a_starved_manager_does_not_sample_a_book_of_connected_peers_again() -> None:
    """200 peers in the book, all connected, outbound slots free: the pass that finds no
    candidate samples the book; the polls after it (nothing changed) draw no random number at
    all, however large the book."""
    rng = CountingRandom(5)
    config = PeerManagerConfig(max_outbound=400, max_connections=500,
                               max_outbound_per_netgroup=400)
    m = PeerManager(config, SELF, now=T0, rng=rng, secret=b"s" * 32)
    peers = [addr(i) for i in range(1, 201)]
    for a in peers:
        m.add_address(a, source="seed", now=T0)
    for a in peers:
        m.connected(a.node_id, outbound=True, address=a, remote_ip=None, now=T0)
    assert dials(m.poll(T0)) == []  # the starved pass
    before = rng.draws
    for step in range(1, 101):
        assert dials(m.poll(T0 + step * 0.01)) == []
    assert rng.draws == before


def test_a_starved_manager_dials_a_new_address_at_once() -> None:
    m = make(PeerManagerConfig(max_outbound=8))
    for i in range(1, 4):
        m.add_address(addr(i), source="seed", now=T0)
    connect_all(m, m.poll(T0), T0)
    assert dials(m.poll(T0)) == []  # starved: every known peer is connected
    m.add_address(addr(4), source="seed", now=T0 + 0.1)
    assert [d.address for d in dials(m.poll(T0 + 0.1))] == [addr(4)]


def test_a_starved_manager_redials_a_dropped_peer_when_its_cooldown_ends() -> None:
    """The cooldown (2 s) ends before the starved tick (5 s): the dial happens then."""
    m = make(PeerManagerConfig(max_outbound=8, disconnect_cooldown=2.0))
    for i in range(1, 4):
        m.add_address(addr(i), source="seed", now=T0)
    connect_all(m, m.poll(T0), T0)
    assert dials(m.poll(T0)) == []
    m.disconnected(addr(2).node_id, T0 + 1.0, reason="connection_closed")
    assert dials(m.poll(T0 + 1.0)) == []  # cooling down
    assert dials(m.poll(T0 + 2.5)) == []
    deadline = m.next_deadline()
    assert deadline is not None and deadline <= T0 + 3.0  # woken when the cooldown ends
    assert [d.address for d in dials(m.poll(T0 + 3.0))] == [addr(2)]
