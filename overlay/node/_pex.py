"""PEX in the node: the PEX channel (0x02) driver over the pure core ``discovery._pex``.

Theory of operation
-------------------
One :class:`Pex` per node (``node.pex``), built by the services when the node starts; it opens
the PEX channel before any listener is bound, so every hello lists channel 2.

**Serving** (:meth:`Pex._serve`, the channel's request handler): the asker's token bucket is
checked on the driver's monotonic clock (:meth:`PexResponder.allow`); an empty bucket answers
``ErrorCode.UNAVAILABLE`` and every :data:`REFUSALS_PER_PENALTY`-th refusal in a row costs the
asker a ``RATE_LIMIT_EXCEEDED`` score event (an honest asker backs off after one refusal, so it
never gets there). Otherwise :meth:`PexResponder.select` picks records from
``node.discovery.records`` on the wall clock, never the asker's own, never a private peer's
(``[peers] private_peer_ids`` and the operator's ``private`` flag) nor a banned one's, weighted
towards nodes the peer manager saw being useful and towards the capabilities the asker named.

**Asking** (:meth:`Pex._ask_loop`): every round asks one PEX-speaking connected peer, the one
asked least recently (:class:`PexAsker`), naming the capabilities :attr:`Pex.wanted` says are
short; the next round comes ``min_interval`` later while the record store is thin, up to
``max_interval`` once it is full. While the store is thin a newly connected peer is asked at
once (the driver observes connections) rather than at the next round; once it is full a new
connection wakes nothing (the work per round does not grow with the connections made between
rounds); the loop also looks every :data:`TICK`. A peer that refused us is not asked
again for ``1 / rate`` seconds.

**Receiving** (:meth:`Pex.accept`, also used for :meth:`request_records`' callers' sake by the
view): every record is verified (``RecordVerifier``: signature, canonical bytes, our network,
wall-clock time); a record refused for a reason that blames the sender (forged, spoofed id,
other network, malformed...; not ``expired`` or ``stale_seq``) costs the sender one
``INVALID_MESSAGE`` score event per answer. Verified records are offered to the record store
with the asking peer as their source (the store's per-source cap applies); a stored record's
addresses go to the peer manager's address book with the same source (its per-source limit
applies) and the record bytes to the peer store (``set_capability_record``).

**Seed mode** (``[discovery] seed_mode``): every connected peer is asked once as soon as it is
seen, its requests are served, and it is hung up on per :class:`SeedKeeper` (1 s after the
exchange went both ways, 5 s after our question if it asks nothing, 10 s at most); the seed
also dials up to 8 nodes at a time whose records it holds and has not crawled in 10 minutes.

:class:`Pex` implements discovery's ``PexClient`` (:meth:`Pex.request_records`), so a
``CapabilityView`` can ask connected peers through it.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import anyio
import anyio.abc

from discovery import (
    OfferOutcome,
    PexAsker,
    PexRequest,
    PexResponder,
    PexResponse,
    RecordError,
    RecordRejection,
    SignedRecord,
    decode_pex_request,
    decode_pex_response,
    encode_pex_request,
    encode_pex_response,
)
from discovery._service_types import Penalty, penalty_for_rejection
from discovery._verify import RecordVerifier
from discovery._wire import MAX_RECORDS_PER_MESSAGE
from overlay.connection._observer import Observer, TaskRoot
from overlay.errors import ErrorCode, LocalProtocolError, OverlayError, RequestError
from overlay.identity import NodeId
from overlay.node._discovery import PEX_CHANNEL_ID, DiscoveryState
from overlay.node._host import NodeBasics
from overlay.node._peering import Peering
from overlay.node._pex_seed import SeedConfig, SeedKeeper
from overlay.peers import PeerFlag
from overlay.router._channel import Channel, ChannelSpec, Envelope

__all__ = [
    "ASK_TIMEOUT",
    "PEX",
    "Pex",
    "PexRequestCodec",
    "PexResponseCodec",
    "PexStatistics",
    "REFUSALS_PER_PENALTY",
    "RecordOutcome",
    "TICK",
]

log = logging.getLogger("overlay.pex")

ASK_TIMEOUT = 10.0
"""Seconds a PEX request may take before the asker gives up on it."""
TICK = 1.0
"""How often the asker loop looks at its peers when nothing wakes it."""
REFUSALS_PER_PENALTY = 3
"""Refusals in a row (rate limit) that cost the asker one ``RATE_LIMIT_EXCEEDED`` event."""
_MAX_RESPONSE_BYTES = MAX_RECORDS_PER_MESSAGE * 1040 + 1024


@dataclass(frozen=True, slots=True)
class PexRequestCodec:
    """``PexRequest`` on the wire (``proto/discovery.proto``)."""

    def encode(self, message: PexRequest, /) -> bytes:
        return encode_pex_request(message)

    def decode(self, data: bytes, /) -> PexRequest:
        return decode_pex_request(data)


@dataclass(frozen=True, slots=True)
class PexResponseCodec:
    """``PexResponse`` on the wire (``proto/discovery.proto``)."""

    def encode(self, message: PexResponse, /) -> bytes:
        return encode_pex_response(message)

    def decode(self, data: bytes, /) -> PexResponse:
        return decode_pex_response(data)


PEX: ChannelSpec[PexRequest, PexResponse] = ChannelSpec(
    id=PEX_CHANNEL_ID, name="overlay.pex", codec=PexRequestCodec(),
    response_codec=PexResponseCodec(), priority=2, send_queue_size=4,
    max_message_size=_MAX_RESPONSE_BYTES, max_concurrent_requests=2, request_timeout=ASK_TIMEOUT,
)
"""The PEX channel: a ``PexRequest`` is answered with a ``PexResponse`` of SignedRecord bytes
(at most 64 records of at most 1024 bytes each)."""

RecordOutcome = RecordRejection | OfferOutcome
"""What became of one received record: a verification failure, or the record store's verdict
(``ACCEPTED`` / ``REPLACED`` stored it; ``STALE``: an equal or newer one is known)."""


class PexNode(NodeBasics, Protocol):
    """What the driver needs of the node (the :class:`~overlay.Node` provides it)."""

    @property
    def discovery(self) -> DiscoveryState: ...

    async def disconnect(self, node_id: NodeId, message: str = "") -> bool: ...


@dataclass(frozen=True, slots=True)
class PexStatistics:
    """A snapshot of the PEX driver's counters (``node.pex.statistics()``)."""

    requests_sent: Mapping[str, int]
    """By outcome: ``answered``, ``refused`` (rate limited by the peer), ``failed``."""
    requests_served: int
    requests_refused: int
    """Requests from peers refused by the rate limit."""
    records_received: int
    records_accepted: int
    """Stored in the record store (new node or higher seq)."""
    records_rejected: Mapping[RecordOutcome, int]
    penalties: Mapping[Penalty, int]
    seed_hang_ups: int
    crawl_dials: int


class _Counters:
    __slots__ = ("accepted", "crawls", "hang_ups", "penalties", "received", "refused",
                 "rejected", "sent", "served")

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.served = 0
        self.refused = 0
        self.received = 0
        self.accepted = 0
        self.rejected: dict[RecordOutcome, int] = {}
        self.penalties: dict[Penalty, int] = {}
        self.hang_ups = 0
        self.crawls = 0


class Pex(Observer):
    """The PEX driver of one node (see the module docstring). It observes the node's peers:
    a new connection wakes the asker at once."""

    def __init__(
        self,
        node: PexNode,
        peering: Peering,
        *,
        rng: random.Random | None = None,
        seed: SeedConfig | None = None,
    ) -> None:
        settings = node.config.discovery
        self.config = settings.pex
        self._node = node
        self._peering = peering
        self._metrics = peering.metrics
        self._rng = rng or random.Random()
        self._responder = PexResponder(self.config, rng=self._rng)
        self._asker = PexAsker(self.config, rng=self._rng)
        self._verifier = RecordVerifier(node.config.network)
        self._private = node.config.peers.private_ids()
        self.seed: SeedKeeper | None = (
            SeedKeeper(seed) if settings.seed_mode or seed is not None else None
        )
        self._deficits: Mapping[str, int] = MappingProxyType({})
        self._counters = _Counters()
        self._refusals: dict[NodeId, int] = {}
        self._backoff: dict[NodeId, float] = {}
        self._asked: set[NodeId] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake = anyio.Event()
        node.router.open_channel(PEX)
        self.channel: Channel[PexRequest, PexResponse] = Channel(PEX, node.router)
        self.channel.handle_requests(self._serve)

    # ------------------------------------------------------------------------------- public

    @property
    def wanted(self) -> Mapping[str, int]:
        """Capability deficits (name -> providers missing) the asker names in its requests,
        largest first, at most ``max_wanted``; set by the routing layer (default: none)."""
        return self._deficits

    @wanted.setter
    def wanted(self, deficits: Mapping[str, int]) -> None:
        self._deficits = MappingProxyType(dict(deficits))

    def statistics(self) -> PexStatistics:
        c = self._counters
        return PexStatistics(
            requests_sent=MappingProxyType(dict(c.sent)),
            requests_served=c.served,
            requests_refused=c.refused,
            records_received=c.received,
            records_accepted=c.accepted,
            records_rejected=MappingProxyType(dict(c.rejected)),
            penalties=MappingProxyType(dict(c.penalties)),
            seed_hang_ups=c.hang_ups,
            crawl_dials=c.crawls,
        )

    async def request_records(
        self, peer: NodeId, wanted: Sequence[str], *, max_records: int, timeout: float
    ) -> Sequence[bytes]:
        """``PexClient``: ask ``peer`` for up to ``max_records`` records, preferably of
        ``wanted`` capabilities; the records come back unverified. Raises an ``OverlayError``
        (``RequestError(UNAVAILABLE)`` while the peer's rate limit is known to refuse)."""
        if anyio.current_time() < self._backoff.get(peer, -math.inf):
            raise RequestError(ErrorCode.UNAVAILABLE, f"{peer} rate-limited us; not asking")
        limit = max(0, min(max_records, MAX_RECORDS_PER_MESSAGE))
        request = PexRequest(max=limit, wanted_capabilities=tuple(wanted)[: self.config.max_wanted])
        response = await self._request(peer, request, timeout)
        return response.records[:limit]

    async def ask(self, peer: NodeId, request: PexRequest | None = None) -> int:
        """Ask ``peer`` now (default request: the configured maximum and :attr:`wanted`) and
        take in its answer; returns the records stored. Raises an ``OverlayError``."""
        if request is None:
            request = PexRequest(self.config.max_per_response, self._asker.wanted(self._deficits))
        response = await self._request(peer, request, ASK_TIMEOUT)
        return self.accept(peer, response.records[: request.max])

    def accept(self, peer: NodeId, records: Sequence[bytes]) -> int:
        """Verify ``records`` handed over by ``peer`` and keep the good ones (module
        docstring); returns how many were stored. Penalises ``peer`` once for forged ones."""
        wall = self._peering.wall_clock()
        store = self._node.discovery.records
        c = self._counters
        blame: Penalty | None = None
        stored = 0
        for data in records:
            c.received += 1
            try:
                signed = self._verifier.verify(data, wall)
            except RecordError as exc:
                self._reject(exc.reason)
                blame = blame or penalty_for_rejection(exc.reason)
                continue
            if signed.node_id == self._node.node_id:
                self._reject(OfferOutcome.STALE)  # our own record: we know better
                continue
            result = store.offer(signed, wall, source=peer)
            if not result.stored:
                self._reject(result.outcome)
                continue
            stored += 1
            c.accepted += 1
            self._learn(signed, peer, wall)
        if self._metrics is not None:
            self._metrics.pex_records(received=len(records), accepted=stored)
        if blame is not None:
            c.penalties[blame] = c.penalties.get(blame, 0) + 1
            if self._metrics is not None:
                self._metrics.pex_penalty(blame.value)
            log.info("peer %s handed over bad records (%s)", peer, blame.value,
                     extra={"peer": peer})
            self._peering.on_invalid_message(peer, PEX.name, blame.value)
        if stored:
            self._peering.wake()
        return stored

    # ----------------------------------------------------------------------------- observer

    def on_peer_connected(
        self, peer: NodeId, *, outbound: bool, remote_host: str, listen_addrs: tuple[str, ...]
    ) -> None:
        # A seed asks every new peer at once; a node with a full store waits for its next
        # round (no work per connection made).
        if self.seed is not None or self._thin():
            self._wake.set()

    def _thin(self) -> bool:
        return len(self._node.discovery.records) < self.config.thin_below

    # ------------------------------------------------------------------------------ running

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a peer connects meanwhile."""
        self._wake = anyio.Event()
        with anyio.move_on_after(seconds):
            await self._wake.wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Ask peers (and in seed mode crawl and hang up) until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                if self.seed is not None:
                    await self._seed_loop(self.seed)
                else:
                    await self._ask_loop()
            finally:
                self._tg = None

    async def _ask_loop(self) -> None:
        next_at = -math.inf  # ask on the first pass
        while True:
            now = anyio.current_time()
            thin = self._thin()
            # The connected peers are listed (O(connections)) only when a round is due or, while
            # the store is thin, to find a peer not asked yet: not on every wake-up.
            peers = self._pex_peers(now) if thin or now >= next_at else []
            fresh = thin and any(p not in self._asked for p in peers)
            if now >= next_at or fresh:
                plan = self._asker.plan(now, peers, known=len(self._node.discovery.records),
                                        deficits=self._deficits)
                if plan.peer is not None:
                    self._start_ask(plan.peer, plan.request)
                if now >= next_at:
                    next_at = plan.next_at
            await self._sleep(max(0.0, min(next_at - now, TICK)))

    async def _seed_loop(self, seed: SeedKeeper) -> None:
        node = self._node
        while True:
            now = anyio.current_time()
            peers = self._pex_peers(now)
            seed.observe(node.router.connected_peers(), now)
            for peer in seed.fresh():
                if peer in peers and peer not in self._asked:
                    plan = self._asker.plan(now, [peer], known=len(node.discovery.records),
                                            deficits=self._deficits)
                    self._start_ask(peer, plan.request)
                elif peer not in peers:
                    seed.asked(peer, now)  # it speaks no PEX: nothing to ask
            for peer in seed.hang_ups(now, self._keep):
                self._counters.hang_ups += 1
                self._spawn(node.disconnect, peer, "seed node: exchange done")
            wall = self._peering.wall_clock()
            records = {s.node_id: s for s in node.discovery.records.records(wall)}
            for node_id in seed.crawl(records, now, self_id=node.node_id):
                self._spawn(self._crawl, seed, records[node_id])
            await self._sleep(seed.config.tick)

    # -------------------------------------------------------------------------------- asking

    def _pex_peers(self, now: float) -> list[NodeId]:
        """Connected peers that serve the PEX channel and have not refused us lately; drops
        the state of peers that are gone."""
        router = self._node.router
        connected = set(router.connected_peers())
        for table in (self._refusals, self._backoff):
            for peer in [p for p in table if p not in connected]:
                del table[peer]
        for peer in [p for p in self._asked if p not in connected]:
            self._asked.discard(peer)
            self._asker.forget(peer)
            self._responder.forget(peer)
        out = []
        for peer in sorted(connected):
            conn = router.get_peer(peer)
            if conn is None or PEX_CHANNEL_ID not in conn.info.channels:
                continue
            if now >= self._backoff.get(peer, -math.inf):
                out.append(peer)
        return out

    def _start_ask(self, peer: NodeId, request: PexRequest) -> None:
        self._asked.add(peer)
        self._spawn(self._ask_task, peer, request)

    async def _ask_task(self, peer: NodeId, request: PexRequest) -> None:
        try:
            await self.ask(peer, request)
        except OverlayError as exc:
            log.debug("PEX request to %s failed: %s", peer, exc, extra={"peer": peer})
        finally:
            if self.seed is not None:
                self.seed.asked(peer, anyio.current_time())

    async def _request(self, peer: NodeId, request: PexRequest, timeout: float) -> PexResponse:
        try:
            response = await self.channel.request(peer, request, timeout=timeout)
        except RequestError as exc:
            refused = exc.code is ErrorCode.UNAVAILABLE
            if refused:
                self._backoff[peer] = anyio.current_time() + 1.0 / self.config.rate
            self._sent("refused" if refused else "failed")
            raise
        except OverlayError:
            self._sent("failed")
            raise
        self._sent("answered")
        return response

    def _sent(self, outcome: str) -> None:
        sent = self._counters.sent
        sent[outcome] = sent.get(outcome, 0) + 1
        if self._metrics is not None:
            self._metrics.pex_request_sent(outcome)

    def _reject(self, outcome: RecordOutcome) -> None:
        rejected = self._counters.rejected
        rejected[outcome] = rejected.get(outcome, 0) + 1
        if self._metrics is not None:
            self._metrics.pex_record_rejected(outcome.value)

    def _learn(self, signed: SignedRecord, source: NodeId, wall: float) -> None:
        """A stored record: its addresses to the address book, its bytes to the peer store."""
        manager = self._peering.manager
        for address in signed.record.dial_addresses():
            manager.add_address(address, source=source, now=wall)
        manager.set_capability_record(signed.node_id, signed.data, wall)

    # ------------------------------------------------------------------------------- serving

    async def _serve(self, env: Envelope[PexRequest]) -> PexResponse:
        peer = env.sender
        c = self._counters
        if not self._responder.allow(peer, anyio.current_time()):
            c.refused += 1
            refusals = self._refusals[peer] = self._refusals.get(peer, 0) + 1
            if self._metrics is not None:
                self._metrics.pex_request_served("rate_limited")
            if refusals % REFUSALS_PER_PENALTY == 0:
                self._peering.on_rate_limited(peer, PEX_CHANNEL_ID)
            raise RequestError(ErrorCode.UNAVAILABLE, "rate limited: ask less often")
        self._refusals.pop(peer, None)
        wall = self._peering.wall_clock()
        records = self._node.discovery.records.records(wall)
        private, successes = self._peer_facts(records, wall)
        chosen = self._responder.select(records, env.message, asker=peer, now=wall,
                                        private=private, successes=successes)
        c.served += 1
        if self._metrics is not None:
            self._metrics.pex_request_served("served")
        if self.seed is not None:
            self.seed.served(peer, anyio.current_time())
        return PexResponse(tuple(s.data for s in chosen))

    def _peer_facts(
        self, records: Sequence[SignedRecord], wall: float
    ) -> tuple[Collection[NodeId], Mapping[NodeId, float]]:
        """Who must not be gossiped (private or banned) and when each node was last useful."""
        manager = self._peering.manager
        hidden: set[NodeId] = set()
        successes: dict[NodeId, float] = {}
        for signed in records:
            node_id = signed.node_id
            if node_id in self._private:
                hidden.add(node_id)
                continue
            snap = manager.peer(node_id, wall)
            if snap is None:
                continue
            if PeerFlag.PRIVATE in snap.flags or (snap.ban_until is not None
                                                  and snap.ban_until > wall):
                hidden.add(node_id)
            elif snap.last_useful is not None:
                successes[node_id] = snap.last_useful
        return hidden, successes

    # ----------------------------------------------------------------------------- seed mode

    def _keep(self, peer: NodeId) -> bool:
        snap = self._peering.manager.peer(peer, self._peering.wall_clock())
        return snap is not None and bool(
            snap.flags & {PeerFlag.PERSISTENT, PeerFlag.UNCONDITIONAL}
        )

    async def _crawl(self, seed: SeedKeeper, signed: SignedRecord) -> None:
        connected = False
        try:
            addresses = signed.record.dial_addresses()
            if addresses:
                self._counters.crawls += 1
                await self._peering.dial(addresses[0],
                                         timeout=self._node.config.peers.dial_timeout)
                connected = True
        except (OverlayError, TimeoutError) as exc:
            log.debug("crawl of %s failed: %s", signed.node_id, exc)
        finally:
            seed.dial_done(signed.node_id, anyio.current_time(), connected=connected)

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        if self._tg is None:
            raise LocalProtocolError("the PEX driver is not running")
        self._tg.start_soon(_task_root, fn, args, self._node.observer)


async def _task_root(
    fn: Callable[..., Awaitable[object]], args: tuple[object, ...], observer: Observer
) -> None:
    """Root of the driver's short tasks: a bug in one must not stop the node."""
    try:
        await fn(*args)
    except OverlayError as exc:
        log.debug("PEX task ended: %s", exc)
    except Exception:  # task root: logged, never raised into the node's task group
        log.exception("PEX task %s failed unexpectedly", getattr(fn, "__name__", fn))
        observer.on_task_failed(TaskRoot.PEX_TASK)
