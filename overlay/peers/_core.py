"""Shared state and bookkeeping of the peer manager (records, bans, persistence batches).

Theory of operation
-------------------
``ManagerCore`` holds all the manager's state; ``ManagerPlanner`` (``_planner``) adds the
dialing / eviction decisions and ``PeerManager`` (``_manager``) the public API. The split is
only to keep modules small: the three form one class and share one set of invariants,
documented in ``overlay.peers._manager``.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

from overlay.address import NodeAddress
from overlay.errors import ConfigError
from overlay.identity import NodeId, parse_node_id
from overlay.peers._addrbook import LOCAL_SOURCES, AddressBook
from overlay.peers._bans import IpBans
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._records import PeerRecord, backoff_delay, record_from_stored
from overlay.peers._scoring import decayed
from overlay.peers._state import LoadedState, StoreChanges
from overlay.peers._types import (
    Action,
    Decision,
    DialPreference,
    DisconnectPeer,
    PeerFlag,
    PeerManagerCounters,
    PeerManagerStatistics,
    PeerSnapshot,
    Persist,
    ProtectionHook,
)
from overlay.wire._netgroup import address_ip_key, ip_key, netgroup

__all__ = ["DIAL_GRACE", "MAINTENANCE_INTERVAL", "ManagerCore"]

_log = logging.getLogger(__name__)

DIAL_GRACE = 1.0
"""An unreported dial is given up this long after its timeout."""
MAINTENANCE_INTERVAL = 60.0
"""Ban expiry, tried-collision resolution and record pruning run this often."""
_UNKNOWN_SOURCE_GROUP = "unknown-source"  # source group of gossip from unconnected peers


@dataclass(slots=True)
class _Counters:
    """Cumulative counters (see ``PeerManagerStatistics``)."""

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


class ManagerCore:
    """State and bookkeeping shared by the planner and the public API."""

    def __init__(
        self,
        config: PeerManagerConfig,
        self_id: NodeId,
        *,
        now: float,
        rng: random.Random,
        secret: bytes,
        store_state: LoadedState | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ConfigError("secret", "the address-book secret must be at least 16 bytes")
        if store_state is not None and store_state.secret != secret:
            raise ConfigError("secret", "differs from the store's secret; pass its .secret")
        self._config = config
        self._self_id = self_id
        self._rng = rng
        self._now = now
        self._unconditional = config.unconditional_ids()
        self._private = config.private_ids()
        self._book = AddressBook(config, secret, rng)
        self._bans = IpBans(threshold=config.ip_ban_threshold, window=config.ip_ban_window)
        self._table = ConnTable(config.exempt())
        self._records: dict[NodeId, PeerRecord] = {}
        self._persistent: dict[NodeId, None] = {}
        self._seeds: dict[NodeId, None] = {}
        self._operator_dials: dict[NodeId, NodeAddress] = {}
        self._queued: list[Action] = []
        self._hooks: list[ProtectionHook] = []
        self._preference: DialPreference | None = None
        self._dirty: set[NodeId] = set()
        self._urgent = False
        self._wake = True
        self._starved = False
        self._last_scan = -math.inf
        self._last_poll = now
        self._last_persist = now
        self._last_refresh = -math.inf
        self._next_feeler = now + self._feeler_delay()
        self._next_upgrade = now + config.upgrade_interval
        self._next_maintenance = now + MAINTENANCE_INTERVAL
        self._rejected: dict[str, int] = {}
        self._stats = _Counters()
        if store_state is not None:
            self._restore(store_state, now)
        self._apply_config(now)

    def _learn(self, address: NodeAddress, source: str, now: float) -> bool:
        local = source in LOCAL_SOURCES
        if local:
            source_group = f"local:{source}"
        else:
            source_group = self._source_group(parse_node_id(source))
        node_id = address.node_id
        if node_id == self._self_id or address.unspecified:
            return False  # 0.0.0.0 / :: names no host: never stored nor gossiped
        rec = self._records.get(node_id)
        if rec is not None and rec.banned(now):
            return False
        if self._bans.is_banned(address_ip_key(address), now):
            return False
        kept = self._book.add(
            address, source=source, source_group=source_group, now=now, limit_source=not local
        )
        if not kept and not local:
            return False
        rec = self._ensure(node_id, source, now)
        rec.remember_address(address, self._config.max_addresses_per_peer)
        self._dirty.add(node_id)
        self._wake = True
        return True

    # -- internals: records ----------------------------------------------------------------------

    def _ensure(self, node_id: NodeId, source: str, now: float) -> PeerRecord:
        rec = self._records.get(node_id)
        if rec is not None:
            return rec
        limit = self._config.max_peer_records
        if len(self._records) >= limit + max(16, limit // 10):
            self._prune(now)
        rec = PeerRecord(node_id, source, first_seen=now, last_seen=now, score_time=now)
        if node_id in self._unconditional:
            rec.config_flags.add(PeerFlag.UNCONDITIONAL)
        if node_id in self._private:
            rec.config_flags.add(PeerFlag.PRIVATE)
        self._records[node_id] = rec
        self._dirty.add(node_id)
        return rec

    def _prune(self, now: float) -> None:
        """Forget the least recently seen disposable records down to ``max_peer_records``."""
        excess = len(self._records) - self._config.max_peer_records + 1
        in_book = {entry.address.node_id for entry in self._book.entries()}
        disposable = [
            rec
            for rec in self._records.values()
            if rec.conn is None
            and rec.dial is None
            and not rec.flags
            and rec.node_id not in in_book
            and rec.node_id not in self._operator_dials
        ]
        disposable.sort(key=lambda rec: (rec.banned(now), rec.last_seen))
        for rec in disposable[: max(0, excess)]:
            del self._records[rec.node_id]
            self._dirty.add(rec.node_id)

    def _score(self, rec: PeerRecord, now: float) -> float:
        return decayed(rec.score, rec.score_time, now, self._config.score_half_life)

    def _snapshot(self, rec: PeerRecord, now: float) -> PeerSnapshot:
        return rec.snapshot(now, self._score(rec, now))

    def _rank(self, rec: PeerRecord, now: float) -> float:
        if self._preference is None:
            return self._score(rec, now)
        return self._preference.rank(self._snapshot(rec, now))

    def _source_group(self, source: NodeId) -> str:
        rec = self._records.get(source)
        if rec is not None:
            ip = rec.conn.remote_ip if rec.conn is not None else None
            ip = ip or rec.last_ip
            if ip:
                return netgroup(ip)
        return _UNKNOWN_SOURCE_GROUP

    def _mark_urgent(self, node_id: NodeId) -> None:
        self._dirty.add(node_id)
        self._urgent = True
        self._wake = True

    def _reject(self, reason: str) -> Decision:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        return Decision(False, reason)

    def _ip_rejection(self, remote_ip: str, now: float) -> str | None:
        c = self._config
        if self._bans.is_banned(ip_key(remote_ip), now):
            return "ip_banned"
        if self._table.exempt_ip(remote_ip):
            return None
        if self._table.inbound_from_ip(remote_ip) >= c.max_inbound_per_ip:
            return "per_ip_limit"
        if self._table.inbound_from_group(remote_ip) >= c.max_inbound_per_netgroup:
            return "per_netgroup_limit"
        return None

    def _store_verified(self, rec: PeerRecord, address: NodeAddress, now: float) -> None:
        """Store ``address`` as one of ``rec``'s: a connection to it authenticated as
        ``rec.node_id`` (``dial_succeeded``). This is the only way an operator's typed address
        enters the record and the address book. Hook: a signed peer record naming the address
        (a later protocol addition) is the other proof that may store one; verify the
        signature, then call this.
        """
        if address.unspecified:
            return
        if address not in self._book:
            self._book.add(address, source="operator", source_group="local:operator",
                           now=now, limit_source=False)
        rec.remember_address(address, self._config.max_addresses_per_peer)
        self._book.good(address, now)

    def _disconnect(self, rec: PeerRecord, reason: str, *, evict: bool = False) -> bool:
        conn = rec.conn
        if conn is None or conn.closing:
            return False
        conn.closing = True
        self._queued.append(DisconnectPeer(rec.node_id, reason, evict))
        return True

    def _ban(
        self, rec: PeerRecord, until: float, reason: str, now: float, *, automatic: bool
    ) -> None:
        rec.ban_until, rec.ban_reason = until, reason
        self._operator_dials.pop(rec.node_id, None)
        self._stats.bans += 1
        self._mark_urgent(rec.node_id)
        self._disconnect(rec, "banned")
        ip = rec.conn.remote_ip if rec.conn is not None and rec.conn.remote_ip else rec.last_ip
        if automatic and ip and not self._table.exempt_ip(ip):
            key = ip_key(ip)
            if self._bans.strike(key, now):
                self._ban_ip_key(key, now + self._config.ban_duration, "repeated peer bans")

    def _ban_ip_key(self, key: str, until: float, reason: str) -> None:
        self._bans.ban(key, until, reason)
        self._stats.ip_bans += 1
        self._urgent = self._wake = True
        for rec in list(self._table.conns.values()):
            if rec.conn is not None and rec.conn.remote_ip and ip_key(rec.conn.remote_ip) == key:
                self._disconnect(rec, "ip_banned")

    def _dial_failure(
        self, rec: PeerRecord, address: NodeAddress, now: float, reason: str, *, feeler: bool
    ) -> None:
        c = self._config
        self._book.attempt(address, now, failed=True)
        self._stats.dials_failed += 1
        rec.failures += 1
        cap = c.persistent_backoff_cap if rec.has(PeerFlag.PERSISTENT) else c.backoff_cap
        delay = backoff_delay(rec.failures, base=c.backoff_base, cap=cap, rng=self._rng)
        rec.next_dial = max(rec.next_dial, now + delay)
        if "auth" in reason.lower() and address != rec.dial_address:
            self._book.remove(address)
            if address in rec.addresses:
                rec.addresses.remove(address)
        self._dirty.add(rec.node_id)
        self._wake = True
        _log.debug("dial %s failed (%s), feeler=%s", address, reason, feeler)

    # -- internals: restore / config -------------------------------------------------------------

    def _restore(self, state: LoadedState, now: float) -> None:
        for row in state.peers:
            rec = record_from_stored(row, max_addresses=self._config.max_addresses_per_peer)
            if rec is None or rec.node_id == self._self_id:
                continue
            self._records[rec.node_id] = rec
            if PeerFlag.PERSISTENT in rec.saved_flags:
                self._persistent[rec.node_id] = None
            if PeerFlag.SEED in rec.saved_flags:
                self._seeds[rec.node_id] = None
        self._book.restore(state.addresses)
        for entry in self._book.entries():
            node_id = entry.address.node_id
            if node_id == self._self_id:
                self._book.remove(entry.address)
            elif node_id not in self._records:
                rec = self._ensure(node_id, entry.source, entry.added)
                rec.last_seen = entry.last_seen
                rec.remember_address(entry.address, self._config.max_addresses_per_peer)
        self._bans.restore(state.ip_bans)
        self._dirty.clear()

    def _apply_config(self, now: float) -> None:
        for address in self._config.persistent_addresses():
            if address.node_id == self._self_id:
                continue
            self._book.add(
                address,
                source="config",
                source_group="local:config",
                now=now,
                limit_source=False,
            )
            rec = self._ensure(address.node_id, "config", now)
            rec.config_flags.add(PeerFlag.PERSISTENT)
            rec.remember_address(address, self._config.max_addresses_per_peer)
            rec.dial_address = address
            self._persistent[address.node_id] = None
        for node_id in self._unconditional | self._private:
            if node_id != self._self_id:
                self._ensure(node_id, "config", now)
        for address in self._config.seed_addresses():
            if self._learn(address, "seed", now):
                self._records[address.node_id].config_flags.add(PeerFlag.SEED)
                self._seeds[address.node_id] = None

    def _feeler_delay(self) -> float:
        return self._rng.expovariate(1.0 / self._config.feeler_interval)

    def _has_changes(self) -> bool:
        return bool(
            self._dirty
            or self._book.dirty
            or self._book.deleted
            or self._bans.dirty
            or self._bans.deleted
        )

    def _maybe_persist(self, now: float, out: list[Action]) -> None:
        if not self._has_changes():
            return
        if not self._urgent and now - self._last_persist < self._config.persist_interval:
            return
        self._last_persist = now
        self._urgent = False
        changes = self._drain_changes()
        if changes:
            self._stats.persists += 1
            out.append(Persist(changes))

    def _drain_changes(self) -> StoreChanges:
        upserts, deletes = [], []
        for node_id in sorted(self._dirty):
            rec = self._records.get(node_id)
            if rec is not None and rec.worth_storing():
                upserts.append(rec.stored())
            else:
                deletes.append(str(node_id))
        addresses = [e.stored() for a in self._book.dirty if (e := self._book.get(a)) is not None]
        bans = [b for k in self._bans.dirty if (b := self._bans.stored(k)) is not None]
        changes = StoreChanges(
            peers_upsert=tuple(upserts),
            peers_delete=tuple(deletes),
            addresses_upsert=tuple(sorted(addresses, key=lambda a: a.address)),
            addresses_delete=tuple(sorted(self._book.deleted)),
            ip_bans_upsert=tuple(sorted(bans, key=lambda b: b.ip)),
            ip_bans_delete=tuple(sorted(self._bans.deleted)),
        )
        self._dirty.clear()
        self._book.dirty.clear()
        self._book.deleted.clear()
        self._bans.dirty.clear()
        self._bans.deleted.clear()
        return changes

    # -- views and persistence feedback (public, documented on PeerManager) ---------------

    def persist_failed(self, changes: StoreChanges) -> None:
        """The driver could not write ``changes``: keep them for the next ``Persist``."""
        self._dirty.update(NodeId(p.node_id) for p in changes.peers_upsert)
        self._dirty.update(NodeId(p) for p in changes.peers_delete)
        for row in changes.addresses_upsert:
            self._book.deleted.add(row.address)
        for text in changes.addresses_delete:
            self._book.deleted.add(text)
        for entry in self._book.entries():
            if str(entry.address) in self._book.deleted:
                self._book.deleted.discard(str(entry.address))
                self._book.dirty.add(entry.address)
        for ban in changes.ip_bans_upsert:
            self._bans.dirty.add(ban.ip)
        self._bans.deleted.update(changes.ip_bans_delete)

    def gossip_addresses(
        self, now: float, *, limit: int = 1000, exclude: NodeId | None = None
    ) -> list[NodeAddress]:
        """Up to ``limit`` random addresses fit to share (never private, banned or terrible)."""
        out: list[NodeAddress] = []
        for entry in self._book.entries():
            node_id = entry.address.node_id
            if node_id in (self._self_id, exclude) or node_id in self._private:
                continue
            rec = self._records.get(node_id)
            if rec is not None and (
                rec.has(PeerFlag.PRIVATE)
                or rec.banned(now)
                or self._score(rec, now) <= self._config.disconnect_score
            ):
                continue
            if not entry.is_terrible(now):
                out.append(entry.address)
        if len(out) > limit:
            out = self._rng.sample(out, limit)
        return out

    def counters(self) -> PeerManagerCounters:
        """The cumulative counters alone, in O(1) (``statistics`` walks every record)."""
        s = self._stats
        return PeerManagerCounters(
            dials_started=s.dials_started,
            dials_succeeded=s.dials_succeeded,
            dials_failed=s.dials_failed,
            dial_timeouts=s.dial_timeouts,
            feelers_started=s.feelers_started,
            upgrades_started=s.upgrades_started,
            evictions=s.evictions,
            inbound_accepted=s.inbound_accepted,
            bans=s.bans,
            ip_bans=s.ip_bans,
            score_disconnects=s.score_disconnects,
            persists=s.persists,
            refreshes=s.refreshes,
        )

    def statistics(self) -> PeerManagerStatistics:
        """Gauges (counts by state and direction) and cumulative counters, for metrics."""
        now, s = self._now, self._stats
        connected = [rec for rec in self._table.conns.values() if rec.conn is not None]
        return PeerManagerStatistics(
            known_peers=len(self._records),
            connected_inbound=sum(
                1 for r in connected if r.conn and r.conn.counted and r.conn.direction == "inbound"
            ),
            connected_outbound=sum(
                1 for r in connected if r.conn and r.conn.counted and r.conn.direction == "outbound"
            ),
            connected_unconditional=sum(1 for r in connected if r.has(PeerFlag.UNCONDITIONAL)),
            dialing=len(self._table.dials),
            banned_peers=sum(1 for r in self._records.values() if r.banned(now)),
            banned_ips=self._bans.active_count(now),
            address_book_new=self._book.new_count,
            address_book_tried=self._book.tried_count,
            dials_started=s.dials_started,
            dials_succeeded=s.dials_succeeded,
            dials_failed=s.dials_failed,
            dial_timeouts=s.dial_timeouts,
            feelers_started=s.feelers_started,
            upgrades_started=s.upgrades_started,
            evictions=s.evictions,
            inbound_accepted=s.inbound_accepted,
            inbound_rejected=dict(self._rejected),
            bans=s.bans,
            ip_bans=s.ip_bans,
            score_disconnects=s.score_disconnects,
            persists=s.persists,
            refreshes=s.refreshes,
        )
