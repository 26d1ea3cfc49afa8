"""The peer manager's cumulative counters (what ``statistics`` and ``counters`` report).

One mutable :class:`Counters` is shared by the concept objects that count something (the
planner counts dials, the ban list bans, admission acceptances and refusals); it only ever
grows and is read as the frozen :class:`~overlay.peers.PeerManagerCounters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from overlay.peers._types import Decision, PeerManagerCounters, PeerManagerStatistics

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    """Cumulative counters (see ``PeerManagerStatistics`` for their meaning)."""

    bans: int = 0
    dial_timeouts: int = 0
    dials_failed: int = 0
    dials_started: int = 0
    dials_succeeded: int = 0
    evictions: int = 0
    feelers_started: int = 0
    inbound_accepted: int = 0
    ip_bans: int = 0
    persists: int = 0
    refreshes: int = 0
    score_disconnects: int = 0
    upgrades_started: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    """Inbound refusals by reason."""

    def reject(self, reason: str) -> Decision:
        """Count an inbound refusal and return it."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return Decision(False, reason)

    def frozen(self) -> PeerManagerCounters:
        return PeerManagerCounters(
            dials_started=self.dials_started,
            dials_succeeded=self.dials_succeeded,
            dials_failed=self.dials_failed,
            dial_timeouts=self.dial_timeouts,
            feelers_started=self.feelers_started,
            upgrades_started=self.upgrades_started,
            evictions=self.evictions,
            inbound_accepted=self.inbound_accepted,
            bans=self.bans,
            ip_bans=self.ip_bans,
            score_disconnects=self.score_disconnects,
            persists=self.persists,
            refreshes=self.refreshes,
        )

    def statistics(self, **gauges: int) -> PeerManagerStatistics:
        """These counters with the manager's ``gauges`` (counts by state)."""
        frozen = self.frozen()
        counted = {f.name: getattr(frozen, f.name) for f in fields(frozen)}
        return PeerManagerStatistics(
            **gauges, **counted, inbound_rejected=dict(self.rejected)
        )
