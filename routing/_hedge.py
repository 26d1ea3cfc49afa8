"""Adaptive hedging for role requests: a per-role hedge delay and the plan of one request.

Theory of operation
-------------------
:class:`HedgeDelay` keeps the latencies of a role's last ``window`` successful responses and
answers ``delay()`` = the ``quantile`` (p95 by default, nearest rank) of that window, clamped to
``[floor, cap]``. Before ``min_samples`` responses it answers ``initial_delay`` (also clamped).
Only successes are samples: a fast error says nothing about how long an answer takes.

A hedge at the p95 fires for about 5 % of requests when peers are healthy ("The Tail at
Scale"), so the extra load is bounded by ``1 - quantile`` plus the share of failures, while a
stalled peer costs at most one hedge delay.

:class:`HedgePlan` is the state machine of one role request over ranked candidates::

    RUNNING --first valid response--> WON            (every other attempt is cancelled)
    RUNNING --last attempt failed, none left--> ALL_FAILED
    RUNNING --deadline--> DEADLINE                   (every attempt is cancelled)
    (no candidates at all) --> NO_CANDIDATES

While RUNNING: the first attempt starts at once; another starts every ``hedge_delay`` after the
latest start while fewer than ``max_in_flight`` are in flight and candidates remain; a failed
attempt starts the next candidate at once. Invariants: at most ``max_in_flight`` attempts in
flight; each candidate is asked at most once; once finished the plan emits nothing more.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from overlay.errors import ConfigError, LocalProtocolError
from overlay.identity import NodeId
from routing._health import Outcome

__all__ = [
    "CancelAttempt",
    "HedgeAction",
    "HedgeConfig",
    "HedgeDelay",
    "HedgePlan",
    "HedgeResult",
    "PlanOutcome",
    "StartAttempt",
]


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """Hedging of one role's requests. Durations in seconds."""

    quantile: float = 0.95
    """The hedge delay is this quantile of recent latencies."""
    window: int = 128
    """Recent successful latencies kept."""
    min_samples: int = 10
    """Below this many samples the delay is ``initial_delay``."""
    initial_delay: float = 0.25
    """The delay before enough samples exist."""
    floor: float = 0.05
    """The delay is never shorter (a burst of fast answers must not make every request a
    hedge)."""
    cap: float = 2.0
    """The delay is never longer (a slow window must not disable hedging)."""
    max_in_flight: int = 3
    """Attempts of one request in flight at once."""

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ConfigError("quantile", "must be within (0, 1]")
        for name in ("window", "min_samples", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be an integer of at least 1, got {value!r}")
        if self.min_samples > self.window:
            raise ConfigError("min_samples", "must not exceed window")
        for name in ("initial_delay", "floor", "cap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"must be positive, got {value!r}")
        if self.floor > self.cap:
            raise ConfigError("floor", "must not exceed cap")


class HedgeDelay:
    """The adaptive hedge delay of one role."""

    __slots__ = ("_samples", "config")

    def __init__(self, config: HedgeConfig | None = None) -> None:
        self.config = config if config is not None else HedgeConfig()
        self._samples: deque[float] = deque(maxlen=self.config.window)

    def observe(self, latency: float) -> None:
        """Record the latency of a successful response (ignored if not a finite >= 0)."""
        if math.isfinite(latency) and latency >= 0:
            self._samples.append(latency)

    def __len__(self) -> int:
        return len(self._samples)

    def raw_quantile(self) -> float | None:
        """The configured quantile of the window (nearest rank), unclamped; None if empty."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        index = max(0, math.ceil(self.config.quantile * len(ordered) - 1e-9) - 1)
        return ordered[index]

    def delay(self) -> float:
        cfg = self.config
        value = self.raw_quantile() if len(self._samples) >= cfg.min_samples else None
        if value is None:
            value = cfg.initial_delay
        return min(max(value, cfg.floor), cfg.cap)


class PlanOutcome(enum.Enum):
    WON = "won"
    ALL_FAILED = "all_failed"
    NO_CANDIDATES = "no_candidates"
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True)
class StartAttempt:
    """Send the request to ``node_id``; ``attempt`` counts from 1."""

    node_id: NodeId
    attempt: int


@dataclass(frozen=True, slots=True)
class CancelAttempt:
    """Cancel the attempt to ``node_id`` on the wire (report it as ``Outcome.CANCELLED``)."""

    node_id: NodeId


HedgeAction = StartAttempt | CancelAttempt


@dataclass(frozen=True, slots=True)
class HedgeResult:
    outcome: PlanOutcome
    winner: NodeId | None
    winner_attempt: int | None
    """1 when the first peer asked answered; > 1 when a hedge or a retry won."""
    attempts: int
    """Attempts started."""
    failures: tuple[tuple[NodeId, Outcome], ...]
    """Attempts that failed, in the order they failed."""


class HedgePlan:
    """The attempts of one role request (pure; driven by :meth:`poll` and the outcomes)."""

    def __init__(
        self,
        candidates: Sequence[NodeId],
        *,
        now: float,
        hedge_delay: float,
        max_in_flight: int,
        deadline: float | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise LocalProtocolError("max_in_flight must be at least 1")
        if not (math.isfinite(hedge_delay) and hedge_delay >= 0):
            raise LocalProtocolError(f"hedge_delay must be >= 0, got {hedge_delay!r}")
        self._queue = list(dict.fromkeys(candidates))
        self._next = 0
        self._hedge_delay = hedge_delay
        self._max_in_flight = max_in_flight
        self._deadline = deadline
        self._in_flight: dict[NodeId, int] = {}
        self._last_start = now
        self._failures: list[tuple[NodeId, Outcome]] = []
        self.result: HedgeResult | None = None
        if not self._queue:
            self._finish(PlanOutcome.NO_CANDIDATES, None)

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def in_flight(self) -> frozenset[NodeId]:
        return frozenset(self._in_flight)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has something to do next (a hedge or the deadline)."""
        if self.done:
            return None
        times = []
        if self._can_start() and self._in_flight:
            times.append(self._last_start + self._hedge_delay)
        if self._deadline is not None:
            times.append(self._deadline)
        return min(times) if times else None

    def rerank(self, order: Sequence[NodeId]) -> None:
        """Reorder the candidates not asked yet by ``order`` (the current health ranking;
        ids it omits keep their place after those it names). A hedge then goes to the peer
        that is best *now*, not to the one that looked second best when the request began."""
        waiting = self._queue[self._next:]
        position = {node_id: i for i, node_id in enumerate(order)}
        waiting.sort(key=lambda n: position.get(n, len(position)))
        self._queue[self._next:] = waiting

    def _can_start(self) -> bool:
        return self._next < len(self._queue) and len(self._in_flight) < self._max_in_flight

    def _start(self, now: float) -> StartAttempt:
        node_id = self._queue[self._next]
        self._next += 1
        self._in_flight[node_id] = self._next
        self._last_start = now
        return StartAttempt(node_id, self._next)

    def _finish(self, outcome: PlanOutcome, winner: NodeId | None) -> list[HedgeAction]:
        cancels: list[HedgeAction] = [
            CancelAttempt(n) for n in sorted(self._in_flight, key=self._in_flight.__getitem__)
        ]
        attempt = self._in_flight.pop(winner) if winner is not None else None
        if winner is not None:
            cancels = [c for c in cancels if isinstance(c, CancelAttempt) and c.node_id != winner]
        self._in_flight.clear()
        self.result = HedgeResult(outcome, winner, attempt, self._next, tuple(self._failures))
        return cancels

    def poll(self, now: float) -> list[HedgeAction]:
        """Start the first attempt, a hedge when its delay passed, or give up at the deadline."""
        if self.done:
            return []
        if self._deadline is not None and now >= self._deadline:
            return self._finish(PlanOutcome.DEADLINE, None)
        actions: list[HedgeAction] = []
        if not self._in_flight and self._can_start():
            actions.append(self._start(now))
        while self._can_start() and now >= self._last_start + self._hedge_delay:
            actions.append(self._start(now))
        return actions

    def _check(self, node_id: NodeId) -> bool:
        if self.done:
            return False  # a straggler after the plan ended: nothing to do
        if node_id not in self._in_flight:
            raise LocalProtocolError(f"no attempt in flight to {node_id}")
        return True

    def succeeded(self, node_id: NodeId, now: float) -> list[HedgeAction]:
        """A valid response from ``node_id``: it wins and every other attempt is cancelled."""
        if not self._check(node_id):
            return []
        return self._finish(PlanOutcome.WON, node_id)

    def failed(self, node_id: NodeId, outcome: Outcome, now: float) -> list[HedgeAction]:
        """The attempt to ``node_id`` failed: move on to the next candidate at once."""
        if outcome is Outcome.SUCCESS:
            raise LocalProtocolError("failed() with Outcome.SUCCESS; call succeeded()")
        if not self._check(node_id):
            return []
        del self._in_flight[node_id]
        self._failures.append((node_id, outcome))
        if self._can_start():
            return [self._start(now)]
        if not self._in_flight:
            return self._finish(PlanOutcome.ALL_FAILED, None)
        return []
