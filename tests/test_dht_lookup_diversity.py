"""Netgroup diversity in the lookup core: a liar that mints ever nearer ids at its own address
gets at most ``max_per_netgroup`` queries and slots per path, so the walk still reaches the
honest nodes nearest the target; without a netgroup function the same liar captures the walk.
Scripted on the core's own time (every call takes ``now``; nothing sleeps)."""

from __future__ import annotations

from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery import Lookup, LookupConfig, LookupEvent, LookupMode, Query
from overlay.errors import ConfigError
from tests.dht_harness import drive_in_order

TARGET = bytes(20)
LOCAL = b"\xff" * 20
SCALE = 10**9
HONEST = [d * SCALE for d in (3, 7, 12, 20, 33, 47, 60, 75, 90, 110, 130, 150)]
LIAR = 80 * SCALE  # a real node, known to the honest nodes, that lies


def nid(distance: int) -> bytes:
    """The id at ``distance`` from TARGET."""
    return distance.to_bytes(20, "big")


def dist(node: bytes) -> int:
    return int.from_bytes(node, "big")


class Net:
    """Honest nodes that know every honest node and the liar; the liar (and every id it minted)
    answers with ``k`` fresh ids nearer the target than itself, all served at its address."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.minted: set[bytes] = set()
        self.queries: list[Query] = []

    def group(self, node: bytes) -> str | None:
        return "liar" if node == nid(LIAR) or node in self.minted else f"h{dist(node)}"

    def answer(self, peer: bytes) -> list[bytes]:
        if self.group(peer) == "liar":
            own = dist(peer)
            made = [nid(own // 4 + 1 + i) for i in range(self.k) if own // 4 + 1 + i < own]
            self.minted.update(made)
            return made
        return [nid(d) for d in sorted([*HONEST, LIAR]) if nid(d) != peer][: self.k]

    def drive(self, lookup: Lookup[str]) -> None:
        drive_in_order(lookup, self.answer, self.queries)


def lookup(net: Net, seeds: list[int], *, cap: int = 2, paths: int = 1,
           diversity: bool = True, self_vouching: bool = False) -> Lookup[str]:
    config = LookupConfig(k=net.k, alpha=2, query_timeout=1.0, max_per_netgroup=cap,
                          self_vouching=self_vouching)
    return Lookup(TARGET, LookupMode.FIND_NODE, [nid(s) for s in seeds], local_id=LOCAL,
                  config=config, paths=paths, netgroup=net.group if diversity else None)


@pytest.mark.parametrize("cap", [1, 2])
@pytest.mark.parametrize("self_vouching", [True, False])
def test_a_minting_liar_gets_at_most_cap_queries_and_slots_and_the_walk_finds_the_honest_nearest(
    cap: int, self_vouching: bool,
) -> None:
    net = Net(k=4)
    walk = lookup(net, [LIAR, 150 * SCALE, 130 * SCALE], cap=cap, self_vouching=self_vouching)
    net.drive(walk)
    result = walk.result
    assert result is not None
    liar_queries = [q for q in net.queries if net.group(q.peer) == "liar"]
    # Without self-vouching the minted ids (named only by the liar's own netgroup) cost nothing.
    assert liar_queries == [q for q in liar_queries if q.peer == nid(LIAR)] or self_vouching
    assert len(liar_queries) == (cap if self_vouching else 1)
    closest = list(result.closest)
    assert sum(net.group(c) == "liar" for c in closest) <= cap
    honest = [c for c in closest if net.group(c) != "liar"]
    assert honest == [nid(d) for d in HONEST[: net.k - len(closest) + len(honest)]]
    assert nid(3 * SCALE) in closest  # the honest node nearest the target


def test_without_a_netgroup_function_the_minting_liar_captures_the_walk() -> None:
    net = Net(k=4)
    walk = lookup(net, [LIAR, 150 * SCALE, 130 * SCALE], diversity=False)
    net.drive(walk)
    result = walk.result
    assert result is not None
    # Every id in the result is one the liar minted; the walk followed it ever nearer.
    assert all(c in net.minted for c in result.closest)
    assert nid(3 * SCALE) not in result.closest
    assert sum(net.group(q.peer) == "liar" for q in net.queries) > 10


def test_each_disjoint_path_stores_through_its_own_diverse_nearest() -> None:
    net = Net(k=4)
    walk = lookup(net, [LIAR, 150 * SCALE, 130 * SCALE, 110 * SCALE], paths=2, cap=1)
    net.drive(walk)
    per_path = [walk.path_closest(p) for p in (0, 1)]
    assert not set(per_path[0]) & set(per_path[1])  # disjoint
    for nodes in per_path:
        assert 0 < len(nodes) <= net.k
        assert sum(net.group(c) == "liar" for c in nodes) <= 1
        assert [dist(c) for c in nodes] == sorted(dist(c) for c in nodes)
    # The liar's path still reached honest nodes near the target.
    assert any(net.group(c) != "liar" and dist(c) <= 12 * SCALE for c in per_path[0])


def test_contacts_without_a_netgroup_are_exempt() -> None:
    # Every id in one group, except those mapped to None (e.g. loopback testnets).
    seeds = [50, 60, 70, 80]
    config = LookupConfig(k=4, alpha=4, query_timeout=1.0, max_per_netgroup=1)
    walk: Lookup[str] = Lookup(TARGET, LookupMode.FIND_NODE, [nid(s) for s in seeds],
                               local_id=LOCAL, config=config, netgroup=lambda node: None)
    assert {e.peer for e in walk.start(0.0) if isinstance(e, Query)} == {nid(s) for s in seeds}
    grouped: Lookup[str] = Lookup(TARGET, LookupMode.FIND_NODE, [nid(s) for s in seeds],
                                  local_id=LOCAL, config=config, netgroup=lambda node: "g")
    assert [e.peer for e in grouped.start(0.0) if isinstance(e, Query)] == [nid(50)]


def test_a_contact_named_only_by_its_own_netgroup_waits_until_another_netgroup_names_it() -> None:
    # Seeds 50 (group "a") and 60 (group "b"); 50 names 10 (group "a" too), 60 names 40 ("c").
    groups = {10: "a", 40: "c", 50: "a", 60: "b"}
    config = LookupConfig(k=4, alpha=1, query_timeout=1.0, max_per_netgroup=2, far_rule=False)
    walk: Lookup[str] = Lookup(TARGET, LookupMode.FIND_NODE, [nid(50), nid(60)], local_id=LOCAL,
                               config=config, netgroup=lambda node: groups[dist(node)])
    assert [e.peer for e in walk.start(0.0) if isinstance(e, Query)] == [nid(50)]
    # 10 is unvouched: the walk skips it and queries the next seed instead.
    sent = [e.peer for e in walk.on_response(nid(50), [nid(10)], now=0.1)
            if isinstance(e, Query)]
    assert sent == [nid(60)]
    # 60 (another netgroup) names 10: now vouched, it is the nearest new candidate.
    sent = [e.peer for e in walk.on_response(nid(60), [nid(10), nid(40)], now=0.2)
            if isinstance(e, Query)]
    assert sent == [nid(10)]
    assert [e.peer for e in walk.on_response(nid(10), [], now=0.3)
            if isinstance(e, Query)] == [nid(40)]
    walk.on_response(nid(40), [], now=0.4)
    result = walk.result
    assert result is not None and result.closest == (nid(10), nid(40), nid(50), nid(60))


def test_an_unvouched_contact_is_never_queried_and_never_counted() -> None:
    # The only answer names an id of the responder's own netgroup: the walk ends without it.
    config = LookupConfig(k=4, alpha=2, query_timeout=1.0)
    walk: Lookup[str] = Lookup(TARGET, LookupMode.FIND_NODE, [nid(50)], local_id=LOCAL,
                               config=config, netgroup=lambda node: "g")
    walk.start(0.0)
    events = walk.on_response(nid(50), [nid(10)], now=0.1)
    assert not [e for e in events if isinstance(e, Query)]
    result = walk.result
    assert result is not None and result.closest == (nid(50),) and result.messages == 1
    vouching = LookupConfig(k=4, alpha=2, query_timeout=1.0, self_vouching=True)
    walk = Lookup(TARGET, LookupMode.FIND_NODE, [nid(50)], local_id=LOCAL, config=vouching,
                  netgroup=lambda node: "g")
    walk.start(0.0)
    events = walk.on_response(nid(50), [nid(10)], now=0.1)
    assert [e.peer for e in events if isinstance(e, Query)] == [nid(10)]


def test_max_per_netgroup_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_per_netgroup"):
        LookupConfig(max_per_netgroup=0)


@settings(max_examples=150, deadline=None)
@given(
    groups=st.lists(st.integers(0, 4), min_size=40, max_size=40),
    answers=st.lists(st.lists(st.integers(1, 39), max_size=6), min_size=40, max_size=40),
    seeds=st.lists(st.integers(1, 39), min_size=1, max_size=8, unique=True),
    cap=st.integers(1, 3),
    paths=st.integers(1, 3),
)
def test_no_path_queries_more_than_cap_of_a_netgroup_and_the_result_keeps_the_cap(
    groups: list[int], answers: list[list[int]], seeds: list[int], cap: int, paths: int
) -> None:
    def group(node: bytes) -> str | None:
        g = groups[dist(node)]
        return None if g == 0 else str(g)  # group 0: exempt

    config = LookupConfig(k=4, alpha=2, query_timeout=1.0, max_per_netgroup=cap)
    walk: Lookup[str] = Lookup(TARGET, LookupMode.FIND_NODE, [nid(s) for s in seeds],
                               local_id=LOCAL, config=config, paths=paths, netgroup=group)
    sent: list[Query] = []
    queue: deque[bytes] = deque()
    events: list[LookupEvent[str]] = walk.start(0.0)
    now = 0.0
    while not walk.finished:
        sent.extend(e for e in events if isinstance(e, Query))
        queue.extend(e.peer for e in events if isinstance(e, Query))
        now += 0.01
        peer = queue.popleft()
        events = walk.on_response(peer, [nid(a) for a in answers[dist(peer)]], now=now)
    per_path = Counter((q.path, group(q.peer)) for q in sent if group(q.peer) is not None)
    assert all(count <= cap for count in per_path.values())
    assert len({q.peer for q in sent}) == len(sent)  # no retries here, no node twice
    result = walk.result
    assert result is not None
    in_result = Counter(group(c) for c in result.closest if group(c) is not None)
    assert all(count <= cap for count in in_result.values())
    for p in range(paths):
        in_path = Counter(group(c) for c in walk.path_closest(p) if group(c) is not None)
        assert all(count <= cap for count in in_path.values())
