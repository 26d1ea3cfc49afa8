"""The DHT service: the anyio driver of the Kademlia cores (routing table, lookups, providers).

Theory of operation
-------------------
``DhtService`` owns one node's routing table, provider store and republish schedule, and its own
signed record. It talks to other nodes only through an injected :class:`DhtRpc` (the node
implements it over transient, authenticated connections) and reports misbehaving peers through
an injected ``penalise(peer, Penalty)`` callback (the node feeds the peer manager's score).

* **Serving** (``handle``): FIND_NODE answers with the records of the ``k`` nearest live
  contacts, GET_PROVIDERS with the stored providers plus those contacts, ADD_PROVIDER verifies
  the record (signature, network, time, the key is one of the record's capabilities) and stores
  it with the authenticated sender as its source (per-source caps), PING acknowledges. The
  sender's id always comes from the connection, never from a message.
* **Every record from the network is verified** before it reaches a core: contact records in
  answers, provider records in answers (again, never trusting the replica that served them) and
  records stored with us. A peer that hands over a forged, spoofed or foreign-network record is
  dropped from the lookup (``on_invalid``) and penalised; expired or replayed (older ``seq``)
  records are dropped without blame (see ``SILENT_REJECTIONS``). Signature checks are cached by
  record bytes; the time and sequence checks run every time.
* **Lookups** run the pure :class:`Lookup` in one task: each ``Query`` becomes a child task in
  the lookup's task group, bounded by ``query_timeout`` (anyio) and the core's own deadline;
  answers come back on a memory stream and are fed to the core in order. Leaving a lookup early
  (the consumer stops, or cancellation) cancels the task group: nothing keeps running.
* **Providing** finds the ``k`` nodes nearest a capability's key, stores the node's record on
  them and on itself, and republishes before expiry (``run``). A replica never extends expiry:
  holders take ``expires_at`` from the signed record, so only a re-signed record (higher
  ``seq``, from ``update_record`` or the ``renew`` hook) lives longer.

Clocks: ``wall_clock()`` (unix seconds) for everything signed or stored (record checks, the
provider store, the table, the schedule); anyio's monotonic clock for query deadlines and
latencies.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from discovery._dht_answers import Checked, Refused, check_answer
from discovery._dht_contacts import ContactBook
from discovery._dht_lookup import (
    Lookup,
    LookupEvent,
    LookupMode,
    LookupResult,
    Misbehaved,
    ProviderFound,
)
from discovery._dht_providers import (
    ProviderStore,
    RepublishSchedule,
    StoreOutcome,
)
from discovery._dht_table import AddOutcome, RoutingTable
from discovery._dht_walk import WalkOutcome, walk
from discovery._keys import node_id_bytes, node_id_from_bytes, provider_key, valid_capability_name
from discovery._record import CapabilityRecord, RecordError, RecordRejection, SignedRecord
from discovery._service_types import (
    DhtConfig,
    DhtCounters,
    DhtRpc,
    DhtStatistics,
    LookupReport,
    Penalty,
    ProvideReport,
    penalty_for_rejection,
)
from discovery._verify import RecordVerifier
from discovery._wire import (
    MAX_RECORDS_PER_MESSAGE,
    DhtAck,
    DhtAddProvider,
    DhtError,
    DhtErrorCode,
    DhtFindNode,
    DhtGetProviders,
    DhtNodes,
    DhtPing,
    DhtProviders,
    DhtRequest,
    DhtResponse,
)
from overlay.errors import LocalProtocolError, OverlayError
from overlay.identity import NodeId

__all__ = ["DhtConfig", "DhtService", "ProviderStream"]


class ProviderStream:
    """The providers of one ``find_providers`` lookup, as they arrive (``async for``); its
    ``report`` once the lookup has ended (None before)."""

    def __init__(self, receive: MemoryObjectReceiveStream[SignedRecord]) -> None:
        self._receive = receive
        self.report: LookupReport | None = None

    def __aiter__(self) -> AsyncIterator[SignedRecord]:
        return self._receive.__aiter__()


def _no_netgroup(record: CapabilityRecord) -> str | None:
    return None


def _no_penalty(peer: NodeId, reason: Penalty) -> None:
    return None


class DhtService:
    """One node's DHT (see the module docstring)."""

    def __init__(
        self,
        own: SignedRecord,
        rpc: DhtRpc,
        config: DhtConfig,
        *,
        wall_clock: Callable[[], float],
        penalise: Callable[[NodeId, Penalty], None] = _no_penalty,
        netgroup: Callable[[CapabilityRecord], str | None] = _no_netgroup,
        renew: Callable[[], SignedRecord] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if own.record.network != config.network:
            raise LocalProtocolError("the node's record is of another network")
        self.config = config
        self._own = own
        self._local = node_id_bytes(own.node_id)
        self._rpc = rpc
        self._wall = wall_clock
        self._penalise_cb = penalise
        self._renew = renew
        self._rng = rng or random.Random()
        now = wall_clock()
        self._table = RoutingTable(self._local, config.table, now=now)
        self._contacts = ContactBook(
            self._table, netgroup=netgroup, distrust_for=config.distrust_for,
            max_distrusted=config.max_distrusted,
        )
        self._store: ProviderStore[SignedRecord] = ProviderStore(config.providers)
        self._schedule = RepublishSchedule(
            interval=config.republish_interval,
            margin=config.republish_margin,
            jitter=config.republish_jitter,
            rng=self._rng,
        )
        self._provided: dict[bytes, str] = {}  # key -> capability we provide
        self._due_now: set[bytes] = set()
        self._wake = anyio.Event()
        self._verifier = RecordVerifier(config.network, cache_size=config.verify_cache)
        self._counters = DhtCounters()

    # -- state -----------------------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._own.node_id

    @property
    def record(self) -> SignedRecord:
        """The node's own record as this service publishes it."""
        return self._own

    @property
    def table(self) -> RoutingTable:
        """The routing table (read it; change it through ``add_contact``/``remove_contact``)."""
        return self._table

    def provided(self) -> dict[str, bytes]:
        """Capabilities this node provides through the DHT, with their keys."""
        return {cap: key for key, cap in self._provided.items()}

    def add_contact(self, signed: SignedRecord, *, verified: bool) -> AddOutcome | None:
        """Offer a verified record's node as a contact: ``verified`` when the node is reached
        over an authenticated connection (a connected peer), else hearsay. None: the node was
        penalised recently (``distrust_for``) and stays out of the table."""
        return self._contacts.add(signed, verified=verified, now=self._wall())

    def remove_contact(self, node_id: NodeId) -> None:
        """Forget a contact (banned, or known to be gone)."""
        self._contacts.remove(node_id_bytes(node_id))

    def update_record(self, signed: SignedRecord) -> None:
        """The node re-signed its record (new capabilities, addresses or a later expiry):
        republish it under every key provided at once; stop providing capabilities it lost."""
        if signed.node_id != self._own.node_id or signed.record.network != self.config.network:
            raise LocalProtocolError("update_record takes this node's record, in its network")
        if signed.seq <= self._own.seq:
            raise LocalProtocolError(f"seq {signed.seq} does not beat {self._own.seq}")
        self._own = signed
        for key, capability in list(self._provided.items()):
            if signed.record.has(capability):
                self._due_now.add(key)
            else:
                self.withdraw(capability)
        self._wake.set()

    def withdraw(self, capability: str) -> None:
        """Stop republishing ``capability`` (stored copies expire with the record)."""
        key = provider_key(self.config.network, capability)
        self._provided.pop(key, None)
        self._due_now.discard(key)
        self._schedule.withdraw(key)
        self._store.remove(key, self._local)

    def statistics(self) -> DhtStatistics:
        return self._counters.snapshot(
            table_size=len(self._table),
            provider_records=len(self._store),
            records=self._verifier.counters,
        )

    # -- serving ---------------------------------------------------------------------------------

    def handle(
        self, peer: NodeId, request: DhtRequest, *, sender_record: SignedRecord | None = None
    ) -> DhtResponse:
        """Answer a request from ``peer`` (authenticated by its connection).

        ``sender_record``: the record ``peer`` presented in its handshake (verified by the node
        against the authenticated id). A sender with addresses becomes a verified contact, as
        Kademlia learns of nodes from their queries; one without (a client) does not."""
        self._counters.served += 1
        now = self._wall()
        if sender_record is not None and sender_record.record.addresses:
            if sender_record.node_id != peer:
                raise LocalProtocolError("sender_record is not the authenticated peer's record")
            if sender_record.record.expires_at > now:
                self.add_contact(sender_record, verified=True)
        match request:
            case DhtFindNode(target):
                return DhtNodes(self._contacts.closest_records(target, self.config.lookup.k, now))
            case DhtGetProviders(key):
                entries = self._store.get(key, now, MAX_RECORDS_PER_MESSAGE)
                return DhtProviders(
                    tuple(e.payload.data for e in entries),
                    self._contacts.closest_records(key, self.config.lookup.k, now),
                )
            case DhtAddProvider(key, data):
                return self._add_provider(peer, key, data, now)
            case DhtPing():
                sender = node_id_bytes(peer)
                if sender in self._contacts:
                    self._table.on_success(sender, now)
                return DhtAck()

    def _add_provider(self, peer: NodeId, key: bytes, data: bytes, now: float) -> DhtResponse:
        try:
            signed = self._verifier.verify(data, now)
        except RecordError as exc:
            penalty = penalty_for_rejection(exc.reason)
            if penalty is not None:
                self._penalise(peer, penalty)
            return DhtError(DhtErrorCode.RECORD_REJECTED, str(exc))
        network = self.config.network
        if not any(provider_key(network, cap) == key for cap in signed.record.capabilities):
            self._penalise(peer, Penalty.UNRELATED_PROVIDER)
            return DhtError(DhtErrorCode.RECORD_REJECTED, "the record lacks the key's capability")
        provider = node_id_bytes(signed.node_id)
        outcome = self._store.put(
            key,
            provider,
            signed,
            seq=signed.seq,
            expires_at=float(signed.record.expires_at),
            source=node_id_bytes(peer),
            now=now,
        )
        provides = self._counters.provides
        provides[outcome] = provides.get(outcome, 0) + 1
        if signed.node_id == peer:  # the provider itself: an authenticated, reachable contact
            self.add_contact(signed, verified=True)
        match outcome:
            case StoreOutcome.ADDED | StoreOutcome.REPLACED | StoreOutcome.DUPLICATE:
                return DhtAck()
            case StoreOutcome.STALE:
                self._verifier.counters.reject(RecordRejection.STALE_SEQ)
                return DhtError(DhtErrorCode.RECORD_REJECTED, "a newer record is stored")
            case StoreOutcome.EXPIRED:
                return DhtError(DhtErrorCode.RECORD_REJECTED, "the record has expired")
            case StoreOutcome.KEY_FULL | StoreOutcome.SOURCE_FULL | StoreOutcome.STORE_FULL:
                return DhtError(DhtErrorCode.STORE_FULL, outcome.value)

    # -- contacts ------------------------------------------------------------------------------

    def distrust(self, node: bytes) -> None:
        """Drop a misbehaving contact and keep it out of the table for ``distrust_for``."""
        self._contacts.distrust(node, self._wall())

    def _penalise(self, peer: NodeId, reason: Penalty) -> None:
        penalties = self._counters.penalties
        penalties[reason] = penalties.get(reason, 0) + 1
        self._penalise_cb(peer, reason)

    # -- lookups ---------------------------------------------------------------------------------

    async def bootstrap(self, seeds: Iterable[SignedRecord], *, verified: bool = True) -> int:
        """Add ``seeds`` (verified records; ``verified``: reached over authenticated
        connections) and look up the node's own id; returns the table size."""
        for signed in seeds:
            self.add_contact(signed, verified=verified)
        await self.find_closest(self._local)
        return len(self._table)

    async def find_closest(self, target: bytes) -> list[SignedRecord]:
        """The records of the ``k`` nodes nearest ``target`` that answered, nearest first."""
        records, _ = await self.find_closest_report(target)
        return records

    async def find_closest_report(
        self, target: bytes, *, paths: int | None = None
    ) -> tuple[list[SignedRecord], LookupReport]:
        """``find_closest`` and what the lookup cost."""
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
        """Look up the providers of ``capability``; ``async for`` over the stream yields each
        verified provider record as it arrives (the node's own record excluded). The lookup
        stops after ``want`` providers, after ``max_messages`` queries, or when the block is
        left (then nothing keeps running). ``stream.report`` holds the cost once it ended."""
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
        lookup: Lookup[SignedRecord] = Lookup(
            target, mode, seeds, local_id=self._local, config=self.config.lookup,
            want=want, paths=paths,
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
                for signed in contacts:
                    node = node_id_bytes(signed.node_id)
                    ids.append(node)
                    held = hooks.book.get(node)
                    if held is None or signed.seq > held.seq:
                        hooks.book[node] = signed
                    if node != self._local:
                        self.add_contact(signed, verified=False)
                self.add_contact(hooks.book[peer], verified=True)  # it answered: it exists
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

    # -- providing -------------------------------------------------------------------------------

    async def provide(self, capability: str) -> ProvideReport:
        """Store the node's record on the ``k`` nodes nearest ``capability``'s key (and here),
        and keep republishing it before it expires (while ``run`` runs)."""
        if not self._own.record.has(capability):
            raise LocalProtocolError(f"the node's record does not advertise {capability!r}")
        key = provider_key(self.config.network, capability)
        self._provided[key] = capability
        self._due_now.discard(key)
        self._renew_if_needed()
        own = self._own
        now = self._wall()
        if own.record.expires_at <= now:
            self._schedule.withdraw(key)
            raise LocalProtocolError("the node's record has expired: re-sign it first")
        records, report = await self.find_closest_report(
            key, paths=self.config.lookup.provider_paths
        )
        self._store.put(
            key, self._local, own, seq=own.seq, expires_at=float(own.record.expires_at),
            source=self._local, now=now,
        )
        stored = 0

        async def store(signed: SignedRecord) -> None:
            nonlocal stored
            timeout = self.config.lookup.query_timeout
            try:
                with anyio.fail_after(timeout):
                    answer = await self._rpc.request(
                        signed.node_id, signed.record.addresses, DhtAddProvider(key, own.data),
                        timeout=timeout,
                    )
            except (TimeoutError, OverlayError):
                self._table.on_failure(node_id_bytes(signed.node_id))
                return
            if isinstance(answer, DhtAck):
                stored += 1

        async with anyio.create_task_group() as tg:
            for signed in records:
                tg.start_soon(store, signed)
        if own.record.expires_at - self.config.republish_margin > self._wall():
            self._schedule.published(
                key, expires_at=float(own.record.expires_at), now=self._wall()
            )
        else:  # too close to expiry to schedule: wait for a re-signed record
            self._schedule.withdraw(key)
        self._wake.set()
        return ProvideReport(capability, key, len(records), stored, report)

    def _renew_if_needed(self) -> None:
        if self._renew is None:
            return
        if self._own.record.expires_at - self.config.republish_margin > self._wall():
            return
        renewed = self._renew()
        if renewed.node_id != self.node_id or renewed.seq <= self._own.seq:
            raise LocalProtocolError("renew() must return this node's record with a higher seq")
        self._own = renewed

    # -- maintenance -----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Maintenance until cancelled: republish provider records before they expire, refresh
        idle buckets, sweep expired provider records."""
        task_status.started()
        while True:
            now = self._wall()
            due = sorted(self._due_now | set(self._schedule.due(now)))
            self._due_now.clear()
            for key in due:
                capability = self._provided.get(key)
                if capability is not None and self._own.record.has(capability):
                    with contextlib.suppress(LocalProtocolError):  # expired, no renew hook
                        await self.provide(capability)
                        self._counters.republished += 1
                else:
                    self._schedule.withdraw(key)
            self._store.sweep(self._wall())
            for index in self._table.refresh_due(self._wall())[: self.config.refresh_per_pass]:
                await self.find_closest(self._table.refresh_target(index, self._rng))
            wake = [
                t
                for t in (
                    self._schedule.next_due(),
                    self._store.next_expiry(),
                    self._table.next_refresh(self._wall()) if self.config.refresh_per_pass
                    else None,
                )
                if t is not None
            ]
            self._wake = anyio.Event()
            if self._due_now:
                continue
            delay = max(min(wake) - self._wall(), 0.0) if wake else math.inf
            with anyio.move_on_after(delay):
                await self._wake.wait()


class _Hooks:
    """One lookup's state the service needs while a ``walk`` runs (``WalkHooks``)."""

    __slots__ = ("blame", "book", "capability", "found", "sent", "service")

    def __init__(
        self,
        service: DhtService,
        book: dict[bytes, SignedRecord],
        capability: str | None,
        found: MemoryObjectSendStream[SignedRecord] | None,
        sent: set[bytes],
    ) -> None:
        self.service = service
        self.sent = sent
        """Providers already streamed (and the node itself)."""
        self.book = book
        self.capability = capability
        self.found = found
        self.blame: dict[bytes, Penalty] = {}

    def on_answer(
        self, lookup: Lookup[SignedRecord], peer: bytes, response: DhtResponse, now: float
    ) -> list[LookupEvent[SignedRecord]]:
        return self.service._check_answer(lookup, self, peer, response, now)

    def on_query_failed(self, peer: bytes) -> None:
        self.service.table.on_failure(peer)

    def on_misbehaved(self, peer: bytes, event: Misbehaved) -> None:
        penalty = self.blame.pop(peer, None) or Penalty.of(event.reason)
        self.service._penalise(node_id_from_bytes(peer), penalty)
        self.service.distrust(peer)

    def on_provider(self, found: ProviderFound[SignedRecord]) -> None:
        if self.found is not None and found.provider_id not in self.sent:
            self.sent.add(found.provider_id)
            self.found.send_nowait(found.payload)
