"""IP bans and the strike counter that turns repeated peer bans into an IP ban.

Theory of operation
-------------------
Bans are keyed by the per-IP key of ``overlay.wire._netgroup`` (an IPv4 address or an IPv6
/64), so a host cannot escape a ban by hopping addresses inside its /64. A ban holds until its
``until`` time; lookups compare with ``now`` so an expired ban is inert even before
``expire`` removes it.

Every automatic peer ban adds a *strike* to the IP the peer connected from; ``threshold``
strikes within ``window`` seconds ban the IP itself. The strike table is bounded
(``MAX_STRIKE_KEYS``, oldest key dropped first) so a flood of distinct IPs cannot grow it, and
so is the ban table (``MAX_IP_BANS``: the ban ending soonest is dropped first).
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.peers._state import StoredIpBan

__all__ = [
    "IpBan",
    "IpBans",
    "MAX_IP_BANS",
    "MAX_STRIKE_KEYS",
]

MAX_STRIKE_KEYS = 4096
MAX_IP_BANS = 65536


@dataclass(frozen=True, slots=True)
class IpBan:
    """One banned IP key."""

    ip: str
    until: float
    reason: str


class IpBans:
    """The IP ban table plus the strike counter; marks changes for persistence."""

    def __init__(self, *, threshold: int, window: float) -> None:
        self._threshold = threshold
        self._window = window
        self._bans: dict[str, IpBan] = {}
        self._strikes: dict[str, list[float]] = {}
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()

    def __len__(self) -> int:
        return len(self._bans)

    def active_count(self, now: float) -> int:
        return sum(1 for ban in self._bans.values() if ban.until > now)

    def get(self, key: str, now: float) -> IpBan | None:
        ban = self._bans.get(key)
        return ban if ban is not None and ban.until > now else None

    def is_banned(self, key: str, now: float) -> bool:
        ban = self._bans.get(key)
        return ban is not None and ban.until > now

    def bans(self) -> list[IpBan]:
        return list(self._bans.values())

    def ban(self, key: str, until: float, reason: str) -> None:
        old = self._bans.get(key)
        if old is not None and old.until >= until:
            return
        if old is None and len(self._bans) >= MAX_IP_BANS:
            soonest = min(self._bans.values(), key=lambda b: b.until)
            self._drop(soonest.ip)
        self._bans[key] = IpBan(key, until, reason)
        self.dirty.add(key)
        self.deleted.discard(key)

    def unban(self, key: str) -> bool:
        self._strikes.pop(key, None)
        if key not in self._bans:
            return False
        self._drop(key)
        return True

    def strike(self, key: str, now: float) -> bool:
        """Count one peer ban against ``key``; True when it reaches the threshold."""
        times = [t for t in self._strikes.pop(key, []) if now - t < self._window]
        times.append(now)
        if len(times) >= self._threshold:
            return True
        if len(self._strikes) >= MAX_STRIKE_KEYS:
            del self._strikes[next(iter(self._strikes))]
        self._strikes[key] = times
        return False

    def expire(self, now: float) -> list[str]:
        """Remove expired bans and stale strikes; returns the unbanned keys."""
        gone = [key for key, ban in self._bans.items() if ban.until <= now]
        for key in gone:
            self._drop(key)
        for key in [k for k, t in self._strikes.items() if now - t[-1] >= self._window]:
            del self._strikes[key]
        return gone

    def stored(self, key: str) -> StoredIpBan | None:
        ban = self._bans.get(key)
        return None if ban is None else StoredIpBan(ban.ip, ban.until, ban.reason)

    def restore(self, rows: list[StoredIpBan] | tuple[StoredIpBan, ...]) -> None:
        for row in rows:
            self._bans[row.ip] = IpBan(row.ip, row.until, row.reason)

    def _drop(self, key: str) -> None:
        del self._bans[key]
        self.dirty.discard(key)
        self.deleted.add(key)
