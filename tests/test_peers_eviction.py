"""Eviction choice (pure functions): the protection order and the victim rule."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.identity import NodeId
from overlay.peers._eviction import (
    EvictionCandidate,
    select_inbound_victim,
    select_outbound_victim,
)


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def cand(
    i: int,
    group: str = "g",
    *,
    since: float = 0.0,
    latency: float | None = None,
    useful: float | None = None,
    score: float = 0.0,
    key: int | None = None,
) -> EvictionCandidate:
    return EvictionCandidate(
        node_id=nid(i),
        netgroup=group,
        group_key=key if key is not None else hash(group) & 0xFFFF,
        connected_since=since,
        latency=latency,
        last_useful=useful,
        score=score,
    )


def victim(
    candidates: list[EvictionCandidate],
    *,
    protected: frozenset[NodeId] = frozenset(),
    netgroups: int = 0,
    latency: int = 0,
    useful: int = 0,
    longest: float = 0.0,
) -> NodeId | None:
    return select_inbound_victim(
        candidates,
        protected=protected,
        protect_netgroups=netgroups,
        protect_low_latency=latency,
        protect_recently_useful=useful,
        protect_longest_connected=longest,
    )


def test_victim_comes_from_the_biggest_netgroup() -> None:
    peers = [
        cand(1, "a", since=1),
        cand(2, "b", since=2),
        cand(3, "b", since=3),
        cand(4, "c", since=9),
    ]
    assert victim(peers) == nid(3)  # group b has 2 peers; its youngest goes


def test_inside_the_group_the_lowest_score_goes_first() -> None:
    peers = [cand(1, "a", since=1, score=-20), cand(2, "a", since=2, score=5)]
    assert victim(peers) == nid(1)


def test_netgroup_diversity_protection_uses_the_keyed_order() -> None:
    peers = [cand(i, f"g{i}", key=i, since=i) for i in range(1, 7)]
    # The 4 highest keys (g6..g3) are shielded; of g1/g2 (one peer each) the newest goes.
    assert victim(peers, netgroups=4) == nid(2)
    # Only one peer per netgroup is shielded.
    crowd = [cand(10 + i, "same", key=50, since=i) for i in range(3)]
    assert victim(crowd, netgroups=4) == nid(12)


def test_low_latency_peers_are_protected() -> None:
    peers = [cand(1, since=5, latency=0.01), cand(2, since=1, latency=0.5), cand(3, since=2)]
    assert victim(peers, latency=1) == nid(3)  # 1 protected; 3 youngest of the rest
    assert victim(peers, latency=2) is not None
    assert victim(peers, latency=2) == nid(3)  # unmeasured latency is never "low"


def test_recently_useful_peers_are_protected() -> None:
    peers = [cand(1, since=1), cand(2, since=2, useful=100.0), cand(3, since=3, useful=50.0)]
    assert victim(peers) == nid(3)
    assert victim(peers, useful=1) == nid(3)
    assert victim(peers, useful=2) == nid(1)


def test_longest_connected_half_is_protected() -> None:
    peers = [cand(i, since=float(i), score=-float(i)) for i in range(1, 7)]
    # Without protection the lowest score (6, youngest) goes; with it, the oldest 3 are kept.
    assert victim(peers) == nid(6)
    assert victim([replace(p, score=0.0) for p in peers], longest=0.5) == nid(6)
    worst_is_oldest = [replace(p, score=-100.0 if p.node_id == nid(1) else 0.0) for p in peers]
    assert victim(worst_is_oldest) == nid(1)
    assert victim(worst_is_oldest, longest=0.5) == nid(6)


def test_everyone_protected_means_no_victim() -> None:
    peers = [cand(1), cand(2)]
    assert victim(peers, protected=frozenset({nid(1), nid(2)})) is None
    assert victim([cand(1, "x")], netgroups=1) is None
    assert victim([]) is None


def test_outbound_victim_is_the_lowest_ranked() -> None:
    peers = [cand(1, latency=0.1), cand(2, latency=0.9), cand(3, latency=0.5)]
    rank = {nid(1): 5.0, nid(2): 5.0, nid(3): 1.0}
    assert select_outbound_victim(peers, protected=set(), rank=rank) == nid(3)
    rank[nid(3)] = 5.0
    assert select_outbound_victim(peers, protected=set(), rank=rank) == nid(2)  # slowest
    assert select_outbound_victim(peers, protected={nid(1), nid(2), nid(3)}, rank=rank) is None


candidate_lists = st.lists(
    st.builds(
        cand,
        st.integers(1, 10_000),
        st.sampled_from(["a", "b", "c", "d", "e", "f"]),
        since=st.floats(0, 1000),
        latency=st.none() | st.floats(0, 2),
        useful=st.none() | st.floats(0, 1000),
        score=st.floats(-200, 25),
    ),
    max_size=40,
    unique_by=lambda c: c.node_id,
)


@settings(max_examples=200)
@given(candidate_lists, st.integers(0, 5), st.integers(0, 9), st.integers(0, 5), st.floats(0, 1))
def test_protected_categories_keep_their_members(
    peers: list[EvictionCandidate], netgroups: int, latency: int, useful: int, longest: float
) -> None:
    chosen = victim(peers, netgroups=netgroups, latency=latency, useful=useful, longest=longest)
    if chosen is None:
        return
    assert chosen in {p.node_id for p in peers}
    by_id = {p.node_id: p for p in peers}
    gone = by_id[chosen]
    # The fastest `latency` measured peers and the `useful` most recent are never the victim.
    fastest = sorted(
        (p for p in peers if p.latency is not None), key=lambda p: (p.latency, p.node_id)
    )
    if gone.latency is not None and latency:
        assert gone not in fastest[:1]
    freshest = sorted(
        (p for p in peers if p.last_useful is not None),
        key=lambda p: (-(p.last_useful or 0), p.node_id),
    )
    if useful and freshest and netgroups == 0 and latency == 0:
        assert gone is not freshest[0]
    # The last peer of a netgroup is only evicted when every netgroup is down to one.
    groups = {p.netgroup for p in peers}
    same = [p for p in peers if p.netgroup == gone.netgroup]
    if len(same) == 1 and netgroups == 0 and latency == 0 and useful == 0 and longest == 0:
        assert all(sum(1 for p in peers if p.netgroup == g) == 1 for g in groups)
