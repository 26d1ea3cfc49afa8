"""The table of inbound handshakes in progress: per-IP and per-netgroup limits, and eviction.

Theory of operation
-------------------
A transport admits every accepted connection into a :class:`PendingTable` before the Noise
handshake starts, and releases it when the handshake ends (success, failure or cancellation).
The table is sans-IO: the caller passes the connection's per-IP key and network group (see
``overlay.wire._netgroup``) and ``now``; it returns a :class:`PendingDecision`, and the caller
closes the refused connection or cancels the evicted handshake.

:meth:`PendingTable.admit` decides, in this order:

1. the IP already holds ``max_per_ip`` pending handshakes → ``REFUSED_PER_IP``;
2. the netgroup already holds ``max_per_netgroup`` → ``REFUSED_PER_NETGROUP``;
3. the table holds ``max_total`` → if the newcomer's netgroup is *under-represented* (it holds
   at least two fewer entries than the most represented netgroup), the oldest pending handshake
   of the most represented netgroup is evicted to make room (``ADMITTED`` with ``evicted`` set;
   ties between netgroups go to the one holding the oldest entry); otherwise ``REFUSED_FULL``.
   "Two fewer" makes every eviction strictly improve the spread over netgroups, so newcomers
   from evenly represented netgroups never evict each other in turn;
4. otherwise ``ADMITTED``.

An ``exempt`` newcomer (the operator's exempt networks, e.g. a local testnet's loopback) skips
steps 1 and 2 only: it still counts in its IP and netgroup, takes a slot of ``max_total``, and
can be evicted like any other entry, so an exempt flood is still the first to make room.

Invariants: ``len(table) <= max_total``; a non-exempt admission never takes its IP above
``max_per_ip`` or its netgroup above ``max_per_netgroup``; an evicted ticket is no longer in the
table (releasing it again is a no-op), and every ticket is released at most once.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from overlay.errors import ConfigError

__all__ = ["PendingDecision", "PendingLimits", "PendingOutcome", "PendingTable"]


class PendingOutcome(enum.Enum):
    """What :meth:`PendingTable.admit` decided."""

    ADMITTED = "admitted"
    """Admitted (maybe by evicting another entry: see :attr:`PendingDecision.evicted`)."""
    REFUSED_PER_IP = "per_ip"
    """The IP already holds ``max_per_ip`` pending handshakes."""
    REFUSED_PER_NETGROUP = "per_netgroup"
    """The netgroup already holds ``max_per_netgroup`` pending handshakes."""
    REFUSED_FULL = "full"
    """The table is full and the newcomer's netgroup is not under-represented."""


@dataclass(frozen=True, slots=True)
class PendingLimits:
    """Bounds of a :class:`PendingTable` (validated on construction)."""

    max_total: int = 64
    """Pending handshakes at once, all hosts together."""
    max_per_ip: int = 8
    """Pending handshakes at once from one IP (an IPv6 /64)."""
    max_per_netgroup: int = 16
    """Pending handshakes at once from one netgroup (an IPv4 /16, an IPv6 /32)."""

    def __post_init__(self) -> None:
        for key, name in (
            ("max_total", "max_pending_handshakes"),
            ("max_per_ip", "max_pending_handshakes_per_ip"),
            ("max_per_netgroup", "max_pending_handshakes_per_netgroup"),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(name, "must be an integer")
            if value < 1:
                raise ConfigError(name, "must be >= 1")


@dataclass(frozen=True, slots=True)
class PendingDecision:
    """The outcome of one :meth:`PendingTable.admit`."""

    outcome: PendingOutcome
    ticket: int | None = None
    """The admitted entry's handle (pass it to :meth:`PendingTable.release`); None if refused."""
    evicted: int | None = None
    """The ticket of the pending handshake evicted to make room (already out of the table)."""

    @property
    def admitted(self) -> bool:
        return self.outcome is PendingOutcome.ADMITTED


@dataclass(frozen=True, slots=True)
class _Entry:
    ip: str
    netgroup: str
    since: float


class PendingTable:
    """Pending inbound handshakes by IP and netgroup (see the module docstring)."""

    __slots__ = ("_by_group", "_entries", "_ip_counts", "_next", "limits")

    def __init__(self, limits: PendingLimits | None = None) -> None:
        self.limits = limits if limits is not None else PendingLimits()
        self._entries: dict[int, _Entry] = {}
        self._by_group: dict[str, OrderedDict[int, None]] = {}
        """Tickets per netgroup, oldest first."""
        self._ip_counts: dict[str, int] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def ip_count(self, ip: str) -> int:
        """Pending handshakes from the per-IP key ``ip`` now."""
        return self._ip_counts.get(ip, 0)

    def netgroup_count(self, netgroup: str) -> int:
        """Pending handshakes from ``netgroup`` now."""
        group = self._by_group.get(netgroup)
        return len(group) if group is not None else 0

    def admit(
        self, ip: str, netgroup: str, now: float, *, exempt: bool = False
    ) -> PendingDecision:
        """Admit a new pending handshake from ``ip`` (its per-IP key) in ``netgroup``, or not."""
        limits = self.limits
        if not exempt:
            if self.ip_count(ip) >= limits.max_per_ip:
                return PendingDecision(PendingOutcome.REFUSED_PER_IP)
            if self.netgroup_count(netgroup) >= limits.max_per_netgroup:
                return PendingDecision(PendingOutcome.REFUSED_PER_NETGROUP)
        evicted: int | None = None
        if len(self._entries) >= limits.max_total:
            evicted = self._victim(netgroup)
            if evicted is None:
                return PendingDecision(PendingOutcome.REFUSED_FULL)
            self.release(evicted)
        ticket = self._next
        self._next += 1
        self._entries[ticket] = _Entry(ip, netgroup, now)
        self._by_group.setdefault(netgroup, OrderedDict())[ticket] = None
        self._ip_counts[ip] = self._ip_counts.get(ip, 0) + 1
        return PendingDecision(PendingOutcome.ADMITTED, ticket, evicted)

    def release(self, ticket: int) -> bool:
        """Forget a pending handshake (it finished, failed or was cancelled); False if it was
        not in the table (already released or evicted)."""
        entry = self._entries.pop(ticket, None)
        if entry is None:
            return False
        group = self._by_group[entry.netgroup]
        del group[ticket]
        if not group:
            del self._by_group[entry.netgroup]
        left = self._ip_counts[entry.ip] - 1
        if left:
            self._ip_counts[entry.ip] = left
        else:
            del self._ip_counts[entry.ip]
        return True

    def _victim(self, newcomer_group: str) -> int | None:
        """The oldest ticket of the most represented netgroup, if ``newcomer_group`` is
        under-represented (two or more entries fewer than it); else None."""
        best: tuple[int, float, int] | None = None  # (-count, since of oldest, ticket)
        for tickets in self._by_group.values():
            oldest = next(iter(tickets))
            key = (-len(tickets), self._entries[oldest].since, oldest)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        if self.netgroup_count(newcomer_group) + 2 > -best[0]:
            return None
        return best[2]
