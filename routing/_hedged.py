"""The anyio driver of one hedged role request (:class:`~routing._hedge.HedgePlan`).

Theory of operation
-------------------
The pure plan decides: the first attempt at once, a hedge after the role's delay while fewer
than ``max_in_flight`` run, the next candidate at once after a failure, every other attempt
cancelled when one wins, all of them at the deadline. :class:`HedgedRequest` only starts one
task per attempt under its own cancel scope (cancelling it sends the peer a CANCEL), cancels
scopes, and feeds outcomes back to the plan, to the health table and to the listener. Before a
hedge or a retry the candidates not asked yet are re-ranked, so it goes to the best peer *now*.

Health bookkeeping, per attempt:

* it is counted in flight (``PeerHealth.start``) the moment it is planned, so concurrent
  requests rank around it, and that same record is finished when it ends, even when the
  peer's health was forgotten meanwhile (it disconnected);
* a losing hedge is ``CANCELLED``, never a penalty; one that had already outlived the hedge
  delay counts as a ``TIMEOUT`` for the peer's *health* only (breaker, success rate), and
  leaves a censored round-trip sample; an attempt cut at the caller's deadline is a
  ``TIMEOUT``; a :class:`~overlay.errors.LocalProtocolError` is our mistake: the peer is not
  blamed and the error is raised to the caller when no peer answered.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, assert_never

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from overlay.errors import LocalProtocolError, OverlayError
from overlay.identity import NodeId
from routing._health import HealthTable, Outcome, PeerHealth
from routing._hedge import (
    CancelAttempt,
    HedgeAction,
    HedgeDelay,
    HedgePlan,
    HedgeResult,
    StartAttempt,
)
from routing._role_results import RoleListener, outcome_of

__all__ = ["HedgedRequest"]

_GRACE_STEPS = 8
"""Scheduler turns an expiring hedge timer waits for an answer due at the same instant."""


@dataclass(slots=True)
class _Done:
    node_id: NodeId
    outcome: Outcome
    elapsed: float
    value: Any = None


async def _grace(receive: MemoryObjectReceiveStream[_Done]) -> _Done | None:
    """An answer arriving at the very instant the hedge delay expires wins the tie (the
    response task may not have run yet); costs a few scheduler turns, no time."""
    for _ in range(_GRACE_STEPS):
        try:
            return receive.receive_nowait()
        except anyio.WouldBlock:
            await anyio.lowlevel.checkpoint()
    return None


class HedgedRequest:
    """One role request for ``capability`` over ranked ``candidates`` (module docstring).

    After :meth:`run`: ``value`` (the winner's response), ``attempts_started``, ``hedges``
    (attempts started by the hedge delay, not by a failure) and ``local_error`` (our own
    mistake, when an attempt raised one)."""

    __slots__ = (
        "_capability",
        "_deadline",
        "_deadline_hit",
        "_delay",
        "_health",
        "_hedge_delay",
        "_listener",
        "_plan",
        "_rerank",
        "_scopes",
        "_size",
        "attempts_started",
        "hedges",
        "local_error",
        "value",
    )

    def __init__(
        self,
        capability: str,
        candidates: Sequence[NodeId],
        *,
        now: float,
        deadline: float | None,
        health: HealthTable,
        delay: HedgeDelay,
        hedge_delay: float,
        max_in_flight: int,
        rerank: Callable[[], list[NodeId]],
        listener: RoleListener | None = None,
    ) -> None:
        self._capability = capability
        self._health = health
        self._delay = delay
        self._hedge_delay = hedge_delay
        self._rerank = rerank
        self._listener = listener
        self._deadline = deadline
        self._size = len(candidates)
        self._plan = HedgePlan(candidates, now=now, deadline=deadline,
                               hedge_delay=hedge_delay, max_in_flight=max_in_flight)
        self._scopes: dict[NodeId, anyio.CancelScope] = {}
        self._deadline_hit = False
        self.attempts_started = 0
        self.hedges = 0
        self.local_error: LocalProtocolError | None = None
        self.value: Any = None

    async def run(self, attempt: Callable[[NodeId], Awaitable[Any]], now: float) -> HedgeResult:
        """Run the plan until it ends: won, every peer failed, or the deadline."""
        plan = self._plan
        send, receive = anyio.create_memory_object_stream[_Done](self._size)
        with send, receive:
            async with anyio.create_task_group() as tg:

                def act(actions: list[HedgeAction], by_failure: bool) -> None:
                    for action in actions:
                        match action:
                            case StartAttempt(node_id=node_id, attempt=number):
                                self._start(tg, node_id, number > 1 and not by_failure,
                                            attempt, send)
                            case CancelAttempt(node_id=node_id):
                                self._scopes[node_id].cancel()
                            case other:
                                assert_never(other)

                act(plan.poll(now), False)
                while not plan.done:
                    wake = plan.next_deadline()
                    done: _Done | None = None
                    with anyio.move_on_at(math.inf if wake is None else wake):
                        done = await receive.receive()
                    if done is None:
                        done = await _grace(receive)
                    now = anyio.current_time()
                    if done is None:
                        if self._deadline is not None and now >= self._deadline:
                            self._deadline_hit = True
                        plan.rerank(self._rerank())
                        act(plan.poll(now), False)
                    elif done.outcome is Outcome.SUCCESS:
                        self.value = done.value
                        self._delay.observe(done.elapsed)  # the attempt's own response time
                        act(plan.succeeded(done.node_id, now), False)
                    else:
                        plan.rerank(self._rerank())
                        act(plan.failed(done.node_id, done.outcome, now), True)
                        if not plan.done:
                            act(plan.poll(now), False)
        result = plan.result
        assert result is not None
        return result

    def _start(
        self,
        tg: anyio.abc.TaskGroup,
        node_id: NodeId,
        hedge: bool,
        attempt: Callable[[NodeId], Awaitable[Any]],
        send: MemoryObjectSendStream[_Done],
    ) -> None:
        self.attempts_started += 1
        self.hedges += hedge
        scope = self._scopes[node_id] = anyio.CancelScope()
        # counted in flight now, so concurrent requests rank around it; the same record is
        # finished even if the peer's health is forgotten (it disconnected) meanwhile
        health = self._health.get(node_id, self._capability)
        admitted = health.start(anyio.current_time())
        tg.start_soon(self._attempt, node_id, scope, attempt, send, health, admitted)

    async def _attempt(
        self,
        node_id: NodeId,
        scope: anyio.CancelScope,
        attempt: Callable[[NodeId], Awaitable[Any]],
        send: MemoryObjectSendStream[_Done],
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
            self.local_error = exc
        except OverlayError as exc:
            outcome = outcome_of(exc)
        finally:
            now = anyio.current_time()
            if outcome is Outcome.CANCELLED and self._deadline_hit:
                outcome = Outcome.TIMEOUT  # cut at the caller's deadline: it was too slow
            blamed = Outcome.CANCELLED if ours else outcome  # never the peer's fault
            health_outcome = blamed
            if blamed is Outcome.CANCELLED and not ours and now - began >= self._hedge_delay:
                # it lost a race it had already run past the hedge delay on: slow, for this
                # peer's health only (breaker, success rate; not its score nor its claim)
                health_outcome = Outcome.TIMEOUT
            if admitted:
                health.finish(health_outcome, now,
                              now - began if outcome is Outcome.SUCCESS else None)
                if outcome is Outcome.CANCELLED:
                    health.censored(now - began)
            if self._listener is not None and blamed is not Outcome.CANCELLED:
                self._listener.on_attempt(node_id, self._capability, outcome)
        if outcome is not Outcome.CANCELLED and not self._deadline_hit:
            try:
                send.send_nowait(_Done(node_id, outcome, now - began, value))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.WouldBlock):
                pass  # the request already ended
