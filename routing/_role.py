"""The driver that serves :class:`~routing._destinations.Role` and
:class:`~routing._destinations.Group` destinations with the node's peer health and hedging.

On a node, the router passes destinations through :meth:`RoleService.bind` (its destination
binder), which gives roles and groups this node's state.

Theory of operation (one role request)
--------------------------------------
1. ``LOCAL`` first when the role allows it and the node itself has the capability.
2. Candidates: connected peers whose usable capabilities (``capabilities_of``) include the
   role's, ranked by :class:`~routing._health.HealthTable` (breaker, success rate, expected
   wait, in-flight), refuted ones last. None connected: ``acquire`` (discovery and a dial,
   within the caller's deadline) supplies one, or says why not.
3. A :class:`~routing._hedged.HedgedRequest` runs the pure
   :class:`~routing._hedge.HedgePlan` over them with the role's adaptive delay
   (:class:`~routing._hedge.HedgeDelay`): attempts, hedges, cancellations on the wire, and
   every attempt's :class:`~routing._health.Outcome` fed to the health table and to the
   ``listener`` (the node turns it into confirmed/refuted capabilities, scores and metrics).
4. The result says which peer answered, its attempt number (1 = the first peer asked) and
   how many attempts started; failures raise :class:`~overlay.errors.RoleUnavailable` with a
   :class:`~overlay.errors.RoleFailure`.

A group request asks every member at once, each with its own deadline and result.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, assert_never

import anyio

from overlay.errors import (
    ChannelError,
    OverlayError,
    RoleFailure,
    RoleUnavailable,
)
from overlay.identity import NodeId
from overlay.router._channel import Channel
from overlay.router._destination import Destination, PeerSet, PeerView, no_route
from routing._destinations import Group, Role
from routing._health import HealthConfig, HealthTable, Outcome
from routing._hedge import HedgeConfig, HedgeDelay, PlanOutcome
from routing._hedged import HedgedRequest
from routing._role_results import (
    GroupResponse,
    RoleListener,
    RoleResponse,
    RoleResult,
    RoleStatistics,
    outcome_of,
)

__all__ = ["Acquire", "RoleService"]

T = TypeVar("T")
R = TypeVar("R")

_MARGIN = 0.002
"""Seconds before the caller's deadline at which a role request gives up by itself (so it ends
with ``RoleUnavailable(DEADLINE)`` rather than the router's backstop)."""

Acquire = Callable[[str, float | None], Awaitable[NodeId]]
"""``(capability, deadline) -> node id`` of a newly connected provider (discovery and a dial
within ``deadline`` on the anyio clock), or raise :class:`RoleUnavailable`."""


class _BoundRole(Destination):
    __slots__ = ("_role", "_service", "_sink")

    def __init__(self, role: Role, service: RoleService,
                 sink: list[RoleResult] | None = None) -> None:
        self._role = role
        self._service = service
        self._sink = sink

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        role = self._role
        if role.allow_local and role.capability in self._service.local_capabilities():
            return (view.local_id,)
        ranked = self._service.ranked(view, role.capability)
        return ranked[:1]

    async def run_request(
        self, view: PeerSet, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        value, result = await self._service.run(view, self._role, attempt)
        if self._sink is not None:
            self._sink.append(result)
        return value

    def __repr__(self) -> str:
        return repr(self._role)


class _BoundGroup(Destination):
    __slots__ = ("_group", "_service")
    fanout = True

    def __init__(self, group: Group, service: RoleService) -> None:
        self._group = group
        self._service = service

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        return self._service.members(view, self._group)

    async def run_request(
        self, view: PeerSet, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        return await self._group.run_request(view, attempt)

    def __repr__(self) -> str:
        return repr(self._group)


class RoleService:
    """Serves :class:`Role` and :class:`Group` destinations of one node (module docstring)."""

    def __init__(
        self,
        *,
        capabilities_of: Callable[[PeerView], frozenset[str]],
        local_capabilities: Callable[[], frozenset[str]] = frozenset,
        acquire: Acquire | None = None,
        listener: RoleListener | None = None,
        health: HealthConfig | None = None,
        hedge: HedgeConfig | None = None,
        hedging: bool = True,
        is_suspect: Callable[[NodeId, str], bool] | None = None,
    ) -> None:
        self.health = HealthTable(health)
        self.hedge = hedge if hedge is not None else HedgeConfig()
        self.hedging = hedging
        """False: one attempt at a time (failures still move on to the next peer)."""
        self._capabilities_of = capabilities_of
        self._local = local_capabilities
        self._acquire = acquire
        self._listener = listener
        self._suspect = is_suspect
        self._delays: dict[str, HedgeDelay] = {}
        self._requests = self._succeeded = self._attempts = self._hedges = 0
        self._failed: dict[RoleFailure, int] = {}
        self._wins: dict[int, int] = {}

    # ----------------------------------------------------------------------- binding

    def bind(self, destination: Destination) -> Destination:
        """The router's destination binder: roles and groups get this node's state."""
        if isinstance(destination, Role):
            return _BoundRole(destination, self)
        if isinstance(destination, Group):
            return _BoundGroup(destination, self)
        return destination

    def local_capabilities(self) -> frozenset[str]:
        return frozenset(self._local())

    def delay(self, capability: str) -> HedgeDelay:
        found = self._delays.get(capability)
        if found is None:
            found = self._delays[capability] = HedgeDelay(self.hedge)
        return found

    def holders(self, view: PeerSet, capability: str) -> list[NodeId]:
        """Connected peers that have ``capability`` (confirmed or advertised)."""
        return [v.node_id for v in view.peers() if capability in self._capabilities_of(v)]

    def ranked(self, view: PeerSet, capability: str) -> list[NodeId]:
        """Holders of ``capability`` whose breaker admits a request, healthiest first;
        suspect ones (a recent failure refuted their claim) last."""
        now = anyio.current_time()
        holders = self.holders(view, capability)
        ranked = [
            n for n in self.health.rank(capability, holders, now)
            if self.health.get(n, capability).available(now)
        ]
        if self._suspect is not None:
            suspect = self._suspect
            ranked.sort(key=lambda n: suspect(n, capability))  # stable: health order kept
        return ranked

    def members(self, view: PeerSet, group: Group) -> tuple[NodeId, ...]:
        ranked = self.ranked(view, group.capability)
        chosen = ranked if group.n is None else ranked[: group.n]
        if group.allow_local and group.capability in self.local_capabilities():
            chosen = [view.local_id, *chosen][: group.n] if group.n else [view.local_id, *chosen]
        return tuple(chosen)

    def forget(self, node_id: NodeId) -> None:
        self.health.forget(node_id)

    def statistics(self) -> RoleStatistics:
        return RoleStatistics(
            requests=self._requests, succeeded=self._succeeded, failed=dict(self._failed),
            attempts=self._attempts, hedges=self._hedges, wins_by_attempt=dict(self._wins),
        )

    # ----------------------------------------------------------------------- rich API

    async def request(
        self, channel: Channel[Any, R], role: Role, message: Any, *,
        timeout: float | None = None,
    ) -> RoleResponse[R]:
        """Like ``channel.request(role, message)``, also saying who answered and how."""
        if not isinstance(role, Role):
            raise ChannelError(f"not a Role: {role!r}")
        sink: list[RoleResult] = []
        value = await channel.request(_BoundRole(role, self, sink), message, timeout=timeout)
        return RoleResponse(value, sink[0])

    async def group_request(
        self, channel: Channel[Any, R], group: Group, message: Any, *,
        timeout: float | None = None, view: PeerSet,
    ) -> GroupResponse[R]:
        """Ask every member of ``group`` at once; each has its own deadline and result, so a
        slow member delays nobody else's answer. No member: :class:`RoleUnavailable`."""
        if not isinstance(group, Group):
            raise ChannelError(f"not a Group: {group!r}")
        members = self.members(view, group)
        if not members:
            raise RoleUnavailable(
                RoleFailure.NONE_KNOWN,
                f"{group!r}: no connected peer has {group.capability!r}",
                capability=group.capability, no_peers=not view.connected_peers(),
            )
        responses: dict[NodeId, R] = {}
        errors: dict[NodeId, OverlayError] = {}
        cap = group.capability

        async def one(member: NodeId) -> None:
            local = member == view.local_id
            health = None if local else self.health.get(member, cap)
            started = anyio.current_time()
            if health is not None:
                health.start(started)
            outcome = Outcome.CANCELLED
            try:
                responses[member] = await channel.request(member, message, timeout=timeout)
                outcome = Outcome.SUCCESS
            except OverlayError as exc:
                errors[member] = exc
                outcome = outcome_of(exc)
            finally:
                if health is not None:
                    now = anyio.current_time()
                    health.finish(outcome, now, now - started)
                    if self._listener is not None and outcome is not Outcome.CANCELLED:
                        self._listener.on_attempt(member, cap, outcome)

        async with anyio.create_task_group() as tg:
            for member in members:
                tg.start_soon(one, member)
        return GroupResponse(cap, responses, errors)

    # ----------------------------------------------------------------------- hedging

    async def run(
        self, view: PeerSet, role: Role, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> tuple[T, RoleResult]:
        """Serve one role request (module docstring); raise :class:`RoleUnavailable`."""
        cap = role.capability
        started = anyio.current_time()
        self._requests += 1
        effective = anyio.current_effective_deadline()
        deadline = None if effective == math.inf else effective - _MARGIN
        if role.allow_local and cap in self.local_capabilities():
            mine = await attempt(view.local_id)
            result = RoleResult(cap, view.local_id, 1, 1, anyio.current_time() - started)
            self._won(result, hedges=0)
            return mine, result
        candidates = self.ranked(view, cap)
        if not candidates:
            candidates = await self._acquire_one(view, role, deadline, started)
        delay = self.delay(cap)
        request = HedgedRequest(
            cap, candidates, now=started, deadline=deadline, health=self.health, delay=delay,
            hedge_delay=delay.delay() if self.hedging else self.hedge.cap,
            max_in_flight=self.hedge.max_in_flight if self.hedging else 1,
            rerank=lambda: self.ranked(view, cap), listener=self._listener,
        )
        try:
            outcome = await request.run(attempt, started)
        finally:
            self._attempts += request.attempts_started
            self._hedges += request.hedges
        ended = anyio.current_time()
        match outcome.outcome:
            case PlanOutcome.WON:
                assert outcome.winner is not None and outcome.winner_attempt is not None
                result = RoleResult(cap, outcome.winner, outcome.winner_attempt,
                                    outcome.attempts, ended - started, outcome.failures)
                self._won(result, request.hedges)
                return request.value, result
            case PlanOutcome.DEADLINE:
                failure, why = RoleFailure.DEADLINE, "no answer before the deadline"
            case PlanOutcome.ALL_FAILED | PlanOutcome.NO_CANDIDATES:
                if request.local_error is not None:
                    raise request.local_error  # the caller's mistake, not the peers' failure
                failure, why = RoleFailure.ALL_FAILED, "every peer asked failed"
            case other:
                assert_never(other)
        self._failed_with(cap, failure, ended - started, request.hedges)
        raise RoleUnavailable(
            failure,
            f"{role!r}: {why} ({outcome.attempts} attempt(s): "
            + (", ".join(f"{n[:8]} {o.value}" for n, o in outcome.failures) or "none answered")
            + ")",
            capability=cap, attempts=outcome.attempts,
            failures=tuple((n, o.value) for n, o in outcome.failures),
        )

    async def _acquire_one(
        self, view: PeerSet, role: Role, deadline: float | None, started: float
    ) -> list[NodeId]:
        cap = role.capability
        if self._acquire is None:
            self._failed_with(cap, RoleFailure.NONE_KNOWN, 0.0, 0)
            raise RoleUnavailable(
                RoleFailure.NONE_KNOWN, f"{role!r}: no connected peer has {cap!r}",
                capability=cap, no_peers=not view.connected_peers(),
            ) from no_route(view, role)
        try:
            node_id = await self._acquire(cap, deadline)
        except RoleUnavailable as exc:
            self._failed_with(cap, exc.failure, anyio.current_time() - started, 0)
            raise
        return [node_id]

    def _won(self, result: RoleResult, hedges: int) -> None:
        self._succeeded += 1
        self._wins[result.attempt] = self._wins.get(result.attempt, 0) + 1
        if self._listener is not None:
            self._listener.on_role_done(result.capability, result.latency, result, None, hedges)

    def _failed_with(self, cap: str, failure: RoleFailure, seconds: float, hedges: int) -> None:
        self._failed[failure] = self._failed.get(failure, 0) + 1
        if self._listener is not None:
            self._listener.on_role_done(cap, seconds, None, failure, hedges)
