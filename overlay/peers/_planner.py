"""Decisions of the peer manager: which addresses to dial, which peers to evict.

Theory of operation
-------------------
Dial planning runs in ``poll`` in a fixed priority order, stopping when
``max_concurrent_dials`` dials are in flight: persistent peers whose backoff has passed;
operator ``dial_now`` requests; automatic outbound dials (address-book candidates that pass
bans, backoff, score and the one-outbound-per-netgroup rule) until ``max_outbound``; then, only
when the outbound slots are full, at most one upgrade dial per ``upgrade_interval`` (when the
best candidate out-ranks the worst outbound peer by ``upgrade_margin``) and one feeler per
exponentially distributed ``feeler_interval`` (a tried-table collision first, else a random new
address). See ``overlay.peers._manager`` for the invariants.
"""

from __future__ import annotations

import logging

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers._addrbook import AddrEntry, TableName
from overlay.peers._core import DIAL_GRACE, MAINTENANCE_INTERVAL, ManagerCore
from overlay.peers._eviction import (
    EvictionCandidate,
    select_inbound_victim,
    select_outbound_victim,
)
from overlay.peers._records import PeerRecord
from overlay.peers._types import (
    Action,
    DialPeer,
    PeerFlag,
)
from overlay.wire._netgroup import address_ip_key, address_netgroup, netgroup

__all__ = ["ManagerPlanner"]

_log = logging.getLogger(__name__)

_CANDIDATE_SAMPLES = 4  # candidates ranked by a DialPreference per dial
_SCAN_INTERVAL = 5.0  # seconds between exhaustive address-book scans when starved


class ManagerPlanner(ManagerCore):
    """Dial planning and eviction choices (see the module docstring)."""

    # -- internals: planning ----------------------------------------------------------------------

    def _maintenance(self, now: float) -> None:
        self._next_maintenance = now + MAINTENANCE_INTERVAL
        for rec in self._records.values():
            if rec.ban_until is not None and rec.ban_until <= now:
                rec.ban_until, rec.ban_reason = None, ""
                self._dirty.add(rec.node_id)
        self._bans.expire(now)
        for rec in self._table.conns.values():
            conn = rec.conn
            if conn is not None and conn.address is not None and not conn.feeler:
                self._book.good(conn.address, now)
        self._book.resolve_collisions(now)
        if len(self._records) > self._config.max_peer_records:
            self._prune(now)

    def _expire_dials(self, now: float) -> None:
        limit = self._config.dial_timeout + DIAL_GRACE
        for rec in list(self._table.dials.values()):
            dial = rec.dial
            if dial is not None and now >= dial.started + limit:
                self._table.finish_dial(rec)
                self._stats.dial_timeouts += 1
                self._dial_failure(
                    rec, dial.address, now, "timeout", feeler=dial.reason == "feeler"
                )

    def _outbound_full(self) -> bool:
        used = self._table.outbound_used() + self._table.regular_dials()
        return used >= self._config.max_outbound

    def _enforce_outbound_limit(self, now: float) -> None:
        while self._table.outbound_used() > self._config.max_outbound:
            victim = self._outbound_victim(now, keep_upgrades=True)
            if victim is None:
                break
            self._disconnect(self._records[victim], "upgrade", evict=True)
            self._stats.evictions += 1
        for rec in self._table.conns.values():
            if rec.conn is not None:
                rec.conn.upgrade = False

    def _protected(self, recs: list[PeerRecord], now: float) -> set[NodeId]:
        protected = {
            r.node_id for r in recs if r.has(PeerFlag.PERSISTENT) or r.has(PeerFlag.UNCONDITIONAL)
        }
        if self._hooks:
            snapshots = [self._snapshot(r, now) for r in recs]
            for hook in self._hooks:
                protected |= hook.protected(snapshots)
        return protected

    def _candidate(self, rec: PeerRecord, now: float) -> EvictionCandidate:
        conn = rec.conn
        assert conn is not None
        group = conn.in_group or conn.out_group
        if group is None:
            group = netgroup(conn.remote_ip) if conn.remote_ip else f"peer:{rec.node_id}"
        return EvictionCandidate(
            node_id=rec.node_id,
            netgroup=group,
            group_key=self._book.keyed_group_hash(group),
            connected_since=conn.since,
            latency=rec.latency,
            last_useful=rec.last_useful,
            score=self._score(rec, now),
        )

    def _inbound_victim(self, now: float) -> NodeId | None:
        recs = list(self._table.live("inbound"))
        c = self._config
        return select_inbound_victim(
            [self._candidate(r, now) for r in recs],
            protected=self._protected(recs, now),
            protect_netgroups=c.protect_netgroups,
            protect_low_latency=c.protect_low_latency,
            protect_recently_useful=c.protect_recently_useful,
            protect_longest_connected=c.protect_longest_connected,
        )

    def _outbound_victim(self, now: float, *, keep_upgrades: bool) -> NodeId | None:
        recs = [
            r
            for r in self._table.live("outbound")
            if not (keep_upgrades and r.conn is not None and r.conn.upgrade)
        ]
        return select_outbound_victim(
            [self._candidate(r, now) for r in recs],
            protected=self._protected(recs, now),
            rank={r.node_id: self._rank(r, now) for r in recs},
        )

    def _dialable(self, rec: PeerRecord, now: float) -> bool:
        return (
            rec.conn is None
            and rec.dial is None
            and not rec.banned(now)
            and now >= rec.next_dial
            and rec.node_id != self._self_id
        )

    def _auto_ok(self, entry: AddrEntry, now: float, *, diversity: bool = True) -> bool:
        rec = self._records.get(entry.address.node_id)
        if rec is None or not self._dialable(rec, now):
            return False
        if self._score(rec, now) <= self._config.disconnect_score:
            return False
        if self._bans.is_banned(address_ip_key(entry.address), now):
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
        for _ in range(1 if self._preference is None else _CANDIDATE_SAMPLES):
            entry = self._book.select(now, accept, table=table, exhaustive=exhaustive)
            if entry is None:
                if exhaustive and not sampled:
                    self._last_scan = now
                break
            sampled.append(entry)
            seen.add(entry.address)
        if not sampled:
            return None
        return max(sampled, key=lambda e: self._rank(self._records[e.address.node_id], now))

    def _seed_candidate(self, now: float) -> tuple[PeerRecord, NodeAddress] | None:
        """A dialable seed not in the address book (its slot was taken): the fallback."""
        seeds = list(self._seeds)
        self._rng.shuffle(seeds)
        for node_id in seeds:
            rec = self._records.get(node_id)
            if rec is None:
                continue
            for address in rec.addresses:
                if address in self._book:
                    continue
                entry = AddrEntry(address, "", address_netgroup(address), "seed", "", now, now)
                if self._auto_ok(entry, now):
                    return rec, address
        return None

    def _start_dial(
        self, rec: PeerRecord, address: NodeAddress, reason: str, now: float, out: list[Action]
    ) -> None:
        self._table.start_dial(rec, address, reason, now)
        self._book.attempt(address, now, failed=False)
        self._stats.dials_started += 1
        if reason == "feeler":
            self._stats.feelers_started += 1
        elif reason == "upgrade":
            self._stats.upgrades_started += 1
        out.append(
            DialPeer(address, reason == "feeler", timeout=self._config.dial_timeout, reason=reason)
        )

    def _plan_dials(self, now: float, out: list[Action]) -> None:
        c = self._config
        budget = c.max_concurrent_dials - len(self._table.dials)
        for node_id in self._persistent:
            rec = self._records[node_id]
            address = rec.dial_address or (rec.addresses[0] if rec.addresses else None)
            if budget <= 0:
                break
            if (
                address is not None
                and self._dialable(rec, now)
                and not self._bans.is_banned(address_ip_key(address), now)
            ):
                self._start_dial(rec, address, "persistent", now, out)
                budget -= 1
        for node_id, address in list(self._operator_dials.items()):
            if budget <= 0:
                break
            del self._operator_dials[node_id]
            rec = self._records[node_id]
            if rec.conn is None and rec.dial is None and not rec.banned(now):
                self._start_dial(rec, address, "operator", now, out)
                budget -= 1
        free = c.max_outbound - self._table.outbound_used() - self._table.regular_dials()
        self._starved = False
        while budget > 0 and free > 0:
            entry = self._choose(now)
            if entry is not None:
                rec, address = self._records[entry.address.node_id], entry.address
            else:
                seed = self._seed_candidate(now)
                if seed is None:
                    self._starved = True
                    break
                rec, address = seed
            self._start_dial(rec, address, "outbound", now, out)
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
                    rec = self._records[target.address.node_id]
                    self._start_dial(rec, target.address, "feeler", now, out)

    def _plan_upgrade(self, now: float, out: list[Action]) -> None:
        victim = self._outbound_victim(now, keep_upgrades=False)
        if victim is None:
            return
        worst = self._rank(self._records[victim], now)
        entry = self._choose(now)
        if entry is None:
            return
        rec = self._records[entry.address.node_id]
        if self._rank(rec, now) >= worst + self._config.upgrade_margin:
            self._start_dial(rec, entry.address, "upgrade", now, out)
