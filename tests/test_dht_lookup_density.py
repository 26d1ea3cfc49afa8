"""The lookup core's density limit: ids minted ever nearer the target and served at many
addresses (so the netgroup cap cannot bound them) form a cluster far denser than a network of
the estimated size holds; a path counts only ``density_slack`` of them and the walk still reaches
the honest nodes nearest the target. Without a ``network_size`` the same liars capture the walk.
Scripted on the core's own time (every call takes ``now``; nothing sleeps)."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery import (
    Lookup,
    LookupConfig,
    LookupEvent,
    LookupMode,
    Query,
    RoutingTable,
    TableConfig,
)
from overlay.errors import LocalProtocolError
from tests.dht_harness import drive_in_order

TARGET = bytes(20)
LOCAL = b"\xff" * 20
SIZE = 1000
SPACING = (1 << 160) // SIZE  # a network of SIZE nodes: about one node per SPACING of distance
HONEST = [(j + 1) * SPACING + 12345 for j in range(24)]  # honest nodes, one per SPACING
LIAR = 30 * SPACING  # a real node that lies


def nid(distance: int) -> bytes:
    return distance.to_bytes(20, "big")


def dist(node: bytes) -> int:
    return int.from_bytes(node, "big")


class Net:
    """Honest nodes know every honest node and the liar; the liar and every id it minted answer
    with ``k`` ids nearer the target than themselves, each in a netgroup of its own (minted ids
    served at many colluding addresses)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.minted: set[bytes] = set()
        self.queries: list[Query] = []

    def liar(self, node: bytes) -> bool:
        return node == nid(LIAR) or node in self.minted

    def group(self, node: bytes) -> str:
        return f"g{dist(node)}"

    def answer(self, peer: bytes) -> list[bytes]:
        if self.liar(peer):
            own = dist(peer)
            made = [nid(own // 64 + 1 + i) for i in range(self.k) if own // 64 + 1 + i < own]
            self.minted.update(made)
            return made
        return [nid(d) for d in sorted([*HONEST, LIAR]) if nid(d) != peer][: self.k]

    def drive(self, lookup: Lookup[str]) -> None:
        drive_in_order(lookup, self.answer, self.queries)


def walk(net: Net, size: int | None, *, slack: int = 3) -> Lookup[str]:
    config = LookupConfig(k=net.k, alpha=2, query_timeout=1.0, density_slack=slack)
    seeds = [nid(LIAR), nid(HONEST[20])]  # both queried at once (alpha = 2)
    return Lookup(TARGET, LookupMode.FIND_NODE, seeds, local_id=LOCAL, config=config,
                  netgroup=net.group, network_size=size)


@pytest.mark.parametrize("slack", [1, 3])
def test_ids_denser_than_the_network_get_slack_slots_and_the_walk_finds_the_honest_nearest(
    slack: int,
) -> None:
    net = Net(k=8)
    lookup = walk(net, SIZE, slack=slack)
    net.drive(lookup)
    result = lookup.result
    assert result is not None
    # The liar's first ids lie at ~0.47 of the network's mean spacing from the target, where
    # density_factor 4 allows one more than the slack; every later (nearer) id is refused.
    minted_queried = [q for q in net.queries if q.peer in net.minted]
    assert len(minted_queried) <= slack + 1
    assert sum(c in net.minted for c in result.closest) <= slack + 1
    assert nid(HONEST[0]) in result.closest  # the honest node nearest the target
    honest = [c for c in result.closest if not net.liar(c)]
    assert honest == [nid(d) for d in HONEST[: len(honest)]]


def test_without_a_network_size_the_minted_cluster_captures_the_walk() -> None:
    net = Net(k=8)
    lookup = walk(net, None)
    net.drive(lookup)
    result = lookup.result
    assert result is not None
    assert all(net.liar(c) for c in result.closest)
    assert nid(HONEST[0]) not in result.closest


def test_seeds_are_exempt() -> None:
    # Eight seeds packed within one SPACING of the target: all are queried at once.
    seeds = [nid(10 + i) for i in range(8)]
    config = LookupConfig(k=8, alpha=8, query_timeout=1.0, density_slack=1)
    lookup: Lookup[str] = Lookup(TARGET, LookupMode.FIND_NODE, seeds, local_id=LOCAL,
                                 config=config, network_size=SIZE)
    assert {e.peer for e in lookup.start(0.0) if isinstance(e, Query)} == set(seeds)


def test_network_size_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError, match="network_size"):
        Lookup(TARGET, LookupMode.FIND_NODE, [], local_id=LOCAL, network_size=0)


@settings(max_examples=100, deadline=None)
@given(
    answers=st.lists(st.lists(st.integers(0, 199), max_size=6), min_size=200, max_size=200),
    seeds=st.lists(st.integers(0, 199), min_size=1, max_size=6, unique=True),
    slack=st.integers(1, 4),
    factor=st.sampled_from([1.0, 2.0, 4.0]),
)
def test_no_result_holds_more_learned_ids_within_a_distance_than_the_density_allows(
    answers: list[list[int]], seeds: list[int], slack: int, factor: float
) -> None:
    # 200 possible ids at distances spread over [1, 4 * SPACING] (a network of SIZE nodes).
    def at(i: int) -> bytes:
        return nid(1 + i * SPACING // 50)

    config = LookupConfig(k=6, alpha=2, query_timeout=1.0, density_slack=slack,
                          density_factor=factor)
    seed_ids = {at(s) for s in seeds}
    lookup: Lookup[str] = Lookup(TARGET, LookupMode.FIND_NODE, sorted(seed_ids), local_id=LOCAL,
                                 config=config, network_size=SIZE)
    queue: deque[bytes] = deque()
    events: list[LookupEvent[str]] = lookup.start(0.0)
    now = 0.0
    index = {at(i): i for i in range(200)}
    while not lookup.finished:
        queue.extend(e.peer for e in events if isinstance(e, Query))
        now += 0.01
        peer = queue.popleft()
        events = lookup.on_response(peer, [at(a) for a in answers[index[peer]]], now=now)
    result = lookup.result
    assert result is not None
    unit = int((1 << 160) / (factor * SIZE))
    counted = 0
    for c in result.closest:  # nearest first
        if c in seed_ids:
            counted += 1
            continue
        assert counted < slack + dist(c) // unit
        counted += 1


def test_the_table_estimates_the_network_size_it_met() -> None:
    rng = random.Random(3)
    for size in (300, 3000):
        ids = [rng.randbytes(20) for _ in range(size)]
        estimates = []
        for local in ids[:20]:
            table = RoutingTable(local, TableConfig(k=16), now=0.0)
            for other in ids:
                if other != local:
                    table.add(other, None, verified=True, now=0.0)
            estimates.append(table.estimate_size())
        estimates.sort()
        assert size / 2 <= estimates[len(estimates) // 2] <= size * 2
    assert RoutingTable(LOCAL, now=0.0).estimate_size() == 0
