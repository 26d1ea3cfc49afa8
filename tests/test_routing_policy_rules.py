"""The policy engine's rules, one scenario each: priorities, fairness, pruning order, room,
anti-flap, unattainable targets and their bounded dials, redials after a failed dial."""

from __future__ import annotations

from collections import Counter

from overlay.identity import NodeId
from routing import (
    CapabilityTarget,
    ConnectionLimits,
    Dial,
    Discover,
    PolicyConfig,
    PolicyEngine,
    PolicySnapshot,
    Protect,
    Prune,
    PruneReason,
    TargetSet,
    TargetState,
)
from tests.routing_support import cand, nid, peer

T0 = 1_700_000_000.0
SELF = nid(0xFFFF)
LIMITS = ConnectionLimits(max_connections=10, max_outbound=4, min_outbound=0)


def dials(actions: object) -> list[Dial]:
    assert isinstance(actions, tuple)
    return [a for a in actions if isinstance(a, Dial)]


def prunes(actions: object) -> list[Prune]:
    assert isinstance(actions, tuple)
    return [a for a in actions if isinstance(a, Prune)]


def test_a_met_target_asks_for_nothing_but_protects_its_keepers() -> None:
    engine = PolicyEngine(SELF)
    peers = (peer(1, ["archive"]), peer(2, ["archive"]), peer(3, ["archive"]), peer(4))
    snap = PolicySnapshot(
        T0, peers, (cand(9, ["archive"]),), TargetSet.of(CapabilityTarget("archive", 2)), LIMITS
    )
    plan = engine.tick(snap)
    assert plan.actions[0] == Protect(frozenset({nid(1), nid(2)}))
    assert plan.actions[1:] == ()
    status = plan.status("archive")
    assert status is not None and status.state is TargetState.MET and status.deficit == 0


def test_higher_priority_deficits_are_dialed_first() -> None:
    engine = PolicyEngine(SELF, PolicyConfig(max_dials_per_tick=2))
    targets = TargetSet.of(
        CapabilityTarget("blocksync", min_peers=3), CapabilityTarget("archive", 2, priority=1)
    )
    cands = tuple(cand(10 + i, ["blocksync"]) for i in range(5)) + (
        cand(20, ["archive"]),
        cand(21, ["archive"]),
    )
    plan = engine.tick(PolicySnapshot(T0, (), cands, targets, LIMITS))
    assert [d.capability for d in dials(plan.actions)] == ["archive", "archive"]


def test_equal_priorities_take_turns() -> None:
    engine = PolicyEngine(SELF, PolicyConfig(max_dials_per_tick=1))
    targets = TargetSet.of(CapabilityTarget("a", min_peers=3), CapabilityTarget("b", min_peers=3))
    cands = tuple(cand(10 + i, ["a"]) for i in range(5)) + tuple(
        cand(20 + i, ["b"]) for i in range(5)
    )
    dialing: set[str] = set()
    order = []
    for k in range(6):
        in_flight = frozenset(nid(int(d, 16)) for d in dialing)
        snap = PolicySnapshot(T0 + k, (), cands, targets, LIMITS, in_flight)
        (d,) = dials(engine.tick(snap).actions)
        dialing.add(d.node_id)
        order.append(d.capability)
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_a_candidate_serving_several_deficits_is_preferred() -> None:
    engine = PolicyEngine(SELF, PolicyConfig(max_dials_per_tick=1))
    targets = TargetSet.of(CapabilityTarget("a", min_peers=1), CapabilityTarget("b", min_peers=1))
    cands = (cand(1, ["a"]), cand(2, ["b"]), cand(3, ["a", "b"]))
    (d,) = dials(engine.tick(PolicySnapshot(T0, (), cands, targets, LIMITS)).actions)
    assert d.node_id == nid(3)


def test_a_full_node_makes_room_with_a_peer_no_target_needs() -> None:
    engine = PolicyEngine(SELF)
    limits = ConnectionLimits(max_connections=4, max_outbound=2, min_outbound=0)
    peers = (
        peer(1, ["archive"]),
        peer(2, score=5.0, since=1.0),
        peer(3, score=-1.0, since=2.0),
        peer(4, score=5.0, since=3.0),
    )
    targets = TargetSet.of(CapabilityTarget("archive", min_peers=2))
    plan = engine.tick(PolicySnapshot(T0, peers, (cand(9, ["archive"]),), targets, limits))
    assert prunes(plan.actions) == [Prune(nid(3), PruneReason.MAKE_ROOM, "archive")]
    assert dials(plan.actions) == [Dial(nid(9), "archive")]


def test_excess_prunes_follow_the_anchor_order() -> None:
    """Negative score, then no wanted capability, then the most over-represented capability."""
    engine = PolicyEngine(SELF, PolicyConfig(max_prunes_per_tick=10))
    limits = ConnectionLimits(max_connections=5, max_outbound=2, min_outbound=0)
    targets = TargetSet.of(CapabilityTarget("a", min_peers=1), CapabilityTarget("b", min_peers=1))
    peers = (
        peer(1, ["a"], score=3.0),  # a's keeper
        peer(2, ["a"], score=2.0),
        peer(3, ["a"], score=1.0),
        peer(4, ["b"], score=3.0),  # b's keeper
        peer(5, ["b"], score=2.0),
        peer(6, score=1.0),
        peer(7, ["a", "b"], score=-2.0),
        peer(8, ["a", "b"], score=0.5),
    )
    plan = engine.tick(PolicySnapshot(T0, peers, (), targets, limits))
    order = [p.node_id for p in prunes(plan.actions)]
    assert order == [nid(7), nid(6), nid(3)]
    assert all(p.reason is PruneReason.OVER_CONNECTION_LIMIT for p in prunes(plan.actions))


def test_max_peers_prunes_the_most_over_served_capability_first() -> None:
    engine = PolicyEngine(SELF, PolicyConfig(max_prunes_per_tick=1))
    targets = TargetSet.of(CapabilityTarget("a", max_peers=1), CapabilityTarget("b", max_peers=2))
    peers = (peer(1, ["a"]), peer(2, ["a"]), peer(3, ["b"]), peer(4, ["b"]), peer(5, ["b"]))
    (p,) = prunes(engine.tick(PolicySnapshot(T0, peers, (), targets, LIMITS)).actions)
    assert p.capability == "a" and p.reason is PruneReason.OVER_MAX_PEERS


def test_operator_protected_and_minimum_outbound_peers_are_never_pruned() -> None:
    engine = PolicyEngine(SELF)
    limits = ConnectionLimits(max_connections=2, max_outbound=2, min_outbound=1)
    peers = (
        peer(1, protected=True, score=-9.0),
        peer(2, outbound=True, score=1.0),
        peer(3, outbound=True, score=2.0),
    )
    targets = TargetSet.of(CapabilityTarget("a", min_peers=1))
    plan = engine.tick(PolicySnapshot(T0, peers, (), targets, limits))
    # two over the limit, but only one can go: peer 1 is the operator's, one outbound stays
    assert [p.node_id for p in prunes(plan.actions)] == [nid(2)]


def test_a_pruned_peer_is_not_redialed_for_the_reconnect_backoff() -> None:
    cfg = PolicyConfig(reconnect_backoff=600.0)
    engine = PolicyEngine(SELF, cfg)
    targets = TargetSet.of(CapabilityTarget("b", min_peers=1, max_peers=1))
    plan = engine.tick(PolicySnapshot(T0, (peer(1, ["b"]), peer(2, ["b"])), (), targets, LIMITS))
    (pruned,) = prunes(plan.actions)
    # then the kept peer goes away and the pruned one is the only provider known
    again = (cand(int(pruned.node_id, 16), ["b"]),)
    dialed_at = None
    for k in range(1, 80):
        now = T0 + 10.0 * k
        snap = PolicySnapshot(now, (), again, targets, LIMITS)
        plan = engine.tick(snap)
        if dials(plan.actions):
            dialed_at = now
            break
        status = plan.status("b")
        assert status is not None and status.state is TargetState.BACKING_OFF
        assert status.backoff_until == T0 + 600.0
    assert dialed_at == T0 + 600.0


def test_an_unattainable_target_backs_off_and_dials_a_bounded_number_of_times() -> None:
    cfg = PolicyConfig(
        max_dials_per_minute=5, max_discoveries_per_minute=2, discovery_interval=15.0
    )
    engine = PolicyEngine(SELF, cfg)
    targets = TargetSet.of(
        CapabilityTarget("archive", min_peers=3), CapabilityTarget("ghost", min_peers=1)
    )
    # two archive providers that never answer, nobody has "ghost"
    cands = (cand(1, ["archive"]), cand(2, ["archive"]))
    dial_times: list[float] = []
    by_peer: dict[NodeId, list[float]] = {}
    discover_times: Counter[str] = Counter()
    for k in range(360):  # 30 minutes, one tick every 5 s
        now = T0 + 5.0 * k
        plan = engine.tick(PolicySnapshot(now, (), cands, targets, LIMITS))
        for dial in dials(plan.actions):
            dial_times.append(now)
            by_peer.setdefault(dial.node_id, []).append(now)
        for a in plan.actions:
            if isinstance(a, Discover):
                discover_times[a.capability] += 1
        for c in ("archive", "ghost"):
            status = plan.status(c)
            assert status is not None and status.state is TargetState.UNATTAINABLE
            assert status.backoff_until is not None and status.backoff_until > now
    for t in dial_times:
        assert sum(1 for u in dial_times if t <= u < t + 60.0) <= cfg.max_dials_per_minute
    # per-peer exponential backoff: 1, 2, 4, ... 300 s (each x0.5..1.5) between dials of
    # the same peer: about 20 dials per peer in 30 minutes, most of them in the first minutes
    for node_id, times in by_peer.items():
        for attempt, (before, after) in enumerate(zip(times, times[1:], strict=False), 1):
            assert after - before >= engine.dial_backoff(node_id, attempt)
            assert 0.5 * min(2.0 ** (attempt - 1), 300.0) <= engine.dial_backoff(node_id, attempt)
    assert len(dial_times) <= 2 * 21
    assert all(len([t for t in times if t >= T0 + 600]) <= 8 for times in by_peer.values())
    # discoveries double from 15 s up to 960 s: a handful in 30 minutes, not one per tick
    assert 5 <= discover_times["ghost"] <= 10
    assert discover_times["archive"] <= 10
    assert engine.state_size() < 20


def test_a_lost_archive_peer_is_replaced_by_a_new_dial() -> None:
    engine = PolicyEngine(SELF)
    targets = TargetSet.of(CapabilityTarget("archive", min_peers=1))
    cands = (cand(7, ["archive"]),)
    plan = engine.tick(PolicySnapshot(T0, (peer(5, ["archive"]),), cands, targets, LIMITS))
    assert dials(plan.actions) == []
    plan = engine.tick(PolicySnapshot(T0 + 12, (), cands, targets, LIMITS))
    assert dials(plan.actions) == [Dial(nid(7), "archive")]


def test_nodes_whose_dials_to_one_provider_failed_together_redial_soon_and_apart() -> None:
    """A herd of nodes dialed one provider at once and overflowed its pending handshakes (the
    200-node straggler): each redials about a second later (x0.5..1.5), at an instant of its
    own drawn from a hash of both ids, so they do not overflow it together again; the status
    says when, so the driver can tick then."""
    targets = TargetSet.of(CapabilityTarget("archive", min_peers=1))
    cands = (cand(7, ["archive"]),)
    redials: list[float] = []
    for i in range(20):
        engine = PolicyEngine(nid(1000 + i))
        plan = engine.tick(PolicySnapshot(T0, (), cands, targets, LIMITS))
        assert dials(plan.actions) == [Dial(nid(7), "archive")]
        due = T0 + engine.dial_backoff(nid(7), 1)
        for k in range(1, 300):  # the dial failed: still a candidate; tick every 10 ms
            now = T0 + 0.01 * k
            plan = engine.tick(PolicySnapshot(now, (), cands, targets, LIMITS))
            if dials(plan.actions):
                redials.append(now)
                break
            status = plan.status("archive")
            assert status is not None and status.state is TargetState.BACKING_OFF
            assert status.backoff_until == due
        assert redials and due <= redials[-1] < due + 0.01
        assert PolicyEngine(nid(1000 + i)).dial_backoff(nid(7), 1) == engine.dial_backoff(nid(7), 1)
    assert all(T0 + 0.5 <= t < T0 + 1.51 for t in redials)
    assert len({round(t, 2) for t in redials}) >= 15  # spread over that second, not together
