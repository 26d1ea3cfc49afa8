"""One node's DHT lookups: the anyio side of ``find_closest`` and ``find_providers``.

Theory of operation
-------------------
``DhtLookups`` belongs to one :class:`~discovery.DhtService` and shares its routing table,
contact book, provider store, record verifier and counters (it owns none of them). A lookup
seeds the pure :class:`Lookup` core from the contact book and runs it with ``walk`` (one task
group per lookup, every query a child task). Every answer is checked by ``check_answer``
before the core sees an id: verified contacts enter the contact book as hearsay, the responder
becomes a verified contact (it answered over an authenticated connection), and a responder
that handed over a forged, spoofed or foreign-network record, an unrelated provider or the
wrong kind of answer is dropped from the lookup, penalised and distrusted.

``find_providers`` streams each verified provider as it arrives (the providers this node holds
itself first), through a ``ProviderStream`` whose ``report`` is set once the lookup ended.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from discovery._dht_answers import Checked, Refused, check_answer
from discovery._dht_contacts import ContactBook
from discovery._dht_lookup import Lookup
from discovery._dht_lookup_types import (
    LookupEvent,
    LookupMode,
    LookupResult,
    Misbehaved,
    ProviderFound,
)
from discovery._dht_providers import ProviderStore
from discovery._dht_table import RoutingTable
from discovery._dht_walk import WalkOutcome, walk
from discovery._keys import node_id_bytes, node_id_from_bytes, provider_key, valid_capability_name
from discovery._record import SignedRecord
from discovery._service_types import DhtConfig, DhtCounters, DhtRpc, LookupReport, Penalty
from discovery._verify import RecordVerifier
from discovery._wire import (
    MAX_RECORDS_PER_MESSAGE,
    DhtFindNode,
    DhtGetProviders,
    DhtRequest,
    DhtResponse,
)
from overlay.errors import LocalProtocolError
from overlay.identity import NodeId

__all__ = ["DhtLookups", "ProviderStream"]


class ProviderStream:
    """The providers of one ``find_providers`` lookup, as they arrive (``async for``); its
    ``report`` once the lookup has ended (None before)."""

    def __init__(self, receive: MemoryObjectReceiveStream[SignedRecord]) -> None:
        self._receive = receive
        self.report: LookupReport | None = None

    def __aiter__(self) -> AsyncIterator[SignedRecord]:
        return self._receive.__aiter__()


class DhtLookups:
    """The lookups of one node's DHT (see the module docstring)."""

    def __init__(
        self,
        config: DhtConfig,
        *,
        local: bytes,
        rpc: DhtRpc,
        table: RoutingTable,
        contacts: ContactBook,
        store: ProviderStore[SignedRecord],
        verifier: RecordVerifier,
        counters: DhtCounters,
        wall_clock: Callable[[], float],
        penalise: Callable[[NodeId, Penalty], None],
    ) -> None:
        self.config = config
        self._local = local
        self._rpc = rpc
        self._table = table
        self._contacts = contacts
        self._store = store
        self._verifier = verifier
        self._counters = counters
        self._wall = wall_clock
        self._penalise = penalise

    async def find_closest_report(
        self, target: bytes, *, paths: int | None = None
    ) -> tuple[list[SignedRecord], LookupReport]:
        """The records of the ``k`` nodes nearest ``target`` that answered, nearest first, and
        what the lookup cost."""
        book: dict[bytes, SignedRecord] = {}
        result, report = await self._lookup(
            target, LookupMode.FIND_NODE, DhtFindNode(target), book, paths=paths
        )
        return [book[node] for node in result.closest], report

    @contextlib.asynccontextmanager
    async def find_providers(
        self,
        capability: str,
        *,
        want: int | None = None,
        paths: int | None = None,
        max_messages: int | None = None,
    ) -> AsyncIterator[ProviderStream]:
        """See ``DhtService.find_providers``."""
        if not valid_capability_name(capability):
            raise LocalProtocolError(f"not a capability name: {capability!r}")
        key = provider_key(self.config.network, capability)
        # Unbounded but finite: a lookup finds at most a few providers per answer, and the
        # lookup must never wait on a slow consumer while queries are in flight.
        send, receive = anyio.create_memory_object_stream[SignedRecord](math.inf)
        stream = ProviderStream(receive)

        async def run() -> None:
            async with send:
                now = self._wall()
                sent = {self._local}  # the node itself is never its own provider
                for entry in self._store.get(key, now, MAX_RECORDS_PER_MESSAGE):
                    if entry.provider_id not in sent:
                        sent.add(entry.provider_id)
                        send.send_nowait(entry.payload)
                _, stream.report = await self._lookup(
                    key,
                    LookupMode.GET_PROVIDERS,
                    DhtGetProviders(key),
                    {},
                    capability=capability,
                    found=send,
                    sent=sent,
                    want=want,
                    paths=paths,
                    max_messages=max_messages,
                    report_to=stream,
                )

        async with receive, anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                yield stream
            finally:
                tg.cancel_scope.cancel()

    async def _lookup(
        self,
        target: bytes,
        mode: LookupMode,
        request: DhtRequest,
        book: dict[bytes, SignedRecord],
        *,
        capability: str | None = None,
        found: MemoryObjectSendStream[SignedRecord] | None = None,
        sent: set[bytes] | None = None,
        want: int | None = None,
        paths: int | None = None,
        max_messages: int | None = None,
        report_to: ProviderStream | None = None,
    ) -> tuple[LookupResult, LookupReport]:
        seeds = self._contacts.seeds(target, self.config.lookup.k)
        for node in seeds:
            record = self._contacts.record(node)
            assert record is not None
            book[node] = record
        def group(node: bytes) -> str | None:
            # Candidates come from answers whose records went into ``book`` first; a liar's
            # minted ids must be served at its own addresses, so they share its netgroup.
            signed = book.get(node)
            return None if signed is None else self._contacts.netgroup(signed.record)

        size = self._table.estimate_size() if self.config.density_limit else 0
        lookup: Lookup[SignedRecord] = Lookup(
            target, mode, seeds, local_id=self._local, config=self.config.lookup,
            want=want, paths=paths, netgroup=group, network_size=size or None,
        )
        self._table.mark_lookup(target, self._wall())
        reports: list[LookupReport] = []

        def done(outcome: WalkOutcome) -> None:
            reports.append(self._account(outcome))
            if report_to is not None:
                report_to.report = reports[0]

        hooks = _Hooks(self, book, capability, found, {self._local} if sent is None else sent)
        outcome = await walk(
            lookup, request, book, rpc=self._rpc, hooks=hooks, on_done=done,
            max_messages=max_messages,
        )
        return outcome.result, reports[0]

    def _check_answer(
        self,
        lookup: Lookup[SignedRecord],
        hooks: _Hooks,
        peer: bytes,
        response: DhtResponse,
        now: float,
    ) -> list[LookupEvent[SignedRecord]]:
        """Verify an answer's records and feed it to the core (``WalkHooks.on_answer``)."""
        verdict = check_answer(
            response, lookup.mode, capability=hooks.capability, verifier=self._verifier,
            held_seq=self._contacts.held_seq, now=self._wall(),
        )
        match verdict:
            case Refused.REFUSED:
                self._table.on_failure(peer)
                return lookup.on_failure(peer, now)
            case Penalty():
                hooks.blame[peer] = verdict
                return lookup.on_invalid(peer, verdict.misbehaviour, now)
            case Checked(contacts, providers):
                ids = []
                wall = self._wall()
                for signed in contacts:
                    node = node_id_bytes(signed.node_id)
                    ids.append(node)
                    held = hooks.book.get(node)
                    if held is None or signed.seq > held.seq:
                        hooks.book[node] = signed
                    if node != self._local:
                        self._contacts.add(signed, verified=False, now=wall)
                # it answered over an authenticated connection: it exists
                self._contacts.add(hooks.book[peer], verified=True, now=wall)
                found = [(node_id_bytes(p.node_id), p) for p in providers]
                return lookup.on_response(peer, ids, found, now=now)

    def _account(self, outcome: WalkOutcome) -> LookupReport:
        result = outcome.result
        report = LookupReport(
            outcome=result.outcome,
            providers=result.providers,
            closest=len(result.closest),
            rounds=result.rounds,
            messages=outcome.sent,
            responses=result.responses,
            timeouts=result.timeouts,
            misbehaved=result.misbehaved,
            elapsed=outcome.elapsed,
            first_provider_after=outcome.first_provider_after,
            budget_exhausted=outcome.budget_exhausted,
        )
        self._counters.lookup(report)
        return report


class _Hooks:
    """One lookup's state while a ``walk`` runs (``WalkHooks``)."""

    __slots__ = ("blame", "book", "capability", "found", "lookups", "sent")

    def __init__(
        self,
        lookups: DhtLookups,
        book: dict[bytes, SignedRecord],
        capability: str | None,
        found: MemoryObjectSendStream[SignedRecord] | None,
        sent: set[bytes],
    ) -> None:
        self.lookups = lookups
        self.sent = sent
        """Providers already streamed (and the node itself)."""
        self.book = book
        self.capability = capability
        self.found = found
        self.blame: dict[bytes, Penalty] = {}

    def on_answer(
        self, lookup: Lookup[SignedRecord], peer: bytes, response: DhtResponse, now: float
    ) -> list[LookupEvent[SignedRecord]]:
        return self.lookups._check_answer(lookup, self, peer, response, now)

    def on_query_failed(self, peer: bytes) -> None:
        self.lookups._table.on_failure(peer)

    def on_misbehaved(self, peer: bytes, event: Misbehaved) -> None:
        penalty = self.blame.pop(peer, None) or Penalty.of(event.reason)
        lookups = self.lookups
        lookups._penalise(node_id_from_bytes(peer), penalty)
        lookups._contacts.distrust(peer, lookups._wall())

    def on_provider(self, found: ProviderFound[SignedRecord]) -> None:
        if self.found is not None and found.provider_id not in self.sent:
            self.sent.add(found.provider_id)
            self.found.send_nowait(found.payload)
