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

:class:`BanList` is the manager's one place for bans of both kinds. A peer ban lives on the
peer's record (``ban_until``, ``ban_reason``: persisted with it); an IP ban in :class:`IpBans`.
Imposing a ban disconnects the peer (or every peer connected from the IP) through the agenda
and asks for an urgent persist; an automatic peer ban also strikes the peer's IP (unless that
IP is inside ``exempt_networks``). The list never decides *whether* to ban: the score does
(``PeerManager.report``), or the operator.
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers._agenda import Agenda
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._counters import Counters
from overlay.peers._directory import PeerDirectory
from overlay.peers._records import PeerRecord
from overlay.peers._state import StoredIpBan
from overlay.peers._types import BanEntry, BanKind, DisconnectCause
from overlay.wire._netgroup import address_ip_key, ip_key

__all__ = [
    "BanList",
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


class BanList:
    """Peer bans (on the records) and IP bans (:class:`IpBans`), imposed and lifted."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        directory: PeerDirectory,
        table: ConnTable,
        agenda: Agenda,
        counters: Counters,
    ) -> None:
        self._config = config
        self._directory = directory
        self._table = table
        self._agenda = agenda
        self._counters = counters
        self.ips = IpBans(threshold=config.ip_ban_threshold, window=config.ip_ban_window)

    def ip_banned(self, ip: str, now: float) -> bool:
        return self.ips.is_banned(ip_key(ip), now)

    def address_banned(self, address: NodeAddress, now: float) -> bool:
        return self.ips.is_banned(address_ip_key(address), now)

    def ban_peer(
        self, rec: PeerRecord, until: float, reason: str, now: float, *, automatic: bool
    ) -> None:
        rec.ban_until, rec.ban_reason = until, reason
        self._counters.bans += 1
        self._directory.touch(rec.node_id)
        self._agenda.urgent = self._agenda.wake = True
        self._agenda.disconnect(rec, DisconnectCause.BANNED)
        ip = rec.conn.remote_ip if rec.conn is not None and rec.conn.remote_ip else rec.last_ip
        if automatic and ip and not self._table.exempt_ip(ip):
            key = ip_key(ip)
            if self.ips.strike(key, now):
                self.ban_ip_key(key, now + self._config.ban_duration, "repeated peer bans")

    def ban_ip_key(self, key: str, until: float, reason: str) -> None:
        self.ips.ban(key, until, reason)
        self._counters.ip_bans += 1
        self._agenda.urgent = self._agenda.wake = True
        for rec in list(self._table.conns.values()):
            if rec.conn is not None and rec.conn.remote_ip and ip_key(rec.conn.remote_ip) == key:
                self._agenda.disconnect(rec, DisconnectCause.IP_BANNED)

    def unban_peer(self, node_id: NodeId, now: float) -> bool:
        """Lift a peer ban; True when an active ban was lifted."""
        rec = self._directory.get(node_id)
        if rec is None or rec.ban_until is None:
            return False
        active = rec.banned(now)
        rec.ban_until, rec.ban_reason = None, ""
        self._directory.touch(node_id)
        self._agenda.urgent = self._agenda.wake = True
        return active

    def unban_ip(self, ip: str) -> bool:
        removed = self.ips.unban(ip_key(ip))
        self._agenda.urgent = self._agenda.urgent or removed
        return removed

    def expire(self, now: float) -> None:
        """Forget ended peer bans, ended IP bans and stale strikes."""
        for rec in self._directory:
            if rec.ban_until is not None and rec.ban_until <= now:
                rec.ban_until, rec.ban_reason = None, ""
                self._directory.touch(rec.node_id)
        self.ips.expire(now)

    def entries(self, now: float) -> list[BanEntry]:
        """Every active ban, peers and IPs, ending soonest first."""
        out = [
            BanEntry(BanKind.PEER, rec.node_id, rec.ban_until, rec.ban_reason)
            for rec in self._directory
            if rec.ban_until is not None and rec.banned(now)
        ]
        out.extend(
            BanEntry(BanKind.IP, ban.ip, ban.until, ban.reason)
            for ban in self.ips.bans()
            if ban.until > now
        )
        return sorted(out, key=lambda b: (b.until, b.kind, b.target))
