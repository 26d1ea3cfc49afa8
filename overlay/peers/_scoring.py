"""Peer scores: events move a score that decays exponentially towards neutral (0).

Theory of operation
-------------------
A score is stored as ``(value, time)``; its value at a later time ``t`` is
``value * 2 ** (-(t - time) / half_life)``. Decay is applied lazily whenever the score is read
or changed, so idle peers cost nothing. Time going backwards never increases a score's
magnitude (negative elapsed time counts as zero).

An event adds its delta to the decayed value and the result is clamped to
``[min_score, max_score]``. The manager then compares the score with two thresholds:

* ``score <= disconnect_score`` (-50): disconnect, and neither dial nor accept the peer until
  the score has decayed above the threshold again (with a 30-minute half-life, -50 becomes
  -25 after 30 minutes);
* ``score <= ban_score`` (-100): ban for ``ban_duration`` (24 h). Bans count against the IP:
  ``ip_ban_threshold`` (3) peer bans from one IP within ``ip_ban_window`` (24 h) ban the IP.

Event deltas (chosen against the default thresholds):

=====================  ======  ==============================================================
event                  delta   reasoning
=====================  ======  ==============================================================
USEFUL_RESPONSE        +1      good behaviour raises the score slowly up to ``max_score`` (25)
SLOW_PEER              -2      may be our network, not its fault; 25 in a row disconnect
TIMEOUT                -5      10 timeouts in quick succession disconnect
RATE_LIMIT_EXCEEDED    -10     5 in quick succession disconnect, 10 ban
INVALID_MESSAGE        -25     2 disconnect, 4 ban
PROTOCOL_VIOLATION     -100    a ban from neutral; from the best score (25) still a disconnect
=====================  ======  ==============================================================
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType

from overlay.errors import LocalProtocolError
from overlay.peers._config import PeerManagerConfig
from overlay.peers._records import PeerRecord
from overlay.peers._types import DialPreference, PeerSnapshot, ScoreEvent, ScoreRecord

__all__ = ["SCORE_DELTAS", "Scorer", "apply_event", "decayed"]

SCORE_DELTAS: Mapping[ScoreEvent, float] = MappingProxyType(
    {
        ScoreEvent.USEFUL_RESPONSE: 1.0,
        ScoreEvent.SLOW_PEER: -2.0,
        ScoreEvent.TIMEOUT: -5.0,
        ScoreEvent.RATE_LIMIT_EXCEEDED: -10.0,
        ScoreEvent.INVALID_MESSAGE: -25.0,
        ScoreEvent.PROTOCOL_VIOLATION: -100.0,
    }
)

_NEGLIGIBLE = 1e-3
_LATENCY_ALPHA = 0.25  # EWMA weight of a new RTT sample


def decayed(value: float, since: float, now: float, half_life: float) -> float:
    """``value`` (set at ``since``) decayed to ``now``; tiny magnitudes snap to 0."""
    elapsed = now - since
    if elapsed <= 0 or value == 0.0:
        return value
    result = value * math.pow(2.0, -elapsed / half_life)
    return 0.0 if abs(result) < _NEGLIGIBLE else result


def apply_event(
    value: float,
    since: float,
    now: float,
    event: ScoreEvent,
    *,
    half_life: float,
    min_score: float,
    max_score: float,
) -> tuple[float, float]:
    """Return ``(new_score, delta)`` after decaying to ``now`` and applying ``event``."""
    delta = SCORE_DELTAS[event]
    current = decayed(value, since, now, half_life)
    return min(max_score, max(min_score, current + delta)), delta


class Scorer:
    """Reads and moves scores and latencies on peer records; owns the outside ranking.

    The ranking (a :class:`~overlay.peers.DialPreference`, default: the score) orders dial
    candidates and outbound peers for eviction; the score alone decides disconnects and bans.
    """

    def __init__(self, config: PeerManagerConfig) -> None:
        self._config = config
        self.preference: DialPreference | None = None
        reward, cap = SCORE_DELTAS[ScoreEvent.USEFUL_RESPONSE], config.max_score
        # How long a score at the cap decays by less than one reward: within it a useful
        # response gives the cap back, so ``apply`` takes a short way (the common case of a
        # busy, good peer: one per answered request).
        self._saturated_for = (config.score_half_life * math.log2(cap / (cap - reward))
                               if cap > reward else 0.0)

    def score(self, rec: PeerRecord, now: float) -> float:
        return decayed(rec.score, rec.score_time, now, self._config.score_half_life)

    def acceptable(self, rec: PeerRecord, now: float) -> bool:
        """Above ``disconnect_score``: may be dialed, accepted and gossiped."""
        return self.score(rec, now) > self._config.disconnect_score

    def snapshot(self, rec: PeerRecord, now: float) -> PeerSnapshot:
        return rec.snapshot(now, self.score(rec, now))

    def rank(self, rec: PeerRecord, now: float) -> float:
        if self.preference is None:
            return self.score(rec, now)
        return self.preference.rank(self.snapshot(rec, now))

    def apply(self, rec: PeerRecord, event: ScoreEvent, now: float) -> float:
        """Apply ``event`` to ``rec`` (decay, delta, clamp, recent-events ring); the new score.

        A useful response to a peer already at the cap (and decayed by less than the reward)
        leaves the score at the cap, as the arithmetic would, and is not recorded in the
        ring."""
        c = self._config
        if (event is ScoreEvent.USEFUL_RESPONSE and rec.score >= c.max_score
                and now - rec.score_time <= self._saturated_for):
            rec.score_time = rec.last_useful = now
            return rec.score
        score, delta = apply_event(
            rec.score,
            rec.score_time,
            now,
            event,
            half_life=c.score_half_life,
            min_score=c.min_score,
            max_score=c.max_score,
        )
        rec.score, rec.score_time = score, now
        if rec.events is None:
            rec.events = deque(maxlen=c.score_events_kept)
        rec.events.append(ScoreRecord(now, event, delta, score))
        if event is ScoreEvent.USEFUL_RESPONSE:
            rec.last_useful = now
        return score

    @staticmethod
    def record_latency(rec: PeerRecord | None, rtt: float) -> None:
        """Fold a round-trip-time sample into ``rec``'s EWMA (validated even without a rec)."""
        if not math.isfinite(rtt) or rtt < 0:
            raise LocalProtocolError(f"rtt must be a finite non-negative number, got {rtt!r}")
        if rec is None:
            return
        if rec.latency is None:
            rec.latency = rtt
        else:
            rec.latency += _LATENCY_ALPHA * (rtt - rec.latency)
