"""Connection lifecycle as a driver reports it: orderings, duplicates, late and odd reports."""

from __future__ import annotations

import random
from collections.abc import Sequence

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers import (
    Action,
    DialPeer,
    DisconnectPeer,
    PeerManager,
    PeerManagerConfig,
    PeerState,
)

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def addr(i: int, host: str | None = None, port: int = 7000) -> NodeAddress:
    return NodeAddress(nid(i), "tcp", host or f"10.{i}.0.1", port)


def make(config: PeerManagerConfig | None = None) -> PeerManager:
    return PeerManager(
        config or PeerManagerConfig(), SELF, now=T0, rng=random.Random(1), secret=b"s" * 32
    )


def dials(actions: Sequence[Action]) -> list[DialPeer]:
    return [a for a in actions if isinstance(a, DialPeer)]


def disconnects(actions: Sequence[Action]) -> list[DisconnectPeer]:
    return [a for a in actions if isinstance(a, DisconnectPeer)]


def test_connected_before_dial_succeeded_counts_one_dial() -> None:
    m = make(PeerManagerConfig(max_outbound=1))
    dialed = addr(1)
    m.add_address(dialed, source="seed", now=T0)
    assert [d.address for d in dials(m.poll(T0))] == [dialed]
    # The node reports the connection (with the peer's advertised listen address) first...
    advertised = addr(1, "10.1.0.1", 9999)
    m.connected(nid(1), outbound=True, address=advertised, remote_ip="10.1.0.1", now=T0 + 1)
    # ...then the driver's dial task reports success.
    m.dial_succeeded(nid(1), dialed, T0 + 1)
    stats = m.statistics()
    assert stats.dials_started == 1 and stats.dials_succeeded == 1
    assert stats.connected_outbound == 1 and stats.dialing == 0
    entry = m.address_book.get(dialed)
    assert entry is not None and entry.tried  # the address we dialed is the proven one
    assert advertised in m.address_book  # the advertised one was learned as well
    snap = m.peer(nid(1), T0 + 1)
    assert snap is not None and snap.remote_ip == "10.1.0.1"


def test_inbound_peers_advertised_address_is_learned_from_itself() -> None:
    m = make()
    assert m.accept_inbound(nid(1), "203.0.113.9", T0).accepted
    listen = addr(1, "203.0.113.9", 7777)
    m.connected(nid(1), outbound=False, address=listen, remote_ip="203.0.113.9", now=T0)
    entry = m.address_book.get(listen)
    assert entry is not None and entry.source == nid(1) and entry.source_group == "v4:203.0"
    # An address claimed for someone else is ignored.
    m.connected(nid(1), outbound=False, address=addr(2), remote_ip="203.0.113.9", now=T0)
    assert addr(2) not in m.address_book


def test_dial_now_executed_by_the_caller() -> None:
    m = make()
    target = addr(5)
    decision = m.dial_now(target, persistent=False, now=T0, execute=False)
    assert decision.accepted and decision.reason == "ok"
    assert dials(m.poll(T0)) == []  # the caller dials, not the driver
    snap = m.peer(nid(5), T0)
    assert snap is not None and snap.state is PeerState.DIALING
    m.dial_succeeded(nid(5), target, T0 + 1)
    assert m.statistics().dials_succeeded == 1
    again = m.dial_now(target, persistent=True, now=T0 + 2, execute=False)
    assert again.accepted and again.reason == "connected"


def test_authentication_failure_forgets_the_address() -> None:
    m = make(PeerManagerConfig(max_outbound=1))
    wrong = addr(1)
    m.add_address(wrong, source="seed", now=T0)
    m.poll(T0)
    m.dial_failed(nid(1), wrong, T0 + 1, "AuthenticationError")
    assert wrong not in m.address_book
    snap = m.peer(nid(1), T0 + 1)
    assert snap is not None and wrong not in snap.addresses


def test_a_peer_banned_while_being_dialed_is_disconnected_on_success() -> None:
    m = make(PeerManagerConfig(max_outbound=1))
    m.add_address(addr(1), source="seed", now=T0)
    m.poll(T0)
    m.ban_peer(nid(1), T0 + 100, "operator", T0 + 0.5)
    m.dial_succeeded(nid(1), addr(1), T0 + 1)
    assert [(d.node_id, d.reason) for d in disconnects(m.poll(T0 + 1))] == [(nid(1), "banned")]


def test_unplanned_outbound_connection_takes_a_slot_but_not_the_netgroup() -> None:
    m = make(PeerManagerConfig(max_outbound=2))
    m.connected(nid(1), outbound=True, address=None, remote_ip="10.1.0.1", now=T0)
    m.add_address(addr(2, "10.1.0.2"), source="seed", now=T0)  # same /16 as the unplanned one
    assert [d.address for d in dials(m.poll(T0))] == [addr(2, "10.1.0.2")]
    assert m.statistics().connected_outbound == 1


def test_simultaneous_dial_and_inbound() -> None:
    m = make(PeerManagerConfig(max_outbound=1))
    m.add_address(addr(1), source="seed", now=T0)
    m.poll(T0)
    assert m.accept_inbound(nid(1), "10.1.0.1", T0 + 0.5).accepted  # it dialed us meanwhile
    m.dial_succeeded(nid(1), addr(1), T0 + 1)  # the node keeps one of the two connections
    stats = m.statistics()
    assert stats.connected_inbound == 1 and stats.connected_outbound == 0 and stats.dialing == 0
    m.disconnected(nid(1), T0 + 2, reason="eof")
    assert m.statistics().connected_inbound == 0


def test_stale_disconnect_actions_are_dropped() -> None:
    m = make()
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    m.disconnect_peer(nid(1), T0)
    m.disconnected(nid(1), T0, reason="eof")  # gone before the driver polled
    assert disconnects(m.poll(T0)) == []
