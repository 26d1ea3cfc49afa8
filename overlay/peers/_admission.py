"""Inbound admission: the pre-handshake gate and the post-handshake decision.

Theory of operation
-------------------
``check`` runs before the handshake on the remote IP alone: IP bans, then (unless the IP is in
``exempt_networks``) the per-IP and per-netgroup inbound limits. It reads counters and
allocates nothing, so a flood of connection attempts costs O(1) each.

``accept`` runs after the handshake, once the node id is proven: ourselves, a banned peer, the
IP rules again (skipped for unconditional peers), a peer already connected (``duplicate``: one
connection per peer), a score at or below ``disconnect_score``; then capacity: with the
inbound slots full one inbound peer is evicted (the evictor's choice, told ``evicted``) or the
newcomer is refused (``full``). Unconditional peers skip the limits and take no slot. Every
refusal is counted by reason.
"""

from __future__ import annotations

from overlay.identity import NodeId
from overlay.peers._agenda import Agenda
from overlay.peers._bans import BanList
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._counters import Counters
from overlay.peers._directory import PeerDirectory
from overlay.peers._eviction import Evictor
from overlay.peers._scoring import Scorer
from overlay.peers._types import Decision, DisconnectCause

__all__ = ["Admission"]


class Admission:
    """Decides whether an inbound connection may stay (see the module docstring)."""

    def __init__(
        self,
        config: PeerManagerConfig,
        *,
        directory: PeerDirectory,
        table: ConnTable,
        bans: BanList,
        scorer: Scorer,
        evictor: Evictor,
        agenda: Agenda,
        counters: Counters,
    ) -> None:
        self._config = config
        self._directory = directory
        self._table = table
        self._bans = bans
        self._scorer = scorer
        self._evictor = evictor
        self._agenda = agenda
        self._counters = counters

    def _ip_rejection(self, remote_ip: str, now: float) -> str | None:
        c = self._config
        if self._bans.ip_banned(remote_ip, now):
            return "ip_banned"
        if self._table.exempt_ip(remote_ip):
            return None
        if self._table.inbound_from_ip(remote_ip) >= c.max_inbound_per_ip:
            return "per_ip_limit"
        if self._table.inbound_from_group(remote_ip) >= c.max_inbound_per_netgroup:
            return "per_netgroup_limit"
        return None

    def check(self, remote_ip: str, now: float) -> Decision:
        reason = self._ip_rejection(remote_ip, now)
        if reason is not None:
            return self._counters.reject(reason)
        return Decision(True, "ok")

    def accept(self, node_id: NodeId, remote_ip: str, now: float) -> Decision:
        reject = self._counters.reject
        directory = self._directory
        if node_id == directory.self_id:
            return reject("self")
        rec = directory.get(node_id)
        unconditional = node_id in directory.unconditional
        if rec is not None and rec.banned(now):
            return reject("banned")
        if not unconditional:
            reason = self._ip_rejection(remote_ip, now)
            if reason is not None:
                return reject(reason)
        if rec is not None and rec.conn is not None:
            return reject("duplicate")
        if rec is not None and not unconditional and not self._scorer.acceptable(rec, now):
            return reject("low_score")
        victim: NodeId | None = None
        if not unconditional and self._table.inbound_used() >= self._config.max_inbound:
            victim = self._evictor.inbound_victim(now)
            if victim is None:
                return reject("full")
            self._agenda.disconnect(directory[victim], DisconnectCause.EVICTED, evict=True)
            self._counters.evictions += 1
        rec = directory.ensure(node_id, "inbound", now)
        self._table.attach(rec, "inbound", remote_ip=remote_ip, address=None, now=now)
        rec.last_seen = max(rec.last_seen, now)
        directory.touch(node_id)
        self._counters.inbound_accepted += 1
        return Decision(True, "ok", victim)
