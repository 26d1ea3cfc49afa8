"""An engine-only simulation: one node among 200, 30 % serving blocksync and 3 % archive, reaches
blocksync min_fraction 0.3 and archive min_peers 2 from random starting connections."""

from __future__ import annotations

import math
import random

import pytest

from overlay.identity import NodeId
from routing import (
    Candidate,
    CapabilityTarget,
    ConnectedPeer,
    ConnectionLimits,
    Dial,
    PolicyEngine,
    PolicySnapshot,
    Prune,
    TargetSet,
    TargetState,
)
from tests.routing_support import nid

T0 = 1_700_000_000.0
TARGETS = TargetSet.of(
    CapabilityTarget("blocksync", min_fraction=0.3), CapabilityTarget("archive", min_peers=2)
)
LIMITS = ConnectionLimits(max_connections=30, max_outbound=10, min_outbound=3)


def network(size: int) -> dict[NodeId, frozenset[str]]:
    caps: dict[NodeId, frozenset[str]] = {}
    for i in range(size):
        c = set()
        if i % 10 in (0, 3, 6):
            c.add("blocksync")
        if i in (17, 52, 88, 121, 160, 199):
            c.add("archive")
        caps[nid(i + 1)] = frozenset(c)
    return caps


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_node_converges_to_its_targets(seed: int) -> None:
    rnd = random.Random(seed)
    caps = network(200)
    ids = sorted(caps)
    me, others = ids[0], ids[1:]
    engine = PolicyEngine(me)
    # the peer manager's own choices: random outbound peers, random inbound ones, a full node
    start = rnd.sample(others, LIMITS.max_connections)
    connected = {
        n: ConnectedPeer(n, caps[n], i < LIMITS.max_outbound, rnd.uniform(-1, 5), False, T0)
        for i, n in enumerate(start)
    }
    pending: set[NodeId] = set()
    met_at = None
    pruned_total = 0
    for k in range(40):
        now = T0 + 12.0 * k
        for n in pending:  # every dial the engine asked for connected
            connected[n] = ConnectedPeer(n, caps[n], True, 0.0, False, now)
        pending.clear()
        if len(connected) < LIMITS.max_connections and rnd.random() < 0.5:
            n = rnd.choice([o for o in others if o not in connected])
            connected[n] = ConnectedPeer(n, caps[n], False, 0.0, False, now)  # an inbound peer
        candidates = tuple(Candidate(n, caps[n]) for n in others if n not in connected)
        snap = PolicySnapshot(now, tuple(connected.values()), candidates, TARGETS, LIMITS)
        plan = engine.tick(snap)
        for a in plan.actions:
            if isinstance(a, Prune):
                del connected[a.node_id]
                pruned_total += 1
            elif isinstance(a, Dial):
                pending.add(a.node_id)
        assert len(connected) + len(pending) <= LIMITS.max_connections
        if met_at is None and all(s.state is TargetState.MET for s in plan.statuses):
            met_at = k
        if met_at is not None:
            total = len(connected)
            assert sum("blocksync" in p.capabilities for p in connected.values()) >= math.ceil(
                0.3 * total - 1e-9
            )
            assert sum("archive" in p.capabilities for p in connected.values()) >= 2
    assert met_at is not None and met_at <= 5, met_at
    # no flapping: once met, the node only made room for the few dials it needed
    assert pruned_total <= 12
