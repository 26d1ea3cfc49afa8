"""The node: the assembly that wires transports, connections, the router, the peer manager
(with its SQLite store), the admin API and the metrics endpoint. ``overlay start`` runs this
same object (``overlay.node._service`` adds the home's lock, key loading and signals).

``async with Node(config) as node:`` returns once every listener is bound, the application
(``config.app``) is set up and the services run (:mod:`overlay.node._services`: the peering
driver, the admin API for a node with a home, metrics when enabled); leaving the block closes
every connection (peers get a ``shutdown`` Disconnect), fails pending requests with
:class:`~overlay.errors.NodeClosed`, then stops the services (the store is flushed and closed)
and every task started with :meth:`Node.start_soon` / :meth:`Node.start`.

Transports are passed in as builders (``transports=[...]``, see
:mod:`overlay.transport._setup`); the default serves the configured ``tcp://`` listen addresses.
A node without a home has an ephemeral key and writes no files.

Connection set-up (both directions; ``overlay.node._setup``): the transport dials/accepts and
runs the Noise handshake (authenticated node id); then the hello exchange
(``overlay.wire._nodeinfo``: compatibility and admission, refusals carry a reason both sides
log); then a :class:`~overlay.connection._driver.PeerConnection` is registered with the router
and runs until closed.

Channels open and close at any time (:meth:`Node.channel`, :meth:`Node.close_channel`). Each
change, and each :meth:`Node.update_local_info`, bumps the node's ``info_seq`` and announces the
whole new NodeInfo to every connected peer in a CONTROL node-info update (see
``overlay.connection._infosync`` and docs/protocol.md). A connection whose hello went out before
the latest change gets the update as soon as it is registered.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

import anyio
import anyio.abc

from discovery import Penalty, ProviderStream
from overlay._version import __version__
from overlay.address import NodeAddress, is_unspecified
from overlay.connection._observer import MultiObserver, Observer
from overlay.connection._timers import TimerService
from overlay.errors import (
    ChannelError,
    DialError,
    LocalProtocolError,
    NetworkError,
    NodeClosed,
)
from overlay.identity import NodeId, NodeKey
from overlay.node._advertise import advertised_addresses, check_external_addresses, host_addresses
from overlay.node._app import run_app
from overlay.node._config import NodeConfig
from overlay.node._control import NodeControl
from overlay.node._dht import DHT, NodeDht
from overlay.node._discovery import DiscoveryState, report_penalty
from overlay.node._peering import DialOutcome, Peering
from overlay.node._pex import PEX, Pex
from overlay.node._records import CAPABILITIES_FILE, NodeCapabilities
from overlay.node._routing import NodeRouting
from overlay.node._services import NodeServices
from overlay.node._setup import Admission, ConnectionSetup
from overlay.node._summary import PeerSummary
from overlay.node._traffic import TrafficTotals
from overlay.node._transient import TransientConnections
from overlay.node._transports import build_transports
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._router import PeerInfoListener, Router
from overlay.transport import Transport, TransportBuilder
from overlay.transport._failures import Direction, HandshakeFailureReason
from overlay.transport._secure import SecureIdentity, SecureStream
from overlay.wire._nodeinfo import (
    DisconnectReason,
    NodeInfo,
    encode_info_update,
)

if TYPE_CHECKING:
    from overlay.operator._metrics import MetricsSnapshot

__all__ = [
    "Admission",
    "DialOutcome",
    "Node",
    "PING",
    "PeerSummary",
]

log = logging.getLogger("overlay.node")

M = TypeVar("M")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

_DISCOVER_WANT = 8
"""Providers one routing-driven DHT lookup stops at."""



PING: ChannelSpec[bytes, bytes] = ChannelSpec(
    id=0x01, name="overlay.ping", codec=BytesCodec(), response_codec=BytesCodec(),
    priority=10, max_message_size=1024, max_concurrent_requests=4,
)
"""Built into every node: a request echoes its payload (liveness and latency probes)."""


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message


class Node:
    """A peer-to-peer node. Use as ``async with Node(config) as node: ...``."""

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        key: NodeKey | None = None,
        home: str | Path | None = None,
        transports: Sequence[Transport | TransportBuilder] | None = None,
        observer: Observer | None = None,
        admission: Admission | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``config``: the same :class:`NodeConfig` ``overlay start`` loads from
        ``config.toml`` (default: all defaults). ``key``: the node's identity (default: loaded
        from, or created in, ``home``; without a home, a new ephemeral key). ``home``: the
        directory ``config``'s paths are relative to (peer store, admin token); without one the
        node writes no files. ``transports``: builders (or ready transports for this key) that
        replace the default, TCP on the ``tcp://`` listen addresses. ``observer``: told every
        fact about peers, after the node's peer manager. ``admission``: an extra check of each
        inbound peer after the peer manager admitted it. ``wall_clock``: unix seconds, the
        clock of the peer manager, records, PEX, routing and the DHT (tests pass a fake)."""
        self.config = config or NodeConfig()
        self.wall_clock = wall_clock
        self.home = Path(home) if home is not None else None
        if key is None:
            if self.home is None:
                key = NodeKey.generate()
            else:
                key = NodeKey.load_or_generate(self.home / self.config.node_key_file)
        self.key = key
        self.node_id: NodeId = key.node_id
        check_external_addresses(self.config.external_addresses, self.node_id)
        self.identity = SecureIdentity(key)
        metrics = None
        if self.config.metrics.enabled:
            from overlay.operator._metrics import MetricsObserver, NodeMetrics

            metrics = NodeMetrics(namespace=self.config.metrics.namespace)
        self._user_observers: tuple[Observer, ...] = (observer,) if observer is not None else ()
        if metrics is not None:
            self._user_observers += (MetricsObserver(metrics),)
        self._multi = MultiObserver(*self._user_observers)
        self.observer: Observer = self._multi
        """Every fact about peers goes here: the peer manager, then the ``observer`` given,
        then the metrics."""
        self._transports: list[Transport] = build_transports(  # before anything needs closing
            self.config, self.identity, self._accept_gate, transports
        )
        self.router = Router(self.node_id, self.observer)
        self._info_seq = 0
        self._listening = False
        self._capability_record = b""
        self.channel(PING).handle_requests(_echo)
        if self.config.discovery.dht.enabled:  # part of the NodeInfo as at start
            self.router.open_channel(DHT)
        self.router.on_channels_changed = self._announce
        self.admission = admission
        self.gate: Callable[[str], bool] | None = None
        """Optional extra pre-handshake check of a remote host (after the peer manager's)."""
        self.discovery = DiscoveryState(network=self.config.network, router=self.router)
        """Verified capability records and the discovery services' shared state."""
        self.routing = NodeRouting(
            node_id=self.node_id, router=self.router, discovery=self.discovery,
            config=self.config.routing, limits=self.config.connection_limits(),
            local_capabilities=lambda: frozenset(self.capabilities),
            protocols=frozenset(t.protocol for t in self._transports),
            peering=lambda: self._services.peering if self._services.started else None,
            metrics=metrics, wall_clock=wall_clock,
        )
        """Capability routing: targets, the policy driver, role and group requests."""
        disco = self.config.discovery
        self.capabilities = NodeCapabilities(
            key, network=self.config.network, ttl=disco.record_ttl, configured=disco.capabilities,
            state_file=(self.home / self.config.data_dir / CAPABILITIES_FILE
                        if self.home is not None else None),
        )
        """What this node advertises in its signed capability record (a read-only mapping
        with ``set`` / ``remove`` / ``replace``; see ``overlay.node._records``)."""
        self._services = NodeServices(self, home=self.home, metrics=metrics)
        self.dht: NodeDht | None = None
        """The node's DHT (``[discovery.dht] enabled``): ``find_providers``, statistics."""
        self._transient: TransientConnections | None = None
        self._timers = TimerService(self.observer)
        if self.config.discovery.dht.enabled:
            self._transient = TransientConnections(
                self.config.discovery.dht, spec=DHT, connection=self.config.connection,
                timers=self._timers, observer=self.observer, dial=self._dial_stream,
                local_info=self.local_info,
            )
            self.dht = NodeDht(self, self._transient, records=self.discovery.records,
                               wall_clock=wall_clock)
            self._services.add(self.dht.run)
            self.routing.discover = self._discover_providers  # Discover actions: DHT lookups
        self._listen_addresses: list[NodeAddress] = []
        self._advertised: list[NodeAddress] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._started = False
        self._closing = False
        self._setup = ConnectionSetup(
            self, timers=self._timers, transient=self._transient,
            closing=lambda: self._closing,
            peering=lambda: self._services.peering if self._services.started else None,
        )
        """The hello, admission and connection tasks (``overlay.node._setup``)."""
        self.handshake_failures: dict[Direction, dict[HandshakeFailureReason, int]] = (
            self._setup.handshake_failures
        )
        """Failed connection set-ups (Noise handshake or hello) by direction and reason."""

    @property
    def retired_traffic(self) -> TrafficTotals:
        """Traffic counters of closed connections (so exported totals never decrease)."""
        return self._setup.retired

    @property
    def peering(self) -> Peering:
        """The peering driver (the peer manager, ``peering.manager``, and its store); exists
        while the node runs."""
        return self._services.peering

    @property
    def pex(self) -> Pex:
        """The PEX driver (``overlay.node._pex``): signed records exchanged on channel 2, the
        ``wanted`` capabilities, ``statistics()``; exists while the node runs (unless
        ``[discovery] pex_enabled = false``)."""
        return self._services.pex

    @property
    def control(self) -> NodeControl:
        """What the admin API calls (status, peers, dial, ban...); exists while the node runs."""
        return self._services.control

    @property
    def admin_url(self) -> str | None:
        """Where the admin API listens (``http://HOST:PORT`` / ``unix:PATH``), if it does."""
        return self._services.control.admin_url if self._services.started else None

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT`` of the Prometheus endpoint (``/metrics``), if served."""
        return self._services.control.metrics_url if self._services.started else None

    def metrics_snapshot(self) -> MetricsSnapshot:
        """What the metrics endpoint exports at scrape time (works with metrics disabled too):
        peer counts, traffic totals including closed connections, transport counters."""
        return self._services.metrics_snapshot()

    def start_soon(self, fn: Callable[[*Ts], Coroutine[Any, Any, Any]], *args: *Ts,
                   name: object = None) -> None:
        """Run ``fn(*args)`` in the node's task group: it is cancelled when the node stops,
        and an exception it raises stops the node (and is raised from ``async with``)."""
        if self._tg is None or self._closing:
            raise NodeClosed("the node is not running")
        self._tg.start_soon(fn, *args, name=name)

    async def start(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: object,
                    name: object = None) -> Any:
        """Like :meth:`start_soon`, but wait until ``fn`` calls ``task_status.started(value)``
        (anyio's protocol) and return ``value``."""
        if self._tg is None or self._closing:
            raise NodeClosed("the node is not running")
        return await self._tg.start(fn, *args, name=name)

    @property
    def transports(self) -> tuple[Transport, ...]:
        """The node's transports (one per protocol): their ``statistics()`` count dials,
        accepted and refused inbound connections (gate, overload) and handshake failures."""
        return tuple(self._transports)

    # ------------------------------------------------------------------------------ set-up

    def _accept_gate(self, remote_host: str) -> bool:
        """Cheap check before any handshake work (bans, per-IP limits)."""
        if self._closing or not self._services.started or self.capabilities.record is None:
            return False  # not ready: every hello carries our signed record
        if not self._services.peering.check_inbound(remote_host):
            return False
        return self.gate is None or self.gate(remote_host)

    # --------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Node:
        if self._started:
            raise LocalProtocolError("a Node can be started only once")
        self._started = True
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            v4: list[str] = []
            v6: list[str] = []
            if not self.config.external_addresses and any(
                is_unspecified(a.host) for a in self.config.listen_addresses()
            ):
                v4, v6 = await host_addresses()  # before the first hello goes out
            await self._tg.start(self._timers.run)
            peering = self._services.open()  # the store; gates and admits from now on
            watchers = (self.dht.watcher,) if self.dht is not None else ()
            self._multi.set(*self._services.observers, self.discovery.peers, *watchers,
                            self.routing, *self._user_observers)
            self.discovery.peers.start(peering, self._services.metrics)
            self.discovery.start(
                local_id=self.node_id,
                pex=self._services.pex if self.config.discovery.pex_enabled else None,
                dht=self.dht,
                penalise=self._penalise_discovery,
                wall_clock=self.wall_clock,
            )
            self._listening = True
            for transport in self._transports:
                serve = functools.partial(
                    transport.serve, self._setup.on_inbound,
                    on_handshake_failed=self._setup.record_failure,
                )
                try:
                    addresses = await self._tg.start(serve)
                except OSError as exc:
                    where = ", ".join(self.config.listen)
                    raise NetworkError(
                        f"cannot listen on {where}: {exc.strerror or exc}"
                    ) from exc
                self._listen_addresses.extend(addresses)
                self._choose_advertised(v4, v6)
            # Our signed record, in every hello from now on (see overlay.node._records).
            self.capabilities.start(lambda: self._advertised, self._publish_record)
            self._tg.start_soon(self.capabilities.run)
            if self.config.app:
                await run_app(self.config.app, self)
            await self._tg.start(self._services.run)
        except BaseException:
            self._closing = True
            self._services.close_store()
            self._tg.cancel_scope.cancel()
            try:
                await self._tg.__aexit__(None, None, None)
            finally:
                self.router.close()  # ends the channels' inboxes (an app may have opened some)
            raise
        log.info("node %s listening on %s", self.node_id,
                 ", ".join(str(a) for a in self._listen_addresses))
        wildcard = [a.host for a in self._listen_addresses if a.unspecified]
        if self.config.external_addresses or wildcard:
            why = ("external_addresses" if self.config.external_addresses else
                   f"{', '.join(wildcard)} names no host: this machine's addresses instead")
            log.info("node %s advertises %s (%s)", self.node_id,
                     ", ".join(str(a) for a in self._advertised), why)
        return self

    def _choose_advertised(self, v4: list[str], v6: list[str]) -> None:
        """Decide what the hello advertises (see ``overlay.node._advertise``): never ``0.0.0.0``."""
        self._advertised = advertised_addresses(
            self._listen_addresses, self.config.external_addresses, v4_hosts=v4, v6_hosts=v6
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            await self.aclose()
        finally:
            # The body's own exception is not handed to the task group: it propagates as it
            # is (not wrapped in an ExceptionGroup); the node's tasks are cancelled either way.
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Close every connection (peers are told why, best effort); pending requests fail.
        Returns within ``connection.close_timeout`` (plus scheduling) whatever the peers do:
        a connection whose Disconnect cannot be written by then is aborted."""
        if self._closing:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            self._services.withdraw()  # first: the CLI no longer finds a stopping node
            self.discovery.stop()
            conns = self.router.peers()
            for conn in conns:
                conn.close(DisconnectReason.SHUTDOWN, "node shutting down",
                           error=NodeClosed("the node is shutting down"))
            if self._transient is not None:
                self._transient.close_all()
            # Each connection ends within close_timeout on its own (the timer task aborts it);
            # the margin only guards against a driver that could not run its finally block.
            with anyio.move_on_after(self.config.connection.close_timeout + 1.0):
                for conn in conns:
                    await conn.aclose()
            self.router.close()

    # ------------------------------------------------------------------------------ public

    @property
    def listen_addresses(self) -> list[NodeAddress]:
        """Where this node accepts connections (ports resolved)."""
        return list(self._listen_addresses)

    @property
    def address(self) -> NodeAddress:
        """The first listen address (convenient in tests and examples)."""
        if not self._listen_addresses:
            raise LocalProtocolError("the node is not listening (not started?)")
        return self._listen_addresses[0]

    def channel(self, spec: ChannelSpec[M, R]) -> Channel[M, R]:
        """Open (or get) the channel described by ``spec``, typed by its message classes.

        Works before and after the node started: connected peers learn of a new channel from a
        node-info update and can use it at once, without reconnecting."""
        known = any(s.id == spec.id for s in self.router.channel_specs())
        try:
            self.router.open_channel(spec)
        except LocalProtocolError as exc:
            if not known and not isinstance(exc, ChannelError):  # too big to announce
                self.router.close_channel(spec)
            raise
        return Channel(spec, self.router)

    def close_channel(self, channel: ChannelSpec[Any, Any] | int) -> None:
        """Close a channel (by spec or id) and announce it to connected peers.

        Our pending requests on it, sends waiting for queue space on it and receivers waiting
        on it fail with :class:`~overlay.errors.ChannelClosed`; requests the peers sent on it
        are answered ``NO_HANDLER``, and peers' new requests to it fail at once once they
        heard of it. Opening it again later works. The built-in ping channel stays open
        (ChannelError)."""
        if (channel if isinstance(channel, int) else channel.id) == PING.id:
            raise ChannelError("the built-in overlay.ping channel cannot be closed")
        self.router.close_channel(channel)

    @property
    def info_seq(self) -> int:
        """The sequence number of this node's current NodeInfo (0: as at start; every channel
        opened or closed and every :meth:`update_local_info` adds one)."""
        return self._info_seq

    def update_local_info(self, *, capability_record: bytes) -> None:
        """Replace what this node's NodeInfo carries beyond its channels and addresses (today:
        the opaque signed ``capability_record`` that discovery fills) and announce it to the
        connected peers with a node-info update. LocalProtocolError if the NodeInfo would then
        exceed the update size limit (``MAX_INFO_UPDATE_BYTES``)."""
        previous = self._capability_record
        self._capability_record = bytes(capability_record)
        try:
            encode_info_update(self._info_seq + 1, self.local_info())
        except LocalProtocolError:
            self._capability_record = previous
            raise
        self._announce()

    def _publish_record(self, record: bytes) -> None:
        """A new signed record of ours (``overlay.node._records``): the first one is part of
        the NodeInfo as at start (``info_seq`` 0; no hello went out before it, see
        ``_accept_gate``), later ones are announced."""
        if not self._capability_record:
            self._capability_record = record
            return
        self.update_local_info(capability_record=record)

    def subscribe_peer_info(self, listener: PeerInfoListener) -> Callable[[], None]:
        """Call ``listener(peer_id, info)`` each time a connected peer announces a new NodeInfo
        (synchronously, from that peer's reader: do not block). Returns the unsubscribe
        function. The observer's ``on_peer_info_updated`` hears the same."""
        return self.router.add_peer_info_listener(listener)

    def _announce(self) -> None:
        """Our NodeInfo changed: a new ``info_seq``, sent to every connected peer. Before the
        node listens no hello can have gone out, so a change then (a service opening its
        channel at start) is part of the NodeInfo every hello carries, at ``info_seq`` 0."""
        if not self._listening:
            return
        self._info_seq += 1
        peers = [conn for conn in self.router.peers() if conn.is_open]
        if not peers:
            return
        payload = encode_info_update(self._info_seq, self.local_info())
        for conn in peers:
            conn.send_info_update(self._info_seq, payload)

    def connected_peers(self) -> list[NodeId]:
        return list(self.router.connected_peers())

    def peer_summaries(self) -> list[PeerSummary]:
        return [PeerSummary(conn) for conn in self.router.peers()]

    @property
    def advertised_addresses(self) -> list[NodeAddress]:
        """What peers are told to dial (the hello's ``listen_addrs``): ``external_addresses``
        when configured, else the listen addresses with ``0.0.0.0`` / ``::`` replaced by this
        machine's concrete addresses (see ``overlay.node._advertise``)."""
        return list(self._advertised)

    def local_info(self) -> NodeInfo:
        conf = self.config
        return NodeInfo(
            network=conf.network,
            channels=tuple(sorted(s.id for s in self.router.channel_specs())),
            listen_addrs=tuple(str(a) for a in self._advertised),
            software_version=f"overlay/{__version__}",
            capability_record=self._capability_record,
            compression=("zstd",) if conf.connection.compression else (),
            moniker=conf.moniker,
        )

    async def dial(self, address: NodeAddress | str, *, timeout: float | None = None) -> NodeId:
        """Connect to ``address`` (``ID@HOST:PORT`` or ``memory:ID``) and return the peer id.

        Returns at once if already connected. Raises :class:`DialError`,
        :class:`~overlay.errors.AuthenticationError` (another id answered),
        :class:`IncompatiblePeerError` (refused, with the reason) or a timeout error.
        """
        return (await self.dial_outcome(address, timeout=timeout)).node_id

    async def dial_outcome(
        self, address: NodeAddress | str, *, timeout: float | None = None
    ) -> DialOutcome:
        """Like :meth:`dial`, but says whether *this* address was connected to: ``new`` is
        False when the peer was already connected (or another dial to it won meanwhile), in
        which case ``address`` was never tried and proves nothing."""
        addr = NodeAddress.parse(address) if isinstance(address, str) else address
        if self._tg is None or self._closing:
            raise NodeClosed("the node is not running")
        if addr.node_id == self.node_id:
            raise LocalProtocolError("refusing to dial ourselves")
        return await self._setup.dial(addr, timeout, self._transport_for, self._tg)

    async def _discover_providers(self, capability: str) -> None:
        """Routing's ``discover`` hook: ``node.discovery.candidates`` for providers the node
        does not know yet (connected peers and known records excluded), so PEX and then the
        DHT are asked; what they find enters ``node.discovery.records``, where the policy
        engine finds candidates."""
        known = {s.node_id for s in self.discovery.peers.connected_records()}
        now = self.wall_clock()
        known.update(s.node_id for s in self.discovery.records.candidates(capability, now))
        async with self.discovery.candidates(
            capability, limit=_DISCOVER_WANT, exclude=known
        ) as found:
            async for _ in found:
                pass

    def _penalise_discovery(self, peer: NodeId, penalty: Penalty) -> None:
        report_penalty(self.observer, peer, penalty, channel=PEX.name, source="discovery")

    @contextlib.asynccontextmanager
    async def find_providers(
        self, capability: str, *, want: int | None = None, max_messages: int | None = None
    ) -> AsyncIterator[ProviderStream]:
        """Look up the nodes providing ``capability`` in the DHT: ``async with
        node.find_providers("blocksync") as found: async for record in found: ...`` yields
        each verified provider record as it arrives (the first before the lookup ends);
        ``found.report`` holds rounds, messages and latency once it ended. Stops after
        ``want`` providers or ``max_messages`` queries, or when the block is left.
        LocalProtocolError when the DHT is disabled; NodeClosed when the node is not running.
        """
        if self.dht is None:
            raise LocalProtocolError("the DHT is disabled ([discovery.dht] enabled = false)")
        async with self.dht.find_providers(
            capability, want=want, max_messages=max_messages
        ) as stream:
            yield stream

    async def _dial_stream(self, addr: NodeAddress, first_data: bytes,
                           timeout: float) -> SecureStream:
        """Connect and authenticate only (transient connections run their own hello)."""
        return await self._transport_for(addr).dial(addr, timeout=timeout, first_data=first_data)

    def _transport_for(self, addr: NodeAddress) -> Transport:
        for transport in self._transports:
            if transport.protocol == addr.protocol:
                return transport
        raise DialError(f"no {addr.protocol} transport configured to reach {addr}")

    async def disconnect(self, node_id: NodeId, message: str = "") -> bool:
        """Close the connection to ``node_id``; False when it was not connected."""
        conn = self.router.get_peer(node_id)
        if conn is None:
            return False
        await conn.aclose(DisconnectReason.OPERATOR, message or "disconnected by operator")
        return True
