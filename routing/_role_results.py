"""What role and group requests report: results, responses, statistics, the listener the
node hears attempts through, and how an error maps to an attempt's :class:`Outcome`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from overlay.errors import (
    ConnectionClosed,
    DecodeError,
    ErrorCode,
    NoRoute,
    OverlayError,
    RequestError,
    RequestTimeout,
    RoleFailure,
)
from overlay.identity import NodeId
from routing._health import Outcome

__all__ = [
    "GroupResponse",
    "RoleListener",
    "RoleResponse",
    "RoleResult",
    "RoleStatistics",
    "outcome_of",
]

R = TypeVar("R")

_REFUSALS = frozenset(
    {ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.NO_HANDLER, ErrorCode.CANCELLED}
)
"""Answers that refuse rather than fail (the same split as the router's ``AttemptOutcome``)."""


def outcome_of(exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc`` (a timeout, a refusal, an error)."""
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
