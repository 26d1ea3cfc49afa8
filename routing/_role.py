"""Role and group destinations, and the driver that serves them with health and hedging.

``Role("blocksync")`` addresses *one* connected peer with a capability; ``Group("blocksync")``
addresses *all* of them (or the ``n`` healthiest). Both are plain values that any channel
accepts::

    block = await ch.request(Role("blocksync"), GetBlock(height=7), timeout=2)
    await ch.send(Group("blocksync"), Announce(...))          # fan-out, per-peer report

On a node, the router passes them through :meth:`RoleService.bind` (its destination binder),
which gives them the node's peer health, hedging and discovery. Unbound (a router without a
routing layer) a ``Role`` simply picks the connected peer with the capability and the smallest
round trip, and a ``Group`` all of them.

Theory of operation (one role request)
--------------------------------------
1. ``LOCAL`` first when the role allows it and the node itself has the capability.
2. Candidates: connected peers whose usable capabilities (``capabilities_of``) include the
   role's, ranked by :class:`~routing._health.HealthTable` (breaker, success rate, expected
   wait, in-flight), refuted ones last. None connected: ``acquire`` (discovery and a dial,
   within the caller's deadline) supplies one, or says why not.
3. A pure :class:`~routing._hedge.HedgePlan` decides: first attempt at once, a hedge after the
   role's adaptive delay (:class:`~routing._hedge.HedgeDelay`) while fewer than
   ``max_in_flight`` run, the next candidate at once after a failure, every other attempt
   cancelled (on the wire: cancelling an attempt sends the peer a CANCEL) when one wins, all of
   them at the deadline. Before a hedge or a retry the peers not asked yet are re-ranked
   (:meth:`~routing._hedge.HedgePlan.rerank`), so it goes to the best peer *now*. This
   driver only starts tasks, cancels their scopes and feeds outcomes back.
4. Every attempt's :class:`~routing._health.Outcome` goes to the health table and to the
   ``listener`` (the node turns it into confirmed/refuted capabilities, scores and metrics).
   A losing hedge is ``CANCELLED`` (never a penalty for the peer's score or claims); one that
   had already outlived the hedge delay counts as a ``TIMEOUT`` for the peer's *health* only
   (breaker, success rate: a consistently slow peer sinks in the ranking and its breaker
   opens); an attempt cut at the deadline is a ``TIMEOUT``.
5. The result says which peer answered, its attempt number (1 = the first peer asked) and
   how many attempts started; failures raise :class:`~overlay.errors.RoleUnavailable` with a
   :class:`~overlay.errors.RoleFailure`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, assert_never

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from discovery._keys import valid_capability_name
from overlay.errors import (
    ChannelError,
    ConnectionClosed,
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    NoRoute,
    OverlayError,
    RequestError,
    RequestTimeout,
    RoleFailure,
    RoleUnavailable,
)
from overlay.identity import NodeId
from overlay.router._channel import Channel
from overlay.router._destination import Destination, PeerSet, PeerView, no_route
from routing._health import HealthConfig, HealthTable, Outcome, PeerHealth
from routing._hedge import (
    CancelAttempt,
    HedgeAction,
    HedgeConfig,
    HedgeDelay,
    HedgePlan,
    PlanOutcome,
    StartAttempt,
)

__all__ = [
    "Group",
    "GroupResponse",
    "Role",
    "RoleListener",
    "RoleResponse",
    "RoleResult",
    "RoleService",
    "RoleStatistics",
]

T = TypeVar("T")
R = TypeVar("R")

_MARGIN = 0.002
"""Seconds before the caller's deadline at which a role request gives up by itself (so it ends
with ``RoleUnavailable(DEADLINE)`` rather than the router's backstop)."""

_REFUSALS = frozenset(
    {ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.NO_HANDLER, ErrorCode.CANCELLED}
)
"""Answers that refuse rather than fail (the same split as the router's ``AttemptOutcome``)."""


def _check_capability(capability: str) -> None:
    if not isinstance(capability, str) or not valid_capability_name(capability):
        raise ChannelError(f"not a capability name: {capability!r}")


def _unbound_holders(view: PeerSet, capability: str) -> list[PeerView]:
    found = [v for v in view.peers() if capability in (v.confirmed | v.advertised)]
    return sorted(found, key=lambda v: (v.rtt if v.rtt is not None else math.inf, v.node_id))


@dataclass(frozen=True, slots=True)
class Role(Destination):
    """One connected peer with ``capability``: the healthiest, hedged to the next ones."""

    capability: str
    allow_local: bool = False
    """Let this node serve the request itself (``LOCAL``) when it has the capability."""

    def __post_init__(self) -> None:
        _check_capability(self.capability)

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        holders = _unbound_holders(view, self.capability)
        return (holders[0].node_id,) if holders else ()

    def __repr__(self) -> str:
        return f"Role({self.capability!r})"


@dataclass(frozen=True, slots=True)
class Group(Destination):
    """Every connected peer with ``capability`` (or the ``n`` healthiest): a fan-out."""

    capability: str
    n: int | None = None
    """At most this many members (the healthiest); None: all of them."""
    allow_local: bool = False
    """Include this node itself when it has the capability."""

    fanout = True

    def __post_init__(self) -> None:
        _check_capability(self.capability)
        if self.n is not None and (isinstance(self.n, bool) or self.n < 1):
            raise ChannelError(f"Group n must be at least 1, got {self.n!r}")

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        holders = [v.node_id for v in _unbound_holders(view, self.capability)]
        return tuple(holders if self.n is None else holders[: self.n])

    async def run_request(
        self, view: PeerSet, attempt: Callable[[NodeId], Awaitable[T]]
    ) -> T:
        raise ChannelError(
            f"{self!r} addresses several peers: use node.routing.group_request() for a "
            "per-peer result, or send() to it"
        )

    def __repr__(self) -> str:
        n = "" if self.n is None else f", n={self.n}"
        return f"Group({self.capability!r}{n})"


@dataclass(frozen=True, slots=True)
class RoleResult:
    """How a role request ended (without the response value)."""

    capability: str
    peer: NodeId
    """The peer that answered (this node's own id when served LOCAL)."""
    attempt: int
    """Its attempt number: 1 when the first peer asked answered, 2+ when a hedge or a retry
    after a failure won."""
    attempts: int
    """Attempts started in all (the extra load: ``attempts - 1``)."""
    latency: float
    """Seconds from the call to the answer."""
    failures: tuple[tuple[NodeId, Outcome], ...] = ()
    """Attempts that failed before the winner answered."""

    @property
    def hedged(self) -> bool:
        return self.attempts > 1


@dataclass(frozen=True, slots=True)
class RoleResponse(Generic[R]):
    """A role request's response with :class:`RoleResult` (``node.routing.request``)."""

    value: R
    result: RoleResult

    @property
    def peer(self) -> NodeId:
        return self.result.peer

    @property
    def attempts(self) -> int:
        return self.result.attempts


@dataclass(frozen=True, slots=True)
class GroupResponse(Generic[R]):
    """Per-member results of a group request: every member is in exactly one mapping."""

    capability: str
    responses: Mapping[NodeId, R] = field(default_factory=dict)
    errors: Mapping[NodeId, OverlayError] = field(default_factory=dict)
    """Why each other member gave no response (``RequestTimeout``, ``RequestError``, ...)."""

    @property
    def members(self) -> tuple[NodeId, ...]:
        return tuple(sorted((*self.responses, *self.errors)))

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True, slots=True)
class RoleStatistics:
    """Totals since start, for status and benchmarks."""

    requests: int
    succeeded: int
    failed: Mapping[RoleFailure, int]
    attempts: int
    """Attempts started (``attempts - requests`` is the extra load of hedges and retries)."""
    hedges: int
    """Attempts started by the hedge delay (not by a failure)."""
    wins_by_attempt: Mapping[int, int]


class RoleListener(Protocol):
    """What the node hears about role traffic (confirmations, scores, metrics)."""

    def on_attempt(self, node_id: NodeId, capability: str, outcome: Outcome) -> None: ...

    def on_role_done(
        self, capability: str, seconds: float, result: RoleResult | None,
        failure: RoleFailure | None, hedges: int,
    ) -> None: ...


Acquire = Callable[[str, float | None], Awaitable[NodeId]]
"""``(capability, deadline) -> node id`` of a newly connected provider (discovery and a dial
within ``deadline`` on the anyio clock), or raise :class:`RoleUnavailable`."""


def _outcome_of(exc: BaseException) -> Outcome:
    match exc:
        case RequestTimeout():
            return Outcome.TIMEOUT
        case RequestError() if exc.code in _REFUSALS:
            return Outcome.REFUSED
        case RequestError() | DecodeError():
            return Outcome.ERROR
        case ConnectionClosed() | NoRoute():
            return Outcome.REFUSED
        case _:
            return Outcome.ERROR


@dataclass(slots=True)
class _Done:
    node_id: NodeId
    outcome: Outcome
    elapsed: float
    value: Any = None


_GRACE_STEPS = 8
"""Scheduler turns an expiring hedge timer waits for an answer due at the same instant."""


async def _grace(receive: MemoryObjectReceiveStream[_Done]) -> _Done | None:
    """An answer arriving at the very instant the hedge delay expires wins the tie (the
    response task may not have run yet); costs a few scheduler turns, no time."""
    for _ in range(_GRACE_STEPS):
        try:
            return receive.receive_nowait()
        except anyio.WouldBlock:
            await anyio.lowlevel.checkpoint()
    return None


class _Run:
    """The mutable state of one hedged request (driver side)."""

    __slots__ = ("deadline_hit", "hedge_delay", "local_error", "scopes")

    def __init__(self, hedge_delay: float) -> None:
        self.scopes: dict[NodeId, anyio.CancelScope] = {}
        self.deadline_hit = False
        self.hedge_delay = hedge_delay
        self.local_error: LocalProtocolError | None = None


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
                outcome = _outcome_of(exc)
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
        hedge_delay = delay.delay() if self.hedging else self.hedge.cap
        plan = HedgePlan(
            candidates, now=started, deadline=deadline, hedge_delay=hedge_delay,
            max_in_flight=self.hedge.max_in_flight if self.hedging else 1,
        )
        run = _Run(hedge_delay)
        hedges = 0
        value: Any = None
        send, receive = anyio.create_memory_object_stream[_Done](len(candidates))
        with send, receive:
            async with anyio.create_task_group() as tg:

                def act(actions: list[HedgeAction], by_failure: bool) -> None:
                    nonlocal hedges
                    for action in actions:
                        match action:
                            case StartAttempt(node_id=node_id, attempt=number):
                                self._attempts += 1
                                if number > 1 and not by_failure:
                                    hedges += 1
                                scope = run.scopes[node_id] = anyio.CancelScope()
                                # counted in flight now, so concurrent requests rank around it
                                # the same record is finished, even if the peer's health
                                # is forgotten (it disconnected) while the attempt runs
                                health = self.health.get(node_id, cap)
                                admitted = health.start(anyio.current_time())
                                tg.start_soon(self._attempt, cap, node_id, scope, attempt,
                                              send, run, health, admitted)
                            case CancelAttempt(node_id=node_id):
                                run.scopes[node_id].cancel()
                            case other:
                                assert_never(other)

                act(plan.poll(started), False)
                while not plan.done:
                    wake = plan.next_deadline()
                    done: _Done | None = None
                    with anyio.move_on_at(math.inf if wake is None else wake):
                        done = await receive.receive()
                    if done is None:
                        done = await _grace(receive)
                    now = anyio.current_time()
                    if done is None:
                        if deadline is not None and now >= deadline:
                            run.deadline_hit = True
                        plan.rerank(self.ranked(view, cap))
                        act(plan.poll(now), False)
                    elif done.outcome is Outcome.SUCCESS:
                        value = done.value
                        delay.observe(done.elapsed)  # the attempt's own response time
                        act(plan.succeeded(done.node_id, now), False)
                    else:
                        plan.rerank(self.ranked(view, cap))
                        act(plan.failed(done.node_id, done.outcome, now), True)
                        if not plan.done:
                            act(plan.poll(now), False)
        outcome = plan.result
        assert outcome is not None
        ended = anyio.current_time()
        self._hedges += hedges
        match outcome.outcome:
            case PlanOutcome.WON:
                assert outcome.winner is not None and outcome.winner_attempt is not None
                result = RoleResult(cap, outcome.winner, outcome.winner_attempt,
                                    outcome.attempts, ended - started, outcome.failures)
                self._won(result, hedges)
                return value, result
            case PlanOutcome.DEADLINE:
                failure, why = RoleFailure.DEADLINE, "no answer before the deadline"
            case PlanOutcome.ALL_FAILED | PlanOutcome.NO_CANDIDATES:
                if run.local_error is not None:
                    raise run.local_error  # the caller's mistake, not the peers' failure
                failure, why = RoleFailure.ALL_FAILED, "every peer asked failed"
            case other:
                assert_never(other)
        self._failed_with(cap, failure, ended - started, hedges)
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

    async def _attempt(
        self,
        cap: str,
        node_id: NodeId,
        scope: anyio.CancelScope,
        attempt: Callable[[NodeId], Awaitable[Any]],
        send: MemoryObjectSendStream[_Done],
        run: _Run,
        health: PeerHealth,
        admitted: bool,
    ) -> None:
        began = anyio.current_time()
        outcome = Outcome.CANCELLED
        value: Any = None
        ours = False
        try:
            with scope:
                if not admitted:
                    outcome = Outcome.REFUSED  # its breaker opened since it was ranked
                else:
                    value = await attempt(node_id)
                    outcome = Outcome.SUCCESS
        except LocalProtocolError as exc:  # our mistake (a channel the link lacks...)
            ours, outcome = True, Outcome.ERROR
            run.local_error = exc
        except OverlayError as exc:
            outcome = _outcome_of(exc)
        finally:
            now = anyio.current_time()
            if outcome is Outcome.CANCELLED and run.deadline_hit:
                outcome = Outcome.TIMEOUT  # cut at the caller's deadline: it was too slow
            blamed = Outcome.CANCELLED if ours else outcome  # never the peer's fault
            health_outcome = blamed
            if blamed is Outcome.CANCELLED and not ours and now - began >= run.hedge_delay:
                # it lost a race it had already run past the hedge delay on: slow, for this
                # peer's health only (breaker, success rate; not its score nor its claim)
                health_outcome = Outcome.TIMEOUT
            if admitted:
                health.finish(health_outcome, now,
                              now - began if outcome is Outcome.SUCCESS else None)
                if outcome is Outcome.CANCELLED:
                    health.censored(now - began)
            if self._listener is not None and blamed is not Outcome.CANCELLED:
                self._listener.on_attempt(node_id, cap, outcome)
        if outcome is not Outcome.CANCELLED and not run.deadline_hit:
            try:
                send.send_nowait(_Done(node_id, outcome, now - began, value))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.WouldBlock):
                pass  # the request already ended

    def _won(self, result: RoleResult, hedges: int) -> None:
        self._succeeded += 1
        self._wins[result.attempt] = self._wins.get(result.attempt, 0) + 1
        if self._listener is not None:
            self._listener.on_role_done(result.capability, result.latency, result, None, hedges)

    def _failed_with(self, cap: str, failure: RoleFailure, seconds: float, hedges: int) -> None:
        self._failed[failure] = self._failed.get(failure, 0) + 1
        if self._listener is not None:
            self._listener.on_role_done(cap, seconds, None, failure, hedges)
