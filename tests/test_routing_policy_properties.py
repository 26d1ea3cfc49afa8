"""Property tests of the policy engine over random peer sets, candidates, targets and limits."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from routing import (
    CapabilityTarget,
    ConnectedPeer,
    ConnectionLimits,
    Dial,
    PolicyConfig,
    PolicyEngine,
    PolicySnapshot,
    Protect,
    Prune,
    TargetSet,
)
from tests.routing_support import cand, nid, peer

CAPS = ("a", "b", "c", "d")
SELF = nid(0xFFFF)
T0 = 1_700_000_000.0


@st.composite
def snapshots(draw: st.DrawFn) -> PolicySnapshot:
    caps = st.frozensets(st.sampled_from(CAPS), max_size=3)
    n_peers = draw(st.integers(0, 30))
    peers = tuple(
        peer(
            i,
            draw(caps),
            outbound=draw(st.booleans()),
            score=draw(st.sampled_from([-5.0, -0.5, 0.0, 1.0, 3.0])),
            protected=draw(st.integers(0, 3)) == 0,
            since=float(draw(st.integers(0, 5))),
        )
        for i in range(1, n_peers + 1)
    )
    cands = tuple(
        cand(100 + i, draw(caps), backoff_until=draw(st.sampled_from([0.0, T0 + 30])))
        for i in range(draw(st.integers(0, 30)))
    )
    targets = []
    for c in CAPS:
        if not draw(st.booleans()):
            continue
        min_peers = draw(st.integers(0, 5))
        fraction = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5]))
        max_peers = draw(st.one_of(st.none(), st.integers(max(min_peers, 1), 10)))
        if min_peers == 0 and fraction == 0 and max_peers is None:
            min_peers = 1
        targets.append(CapabilityTarget(c, min_peers, fraction, max_peers, draw(st.integers(0, 2))))
    max_conn = draw(st.integers(1, 35))
    max_out = draw(st.integers(0, max_conn))
    limits = ConnectionLimits(max_conn, max_out, draw(st.integers(0, max_out)))
    dialing = frozenset(nid(100 + i) for i in draw(st.sets(st.integers(0, 35), max_size=4)))
    return PolicySnapshot(T0, peers, cands, TargetSet(tuple(targets)), limits, dialing)


CONFIG = PolicyConfig(max_dials_per_tick=6, max_prunes_per_tick=6)


def counts(peers: tuple[ConnectedPeer, ...] | list[ConnectedPeer], cap: str) -> int:
    return sum(1 for p in peers if cap in p.capabilities)


@settings(max_examples=120, deadline=None)
@given(snapshots())
def test_pruning_never_takes_a_capability_below_its_target(snap: PolicySnapshot) -> None:
    plan = PolicyEngine(SELF, CONFIG).tick(snap)
    pruned = {a.node_id for a in plan.actions if isinstance(a, Prune)}
    after = [p for p in snap.peers if p.node_id not in pruned]
    for t in snap.targets:
        before = counts(snap.peers, t.capability)
        required_after = t.required(len(after))
        if t.wanted:
            assert counts(after, t.capability) >= min(before, required_after), t
    assert not any(p.protected for p in snap.peers if p.node_id in pruned)
    out_before = sum(p.outbound for p in snap.peers)
    out_after = sum(p.outbound for p in after)
    assert out_after >= min(out_before, snap.limits.min_outbound)


@settings(max_examples=120, deadline=None)
@given(snapshots())
def test_actions_are_consistent(snap: PolicySnapshot) -> None:
    plan = PolicyEngine(SELF, CONFIG).tick(snap)
    assert isinstance(plan.actions[0], Protect)
    protect = plan.actions[0].node_ids
    pruned = [a.node_id for a in plan.actions if isinstance(a, Prune)]
    dialed = [a.node_id for a in plan.actions if isinstance(a, Dial)]
    connected = {p.node_id for p in snap.peers}
    assert not set(dialed) & set(pruned)
    assert not set(dialed) & connected and not set(dialed) & snap.dialing
    assert not protect & set(pruned)
    assert len(set(dialed)) == len(dialed) <= CONFIG.max_dials_per_tick
    assert len(set(pruned)) == len(pruned) <= CONFIG.max_prunes_per_tick
    assert set(pruned) <= connected and protect <= connected
    kinds = [type(a).__name__ for a in plan.actions]
    order = {"Protect": 0, "Prune": 1, "Dial": 2, "Discover": 3}
    assert kinds == sorted(kinds, key=order.__getitem__)


@settings(max_examples=120, deadline=None)
@given(snapshots())
def test_deficits_are_filled_in_priority_order(snap: PolicySnapshot) -> None:
    plan = PolicyEngine(SELF, CONFIG).tick(snap)
    priorities = [
        snap.targets.get(a.capability).priority  # type: ignore[union-attr]
        for a in plan.actions
        if isinstance(a, Dial)
    ]
    assert priorities == sorted(priorities, reverse=True)
    for a in plan.actions:
        if isinstance(a, Dial):
            (candidate,) = [c for c in snap.candidates if c.node_id == a.node_id]
            assert a.capability in candidate.capabilities
            assert candidate.backoff_until <= snap.now


@settings(max_examples=80, deadline=None)
@given(snapshots(), st.randoms(use_true_random=False))
def test_the_plan_is_deterministic(snap: PolicySnapshot, rnd: random.Random) -> None:
    first = PolicyEngine(SELF, CONFIG).tick(snap)
    peers, cands = list(snap.peers), list(snap.candidates)
    rnd.shuffle(peers)
    rnd.shuffle(cands)
    shuffled = PolicySnapshot(
        snap.now, tuple(peers), tuple(cands), snap.targets, snap.limits, snap.dialing
    )
    assert PolicyEngine(SELF, CONFIG).tick(shuffled) == first


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.5, 40.0), min_size=50, max_size=200),
    st.integers(1, 10),
)
def test_unattainable_targets_dial_a_bounded_number_of_times_per_minute(
    steps: list[float], per_minute: int
) -> None:
    cfg = PolicyConfig(max_dials_per_minute=per_minute, dial_backoff_base=1.0)
    engine = PolicyEngine(SELF, cfg)
    targets = TargetSet.of(CapabilityTarget("archive", min_peers=20))
    cands = tuple(cand(i, ["archive"]) for i in range(1, 12))  # none ever connects
    now, times = T0, []
    for step in steps:
        now += step
        plan = engine.tick(PolicySnapshot(now, (), cands, targets, ConnectionLimits(30, 8)))
        times += [now for a in plan.actions if isinstance(a, Dial)]
    for t in times:
        assert sum(1 for u in times if t <= u < t + 60.0) <= per_minute
