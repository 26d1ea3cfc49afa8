"""A deterministic in-process DHT network for tests: N nodes' pure routing tables and provider
stores, lookups driven by a seeded latency model on virtual time.

This is a test double of the driver, not a simulator: it plays the driver's part (verifying
answers, calling ``on_invalid`` for spoofed ids) and the remote nodes' part (answering from their
tables and stores). Behaviours per node: honest, colluding liar (answers only with the liars
nearest the target, drops provider records), spoofer (answers with a contact whose record does
not match its id), or offline (never answers).
"""

from __future__ import annotations

import bisect
import enum
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from discovery import (
    Lookup,
    LookupConfig,
    LookupDone,
    LookupEvent,
    LookupMode,
    LookupResult,
    Misbehaved,
    Misbehaviour,
    ProviderFound,
    ProviderStore,
    Query,
    RoutingTable,
    TableConfig,
)

__all__ = ["Behaviour", "DhtNetwork", "LookupRun", "drive_in_order"]

ID_BYTES = 20


class Behaviour(enum.Enum):
    HONEST = "honest"
    LIAR = "liar"
    SPOOFER = "spoofer"
    OFFLINE = "offline"


@dataclass(slots=True)
class _Node:
    node_id: bytes
    table: RoutingTable
    store: ProviderStore[bytes]
    behaviour: Behaviour = Behaviour.HONEST


@dataclass(slots=True)
class _Answer:
    contacts: list[tuple[bytes, bool]]
    """(id, record matches id)"""
    providers: list[tuple[bytes, bytes]]


@dataclass(slots=True)
class LookupRun:
    result: LookupResult
    providers: list[ProviderFound[bytes]] = field(default_factory=list)
    misbehaved: list[Misbehaved] = field(default_factory=list)
    elapsed: float = 0.0


class DhtNetwork:
    """``n`` nodes with random ids and Kademlia tables as a bootstrapped network would have them
    (each bucket filled with up to ``k`` random nodes of its range)."""

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        k: int = 16,
        alpha: int = 3,
        query_timeout: float = 1.0,
        latency: tuple[float, float] = (0.01, 0.1),
    ) -> None:
        self.rng = random.Random(seed)
        self.k = k
        self.latency = latency
        self.lookup_config = LookupConfig(k=k, alpha=alpha, query_timeout=query_timeout)
        self.now = 1_000_000.0
        ids = sorted({self.rng.randbytes(ID_BYTES) for _ in range(n)})
        self.ids = ids
        self._nums = [int.from_bytes(i, "big") for i in ids]
        table_config = TableConfig(k=k)
        self.nodes: dict[bytes, _Node] = {
            node_id: _Node(
                node_id, RoutingTable(node_id, table_config, now=self.now), ProviderStore()
            )
            for node_id in ids
        }
        for node_id, num in zip(ids, self._nums, strict=True):
            table = self.nodes[node_id].table
            for i in range(160):
                low = ((num ^ (1 << i)) >> i) << i
                lo = bisect.bisect_left(self._nums, low)
                hi = bisect.bisect_left(self._nums, low + (1 << i))
                if hi <= lo:
                    continue
                picks = range(lo, hi) if hi - lo <= k else self.rng.sample(range(lo, hi), k)
                for j in picks:
                    table.add(ids[j], None, verified=True, now=self.now)
        self._liars: list[int] = []

    # -- scenario set-up -------------------------------------------------------------------------

    def set_behaviour(self, node_id: bytes, behaviour: Behaviour) -> None:
        self.nodes[node_id].behaviour = behaviour
        self._liars = [
            int.from_bytes(i, "big") for i in self.ids if self.nodes[i].behaviour is Behaviour.LIAR
        ]

    def make_liars(self, fraction: float) -> set[bytes]:
        liars = set(self.rng.sample(self.ids, round(fraction * len(self.ids))))
        for node_id in liars:
            self.nodes[node_id].behaviour = Behaviour.LIAR
        self._liars = [int.from_bytes(i, "big") for i in self.ids if i in liars]
        return liars

    def honest(self) -> list[bytes]:
        return [i for i in self.ids if self.nodes[i].behaviour is Behaviour.HONEST]

    def true_closest(self, target: bytes, n: int) -> list[bytes]:
        t = int.from_bytes(target, "big")
        best = heapq.nsmallest(n, self._nums, key=lambda num: num ^ t)
        return [num.to_bytes(ID_BYTES, "big") for num in best]

    # -- remote behaviour ------------------------------------------------------------------------

    def _answer(self, responder: bytes, target: bytes, mode: LookupMode) -> _Answer | None:
        node = self.nodes[responder]
        match node.behaviour:
            case Behaviour.OFFLINE:
                return None
            case Behaviour.LIAR:
                t = int.from_bytes(target, "big")
                me = int.from_bytes(responder, "big")
                best = heapq.nsmallest(
                    self.k, (n for n in self._liars if n != me), key=lambda num: num ^ t
                )
                return _Answer([(n.to_bytes(ID_BYTES, "big"), True) for n in best], [])
            case Behaviour.SPOOFER:
                contacts = [(c, True) for c in node.table.closest(target, self.k - 1)]
                return _Answer([(target, False), *contacts], [])
            case Behaviour.HONEST:
                contacts = [(c, True) for c in node.table.closest(target, self.k)]
                providers: list[tuple[bytes, bytes]] = []
                if mode is LookupMode.GET_PROVIDERS:
                    providers = [
                        (e.provider_id, e.payload) for e in node.store.get(target, self.now)
                    ]
                return _Answer(contacts, providers)

    # -- lookups ---------------------------------------------------------------------------------

    def lookup(
        self,
        origin: bytes,
        target: bytes,
        mode: LookupMode,
        *,
        paths: int | None = None,
        want: int | None = None,
    ) -> LookupRun:
        """Run one lookup from ``origin`` to the end on virtual time."""
        node = self.nodes[origin]
        lookup: Lookup[bytes] = Lookup(
            target,
            mode,
            node.table.closest(target, self.k),
            local_id=origin,
            config=self.lookup_config,
            want=want,
            paths=paths,
        )
        start = self.now
        inflight: list[tuple[float, int, bytes, _Answer]] = []
        seq = 0
        run: LookupRun | None = None
        providers: list[ProviderFound[bytes]] = []
        misbehaved: list[Misbehaved] = []
        events = lookup.start(self.now)
        while True:
            for event in events:
                match event:
                    case Query(peer=peer):
                        answer = self._answer(peer, target, mode)
                        if answer is not None:
                            rtt = self.rng.uniform(*self.latency)
                            seq += 1
                            heapq.heappush(inflight, (self.now + rtt, seq, peer, answer))
                    case ProviderFound():
                        providers.append(event)
                    case Misbehaved():
                        misbehaved.append(event)
                        node.table.remove(event.peer)
                    case LookupDone(result=result):
                        run = LookupRun(result, providers, misbehaved, self.now - start)
            if run is not None:
                return run
            deadline = lookup.next_deadline()
            if inflight and (deadline is None or inflight[0][0] <= deadline):
                self.now, _, peer, answer = heapq.heappop(inflight)
                if all(ok for _, ok in answer.contacts):
                    events = lookup.on_response(
                        peer, [c for c, _ in answer.contacts], answer.providers, now=self.now
                    )
                    node.table.on_success(peer, self.now)
                else:
                    events = lookup.on_invalid(peer, Misbehaviour.SPOOFED_ID, self.now)
            elif deadline is not None:
                self.now = max(self.now, deadline)
                events = lookup.on_timer(self.now)
            else:
                raise AssertionError("lookup stalled: nothing in flight and no deadline")

    def provide(self, provider: bytes, key: bytes, *, ttl: float = 7200.0, paths: int = 2) -> int:
        """``provider`` finds the nodes nearest ``key`` and stores its record on them; returns
        how many honest nodes kept it (liars drop it)."""
        run = self.lookup(provider, key, LookupMode.FIND_NODE, paths=paths)
        kept = 0
        for holder in run.result.closest:
            node = self.nodes[holder]
            if node.behaviour is not Behaviour.HONEST:
                continue
            node.store.put(
                key,
                provider,
                b"record:" + provider,
                seq=1,
                expires_at=self.now + ttl,
                source=provider,
                now=self.now,
            )
            kept += 1
        return kept


def drive_in_order(lookup: Lookup[str], answer: Callable[[bytes], list[bytes]],
                   queries: list[Query]) -> None:
    """Answer every query of ``lookup`` in the order sent, 10 ms apart, with ``answer(peer)``
    (contacts only), until it ends; the queries go to ``queries``."""
    now = 0.0
    queue: deque[bytes] = deque()
    events: list[LookupEvent[str]] = lookup.start(now)
    while not lookup.finished:
        for event in events:
            if isinstance(event, Query):
                queries.append(event)
                queue.append(event.peer)
        assert queue, "every query is answered, so the lookup never waits on a timer"
        now += 0.01
        peer = queue.popleft()
        events = lookup.on_response(peer, answer(peer), now=now)
