"""Random event sequences against the peer manager: its invariants always hold."""

from __future__ import annotations

import random

from hypothesis import event, given, settings
from hypothesis import strategies as st

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers import (
    DialPeer,
    DisconnectCause,
    DisconnectPeer,
    PeerManager,
    PeerManagerConfig,
    Persist,
    RefreshAddresses,
    ScoreEvent,
)
from overlay.wire._netgroup import ip_key, netgroup

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)
CONFIG = PeerManagerConfig(
    max_connections=8,
    max_outbound=3,
    max_inbound_per_ip=2,
    max_inbound_per_netgroup=3,
    max_concurrent_dials=2,
    upgrade_slots=1,
    upgrade_interval=5.0,
    feeler_interval=5.0,
    dial_timeout=2.0,
    max_peer_records=40,
    new_bucket_count=8,
    tried_bucket_count=4,
    bucket_size=4,
    new_buckets_per_source_group=2,
    tried_buckets_per_group=2,
    max_addresses_per_source=5,
)


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def addr(i: int) -> NodeAddress:
    return NodeAddress(nid(i), "tcp", f"10.{i % 5}.{i % 3}.{i}", 7000)


def ip(i: int) -> str:
    return f"172.{16 + i % 3}.{i % 2}.{i % 4}"


OPS = [
    "add",
    "gossip",
    "poll",
    "ok",
    "fail",
    "closed",
    "inbound",
    "drop",
    "report",
    "wait",
    "ban",
    "ban_ip",
    "unban",
    "operator_disconnect",
    "latency",
    "useful",
    "advertise",
    "protect",
]

ops = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(1, 30), st.integers(0, 5)),
    min_size=40,
    max_size=200,
)


def check(m: PeerManager, now: float, *, after_poll: bool) -> None:
    table = m.connections  # recompute the counters from the live connections
    in_ip: dict[str, int] = {}
    in_group: dict[str, int] = {}
    out_group: dict[str, int] = {}
    for rec in table.conns.values():
        conn = rec.conn
        assert conn is not None and table.conns.get(rec.node_id) is rec
        if conn.ip_key:
            in_ip[conn.ip_key] = in_ip.get(conn.ip_key, 0) + 1
        if conn.in_group:
            in_group[conn.in_group] = in_group.get(conn.in_group, 0) + 1
        if conn.out_group:
            out_group[conn.out_group] = out_group.get(conn.out_group, 0) + 1
    for rec in table.dials.values():
        assert rec.dial is not None
        if rec.dial.out_group:
            out_group[rec.dial.out_group] = out_group.get(rec.dial.out_group, 0) + 1
    assert in_ip == table.inbound_per_ip and in_group == table.inbound_per_netgroup
    assert out_group == table.outbound_per_netgroup
    assert len(table.dials) <= CONFIG.max_concurrent_dials
    assert all(v <= CONFIG.max_inbound_per_ip for v in in_ip.values())
    assert all(v <= CONFIG.max_inbound_per_netgroup for v in in_group.values())
    assert table.inbound_used() <= CONFIG.max_inbound
    assert all(v <= CONFIG.max_outbound_per_netgroup for v in out_group.values())
    if after_poll:
        assert table.outbound_used() <= CONFIG.max_outbound
    assert m.statistics().known_peers <= CONFIG.max_peer_records + 16
    stats = m.statistics()
    assert stats.dialing == len(table.dials)
    assert stats.address_book_new + stats.address_book_tried == len(m.address_book)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_sequences_keep_the_invariants(sequence: list[tuple[str, int, int]]) -> None:
    m = PeerManager(CONFIG, SELF, now=T0, rng=random.Random(7), secret=b"q" * 32)
    now = T0
    pending: dict[NodeId, DialPeer] = {}
    closing: set[NodeId] = set()
    connected: set[NodeId] = set()
    protected: frozenset[NodeId] = frozenset()
    for op, i, k in sequence:
        node = nid(i)
        if op == "add":
            m.add_address(addr(i), source="seed", now=now)
        elif op == "gossip" and connected:
            source = sorted(connected)[k % len(connected)]
            m.add_address(addr(i), source=source, now=now)
        elif op == "poll":
            for action in m.poll(now):
                if isinstance(action, DialPeer):
                    target = action.address.node_id
                    assert target not in connected or target in closing
                    snap = m.peer(target, now)
                    assert snap is not None and snap.ban_until is None
                    pending[target] = action
                elif isinstance(action, DisconnectPeer):
                    assert action.node_id in connected and action.node_id not in closing
                    if action.reason is DisconnectCause.UPGRADE:
                        assert action.node_id not in protected  # eviction spares them
                    closing.add(action.node_id)
                else:
                    assert isinstance(action, (Persist, RefreshAddresses))
            check(m, now, after_poll=True)
            deadline = m.next_deadline()
            assert deadline is not None and deadline >= now
        elif op in ("ok", "fail") and pending:
            target = sorted(pending)[k % len(pending)]
            dial = pending.pop(target)
            if op == "ok" and target not in connected:
                m.dial_succeeded(target, dial.address, now)
                if m.peer(target, now) is not None:
                    connected.add(target)
            else:
                m.dial_failed(target, dial.address, now, "refused")
        elif op == "closed" and closing:
            target = sorted(closing)[k % len(closing)]
            closing.discard(target)
            connected.discard(target)
            m.disconnected(target, now, reason="closed")
        elif op == "inbound":
            remote = ip(i + k)
            if m.check_inbound(remote, now).accepted:
                decision = m.accept_inbound(node, remote, now)
                assert decision.evict is None or decision.evict not in protected
                if decision.accepted:
                    assert node not in connected
                    connected.add(node)
                    m.connected(node, outbound=False, address=None, remote_ip=remote, now=now)
        elif op == "drop" and connected:
            target = sorted(connected)[k % len(connected)]
            connected.discard(target)
            closing.discard(target)
            m.disconnected(target, now, reason="eof")
        elif op == "report":
            m.report(node, list(ScoreEvent)[k], now)
        elif op == "wait":
            now += [0.1, 1.0, 3.0, 30.0, 400.0, 90_000.0][k]
        elif op == "ban":
            m.ban_peer(node, now + 50 * (k + 1), "test", now)
        elif op == "ban_ip":
            m.ban_ip(ip(i), now + 50 * (k + 1), "test", now)
        elif op == "unban":
            m.unban_peer(node, now)
            m.unban_ip(ip(i), now)
        elif op == "operator_disconnect":
            m.disconnect_peer(node, now)
        elif op == "latency":
            m.record_latency(node, k / 10)
        elif op == "useful":
            m.mark_useful(node, now)
        elif op == "advertise" and connected:
            target = sorted(connected)[k % len(connected)]
            snap = m.peer(target, now)
            assert snap is not None
            listen = NodeAddress(target, "tcp", f"10.{i % 5}.9.{k}", 7000 + i)
            m.connected(
                target,
                outbound=snap.direction == "outbound",
                address=listen,
                remote_ip=snap.remote_ip,
                now=now,
            )
        elif op == "protect":
            protected = frozenset({node, nid(i + k)}) if k else frozenset()
            m.set_protected("routing", protected)
        check(m, now, after_poll=False)
        assert {n for n, r in m.connections.conns.items()} == connected
        assert set(m.connections.dials) <= set(pending)
    stats = m.statistics()
    event(f"connections seen: {min(stats.dials_succeeded + stats.inbound_accepted, 5)}+")
    # Per-IP keys and netgroups of everything we saw are well-formed.
    for snap in m.snapshot(now):
        if snap.remote_ip:
            assert ip_key(snap.remote_ip) and netgroup(snap.remote_ip)
