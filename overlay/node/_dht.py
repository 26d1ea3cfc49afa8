"""The node's DHT: :class:`~discovery.DhtService` wired to the node's connections.

Theory of operation
-------------------
:class:`NodeDht` belongs to one node (``node.dht``, None when ``[discovery.dht] enabled`` is
false) and runs as one of its services (``NodeServices``):

* **Transport** (:class:`DhtRpc` for the service): a query to a node that is a connected peer
  goes over that peer connection on the DHT channel (``0x03``, :data:`DHT`; straight on the
  connection: the DHT judges answers itself, so they do not count as useful responses in the
  peer score); any other node is reached over a
  *transient* connection (:mod:`overlay.node._transient`: DHT-only, bounded, closed when idle,
  never a peer). Record addresses are dialed over TCP; on a node with a memory transport (tests,
  simulations) a node is reachable by its id alone.
* **Serving**: DHT requests from peers (router channel handler) and from transient connections
  go through :meth:`NodeDht.answer`: a per-peer token bucket (:data:`REQUEST_RATE` requests/s,
  bursts of :data:`REQUEST_BURST`; over it the answer is ``RATE_LIMITED`` and the peer manager
  hears of it), then the service's ``handle`` with the requester's verified record (from
  ``node.discovery.records``, else the one its hello carried, verified against its
  authenticated id).
* **Contacts**: each connected peer whose record is known becomes a *verified* contact; the
  first ones trigger the bootstrap lookup (the node's own id), and a thin table (fewer than
  ``k`` contacts) bootstraps again when more peers connect (peers are looked at
  :data:`SETTLE_DELAY` after they connect, so a starting node's first peers make one bootstrap;
  at most every
  :data:`BOOTSTRAP_INTERVAL` seconds). Seeds and persistent peers arrive this way: the peer
  manager dials them as peers.
* **Providing**: every capability of the node's record is provided (``provide``) once the table
  has contacts, retried while nobody stored it. The record is the node's own
  (``node.capabilities``, :mod:`overlay.node._records`): each re-signed record reaches
  :meth:`NodeDht.set_record` through ``node.capabilities.subscribe`` (new capabilities are
  provided, dropped ones withdrawn, kept ones republished with the longer expiry).
* **Penalties** from the service map to peer-manager score events: a forged, spoofed or
  foreign-network record is a protocol violation, any other bad answer an invalid message.

Clocks: wall-clock (``time.time``) for records and the service, anyio's for deadlines.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc

from discovery import (
    DhtConfig,
    DhtError,
    DhtErrorCode,
    DhtRequest,
    DhtResponse,
    DhtService,
    DhtStatistics,
    LookupConfig,
    Penalty,
    ProvideReport,
    ProviderStream,
    RecordError,
    RecordStore,
    RecordVerifier,
    SignedRecord,
    TableConfig,
    decode_dht_request,
    decode_dht_response,
    encode_dht_request,
    encode_dht_response,
    parse_record_address,
    record_netgroup,
)
from discovery._record import CapabilityRecord
from overlay.address import NodeAddress
from overlay.connection._driver import PeerConnection, RequestExpired
from overlay.connection._observer import Observer
from overlay.connection._ratelimit import TokenBucket
from overlay.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    NodeClosed,
    RequestError,
    RequestTimeout,
)
from overlay.identity import NodeId
from overlay.node._config import NodeConfig
from overlay.node._discovery import DHT_CHANNEL_ID, report_penalty, score_event_of
from overlay.node._host import NodeBasics
from overlay.node._records import NodeCapabilities
from overlay.node._transient import TransientConnections
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.transport import Transport
from overlay.wire._nodeinfo import NodeInfo

__all__ = [
    "BOOTSTRAP_INTERVAL",
    "DHT",
    "DhtHost",
    "NodeDht",
    "REQUEST_BURST",
    "REQUEST_RATE",
    "Responder",
    "SETTLE_DELAY",
    "dht_config",
    "score_event_of",
]

log = logging.getLogger("overlay.dht")

REQUEST_RATE = 20.0
"""DHT requests per second one peer may send us on average (a lookup sends one per node)."""
REQUEST_BURST = 60
"""...and at once."""
BOOTSTRAP_INTERVAL = 10.0
"""Seconds between bootstrap lookups while the routing table is thin."""
SETTLE_DELAY = 1.0
"""Seconds the DHT waits after a peer connects before looking at the peers: the peers of a
starting node arrive together and make one bootstrap, after their connections settled."""
_MAX_BUCKETS = 4096
"""Peers whose request rate is remembered (least recently seen forgotten first)."""


class _RequestCodec:
    def encode(self, message: DhtRequest, /) -> bytes:
        return encode_dht_request(message)

    def decode(self, data: bytes, /) -> DhtRequest:
        return decode_dht_request(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _RequestCodec)

    def __hash__(self) -> int:
        return hash(_RequestCodec)


class _ResponseCodec:
    def encode(self, message: DhtResponse, /) -> bytes:
        return encode_dht_response(message)

    def decode(self, data: bytes, /) -> DhtResponse:
        return decode_dht_response(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ResponseCodec)

    def __hash__(self) -> int:
        return hash(_ResponseCodec)


DHT: ChannelSpec[DhtRequest, DhtResponse] = ChannelSpec(
    id=DHT_CHANNEL_ID, name="overlay.dht", codec=_RequestCodec(),
    response_codec=_ResponseCodec(), priority=5, max_message_size=256 * 1024,
    max_concurrent_requests=8,
)
"""The DHT channel: Kademlia requests and answers (``discovery/_wire.py``)."""

Responder = Callable[[NodeId, DhtRequest, SignedRecord | None], DhtResponse]
"""Answers one DHT request: ``(peer, request, sender_record) -> response``."""


class DhtHost(NodeBasics, Protocol):
    """What the DHT needs of the node (the :class:`~overlay.Node` provides it)."""

    @property
    def transports(self) -> tuple[Transport, ...]: ...

    @property
    def capabilities(self) -> NodeCapabilities: ...

    def channel(self, spec: ChannelSpec[Any, Any]) -> Channel[Any, Any]: ...


def dht_config(config: NodeConfig) -> DhtConfig:
    """The service's configuration from ``[discovery.dht]``."""
    s = config.discovery.dht
    return DhtConfig(
        network=config.network,
        table=TableConfig(k=s.k),
        lookup=LookupConfig(k=s.k, alpha=s.alpha, provider_paths=s.disjoint_paths,
                            query_timeout=s.query_timeout),
        density_limit=s.density_limit,
    )


def _netgroup(record: CapabilityRecord) -> str | None:
    """Diversity group of a contact; loopback and private hosts (local testnets) have none."""
    if not record.addresses:
        return None
    if _local_host(record.addresses[0].rpartition(":")[0].strip("[]")):
        return None
    return record_netgroup(record)


@functools.lru_cache(maxsize=1024)  # once per host, not per record seen
def _local_host(host: str) -> bool:
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        return ip.is_loopback or ip.is_private
    return False


class _Rpc:
    """The service's ``DhtRpc``: a peer connection if there is one, else a transient one."""

    def __init__(self, dht: NodeDht) -> None:
        self._dht = dht

    async def request(
        self, peer: NodeId, addresses: Sequence[str], message: DhtRequest, *, timeout: float
    ) -> DhtResponse:
        dht = self._dht
        dht.messages_sent += 1
        payload = encode_dht_request(message)
        conn = dht.host.router.get_peer(peer)
        if conn is not None and conn.is_open and DHT_CHANNEL_ID in conn.info.channels:
            # Straight on the connection, not through the router: the DHT judges answers
            # itself (penalties), so a DHT answer is no "useful response" to the peer score.
            try:
                data = await conn.request(DHT_CHANNEL_ID, payload, timeout=timeout)
            except RequestExpired:
                raise RequestTimeout(f"no DHT answer from {peer} within {timeout:g} s") from None
        else:
            data = await dht.transient.request(
                peer, dht.addresses_of(peer, addresses), payload, timeout=timeout
            )
        try:
            return decode_dht_response(data)
        except DecodeError:
            dht.host.observer.on_invalid_message(peer, DHT.name, "undecodable DHT answer")
            raise


class NodeDht:
    """One node's DHT (see the module docstring)."""

    def __init__(
        self,
        host: DhtHost,
        transient: TransientConnections,
        *,
        records: RecordStore,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.records = records
        """The node's verified records of other nodes (filled by the records service)."""
        self.watcher: Observer = _PeerWatch(self)
        """Added to the node's observers: a new peer may be a new verified contact."""
        self.settings = host.config.discovery.dht
        self.config = dht_config(host.config)
        self.transient = transient
        self.channel: Channel[DhtRequest, DhtResponse] = host.channel(DHT)
        self.channel.handle_requests(self._on_peer_request)
        transient.serve = self._serve_transient
        self.wall_clock = wall_clock
        """Unix seconds (the node's ``wall_clock``): records' and the service's times."""
        self.messages_sent = 0
        """DHT requests this node sent (lookups, stores, pings)."""
        self.rate_limited = 0
        """Requests refused by the per-peer rate limit."""
        self._rng = rng or random.Random()
        self._verifier = RecordVerifier(host.config.network)
        self._buckets: OrderedDict[NodeId, TokenBucket] = OrderedDict()
        self._record: SignedRecord | None = None
        self._service: DhtService | None = None
        self._responder: Responder | None = None
        self._by_id = any(t.protocol == "memory" for t in host.transports)
        self._contacts: set[NodeId] = set()
        self._provided: set[str] = set()
        self._changed = anyio.Event()
        self._last_bootstrap = -math.inf
        self._bootstrapped = anyio.Event()

    # ------------------------------------------------------------------------------ state

    @property
    def service(self) -> DhtService:
        if self._service is None:
            raise NodeClosed("the node's DHT is not running")
        return self._service

    @property
    def running(self) -> bool:
        return self._service is not None

    @property
    def record(self) -> SignedRecord | None:
        """The record the DHT publishes for this node (None before it started)."""
        return self._service.record if self._service is not None else self._record

    def statistics(self) -> DhtStatistics:
        return self.service.statistics()

    def set_responder(self, responder: Responder | None) -> None:
        """Answer DHT requests with ``responder`` instead of the service (None: the service
        again). For experiments and tests (e.g. a node that lies); rate limiting still
        applies. ``default_answer`` is the service's answer."""
        self._responder = responder

    def default_answer(
        self, peer: NodeId, request: DhtRequest, record: SignedRecord | None
    ) -> DhtResponse:
        return self.service.handle(peer, request, sender_record=record)

    def addresses_of(self, peer: NodeId, addresses: Sequence[str]) -> list[NodeAddress]:
        """Where to dial ``peer`` for a query: its record addresses (TCP), or its id alone on
        a memory transport."""
        out: list[NodeAddress] = []
        if any(t.protocol == "tcp" for t in self.host.transports):
            for text in addresses:
                with contextlib.suppress(RecordError):
                    out.append(parse_record_address(text, peer))
        if self._by_id:
            out.append(NodeAddress(peer, "memory"))
        return out

    # ------------------------------------------------------------------------- own record

    def set_record(self, signed: SignedRecord) -> None:
        """Publish this re-signed record of the node (the records service calls this when the
        capabilities, addresses or expiry change): capabilities it gained are provided,
        capabilities it lost withdrawn, the others republished at once."""
        if signed.node_id != self.host.node_id:
            raise LocalProtocolError("set_record takes this node's own record")
        self._record = signed
        if self._service is not None and signed.seq > self._service.record.seq:
            self._service.update_record(signed)
            self._provided &= set(signed.record.capabilities)
            self._changed.set()

    # -------------------------------------------------------------------------- serving

    def peer_record(self, peer: NodeId, info: NodeInfo | None) -> SignedRecord | None:
        """``peer``'s verified record: from the node's record store, else from its hello."""
        now = self.wall_clock()
        known = self.records.get(peer, now)
        if known is not None:
            return known
        if info is None or not info.capability_record:
            return None
        try:
            signed = self._verifier.verify(info.capability_record, now)
        except RecordError:
            return None
        return signed if signed.node_id == peer else None

    def _allow(self, peer: NodeId) -> bool:
        now = anyio.current_time()
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(REQUEST_RATE, REQUEST_BURST, now)
            while len(self._buckets) > _MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        if not bucket.can_consume(1, now):
            return False
        bucket.consume(1, now)
        return True

    def answer(self, peer: NodeId, request: DhtRequest, info: NodeInfo | None) -> DhtResponse:
        """Answer one DHT request from ``peer`` (authenticated by its connection)."""
        if not self._allow(peer):
            self.rate_limited += 1
            self.host.observer.on_rate_limited(peer, DHT_CHANNEL_ID)
            return DhtError(DhtErrorCode.RATE_LIMITED, "too many DHT requests")
        service = self._service
        if service is None:
            return DhtError(DhtErrorCode.UNSPECIFIED, "the DHT is not running")
        record = self.peer_record(peer, info)
        if record is not None and not record.record.addresses and self._by_id:
            service.add_contact(record, verified=True)  # reachable by id (memory transport)
        if self._responder is not None:
            return self._responder(peer, request, record)
        return service.handle(peer, request, sender_record=record)

    async def _on_peer_request(self, env: Envelope[DhtRequest]) -> DhtResponse:
        conn = self.host.router.get_peer(env.sender)
        return self.answer(env.sender, env.message, conn.info if conn is not None else None)

    async def _serve_transient(self, conn: PeerConnection, payload: bytes) -> bytes:
        try:
            request = decode_dht_request(payload)
        except DecodeError as exc:
            self.host.observer.on_invalid_message(conn.node_id, DHT.name, str(exc))
            raise RequestError(ErrorCode.DECODE, str(exc)[:200]) from None
        return encode_dht_response(self.answer(conn.node_id, request, conn.info))

    def _penalise(self, peer: NodeId, penalty: Penalty) -> None:
        report_penalty(self.host.observer, peer, penalty, channel=DHT.name, source="dht")

    # ------------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the service, the transient pool and the contact/provide loop until cancelled."""
        own = self.host.capabilities.record or self._record
        if own is None:
            raise LocalProtocolError("the node's record is signed when it listens: start it")
        self._record = own
        self._service = DhtService(
            own, _Rpc(self), self.config, wall_clock=self.wall_clock, penalise=self._penalise,
            netgroup=_netgroup, rng=self._rng,
        )
        unsubscribe = self.host.capabilities.subscribe(lambda event: self.set_record(event.record))
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.transient.run)
                await tg.start(self._service.run)
                tg.start_soon(self._maintain)
                task_status.started()
        finally:
            unsubscribe()
            self._service = None

    def peer_connected(self) -> None:
        """A peer connected (or its record changed): look for new verified contacts."""
        self._changed.set()

    async def _maintain(self) -> None:
        while True:
            await anyio.sleep(SETTLE_DELAY)
            self._changed = anyio.Event()
            added = self._absorb_peers()
            service = self.service
            thin = len(service.table) < self.config.lookup.k
            now = anyio.current_time()
            if added and (not self._bootstrapped.is_set() or thin) and (
                now - self._last_bootstrap >= BOOTSTRAP_INTERVAL
            ):
                await self.bootstrap()
            if len(service.table):
                await self._provide_missing()
            if not self._changed.is_set():
                delay = BOOTSTRAP_INTERVAL if (thin or self._missing()) else math.inf
                with anyio.move_on_after(delay):
                    await self._changed.wait()

    def _absorb_peers(self) -> int:
        """Add connected peers with known records as verified contacts; returns how many."""
        added = 0
        service = self.service
        for conn in self.host.router.peers():
            if conn.node_id in self._contacts or not conn.is_open:
                continue
            record = self.peer_record(conn.node_id, conn.info)
            if record is None:
                continue
            if service.add_contact(record, verified=True) is not None:
                self._contacts.add(conn.node_id)
                added += 1
        return added

    async def bootstrap(self) -> int:
        """Add the connected peers' records as contacts and look up the node's own id;
        returns the routing table's size."""
        self._absorb_peers()
        self._last_bootstrap = anyio.current_time()
        size = await self.service.bootstrap(())
        self._bootstrapped.set()
        return size

    def _missing(self) -> list[str]:
        record = self.service.record.record
        return sorted(set(record.capabilities) - self._provided)

    async def _provide_missing(self) -> None:
        for capability in self._missing():
            try:
                report = await self.service.provide(capability)
            except LocalProtocolError as exc:
                log.warning("cannot provide %s: %s", capability, exc)
                continue
            if report.stored:
                self._provided.add(capability)
            log.debug("provided %s on %d of %d nodes", capability, report.stored,
                      report.attempted)

    # ----------------------------------------------------------------------------- API

    async def republish(self) -> list[ProvideReport]:
        """Store the node's record under each of its capabilities now (``overlay providers``
        does not need it: the service republishes on its own schedule)."""
        reports = []
        for capability in sorted(self.service.record.record.capabilities):
            report = await self.service.provide(capability)
            if report.stored:
                self._provided.add(capability)
            reports.append(report)
        return reports

    async def lookup_report(self, capability: str) -> dict[str, Any]:
        """Run one provider lookup and describe it as JSON-able data (``overlay providers``,
        admin ``POST /providers``): the providers found (id, addresses, version of the
        capability) and the lookup's rounds, messages, outcome and times."""
        started = anyio.current_time()
        found: list[dict[str, Any]] = []
        async with self.find_providers(capability) as stream:
            async for signed in stream:
                info = signed.record.capabilities[capability]
                found.append({
                    "id": signed.node_id,
                    "addresses": list(signed.record.addresses),
                    "version": info.version,
                    "attributes": dict(info.attributes),
                    "seq": signed.seq,
                    "expires_at": signed.record.expires_at,
                    "after": anyio.current_time() - started,
                })
        report = stream.report
        assert report is not None
        return {
            "capability": capability,
            "providers": found,
            "outcome": report.outcome.value,
            "rounds": report.rounds,
            "messages": report.messages,
            "responses": report.responses,
            "timeouts": report.timeouts,
            "misbehaved": report.misbehaved,
            "elapsed": report.elapsed,
            "first_provider_after": report.first_provider_after,
        }

    @contextlib.asynccontextmanager
    async def find_providers(
        self,
        capability: str,
        *,
        want: int | None = None,
        max_messages: int | None = None,
        paths: int | None = None,
    ) -> AsyncIterator[ProviderStream]:
        """Look up the providers of ``capability`` (see ``DhtService.find_providers``;
        ``paths``: disjoint paths, default ``[discovery.dht] disjoint_paths``)."""
        async with self.service.find_providers(
            capability, want=want, max_messages=max_messages, paths=paths
        ) as stream:
            yield stream


class _PeerWatch(Observer):
    """Tells the DHT about new peers (they may be new verified contacts)."""

    def __init__(self, dht: NodeDht) -> None:
        self._dht = dht

    def on_peer_connected(
        self, peer: NodeId, *, outbound: bool, remote_host: str, listen_addrs: tuple[str, ...]
    ) -> None:
        self._dht.peer_connected()
