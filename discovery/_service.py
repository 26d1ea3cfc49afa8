"""The discovery service: "candidates for capability X, cheapest first" (an anyio driver).

Theory of operation
-------------------
``CapabilityView.candidates(capability)`` consults four sources in order of cost and streams
each new candidate as soon as it is known:

1. **connected peers** (free: their records came with the handshake, verified against the
   authenticated id): peers that *confirmed* the capability first, then the others;
2. **the address book** (free: a ``RecordStore`` of verified records);
3. **PEX** (one request per connected peer asked, ``pex_fanout`` in parallel): records are
   verified here, stored in the address book with the peer as their source, and matching ones
   streamed; a peer that hands over a forged record is penalised;
4. **the DHT** (a ``find_providers`` lookup, tens of messages): providers stream as they
   arrive and enter the address book with source ``"dht"``.

A call stops as soon as ``limit`` candidates were handed out, and never spends more than its
``Budget``: ``max_messages`` requests (PEX requests plus DHT queries) and ``max_time`` seconds.
A source is skipped when the earlier ones already gave ``limit``. The node itself, excluded
peers and duplicates never appear; a peer whose capability was recently *refuted* comes only
after every other candidate of its source (see ``_confirm.py``).

Claims are checked: ``confirm(peer, capability)`` after the peer served a request for it,
``refute(peer, capability)`` after it failed or refused one (the peer is penalised with
``Penalty.CAPABILITY_REFUTED``); ``confirmed(peer)`` is what routing treats as proven.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from discovery._confirm import Confirmations, ConfirmationsConfig
from discovery._dht_lookups import ProviderStream
from discovery._keys import valid_capability_name
from discovery._record import CapabilityRecord, RecordError, SignedRecord
from discovery._recordstore import RecordStore
from discovery._service_types import (
    DiscoveryStatistics,
    Penalty,
    PexClient,
    penalty_for_rejection,
)
from discovery._verify import RecordVerifier
from overlay.errors import ConfigError, LocalProtocolError, OverlayError
from overlay.identity import NodeId

__all__ = [
    "Budget",
    "Candidate",
    "CandidateSource",
    "CandidateStream",
    "CapabilityView",
    "DiscoveryConfig",
    "ProviderLookups",
]

DHT_SOURCE = "dht"
"""The address book's source label of records found by DHT lookups."""


class ProviderLookups(Protocol):
    """Where the view runs DHT provider lookups: a ``DhtService``, or the node's DHT (which
    raises ``NodeClosed`` while it is not running)."""

    def find_providers(
        self, capability: str, *, want: int | None = None, max_messages: int | None = None
    ) -> AbstractAsyncContextManager[ProviderStream]: ...


class CandidateSource(enum.Enum):
    """Where a candidate came from, cheapest first (the value is a metrics label)."""

    CONNECTED = "connected"
    ADDRESS_BOOK = "address_book"
    PEX = "pex"
    DHT = "dht"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node whose verified record advertises the capability asked for."""

    signed: SignedRecord
    source: CandidateSource
    connected: bool
    confirmed: bool
    """The node served a request for the capability (and has not failed one since)."""

    @property
    def node_id(self) -> NodeId:
        return self.signed.node_id

    @property
    def record(self) -> CapabilityRecord:
        return self.signed.record


@dataclass(frozen=True, slots=True)
class Budget:
    """The most one ``candidates`` call may spend."""

    max_messages: int = 64
    """Requests sent (PEX requests plus DHT queries); about two provider lookups' worth."""
    max_time: float = 5.0
    """Seconds, from the call to the last candidate."""

    def __post_init__(self) -> None:
        if self.max_messages < 0:
            raise ConfigError("discovery.max_messages", "must be >= 0")
        if not self.max_time > 0:
            raise ConfigError("discovery.max_time", "must be positive")


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    network: str
    budget: Budget = field(default_factory=Budget)
    """The default budget of a ``candidates`` call."""
    pex_fanout: int = 3
    """Connected peers asked in parallel by one call."""
    pex_max_records: int = 16
    """Records asked of each."""
    pex_timeout: float = 2.0
    confirmations: ConfirmationsConfig = field(default_factory=ConfirmationsConfig)

    def __post_init__(self) -> None:
        if self.pex_fanout < 0 or self.pex_max_records < 1 or not self.pex_timeout > 0:
            raise ConfigError("discovery.pex", "fanout >= 0, max_records >= 1, timeout > 0")


class CandidateStream:
    """The candidates of one call as they are found (``async for``)."""

    def __init__(self, receive: AsyncIterator[Candidate]) -> None:
        self._receive = receive
        self.messages = 0
        """Requests spent so far."""
        self.budget_exhausted = False

    def __aiter__(self) -> AsyncIterator[Candidate]:
        return self._receive


def _no_penalty(peer: NodeId, reason: Penalty) -> None:
    return None


def _free(record: CapabilityRecord) -> float:
    return 0.0


class CapabilityView:
    """Candidates for a capability from every source, and which claims are confirmed."""

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        local_id: NodeId,
        connected: Callable[[], Iterable[SignedRecord]],
        address_book: RecordStore,
        wall_clock: Callable[[], float],
        pex: PexClient | None = None,
        dht: ProviderLookups | None = None,
        penalise: Callable[[NodeId, Penalty], None] = _no_penalty,
        cost: Callable[[CapabilityRecord], float] = _free,
        claims: Confirmations | None = None,
    ) -> None:
        """``claims``: the confirmed and refuted claims to read and update (shared with
        whoever else tracks them, e.g. the node's connected-peer records); default: its own."""
        self.config = config
        self._local = local_id
        self._connected = connected
        self._book = address_book
        self._wall = wall_clock
        self._pex = pex
        self._dht = dht
        self._penalise_cb = penalise
        self._cost = cost
        self._claims = claims if claims is not None else Confirmations(config.confirmations)
        self._verifier = RecordVerifier(config.network)
        self._calls = 0
        self._handed: dict[CandidateSource, int] = {}
        self._exhausted = 0
        self._pex_requests = 0
        self._pex_failures = 0
        self._penalties: dict[Penalty, int] = {}

    # -- claims ----------------------------------------------------------------------------------

    def confirm(self, peer: NodeId, capability: str) -> None:
        """``peer`` served a request for ``capability``."""
        self._claims.confirm(peer, capability)

    def refute(self, peer: NodeId, capability: str) -> None:
        """A request to ``peer`` for ``capability`` failed or was refused: it loses the
        confirmed flag, comes last for a while, and is penalised."""
        self._claims.refute(peer, capability, self._wall())
        self._penalise(peer, Penalty.CAPABILITY_REFUTED)

    def confirmed(self, peer: NodeId) -> frozenset[str]:
        """The capabilities ``peer`` proved by serving requests."""
        return self._claims.confirmed(peer)

    def forget(self, peer: NodeId) -> None:
        self._claims.forget(peer)

    def statistics(self) -> DiscoveryStatistics:
        return DiscoveryStatistics(
            calls=self._calls,
            candidates=MappingProxyType({s.value: n for s, n in self._handed.items()}),
            budget_exhausted=self._exhausted,
            pex_requests=self._pex_requests,
            pex_failures=self._pex_failures,
            records_received=self._verifier.counters.received,
            records_rejected=self._verifier.counters.snapshot(),
            penalties=MappingProxyType(dict(self._penalties)),
            confirmations=self._claims.confirmations,
            refutations=self._claims.refutations,
            confirmed_peers=self._claims.peers_with_confirmations(),
        )

    # -- candidates ------------------------------------------------------------------------------

    async def collect(
        self,
        capability: str,
        *,
        limit: int = 8,
        budget: Budget | None = None,
        exclude: Iterable[NodeId] = (),
    ) -> list[Candidate]:
        """Every candidate of one ``candidates`` call, in order."""
        async with self.candidates(capability, limit=limit, budget=budget, exclude=exclude) as s:
            return [candidate async for candidate in s]

    @contextlib.asynccontextmanager
    async def candidates(
        self,
        capability: str,
        *,
        limit: int = 8,
        budget: Budget | None = None,
        exclude: Iterable[NodeId] = (),
    ) -> AsyncIterator[CandidateStream]:
        """Stream up to ``limit`` candidates for ``capability``, cheapest source first::

            async with view.candidates("archive", limit=3) as found:
                async for candidate in found:
                    ...

        (A context manager, not an async generator: the PEX requests and the DHT lookup run
        in a task group, which leaving the block cancels.)"""
        if not valid_capability_name(capability):
            raise LocalProtocolError(f"not a capability name: {capability!r}")
        if limit < 1:
            raise LocalProtocolError(f"limit must be positive, got {limit}")
        spend = budget or self.config.budget
        self._calls += 1
        send, receive = anyio.create_memory_object_stream[Candidate](0)
        stream = CandidateStream(receive.__aiter__())
        call = _Call(self, capability, limit, spend, set(exclude) | {self._local}, send, stream)
        async with receive, anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            try:
                yield stream
            finally:
                tg.cancel_scope.cancel()

    def _penalise(self, peer: NodeId, reason: Penalty) -> None:
        self._penalties[reason] = self._penalties.get(reason, 0) + 1
        self._penalise_cb(peer, reason)


class _Call:
    """One ``candidates`` call: walks the sources in order, within the budget."""

    def __init__(
        self,
        view: CapabilityView,
        capability: str,
        limit: int,
        budget: Budget,
        skip: set[NodeId],
        send: MemoryObjectSendStream[Candidate],
        stream: CandidateStream,
    ) -> None:
        self.view = view
        self.capability = capability
        self.limit = limit
        self.budget = budget
        self.seen = skip
        self.send = send
        self.stream = stream
        self.handed = 0
        self.connected: dict[NodeId, SignedRecord] = {}

    @property
    def done(self) -> bool:
        return self.handed >= self.limit

    @property
    def messages_left(self) -> int:
        return self.budget.max_messages - self.stream.messages

    async def run(self) -> None:
        async with self.send:
            with anyio.move_on_after(self.budget.max_time) as scope:
                await self._connected()
                if not self.done:
                    await self._address_book()
                if not self.done and self._pex_peers():
                    await self._pex()
                if not self.done and self.view._dht is not None and self.messages_left > 0:
                    await self._dht(self.view._dht)
            if scope.cancelled_caught or (not self.done and self.messages_left <= 0):
                self.stream.budget_exhausted = True
                self.view._exhausted += 1

    async def _offer(self, signed: SignedRecord, source: CandidateSource) -> None:
        if self.done or signed.node_id in self.seen or not signed.record.has(self.capability):
            return
        self.seen.add(signed.node_id)
        view = self.view
        candidate = Candidate(
            signed,
            source,
            connected=signed.node_id in self.connected,
            confirmed=view._claims.is_confirmed(signed.node_id, self.capability),
        )
        self.handed += 1
        view._handed[source] = view._handed.get(source, 0) + 1
        await self.send.send(candidate)

    def _ordered(self, records: Iterable[SignedRecord]) -> list[SignedRecord]:
        """Confirmed first, suspect (recently refuted) last, then by cost and id."""
        claims, now, cap = self.view._claims, self.view._wall(), self.capability
        cost = self.view._cost

        def key(signed: SignedRecord) -> tuple[int, float, str]:
            node = signed.node_id
            if claims.is_confirmed(node, cap):
                rank = 0
            else:
                rank = 2 if claims.is_suspect(node, cap, now) else 1
            return rank, cost(signed.record), node

        return sorted(records, key=key)

    async def _connected(self) -> None:
        now = self.view._wall()
        for signed in self.view._connected():
            if signed.record.expires_at > now:
                self.connected[signed.node_id] = signed
        live = [s for s in self.connected.values() if s.record.has(self.capability)]
        for signed in self._ordered(live):
            await self._offer(signed, CandidateSource.CONNECTED)

    async def _address_book(self) -> None:
        found = self.view._book.candidates(self.capability, self.view._wall(), exclude=self.seen)
        for signed in self._ordered(found):
            await self._offer(signed, CandidateSource.ADDRESS_BOOK)

    def _pex_peers(self) -> list[NodeId]:
        if self.view._pex is None:
            return []
        count = min(self.view.config.pex_fanout, self.messages_left)
        peers = sorted(p for p in self.connected if p != self.view._local)
        return peers[: max(count, 0)]

    async def _pex(self) -> None:
        view = self.view
        pex = view._pex
        assert pex is not None
        peers = self._pex_peers()
        self.stream.messages += len(peers)
        view._pex_requests += len(peers)
        send, receive = anyio.create_memory_object_stream[tuple[NodeId, Sequence[bytes]]](
            math.inf
        )

        async def ask(peer: NodeId, out: MemoryObjectSendStream[tuple[NodeId, Sequence[bytes]]]
                      ) -> None:
            config = view.config
            with out:
                try:
                    with anyio.fail_after(config.pex_timeout):
                        records = await pex.request_records(
                            peer, (self.capability,), max_records=config.pex_max_records,
                            timeout=config.pex_timeout,
                        )
                except (TimeoutError, OverlayError):
                    view._pex_failures += 1
                    return
                out.send_nowait((peer, records))

        async with anyio.create_task_group() as tg:
            with send:
                for peer in peers:
                    tg.start_soon(ask, peer, send.clone())
            async with receive:
                async for peer, records in receive:
                    for signed in self._accept_pex(peer, records):
                        await self._offer(signed, CandidateSource.PEX)
                    if self.done:
                        tg.cancel_scope.cancel()

    def _accept_pex(self, peer: NodeId, records: Sequence[bytes]) -> list[SignedRecord]:
        """Verify a PEX answer's records and store them with ``peer`` as their source; the
        ones advertising the capability. A forged record costs the peer its whole answer."""
        view = self.view
        now = view._wall()
        accepted: list[SignedRecord] = []
        for data in records[: view.config.pex_max_records]:
            try:
                signed = view._verifier.verify(data, now)
            except RecordError as exc:
                penalty = penalty_for_rejection(exc.reason)
                if penalty is None:
                    continue
                view._penalise(peer, penalty)
                return []
            if signed.node_id == view._local:
                continue
            view._book.offer(signed, now, str(peer))
            held = view._book.get(signed.node_id, now)
            if held is not None and held.seq > signed.seq:
                continue  # a replay of an older record: offer the newest instead
            accepted.append(signed)
        return [s for s in self._ordered(accepted) if s.record.has(self.capability)]

    async def _dht(self, dht: ProviderLookups) -> None:
        want = self.limit - self.handed + len(self.seen)
        lookup: ProviderStream | None = None
        try:
            async with dht.find_providers(
                self.capability, want=want, max_messages=self.messages_left
            ) as lookup:
                async for signed in lookup:
                    now = self.view._wall()
                    self.view._book.offer(signed, now, DHT_SOURCE)
                    held = self.view._book.get(signed.node_id, now)
                    await self._offer(held or signed, CandidateSource.DHT)
                    if self.done:
                        break
        finally:  # the lookup has ended (or was cancelled) here: its report is final
            if lookup is not None and lookup.report is not None:
                self.stream.messages += lookup.report.messages
