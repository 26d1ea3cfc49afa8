"""Named protection (``protect`` / ``set_protected``): eviction and record pruning never touch
the peers an outside policy (the routing policy engine's ``Protect``) names."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import assert_never

import pytest

from overlay.address import NodeAddress
from overlay.errors import InvalidAddressError, LocalProtocolError
from overlay.identity import NodeId
from overlay.peers import (
    Action,
    DialPeer,
    DialReason,
    DisconnectCause,
    DisconnectPeer,
    PeerManager,
    PeerManagerConfig,
    Persist,
    RefreshAddresses,
    ScoreEvent,
)
from routing import Protect

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)

# Eviction decided by score alone: every other shield is off.
BARE = PeerManagerConfig(
    max_connections=6,
    max_outbound=2,
    protect_netgroups=0,
    protect_low_latency=0,
    protect_recently_useful=0,
    protect_longest_connected=0.0,
)


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def addr(i: int) -> NodeAddress:
    return NodeAddress(nid(i), "tcp", f"10.{i % 256}.{i // 256}.1", 7000)


def make(config: PeerManagerConfig = BARE) -> PeerManager:
    return PeerManager(config, SELF, now=T0, rng=random.Random(1), secret=b"p" * 32)


def split(actions: Sequence[Action]) -> tuple[list[DialPeer], list[DisconnectPeer]]:
    """Dispatch like a driver: ``match`` over the closed ``Action`` union."""
    dials: list[DialPeer] = []
    drops: list[DisconnectPeer] = []
    for action in actions:
        match action:
            case DialPeer():
                dials.append(action)
            case DisconnectPeer():
                drops.append(action)
            case Persist() | RefreshAddresses():
                pass
            case _:
                assert_never(action)
    return dials, drops


def full_inbound(m: PeerManager) -> None:
    """Four inbound peers in one netgroup; peer 13 has the worst score."""
    for i in range(4):
        assert m.accept_inbound(nid(10 + i), f"10.0.0.{i + 1}", T0 + i).accepted
    m.report(nid(13), ScoreEvent.TIMEOUT, T0 + 5)


def test_set_protected_shields_from_inbound_eviction_until_replaced() -> None:
    m = make()
    full_inbound(m)
    m.set_protected("routing", {nid(13)})
    decision = m.accept_inbound(nid(99), "192.0.2.1", T0 + 10)
    assert decision.accepted and decision.evict not in (None, nid(13))
    _, drops = split(m.poll(T0 + 10))
    assert [(d.node_id, d.reason, d.evict) for d in drops] == [
        (decision.evict, DisconnectCause.EVICTED, True)
    ]
    m.disconnected(decision.evict or nid(0), T0 + 11, reason="evicted")
    # The next plan protects someone else: the set is replaced, not merged.
    m.set_protected("routing", {nid(10)})
    assert m.protected_sets() == {"routing": frozenset({nid(10)})}
    decision = m.accept_inbound(nid(98), "192.0.2.2", T0 + 12)
    assert decision.evict == nid(13)  # unprotected now: the lowest score goes first


def test_everyone_protected_refuses_the_newcomer() -> None:
    m = make()
    full_inbound(m)
    m.protect([nid(10), nid(11)], "scarce-capability")
    m.protect([nid(12), nid(13)], "scarce-capability")  # adds to the same set
    assert m.protected_sets()["scarce-capability"] == frozenset(nid(i) for i in range(10, 14))
    decision = m.accept_inbound(nid(99), "192.0.2.1", T0 + 10)
    assert not decision.accepted and decision.reason == "full"


def test_protect_sets_are_independent_and_cleared_by_an_empty_set() -> None:
    m = make()
    full_inbound(m)
    m.protect([nid(13)], "operator-pin")
    m.set_protected("routing", [nid(13), nid(12)])
    m.set_protected("routing", [])
    assert m.protected_sets() == {"operator-pin": frozenset({nid(13)})}
    decision = m.accept_inbound(nid(99), "192.0.2.1", T0 + 10)
    assert decision.evict not in (None, nid(13))  # still pinned by the other source


def test_routing_protect_action_maps_onto_set_protected() -> None:
    m = make()
    full_inbound(m)
    action = Protect(frozenset({nid(13)}))
    m.set_protected("routing", action.node_ids)
    assert m.accept_inbound(nid(99), "192.0.2.1", T0 + 10).evict not in (None, nid(13))


def test_protected_outbound_peer_survives_an_upgrade() -> None:
    config = PeerManagerConfig(max_outbound=2, upgrade_slots=1, upgrade_interval=60.0)
    m = make(config)
    for i in range(1, 6):
        m.add_address(addr(i), source="seed", now=T0)
    first, _ = split(m.poll(T0))
    assert len(first) == 2
    for d in first:
        m.dial_succeeded(d.address.node_id, d.address, T0)
    worst, other = (d.address.node_id for d in first)
    for k in range(3):
        m.report(other, ScoreEvent.TIMEOUT, T0 + 1 + k)  # -15: worth replacing
    for k in range(6):
        m.report(worst, ScoreEvent.TIMEOUT, T0 + 1 + k)  # -30: the upgrade would replace it...
    m.set_protected("routing", {worst})  # ...but the policy engine needs it
    upgrades = [d for d in split(m.poll(T0 + 61))[0] if d.reason is DialReason.UPGRADE]
    assert len(upgrades) == 1  # the candidate out-ranks the worst unprotected peer
    m.dial_succeeded(upgrades[0].address.node_id, upgrades[0].address, T0 + 62)
    _, drops = split(m.poll(T0 + 62))
    assert [(d.node_id, d.reason) for d in drops] == [(other, DisconnectCause.UPGRADE)]


def test_protection_does_not_stop_bans_or_score_disconnects() -> None:
    m = make()
    full_inbound(m)
    m.set_protected("routing", {nid(11), nid(12)})
    m.report(nid(11), ScoreEvent.PROTOCOL_VIOLATION, T0 + 10)
    for k in range(3):
        m.report(nid(12), ScoreEvent.INVALID_MESSAGE, T0 + 10 + k)  # -75: disconnect, no ban
    _, drops = split(m.poll(T0 + 13))
    assert {(d.node_id, d.reason) for d in drops} == {
        (nid(11), DisconnectCause.BANNED),
        (nid(12), DisconnectCause.LOW_SCORE),
    }


def test_protected_records_are_never_pruned() -> None:
    m = make(PeerManagerConfig(max_peer_records=100))
    m.protect([nid(1), nid(2)], "routing")
    m.set_protected("routing", [nid(1), nid(2)])
    for i in range(1, 2000):
        assert m.accept_inbound(nid(i), f"10.{i % 250}.{i // 250}.1", T0 + i).accepted
        m.disconnected(nid(i), T0 + i, reason="eof")
    assert m.statistics().known_peers <= 100 + 16
    assert m.peer(nid(1), T0 + 3000) is not None and m.peer(nid(2), T0 + 3000) is not None
    assert m.peer(nid(3), T0 + 3000) is None  # an unprotected peer seen as long ago is gone


def test_bad_protection_input_is_refused_clearly() -> None:
    m = make()
    with pytest.raises(LocalProtocolError, match="not one string"):
        m.set_protected("routing", nid(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidAddressError):
        m.protect([NodeId("not-a-node-id")], "routing")
    with pytest.raises(LocalProtocolError, match="non-empty"):
        m.set_protected("", [nid(1)])
    with pytest.raises(LocalProtocolError, match="max 100"):
        make(PeerManagerConfig(max_peer_records=100)).protect(
            [nid(i) for i in range(1, 102)], "routing"
        )
    assert m.protected_sets() == {}  # nothing half-applied
