"""The dial planner: which addresses to dial, when, and which outbound peer an upgrade replaces.

Theory of operation
-------------------
Dial planning runs in ``poll`` in a fixed priority order, stopping when
``max_concurrent_dials`` dials are in flight: persistent peers whose backoff has passed;
operator ``dial_now`` requests; automatic outbound dials (address-book candidates that pass
bans, backoff, score and the one-outbound-per-netgroup rule; a fallback seed when the book has
none) until ``max_outbound``; then, only when the outbound slots are full, at most one upgrade
dial per ``upgrade_interval`` (when the best candidate out-ranks the worst outbound peer by
``upgrade_margin``) and one feeler per exponentially distributed ``feeler_interval`` (a
tried-table collision first, else a random new address).

A pass that finds no candidate for a free outbound slot leaves the planner *starved*. A
starved planner does not sample the address book again (each sample probes up to
``DEFAULT_MAX_PROBES`` random entries, and a book whose peers are all connected makes every
probe fail) unless something could have made a candidate: an ended connection or dial freed an
outbound netgroup slot (``ConnTable.group_freed``); an address that entered the book
(``AddressBook.added``) or an address of a peer whose connection or dial ended
(``ConnTable.released``), checked one by one, passes the candidate rules; or the end of a
backoff or ban is due. Scores and unbans are picked up by the ``_STARVED_TICK``. So a poll
costs the same however large the book and however many of its peers are connected.

The planner owns its schedule (next feeler, next upgrade, last exhaustive scan, last refresh
request, whether the last pass was starved of candidates) and the dial bookkeeping around the
connection table: starting a dial, expiring an unreported one ``dial_timeout + DIAL_GRACE``
after it started, and the backoff after a failure. It reads records, scores, bans and the
operator's lists, and evicts (through the evictor and the agenda) only to bring the outbound
count back to ``max_outbound``.
"""

from __future__ import annotations

import logging
import math
import random

from overlay.address import NodeAddress
from overlay.peers._addrbook import AddrEntry, AddressBook, TableName
from overlay.peers._agenda import Agenda
from overlay.peers._bans import BanList
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._counters import Counters
from overlay.peers._directory import PeerDirectory
from overlay.peers._eviction import Evictor
from overlay.peers._operator import OperatorSurface
from overlay.peers._records import PeerRecord, backoff_delay
from overlay.peers._scoring import Scorer
from overlay.peers._types import (
    Action,
    DialPeer,
    DialReason,
    DisconnectCause,
    PeerFlag,
    RefreshAddresses,
)
from overlay.wire._netgroup import address_netgroup

__all__ = ["DIAL_GRACE", "DIAL_TICK", "DialPlanner"]

_log = logging.getLogger(__name__)

DIAL_GRACE = 1.0
"""An unreported dial is given up this long after its timeout."""
DIAL_TICK = 1.0
"""Retry filling free outbound slots this often."""
_STARVED_TICK = 5.0  # ...or this often when the address book had no candidate
_CANDIDATE_SAMPLES = 4  # candidates ranked by a DialPreference per dial
_SCAN_INTERVAL = 5.0  # seconds between exhaustive address-book scans when starved


class DialPlanner:
    """Plans dials in priority order and keeps the dial schedule (see the module docstring)."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        rng: random.Random,
        now: float,
        directory: PeerDirectory,
        book: AddressBook,
        table: ConnTable,
        bans: BanList,
        scorer: Scorer,
        evictor: Evictor,
        operator: OperatorSurface,
        agenda: Agenda,
        counters: Counters,
    ) -> None:
        self._config = config
        self._rng = rng
        self._directory = directory
        self._book = book
        self._table = table
        self._bans = bans
        self._scorer = scorer
        self._evictor = evictor
        self._operator = operator
        self._agenda = agenda
        self._counters = counters
        self._starved = False
        self._starved_at = -math.inf
        self._retry_at = -math.inf
        self._last_scan = -math.inf
        self._last_refresh = -math.inf
        self._next_feeler = now + self._feeler_delay()
        self._next_upgrade = now + config.upgrade_interval

    # -- dial bookkeeping -------------------------------------------------------------------------

    def start_dial(
        self,
        rec: PeerRecord,
        address: NodeAddress,
        reason: DialReason,
        now: float,
        out: list[Action],
    ) -> None:
        self._table.start_dial(rec, address, reason, now)
        self._book.attempt(address, now, failed=False)
        self._counters.dials_started += 1
        if reason is DialReason.FEELER:
            self._counters.feelers_started += 1
        elif reason is DialReason.UPGRADE:
            self._counters.upgrades_started += 1
        out.append(DialPeer(address, reason is DialReason.FEELER,
                            timeout=self._config.dial_timeout, reason=reason))

    def dial_failed(
        self, rec: PeerRecord, address: NodeAddress, now: float, reason: str, *, feeler: bool
    ) -> None:
        """Back off after a failed dial (the table entry is already finished)."""
        c = self._config
        self._book.attempt(address, now, failed=True)
        self._counters.dials_failed += 1
        rec.failures += 1
        cap = c.persistent_backoff_cap if rec.has(PeerFlag.PERSISTENT) else c.backoff_cap
        delay = backoff_delay(rec.failures, base=c.backoff_base, cap=cap, rng=self._rng)
        rec.next_dial = max(rec.next_dial, now + delay)
        if "auth" in reason.lower() and address != rec.dial_address:
            self._book.remove(address)
            if address in rec.addresses:
                rec.addresses.remove(address)
        self._directory.touch(rec.node_id)
        self._agenda.wake = True
        _log.debug("dial %s failed (%s), feeler=%s", address, reason, feeler)

    def expire_dials(self, now: float) -> None:
        limit = self._config.dial_timeout + DIAL_GRACE
        for rec in list(self._table.dials.values()):
            dial = rec.dial
            if dial is not None and now >= dial.started + limit:
                self._table.finish_dial(rec)
                self._counters.dial_timeouts += 1
                self.dial_failed(
                    rec, dial.address, now, "timeout", feeler=dial.reason is DialReason.FEELER
                )

    def outbound_full(self) -> bool:
        used = self._table.outbound_used() + self._table.regular_dials()
        return used >= self._config.max_outbound

    def enforce_outbound_limit(self, now: float) -> None:
        """Evict outbound peers over ``max_outbound`` (after upgrades, persistent dials)."""
        while self._table.outbound_used() > self._config.max_outbound:
            victim = self._evictor.outbound_victim(now, keep_upgrades=True)
            if victim is None:
                break
            self._agenda.disconnect(self._directory[victim], DisconnectCause.UPGRADE, evict=True)
            self._counters.evictions += 1
        for rec in self._table.conns.values():
            if rec.conn is not None:
                rec.conn.upgrade = False

    # -- candidates -------------------------------------------------------------------------------

    def _dialable(self, rec: PeerRecord, now: float) -> bool:
        return (
            rec.conn is None
            and rec.dial is None
            and not rec.banned(now)
            and now >= rec.next_dial
            and rec.node_id != self._directory.self_id
        )

    def _auto_ok(self, entry: AddrEntry, now: float, *, diversity: bool = True) -> bool:
        rec = self._directory.get(entry.address.node_id)
        if rec is None or not self._dialable(rec, now):
            return False
        if not self._scorer.acceptable(rec, now):
            return False
        if self._bans.address_banned(entry.address, now):
            return False
        return not (
            diversity
            and not self._table.exempt_address(entry.address)
            and self._table.outbound_in_group(entry.group) >= self._config.max_outbound_per_netgroup
        )

    def _choose(
        self, now: float, *, diversity: bool = True, table: TableName | None = None
    ) -> AddrEntry | None:
        def accept(entry: AddrEntry) -> bool:
            return entry.address not in seen and self._auto_ok(entry, now, diversity=diversity)

        seen: set[NodeAddress] = set()
        # The exhaustive fallback scan is O(address book): at most once per _SCAN_INTERVAL.
        exhaustive = now - self._last_scan >= _SCAN_INTERVAL or now < self._last_scan
        sampled: list[AddrEntry] = []
        for _ in range(1 if self._scorer.preference is None else _CANDIDATE_SAMPLES):
            entry = self._book.select(now, accept, table=table, exhaustive=exhaustive)
            if entry is None:
                if exhaustive and not sampled:
                    self._last_scan = now
                break
            sampled.append(entry)
            seen.add(entry.address)
        if not sampled:
            return None
        return max(
            sampled,
            key=lambda e: self._scorer.rank(self._directory[e.address.node_id], now),
        )

    def _seed_candidate(self, now: float) -> tuple[PeerRecord, NodeAddress] | None:
        """A dialable seed not in the address book (its slot was taken): the fallback."""
        seeds = self._operator.seeds()
        self._rng.shuffle(seeds)
        for node_id in seeds:
            rec = self._directory.get(node_id)
            if rec is None:
                continue
            for address in rec.addresses:
                if address in self._book:
                    continue
                entry = AddrEntry(address, "", address_netgroup(address), "seed", "", now, now)
                if self._auto_ok(entry, now):
                    return rec, address
        return None

    # -- planning ---------------------------------------------------------------------------------

    def plan(self, now: float, out: list[Action]) -> None:
        """Append this poll's dials to ``out`` (see the module docstring for the order)."""
        c = self._config
        budget = c.max_concurrent_dials - len(self._table.dials)
        for rec in self._operator.persistent():
            address = rec.dial_address or (rec.addresses[0] if rec.addresses else None)
            if budget <= 0:
                break
            if (
                address is not None
                and self._dialable(rec, now)
                and not self._bans.address_banned(address, now)
            ):
                self.start_dial(rec, address, DialReason.PERSISTENT, now, out)
                budget -= 1
        for node_id, address in self._operator.dials():
            if budget <= 0:
                break
            self._operator.take_dial(node_id)
            rec = self._directory[node_id]
            if rec.conn is None and rec.dial is None and not rec.banned(now):
                self.start_dial(rec, address, DialReason.OPERATOR, now, out)
                budget -= 1
        free = c.max_outbound - self._table.outbound_used() - self._table.regular_dials()
        added, self._book.added = self._book.added, []
        released, self._table.released = self._table.released, []
        group_freed, self._table.group_freed = self._table.group_freed, False
        hints: list[AddrEntry] = []
        if budget <= 0 or free <= 0 or self._worth_choosing(
            now, added, released, group_freed, hints
        ):
            self._starved = False
        while budget > 0 and free > 0 and not self._starved:
            entry = self._choose(now)
            while entry is None and hints:  # sampling missed a candidate seen to be new
                hint = hints.pop()
                if self._auto_ok(hint, now):
                    entry = hint
            if entry is not None:
                rec, address = self._directory[entry.address.node_id], entry.address
            else:
                seed = self._seed_candidate(now)
                if seed is None:
                    self._starve(now)
                    break
                rec, address = seed
            self.start_dial(rec, address, DialReason.OUTBOUND, now, out)
            budget -= 1
            free -= 1
        full = free <= 0
        if now >= self._next_upgrade:
            self._next_upgrade = now + c.upgrade_interval
            if (
                full
                and budget > 0
                and c.upgrade_slots
                and self._table.upgrade_dials() < c.upgrade_slots
            ):
                self._plan_upgrade(now, out)
                budget = c.max_concurrent_dials - len(self._table.dials)
        if now >= self._next_feeler:
            self._next_feeler = now + self._feeler_delay()
            self._book.resolve_collisions(now)
            if full and budget > 0:
                target = self._book.collision_to_test()
                if target is None or not self._auto_ok(target, now, diversity=False):
                    target = self._choose(now, diversity=False, table="new")
                if target is not None:
                    rec = self._directory[target.address.node_id]
                    self.start_dial(rec, target.address, DialReason.FEELER, now, out)

    def _starve(self, now: float) -> None:
        """No candidate now: remember when that may change by itself (see the module
        docstring): the tick, or sooner the end of a peer's backoff or ban (O(peers), once per
        starved pass)."""
        retry = now + _STARVED_TICK
        for rec in self._directory:
            retry = self._due(rec, now, retry)
        self._starved = True
        self._starved_at = now
        self._retry_at = retry

    @staticmethod
    def _due(rec: PeerRecord, now: float, retry: float) -> float:
        """``retry``, or sooner when ``rec``'s backoff or ban ends before it."""
        if rec.conn is None and rec.dial is None:
            if now < rec.next_dial < retry:
                retry = rec.next_dial
            if rec.ban_until is not None and now < rec.ban_until < retry:
                retry = rec.ban_until
        return retry

    def _worth_choosing(
        self,
        now: float,
        added: list[NodeAddress],
        released: list[PeerRecord],
        group_freed: bool,
        hints: list[AddrEntry],
    ) -> bool:
        """Whether to sample the book for outbound candidates (see the module docstring): only
        what changed since the starved pass is looked at. A new candidate found that way goes
        to ``hints``: dialed if the random sample (which may miss a lone candidate in a large
        book) finds none."""
        if not self._starved or group_freed:
            return True
        if not self._starved_at <= now < self._retry_at:
            return True
        for address in added:
            entry = self._book.get(address)
            if entry is not None and self._auto_ok(entry, now):
                hints.append(entry)
                return True
        for rec in released:
            for address in rec.addresses:
                entry = self._book.get(address)
                if entry is not None and self._auto_ok(entry, now):
                    hints.append(entry)
                    return True
            self._retry_at = self._due(rec, now, self._retry_at)
        return False

    def _plan_upgrade(self, now: float, out: list[Action]) -> None:
        victim = self._evictor.outbound_victim(now, keep_upgrades=False)
        if victim is None:
            return
        worst = self._scorer.rank(self._directory[victim], now)
        entry = self._choose(now)
        if entry is None:
            return
        rec = self._directory[entry.address.node_id]
        if self._scorer.rank(rec, now) >= worst + self._config.upgrade_margin:
            self.start_dial(rec, entry.address, DialReason.UPGRADE, now, out)

    def refresh(self, now: float) -> RefreshAddresses | None:
        """Ask for addresses when the last pass found no candidate (``refresh_interval``)."""
        if not self._starved or now - self._last_refresh < self._config.refresh_interval:
            return None
        self._last_refresh = now
        self._counters.refreshes += 1
        return RefreshAddresses()

    def deadlines(self, last_poll: float) -> list[float]:
        """When the planner has something to do: dial expiries, persistent redials, and the
        next feeler / upgrade (slots full) or fill attempt (slots free)."""
        grace = self._config.dial_timeout + DIAL_GRACE
        times = [rec.dial.started + grace for rec in self._table.dials.values() if rec.dial]
        for rec in self._operator.persistent():
            if rec.conn is None and rec.dial is None:
                times.append(max(rec.next_dial, rec.ban_until or 0.0))
        if self.outbound_full():
            times.append(self._next_feeler)
            if self._config.upgrade_slots:
                times.append(self._next_upgrade)
        elif self._starved:  # the tick, or the end of a backoff or ban that is due sooner
            times.append(min(last_poll + _STARVED_TICK, max(self._retry_at, last_poll)))
        else:
            times.append(last_poll + DIAL_TICK)
        return times

    def _feeler_delay(self) -> float:
        return self._rng.expovariate(1.0 / self._config.feeler_interval)
