"""The node's capability routing: targets, the policy driver, role requests and peer health.

``node.routing`` (one :class:`NodeRouting` per node, created with it) owns

* the **targets** (``[routing] targets`` in the config, changed live by :meth:`set_target` /
  :meth:`remove_target`: the admin API and ``overlay targets``), validated against the
  ``[peers]`` limits;
* the **policy driver** (:meth:`run`, started by the node's services): every ``heartbeat``
  seconds, at once when a peer connects or disconnects, and when a target's backoff ends
  (a provider's jittered dial backoff, a discovery due), it builds a
  :class:`~routing.PolicySnapshot` and executes the engine's plan through the peer manager,
  the one place that dials and evicts (``Protect`` → ``set_protected("routing", ...)``,
  ``Prune`` → ``disconnect_peer``, ``Dial`` → ``dial_now`` + the peering driver's ``dial``,
  ``Discover`` → the ``discover`` hook the discovery services install, counted either way);
* the :class:`~routing._role.RoleService` the router binds ``Role`` and ``Group``
  destinations to (health, hedging, acquisition of a provider within the caller's deadline).

Which capabilities count
------------------------
A connected peer *has* a capability for routing when it is **confirmed** (it served a role
request for it) or **advertised** in its verified signed record (from its hello and updates,
``node.discovery.peers``; else ``node.discovery.records``) and not **suspect** (a request for
it failed or was refused within the cool-down). Counting advertised claims is what lets a node
meet its targets at first contact, before any request was made; a peer that lies stops counting
after its first failed request, loses score (``node.discovery.refute``) and is pruned like any
peer no target needs. Every role attempt's outcome confirms or refutes through
``node.discovery``, which keeps ``PeerView.confirmed`` current.

Clocks: the engine's ``now`` is the anyio clock (virtual in tests); the peer manager and the
records run on wall time, converted where they meet.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, assert_never

import anyio
import anyio.abc
import anyio.lowlevel

from overlay.address import NodeAddress
from overlay.connection._observer import Observer
from overlay.errors import (
    InvalidAddressError,
    OverlayError,
    RoleFailure,
    RoleUnavailable,
)
from overlay.identity import NodeId
from overlay.node._config import RoutingConfig
from overlay.node._peering import Peering
from overlay.peers import BanKind
from overlay.router._channel import Channel
from overlay.router._destination import PeerView
from overlay.router._router import Router
from overlay.transport._failures import Direction
from routing import (
    Candidate,
    CapabilityStatus,
    CapabilityTarget,
    ConnectedPeer,
    ConnectionLimits,
    Dial,
    Discover,
    Outcome,
    PolicyEngine,
    PolicyPlan,
    PolicySnapshot,
    Protect,
    Prune,
    TargetSet,
    TargetState,
)
from routing._destinations import Group, Role
from routing._role import RoleService
from routing._role_results import GroupResponse, RoleResponse, RoleResult

if TYPE_CHECKING:
    from overlay.node._discovery import DiscoveryState
    from overlay.operator._metrics import NodeMetrics

__all__ = ["NodeRouting", "ROUTING_PROTECTION"]

log = logging.getLogger("overlay.routing")

R = TypeVar("R")

ROUTING_PROTECTION = "routing"
"""The peer manager's protected set the policy's ``Protect`` action replaces."""

_DIAL_TIMEOUT = 10.0
_ACQUIRE_TRIES = 3


class NodeRouting(Observer):
    """Capability routing of one node (module docstring)."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        router: Router,
        discovery: DiscoveryState,
        config: RoutingConfig,
        limits: ConnectionLimits,
        local_capabilities: Callable[[], frozenset[str]] = frozenset,
        protocols: frozenset[str] = frozenset({"tcp"}),
        peering: Callable[[], Peering | None],
        metrics: NodeMetrics | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.wall_clock = wall_clock
        """Unix seconds (the node's ``wall_clock``): records' and the peer manager's times."""
        self.config = config
        self.limits = limits
        self._router = router
        self._discovery = discovery
        self._records = discovery.records
        self._peering = peering
        self.metrics = metrics
        self.targets: TargetSet = config.targets
        self._local_capabilities = local_capabilities
        self.protocols = protocols
        """Address protocols this node can dial (its transports')."""
        self.engine = PolicyEngine(node_id, config.policy_config())
        self.roles = RoleService(
            capabilities_of=self._usable,
            local_capabilities=self.local_capabilities,
            acquire=self._acquire,
            listener=self,
            hedge=config.hedge_config(),
            hedging=config.hedging,
            is_suspect=discovery.peers.is_suspect,
        )
        router.set_destination_binder(self.roles.bind)
        self.discover: Callable[[str], Awaitable[None]] | None = None
        """Set by a discovery service (PEX, DHT): look for providers of a capability and put
        their verified records into ``node.discovery.records``. Without it ``Discover`` actions
        are only counted (records then come from handshakes)."""
        self.last_plan: PolicyPlan | None = None
        self.dials_started = 0
        self.discoveries = 0
        self.prunes = 0
        self._dialing: dict[NodeId, float] = {}
        self._keepers: frozenset[NodeId] = frozenset()
        self._unattainable: set[str] = set()
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    def local_capabilities(self) -> frozenset[str]:
        """Capabilities this node serves itself (``Role(..., allow_local=True)``)."""
        return frozenset(self._local_capabilities())

    # ----------------------------------------------------------------------- targets

    def set_target(self, target: CapabilityTarget) -> tuple[str, ...]:
        """Add or replace a target; raises :class:`ConfigError` (nothing changed) when the
        new set cannot fit the limits, returns the validation warnings otherwise."""
        updated = self.targets.with_target(target)
        warnings = updated.validate(self.limits)
        self.targets = updated
        for warning in warnings:
            log.warning("routing target: %s", warning)
        self.wake()
        return warnings

    def remove_target(self, capability: str) -> bool:
        if self.targets.get(capability) is None:
            return False
        self.targets = self.targets.without(capability)
        self._unattainable.discard(capability)
        self.wake()
        return True

    def statuses(self) -> tuple[CapabilityStatus, ...]:
        """The status of every target after the last tick (none before the first)."""
        plan = self.last_plan
        if plan is None:
            return ()
        wanted = {t.capability for t in self.targets}
        return tuple(s for s in plan.statuses if s.capability in wanted)

    def status(self) -> list[dict[str, Any]]:
        """Per target: connected, required, deficit, attainable, state (JSON-able)."""
        loop_now = anyio.current_time()
        out = []
        by_cap = {s.capability: s for s in self.statuses()}
        for target in self.targets:
            s = by_cap.get(target.capability)
            entry: dict[str, Any] = {"capability": target.capability,
                                     "target": target.to_mapping()}
            if s is not None:
                entry.update(
                    connected=s.connected, required=s.required, deficit=s.deficit,
                    dialing=s.dialing, known_providers=s.known_providers,
                    attainable=s.attainable, state=s.state.value, reason=s.reason,
                    retry_in_seconds=(None if s.backoff_until is None
                                      else round(max(0.0, s.backoff_until - loop_now), 3)),
                )
            out.append(entry)
        return out

    # ----------------------------------------------------------------------- requests

    async def request(self, channel: Channel[Any, R], role: Role, message: Any, *,
                      timeout: float | None = None) -> RoleResponse[R]:
        """A role request that also says which peer answered after how many attempts."""
        return await self.roles.request(channel, role, message, timeout=timeout)

    async def group_request(self, channel: Channel[Any, R], group: Group, message: Any, *,
                            timeout: float | None = None) -> GroupResponse[R]:
        """Ask every member of ``group``; a per-peer result each (see ``GroupResponse``)."""
        return await self.roles.group_request(channel, group, message, timeout=timeout,
                                              view=self._router.peer_table)

    # ----------------------------------------------------------------------- capabilities

    def _advertised(self, node_id: NodeId, view: PeerView | None, now: float) -> frozenset[str]:
        """The peer's record from its hello/updates, else from the record store (PEX, DHT),
        else what its view says."""
        advertised = self._discovery.peers.advertised(node_id)
        if advertised:
            return advertised
        signed = self._records.get(node_id, now)
        if signed is not None:
            return frozenset(signed.record.capabilities)
        return view.advertised if view is not None else frozenset()

    def _usable(self, view: PeerView) -> frozenset[str]:
        peers = self._discovery.peers
        node_id = view.node_id
        advertised = self._advertised(node_id, view, self.wall_clock())
        return peers.confirmed(node_id) | frozenset(
            c for c in advertised if not peers.is_suspect(node_id, c)
        )

    # ----------------------------------------------------------------------- observer

    def on_peer_connected(self, peer: NodeId, *, outbound: bool, remote_host: str,
                          listen_addrs: tuple[str, ...]) -> None:
        self._dialing.pop(peer, None)
        self.wake()

    def on_peer_disconnected(self, peer: NodeId, reason: str) -> None:
        self.roles.forget(peer)
        self.wake()

    def on_attempt(self, node_id: NodeId, capability: str, outcome: Outcome) -> None:
        """A role attempt ended: confirm or refute the capability (``node.discovery``; a
        refute also costs the peer score), mark a useful peer."""
        match outcome:
            case Outcome.SUCCESS:
                self._discovery.confirm(node_id, capability)
                peering = self._peering()
                if peering is not None:
                    peering.manager.mark_useful(node_id, self.wall_clock())
            case Outcome.ERROR | Outcome.REFUSED:
                if node_id in self._router.peer_table.connections:
                    self._discovery.refute(node_id, capability)
            case Outcome.TIMEOUT | Outcome.CANCELLED:
                pass  # slow is not lying: the breaker and the ranking deal with it
            case other:
                assert_never(other)

    def on_role_done(self, capability: str, seconds: float, result: RoleResult | None,
                     failure: RoleFailure | None, hedges: int) -> None:
        if self.metrics is not None:
            self.metrics.role_request_done(
                capability, seconds, winner_attempt=None if result is None else result.attempt,
                failure=None if failure is None else failure.value, hedges=hedges,
            )

    # ----------------------------------------------------------------------- driver

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Tick the policy engine every ``heartbeat`` (or when woken) until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                while True:
                    self._wake = anyio.Event()
                    try:
                        self.tick()
                    except OverlayError as exc:  # a bad peer entry must not stop routing
                        log.warning("routing tick failed: %s", exc)
                    with anyio.move_on_after(self._sleep()):
                        await self._wake.wait()
                        await anyio.lowlevel.checkpoint()  # let a burst of events settle
            finally:
                self._tg = None

    def _sleep(self) -> float:
        """Until the next tick: the heartbeat, or sooner when a target backs off until then
        (a provider's dial backoff ends, a discovery is due), so a redial happens when its
        jittered backoff ends rather than at the next heartbeat, which nodes started together
        share."""
        delay = self.config.heartbeat
        plan = self.last_plan
        if plan is not None:
            now = anyio.current_time()
            for s in plan.statuses:
                if s.backoff_until is not None and s.backoff_until > now:
                    delay = min(delay, s.backoff_until - now)
        return delay

    def snapshot(self, now: float) -> PolicySnapshot:
        """What the engine sees now (``now`` on the anyio clock)."""
        wall = self.wall_clock()
        table = self._router.peer_table
        peering = self._peering()
        peers = []
        for view in table.peers():
            peers.append(ConnectedPeer(
                node_id=view.node_id, capabilities=self._usable(view),
                outbound=view.direction is Direction.OUTBOUND,
                score=view.score if view.score is not None else 0.0,
                protected=False, connected_since=view.connected_since,
            ))
        wanted = {t.capability for t in self.targets}
        connected = {p.node_id for p in peers}
        candidates = []
        # Banned peers are never dialed. Redials of failing ones follow the engine's own
        # per-peer backoff on this clock: the manager's (wall-clock) backoff converted here
        # stretched a one-second wait into a minute of virtual time in simulations.
        banned = set() if peering is None or not wanted else {
            NodeId(b.target) for b in peering.manager.bans(wall) if b.kind is BanKind.PEER
        }
        if wanted:
            for signed in self._records.records(wall):
                node_id = signed.node_id
                caps = frozenset(signed.record.capabilities) & wanted
                if not caps or node_id in connected or node_id == self.node_id:
                    continue
                candidates.append(Candidate(node_id, caps, math.inf if node_id in banned else 0.0))
        stale = now - 2 * _DIAL_TIMEOUT
        for node_id in [n for n, t in self._dialing.items() if t < stale or n in connected]:
            del self._dialing[node_id]
        return PolicySnapshot(
            now=now, peers=tuple(peers), candidates=tuple(candidates), targets=self.targets,
            limits=self.limits, dialing=frozenset(self._dialing),
        )

    def tick(self) -> PolicyPlan | None:
        """One policy round: snapshot, plan, execute (non-blocking: dials run as tasks).
        Without targets there is nothing to plan: the round only clears what an earlier
        target left protected, and returns None."""
        if not len(self.targets):
            if self._keepers:
                self._keepers = frozenset()
                self._protect()
            self.last_plan = None
            return None
        now = anyio.current_time()
        plan = self.engine.tick(self.snapshot(now))
        self.last_plan = plan
        for action in plan.actions:
            match action:
                case Protect():
                    self._keepers = action.node_ids
                    self._protect()
                case Prune():
                    self._prune(action)
                case Dial():
                    self._dial(action.node_id, action.capability, now)
                case Discover():
                    self._discover(action.capability)
                case other:
                    assert_never(other)
        self._report(plan)
        return plan

    def _report(self, plan: PolicyPlan) -> None:
        for s in plan.statuses:
            if s.state is TargetState.UNATTAINABLE and s.capability not in self._unattainable:
                self._unattainable.add(s.capability)
                log.warning("routing target %s is unattainable: %s (known providers %d, "
                            "required %d)", s.capability, s.reason, s.known_providers,
                            s.required)
            elif s.state is not TargetState.UNATTAINABLE and s.capability in self._unattainable:
                self._unattainable.discard(s.capability)
                log.info("routing target %s is attainable again (%s)", s.capability,
                         s.state.value)

    def _protect(self) -> None:
        """The engine's keepers and the peers being dialed for a target are shielded from the
        peer manager's evictions (a routing dial is an outbound connection above
        ``max_outbound``, which the manager would otherwise trim at once)."""
        peering = self._peering()
        if peering is not None:
            peering.manager.set_protected(ROUTING_PROTECTION,
                                          self._keepers | frozenset(self._dialing))

    def _prune(self, action: Prune) -> None:
        peering = self._peering()
        if peering is None:
            return
        if peering.manager.disconnect_peer(action.node_id, self.wall_clock()):
            self.prunes += 1
            log.info("routing prunes %s (%s%s)", action.node_id, action.reason.value,
                     f", {action.capability}" if action.capability else "",
                     extra={"peer": action.node_id})
            peering.wake()

    def address_of(self, node_id: NodeId) -> NodeAddress | None:
        """Where to dial ``node_id`` with one of this node's transports: the peer manager's
        addresses (its record, then its address book), else those of its signed record."""
        found: list[NodeAddress] = []
        peering = self._peering()
        wall = self.wall_clock()
        if peering is not None:
            snap = peering.manager.peer(node_id, wall)
            if snap is not None:
                found.extend(snap.addresses)
            found.extend(e.address for e in peering.manager.address_book.entries()
                         if e.address.node_id == node_id)
        signed = self._records.get(node_id, wall)
        for text in signed.record.addresses if signed is not None else ():
            try:
                found.append(NodeAddress.parse(f"{node_id}@{text}"))
            except InvalidAddressError:
                continue
        for address in found:
            if address.protocol in self.protocols:
                return address
        return None

    def _dial(self, node_id: NodeId, capability: str, now: float) -> bool:
        peering, tg = self._peering(), self._tg
        address = self.address_of(node_id)
        if peering is None or tg is None or address is None:
            return False
        decision = peering.manager.dial_now(address, persistent=False, now=self.wall_clock(),
                                            execute=False)
        if not decision.accepted:
            return False
        self._dialing[node_id] = now
        self.dials_started += 1
        self._protect()  # before it connects: the peer manager must not evict it as surplus
        log.debug("routing dials %s for %s", node_id, capability, extra={"peer": node_id})
        tg.start_soon(self._run_dial, peering, address)
        return True

    async def _run_dial(self, peering: Peering, address: NodeAddress) -> None:
        try:
            await peering.dial(address, timeout=_DIAL_TIMEOUT)
        except (OverlayError, TimeoutError):
            pass  # counted and reported to the peer manager by dial()
        finally:
            self._dialing.pop(address.node_id, None)

    def _discover(self, capability: str) -> None:
        self.discoveries += 1
        hook, tg = self.discover, self._tg
        if hook is not None and tg is not None:
            tg.start_soon(self._run_discover, hook, capability)

    async def _run_discover(self, hook: Callable[[str], Awaitable[None]],
                            capability: str) -> None:
        try:
            await hook(capability)
        except OverlayError as exc:
            log.info("discovery for %s failed: %s", capability, exc)
        self.wake()

    # ----------------------------------------------------------------------- acquisition

    async def _acquire(self, capability: str, deadline: float | None) -> NodeId:
        """No connected peer has ``capability``: dial a known provider within ``deadline``
        (asking discovery first when none is known)."""
        role = f"Role({capability!r})"
        providers = self._providers(capability)
        if not providers and self.discover is not None:
            with anyio.move_on_after(self._left(deadline)):
                await self.discover(capability)
            providers = self._providers(capability)
        if not providers:
            raise RoleUnavailable(
                RoleFailure.NONE_KNOWN,
                f"{role}: no connected peer has {capability!r} and no provider is known",
                capability=capability, no_peers=not self._router.connected_peers(),
            )
        peering = self._peering()
        tried = 0
        for node_id in providers[:_ACQUIRE_TRIES]:
            address = self.address_of(node_id)
            left = self._left(deadline)
            if address is None or peering is None:
                continue
            if left <= 0:
                raise RoleUnavailable(RoleFailure.DEADLINE,
                                      f"{role}: the deadline passed while dialing providers",
                                      capability=capability, attempts=tried)
            tried += 1
            peering.manager.dial_now(address, persistent=False, now=self.wall_clock(),
                                     execute=False)
            try:
                peer = await peering.dial(address, timeout=min(left, _DIAL_TIMEOUT))
            except (OverlayError, TimeoutError) as exc:
                log.debug("dial %s for %s failed: %s", node_id, capability, exc)
                continue
            if peer in self._router.peer_table.connections:
                return peer
        if deadline is not None and self._left(deadline) <= 0:
            raise RoleUnavailable(RoleFailure.DEADLINE,
                                  f"{role}: the deadline passed while dialing providers",
                                  capability=capability, attempts=tried)
        raise RoleUnavailable(
            RoleFailure.NONE_REACHABLE,
            f"{role}: {len(providers)} provider(s) known, none could be connected "
            f"({tried} dialed)", capability=capability, attempts=tried,
        )

    def _providers(self, capability: str) -> list[NodeId]:
        connected = self._router.peer_table.connections
        now = self.wall_clock()
        return [
            s.node_id for s in self._records.candidates(capability, now)
            if s.node_id not in connected and s.node_id != self.node_id
            and not self._discovery.peers.is_suspect(s.node_id, capability)
        ]

    @staticmethod
    def _left(deadline: float | None) -> float:
        return math.inf if deadline is None else deadline - anyio.current_time()

    # ----------------------------------------------------------------------- views

    def capability_counts(self) -> Mapping[str, int]:
        """Connected peers per usable capability (for ``overlay peers`` and status)."""
        counts: dict[str, int] = {}
        for view in self._router.peer_table.peers():
            for cap in self._usable(view):
                counts[cap] = counts.get(cap, 0) + 1
        return dict(sorted(counts.items()))

    def peer_capabilities(self, node_id: NodeId) -> dict[str, Any]:
        """One connected peer's capabilities as routing sees them."""
        view = self._router.peer_table.peer(node_id)
        peers = self._discovery.peers
        advertised = self._advertised(node_id, view, self.wall_clock())
        confirmed = peers.confirmed(node_id)
        return {
            cap: {
                "advertised": cap in advertised,
                "confirmed": cap in confirmed,
                "suspect": peers.is_suspect(node_id, cap),
                "target": self.targets.get(cap) is not None,
            }
            for cap in sorted(advertised | confirmed)
        }
