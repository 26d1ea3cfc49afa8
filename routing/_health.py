"""Per (peer, capability) health: latency EWMA, decaying success rate, in-flight load and a
circuit breaker, plus the ranking role requests use to pick peers.

Theory of operation
-------------------
Every attempt at a role request ends in an :class:`Outcome`. SUCCESS feeds the round-trip EWMA
and the success rate; ERROR, TIMEOUT and REFUSED count as failures; CANCELLED (we cancelled it,
e.g. a losing hedge) changes nothing: cancelling is never the peer's fault.

The success rate is ``(successes + 1) / (attempts + 1)`` over exponentially decayed counts
(``success_half_life``): one success of prior keeps new peers worth trying, and old history
fades so a recovered peer climbs back.

The breaker is a state machine kept as data (:data:`BREAKER_TRANSITIONS`)::

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN --(open_cooldown elapsed)--> HALF_OPEN          one probe may be sent
    HALF_OPEN or OPEN --(a success)--> CLOSED          (a straggler proves the peer works)
    HALF_OPEN --(probe failed)--> OPEN                   the cool-down starts again

Invariants: an OPEN breaker admits no request; a HALF_OPEN one admits exactly one probe at a
time (a cancelled probe frees the slot); any success closes the breaker and clears the failure
streak.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import assert_never

from overlay.errors import ConfigError, LocalProtocolError
from overlay.identity import NodeId

__all__ = [
    "BREAKER_TRANSITIONS",
    "BreakerEvent",
    "BreakerState",
    "HealthConfig",
    "HealthTable",
    "Outcome",
    "PeerHealth",
    "rank",
]


class Outcome(enum.Enum):
    """How one attempt ended."""

    SUCCESS = "success"
    ERROR = "error"
    """The peer answered with an error, or an invalid response."""
    TIMEOUT = "timeout"
    REFUSED = "refused"
    """The peer refused (resource unavailable, rate limited, connection refused)."""
    CANCELLED = "cancelled"
    """We cancelled it (a losing hedge, the caller gave up): never a penalty."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(enum.Enum):
    TRIPPED = "tripped"
    """``failure_threshold`` consecutive failures."""
    COOLED_DOWN = "cooled_down"
    SUCCEEDED = "succeeded"
    """A success: the probe, or a straggler started before the breaker opened."""
    PROBE_FAILED = "probe_failed"


BREAKER_TRANSITIONS: dict[tuple[BreakerState, BreakerEvent], BreakerState] = {
    (BreakerState.CLOSED, BreakerEvent.TRIPPED): BreakerState.OPEN,
    (BreakerState.OPEN, BreakerEvent.COOLED_DOWN): BreakerState.HALF_OPEN,
    (BreakerState.OPEN, BreakerEvent.SUCCEEDED): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerEvent.SUCCEEDED): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerEvent.PROBE_FAILED): BreakerState.OPEN,
}
"""Every allowed breaker transition; anything else is a bug (raises)."""


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """How health is measured. Durations in seconds."""

    rtt_alpha: float = 0.2
    """Weight of a new round-trip sample in the EWMA."""
    initial_rtt: float = 0.1
    """The EWMA of a peer without samples (optimistic, so new peers get tried)."""
    success_half_life: float = 60.0
    """Outcomes this old count half as much in the success rate."""
    failure_threshold: int = 5
    """Consecutive failures that open the breaker."""
    open_cooldown: float = 10.0
    """Time an open breaker waits before it lets one probe through."""

    def __post_init__(self) -> None:
        if not 0.0 < self.rtt_alpha <= 1.0:
            raise ConfigError("rtt_alpha", "must be within (0, 1]")
        for name in ("initial_rtt", "success_half_life", "open_cooldown"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"must be positive, got {value!r}")
        if isinstance(self.failure_threshold, bool) or self.failure_threshold < 1:
            raise ConfigError("failure_threshold", "must be at least 1")


class PeerHealth:
    """The health of one peer for one capability."""

    __slots__ = (
        "_config",
        "_probe_in_flight",
        "_starts",
        "_state",
        "_updated",
        "attempts",
        "consecutive_failures",
        "in_flight",
        "opened_at",
        "rtt_ewma",
        "successes",
    )

    def __init__(self, config: HealthConfig) -> None:
        self._config = config
        self._state = BreakerState.CLOSED
        self._probe_in_flight = False
        self._updated: float | None = None
        self.rtt_ewma: float | None = None
        self.successes = 0.0
        self.attempts = 0.0
        self.consecutive_failures = 0
        self.in_flight = 0
        self.opened_at = 0.0
        self._starts: deque[float] = deque()

    def _transition(self, event: BreakerEvent) -> None:
        key = (self._state, event)
        if key not in BREAKER_TRANSITIONS:
            raise LocalProtocolError(f"breaker: no transition from {self._state} on {event}")
        self._state = BREAKER_TRANSITIONS[key]

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self.opened_at + self._config.open_cooldown:
            self._transition(BreakerEvent.COOLED_DOWN)

    def _decay(self, now: float) -> None:
        if self._updated is not None and now > self._updated:
            factor = 0.5 ** ((now - self._updated) / self._config.success_half_life)
            self.successes *= factor
            self.attempts *= factor
        if self._updated is None or now > self._updated:
            self._updated = now

    def state(self, now: float) -> BreakerState:
        """The breaker state at ``now`` (an OPEN breaker whose cool-down passed is HALF_OPEN)."""
        self._advance(now)
        return self._state

    def available(self, now: float) -> bool:
        """Whether :meth:`start` would admit a request now."""
        match self.state(now):
            case BreakerState.CLOSED:
                return True
            case BreakerState.HALF_OPEN:
                return not self._probe_in_flight
            case BreakerState.OPEN:
                return False
            case other:
                assert_never(other)

    def start(self, now: float) -> bool:
        """Admit one attempt (True) or refuse it because the breaker is open or probing."""
        if not self.available(now):
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = True
        self.in_flight += 1
        self._starts.append(now)
        return True

    def finish(self, outcome: Outcome, now: float, rtt: float | None = None) -> None:
        """Record how an attempt admitted by :meth:`start` ended."""
        if self.in_flight <= 0:
            raise LocalProtocolError("finish() without a matching start()")
        self.in_flight -= 1
        if self._starts:
            self._starts.popleft()  # attempts are interchangeable: the oldest start goes
        self._advance(now)
        probing = self._state is BreakerState.HALF_OPEN and self._probe_in_flight
        match outcome:
            case Outcome.CANCELLED:
                if probing:
                    self._probe_in_flight = False
                return
            case Outcome.SUCCESS:
                self._decay(now)
                self.successes += 1.0
                self.attempts += 1.0
                self.consecutive_failures = 0
                if rtt is not None and math.isfinite(rtt) and rtt >= 0:
                    a = self._config.rtt_alpha
                    prev = self.rtt_ewma
                    self.rtt_ewma = rtt if prev is None else a * rtt + (1 - a) * prev
                self._probe_in_flight = False
                if self._state is not BreakerState.CLOSED:
                    self._transition(BreakerEvent.SUCCEEDED)
            case Outcome.ERROR | Outcome.TIMEOUT | Outcome.REFUSED:
                self._decay(now)
                self.attempts += 1.0
                self.consecutive_failures += 1
                if probing:
                    self._probe_in_flight = False
                    self._transition(BreakerEvent.PROBE_FAILED)
                    self.opened_at = now
                elif (
                    self._state is BreakerState.CLOSED
                    and self.consecutive_failures >= self._config.failure_threshold
                ):
                    self._transition(BreakerEvent.TRIPPED)
                    self.opened_at = now
            case other:
                assert_never(other)

    def censored(self, elapsed: float) -> None:
        """An attempt we cancelled (a losing hedge) had no answer after ``elapsed`` seconds:
        a lower bound of its round trip. When it exceeds the EWMA the EWMA moves towards it,
        so a peer that keeps losing races ranks lower without ever being blamed (the success
        rate and the breaker are untouched)."""
        if not (math.isfinite(elapsed) and elapsed > self.expected_rtt()):
            return
        a = self._config.rtt_alpha
        self.rtt_ewma = a * elapsed + (1 - a) * self.expected_rtt()

    def success_rate(self, now: float) -> float:
        self._decay(now)
        return (self.successes + 1.0) / (self.attempts + 1.0)

    def expected_rtt(self) -> float:
        return self.rtt_ewma if self.rtt_ewma is not None else self._config.initial_rtt

    def pending_age(self, now: float) -> float:
        """How long the oldest attempt in flight has waited (0 with none): a lower bound of
        the peer's round trip right now."""
        return max(0.0, now - self._starts[0]) if self._starts else 0.0

    def expected_wait(self, now: float) -> float:
        """``max(rtt_ewma, pending_age) * (1 + in_flight)``: a peer stalling on an attempt
        looks at least as slow as the stall, at once."""
        return max(self.expected_rtt(), self.pending_age(now)) * (1 + self.in_flight)


_BREAKER_RANK = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def rank(candidates: Iterable[tuple[NodeId, PeerHealth]], now: float) -> list[NodeId]:
    """Node ids healthiest first.

    Order: breaker state (CLOSED, then a HALF_OPEN breaker with its probe slot free, then busy
    probes and OPEN breakers last); success rate in steps of 5 % (so noise in the third digit
    does not beat a much faster peer); expected wait
    ``max(rtt_ewma, age of the oldest attempt in flight) * (1 + in_flight)``; in-flight count;
    node id bytes.
    """

    def key(item: tuple[NodeId, PeerHealth]) -> tuple[int, int, float, int, bytes]:
        node_id, h = item
        state = h.state(now)
        breaker = _BREAKER_RANK[state]
        if state is BreakerState.HALF_OPEN and not h.available(now):
            breaker = 2
        bucket = math.floor(h.success_rate(now) * 20 + 1e-9)
        wait = h.expected_wait(now)
        return (breaker, -bucket, wait, h.in_flight, bytes.fromhex(node_id))

    return [node_id for node_id, _ in sorted(candidates, key=key)]


class HealthTable:
    """Health of every (peer, capability) pair the node has talked to."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config if config is not None else HealthConfig()
        self._entries: dict[tuple[NodeId, str], PeerHealth] = {}

    def get(self, node_id: NodeId, capability: str) -> PeerHealth:
        key = (node_id, capability)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = PeerHealth(self.config)
        return entry

    def forget(self, node_id: NodeId) -> None:
        """Drop a peer's entries (it disconnected; a reconnect starts fresh but wary peers
        are kept out by the peer manager's score, not by this table)."""
        for key in [k for k in self._entries if k[0] == node_id]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def rank(self, capability: str, node_ids: Iterable[NodeId], now: float) -> list[NodeId]:
        """``node_ids`` (peers with ``capability``) healthiest first."""
        return rank(((n, self.get(n, capability)) for n in set(node_ids)), now)
