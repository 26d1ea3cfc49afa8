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
* **Lookups** (:class:`DhtLookups`, ``_dht_lookups.py``, which shares the table, contact book,
  provider store and verifier) run the pure :class:`Lookup` in one task: each ``Query`` becomes
  a child task in the lookup's task group, bounded by ``query_timeout`` (anyio) and the core's
  own deadline; answers come back on a memory stream and are fed to the core in order. Leaving
  a lookup early (the consumer stops, or cancellation) cancels the task group: nothing keeps
  running.
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
from collections.abc import Callable, Iterable

import anyio
from anyio.abc import TaskStatus

from discovery._dht_contacts import ContactBook
from discovery._dht_lookups import DhtLookups, ProviderStream
from discovery._dht_providers import (
    ProviderStore,
    RepublishSchedule,
    StoreOutcome,
)
from discovery._dht_table import AddOutcome, RoutingTable
from discovery._keys import node_id_bytes, provider_key
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

__all__ = ["DhtConfig", "DhtService"]


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
        self._lookups = DhtLookups(
            config, local=self._local, rpc=rpc, table=self._table, contacts=self._contacts,
            store=self._store, verifier=self._verifier, counters=self._counters,
            wall_clock=wall_clock, penalise=self._penalise,
        )

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
        was_empty = not len(self._table)
        outcome = self._contacts.add(signed, verified=verified, now=self._wall())
        if was_empty and len(self._table):
            self._wake.set()  # maintenance had no bucket refresh to wait for: schedule them
        return outcome

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
        return await self._lookups.find_closest_report(target, paths=paths)

    def find_providers(
        self,
        capability: str,
        *,
        want: int | None = None,
        paths: int | None = None,
        max_messages: int | None = None,
    ) -> contextlib.AbstractAsyncContextManager[ProviderStream]:
        """Look up the providers of ``capability``; ``async for`` over the stream yields each
        verified provider record as it arrives (the node's own record excluded). The lookup
        stops after ``want`` providers, after ``max_messages`` queries, or when the block is
        left (then nothing keeps running). ``stream.report`` holds the cost once it ended::

            async with dht.find_providers("archive", want=3) as found:
                async for signed in found:
                    ...
        """
        return self._lookups.find_providers(
            capability, want=want, paths=paths, max_messages=max_messages
        )

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
