"""The simulated network: node ids, the latency model, bootstrapped routing tables, and a driver
that runs one real ``discovery.Lookup`` to its end on virtual time.

Nodes are indices ``0..n-1`` (ids are random 20-byte strings, sorted, so index order is id
order). Each node has a random IPv4 /16 as its netgroup (``groups``; at 10,000 nodes a few
hundred /16s hold two nodes, as on a real network); ids minted by a liar are registered in
``minted`` with the liar that serves them (its netgroup and latency: a minted id must be
reachable at an address the liar controls). A link's round-trip time is
``rtt_min + (rtt_max - rtt_min) * (c[a] + c[b]) / 2`` with one random coordinate ``c`` per node:
fixed per link, spread over [rtt_min, rtt_max], and free to compute. A lookup is computed when
it starts, against the network as it is at that instant (tables, provider stores, who is
online); its answers arrive at virtual times drawn from the latency model, and the caller
delivers its result at ``start + elapsed``.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from discovery import (
    Lookup,
    LookupConfig,
    LookupDone,
    LookupMode,
    LookupResult,
    ProviderFound,
    ProviderStore,
    Query,
    RoutingTable,
    TableConfig,
)

__all__ = ["Answer", "LookupRun", "SimNetwork", "nearest"]

ID_BYTES = 20
ID_BITS = 160


def nearest(nums: Sequence[int], target: int, k: int) -> list[int]:
    """Indices into the sorted ``nums`` of the ``k`` nearest to ``target`` by XOR, nearest first.

    Every value within XOR distance ``< 2**j`` of the target lies in one aligned block of
    ``2**j`` values, which is a contiguous slice of ``nums``: find the smallest block holding at
    least ``k`` values and sort only that slice."""
    n = len(nums)
    if k <= 0 or n == 0:
        return []
    if n <= k:
        return sorted(range(n), key=lambda i: nums[i] ^ target)
    lo, hi = 0, ID_BITS  # smallest j with >= k values in the block of size 2**j
    while lo < hi:
        j = (lo + hi) // 2
        base = (target >> j) << j
        count = bisect.bisect_left(nums, base + (1 << j)) - bisect.bisect_left(nums, base)
        if count >= k:
            hi = j
        else:
            lo = j + 1
    base = (target >> lo) << lo
    a = bisect.bisect_left(nums, base)
    b = bisect.bisect_left(nums, base + (1 << lo))
    return sorted(range(a, b), key=lambda i: nums[i] ^ target)[:k]


@dataclass(slots=True)
class Answer:
    """What a queried node answers: contact ids and (provider index, payload) pairs."""

    contacts: list[bytes]
    providers: list[tuple[bytes, int]]


@dataclass(slots=True)
class LookupRun:
    result: LookupResult
    elapsed: float
    first_provider_at: float | None
    """Seconds from start to the first provider, if any."""
    providers: list[int]
    """Provider node indices, in the order found."""
    replicas: list[bytes]
    """Where to store a record for the target: ``Lookup.path_closest`` of each path
    (S/Kademlia stores through every disjoint path, so one path's liars, however near
    they claim to be, cannot take every replica). With one path: ``result.closest``."""


Responder = Callable[[bytes, bytes, LookupMode], Answer | None]
"""``(responder id, target, mode) -> Answer``, or None when it does not answer."""


class SimNetwork:
    """``n`` nodes with Kademlia tables as a bootstrapped network has them: every bucket holds
    up to ``k`` random nodes of its range (verified contacts; netgroup limits not applied)."""

    def __init__(
        self, n: int, rng: random.Random, *, k: int, rtt: tuple[float, float], now: float,
        full_tables: bool = True,
    ) -> None:
        """``full_tables=False``: every table starts empty (a network that bootstraps from
        seeds; the same ids and coordinates as with full tables)."""
        ids: set[bytes] = set()
        while len(ids) < n:
            ids.add(rng.randbytes(ID_BYTES))
        self.ids = sorted(ids)
        self.nums = [int.from_bytes(i, "big") for i in self.ids]
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}
        self.coord = [rng.random() for _ in range(n)]
        self.minted: dict[bytes, int] = {}
        """Ids minted by liars -> the liar (index) whose address serves them."""
        self._rtt_min = rtt[0]
        self._rtt_span = rtt[1] - rtt[0]
        self.k = k
        config = TableConfig(k=k)
        self.tables: list[RoutingTable] = []
        nums = self.nums
        for num, node_id in zip(nums, self.ids, strict=True):
            table = RoutingTable(node_id, config, now=now)
            for i in range(ID_BITS - 1, -1, -1) if full_tables else ():
                low = ((num ^ (1 << i)) >> i) << i
                lo = bisect.bisect_left(nums, low)
                hi = bisect.bisect_left(nums, low + (1 << i), lo)
                if hi <= lo:
                    continue
                picks = range(lo, hi) if hi - lo <= k else rng.sample(range(lo, hi), k)
                for j in picks:
                    table.add(self.ids[j], None, verified=True, now=now)
            self.tables.append(table)
        self.groups = [f"{g >> 8}.{g & 255}" for g in (rng.getrandbits(16) for _ in range(n))]
        """Each node's netgroup (drawn last, so the tables do not depend on it)."""

    def __len__(self) -> int:
        return len(self.ids)

    def netgroup(self, node_id: bytes) -> str | None:
        """The netgroup of a node or minted id (the lookups' diversity function)."""
        i = self.index.get(node_id)
        if i is None:
            i = self.minted.get(node_id)
        return None if i is None else self.groups[i]

    def rtt(self, a: int, b: int) -> float:
        return self._rtt_min + self._rtt_span * 0.5 * (self.coord[a] + self.coord[b])

    def closest_true(
        self, target: bytes, k: int, members: Sequence[int] | None = None
    ) -> list[int]:
        """The ``k`` node indices nearest ``target`` (among ``members``, sorted, if given)."""
        t = int.from_bytes(target, "big")
        if members is None:
            return nearest(self.nums, t, k)
        sub = [self.nums[i] for i in members]
        return [members[i] for i in nearest(sub, t, k)]

    def run_lookup(
        self,
        origin: int,
        target: bytes,
        mode: LookupMode,
        responder: Responder,
        config: LookupConfig,
        rng: random.Random,
        *,
        now: float,
        loss: float,
        paths: int,
        want: int | None = None,
        give_up_after: float = 60.0,
        density: bool = False,
        learn: bool = False,
        max_messages: int | None = None,
        until: Callable[[int], bool] | None = None,
    ) -> LookupRun:
        """Drive one lookup from ``origin`` to its end (or cancel it after ``give_up_after``).
        ``density``: apply the lookup's density limit with the size the origin's routing table
        estimates (``RoutingTable.estimate_size``). ``learn``: the tables learn as a node's do
        (the origin adds each responder as verified and the contacts it names as unverified;
        the responder adds the origin as verified), at the time each query is sent.
        ``max_messages``: send at most this many queries, then end the lookup once the answers
        in flight are in (as ``discovery``'s walk does with a budget); ``until``: told each
        provider found, ends the lookup when it returns True (a caller that has enough)."""
        local = self.ids[origin]
        table = self.tables[origin]
        size = table.estimate_size() if density else 0
        lookup: Lookup[int] = Lookup(
            target, mode, table.closest(target, self.k), local_id=local,
            config=config, want=want, paths=paths, netgroup=self.netgroup,
            network_size=size or None,
        )
        index = self.index
        coord = self.coord
        c0 = coord[origin]
        start = now
        inflight: list[tuple[float, int, bytes, Answer]] = []
        seq = 0
        providers: list[int] = []
        first_at: float | None = None
        events = lookup.start(now)
        span = self._rtt_span * 0.5
        sent = 0
        exhausted = enough = False
        while True:
            for event in events:
                if isinstance(event, Query):
                    peer = event.peer
                    if max_messages is not None:
                        if sent >= max_messages:
                            exhausted = True  # never sent: the core times it out
                            continue
                        sent += 1
                    answer = responder(peer, target, mode)
                    if answer is None or (loss and rng.random() < loss):
                        continue
                    j = index.get(peer)
                    if learn and j is not None:
                        table.add(peer, None, verified=True, now=now)
                        for contact in answer.contacts:
                            if contact != local:
                                table.add(contact, None, verified=False, now=now)
                        self.tables[j].add(local, None, verified=True, now=now)
                    if j is None:
                        j = self.minted.get(peer)
                    rtt = self._rtt_min + span * (c0 + (coord[j] if j is not None else 0.5))
                    seq += 1
                    heapq.heappush(inflight, (now + rtt, seq, peer, answer))
                elif isinstance(event, ProviderFound):
                    if enough:
                        continue  # the caller stopped reading at the one before
                    providers.append(event.payload)
                    if first_at is None:
                        first_at = now - start
                    if until is not None and until(event.payload):
                        enough = True
                elif isinstance(event, LookupDone):
                    replicas: dict[bytes, None] = {}
                    for p in range(paths):
                        replicas.update(dict.fromkeys(lookup.path_closest(p)))
                    result = event.result
                    if max_messages is not None:  # the core also counts the unsent queries
                        result = dataclasses.replace(result, messages=sent)
                    return LookupRun(result, now - start, first_at, providers, list(replicas))
            deadline = lookup.next_deadline()
            if now - start >= give_up_after or enough or (exhausted and not inflight):
                events = lookup.cancel()
            elif inflight and (deadline is None or inflight[0][0] <= deadline):
                now, _, peer, answer = heapq.heappop(inflight)
                events = lookup.on_response(peer, answer.contacts, answer.providers, now=now)
            elif deadline is not None:
                now = max(now, deadline)
                events = lookup.on_timer(now)
            else:  # pragma: no cover - the lookup core always has a deadline or is done
                raise AssertionError("lookup stalled")


def honest_responder(
    net: SimNetwork,
    stores: dict[int, ProviderStore[int]],
    online: Callable[[int], bool],
    now: Callable[[], float],
) -> Responder:
    """Answers as an honest node does: its ``k`` nearest table contacts and, for GET_PROVIDERS,
    the providers it stores (offline nodes do not answer)."""
    k = net.k
    tables = net.tables
    index = net.index

    def answer(peer: bytes, target: bytes, mode: LookupMode) -> Answer | None:
        i = index.get(peer)
        if i is None or not online(i):
            return None
        contacts = tables[i].closest(target, k)
        provided: list[tuple[bytes, int]] = []
        if mode is LookupMode.GET_PROVIDERS:
            store = stores.get(i)
            if store is not None:
                provided = [(e.provider_id, e.payload) for e in store.get(target, now())]
        return Answer(contacts, provided)

    return answer
