"""The peer manager: a sans-IO core deciding whom to dial, keep, evict, ban and persist.

Theory of operation
-------------------
The manager is a plain object. The node and the driver feed it *facts* (an address was heard
of, a dial succeeded or failed, a peer connected or disconnected, a peer misbehaved), each with
the current time ``now``; ``poll(now)`` returns the *actions* that follow (``DialPeer``,
``DisconnectPeer``, ``Persist``, ``RefreshAddresses``), and ``next_deadline()`` says when to
poll again if nothing happens. The driver executes actions and reports their outcome as new
facts. The manager never reads a clock, never does IO and draws randomness only from the
injected ``rng``.

``now`` is **wall-clock** seconds (``time.time()``): first/last seen, bans and score times are
persisted and must keep their meaning across restarts. The driver sleeps
``next_deadline() - time.time()``. A clock stepping backwards only delays things.

Lifecycle of a connection, as the driver sees it::

    outbound: poll -> DialPeer -> dial_succeeded | dial_failed -> [connected] ... disconnected
    inbound:  check_inbound (before the handshake) -> accept_inbound (after) -> [connected]
              ... disconnected

``connected`` is optional after ``dial_succeeded`` / an accepted ``accept_inbound`` (it only
adds the remote IP); called alone it registers a connection the manager did not plan (no
limits are applied). Every registered connection must end with ``disconnected``.

The manager tracks **one connection per peer**: ``accept_inbound`` refuses a peer that is
already connected (``duplicate``); if our dial and the peer's inbound connection race and both
succeed, the node keeps one and reports ``disconnected`` only when its last connection to the
peer closes. A feeler (``DialPeer.feeler``) is dialed like any other peer; the manager asks to
disconnect it (``DisconnectPeer(reason="feeler")``) as soon as ``dial_succeeded`` is reported.

A local testnet where every node is on 127.0.0.1 should set ``exempt_networks=("127.0.0.0/8",
"::1/128")``: otherwise one outbound per netgroup and the per-IP inbound limit apply to
loopback like to any other /16.

Invariants (checked by the tests after random event sequences):

* dials in flight never exceed ``max_concurrent_dials`` (operator dials the caller executes
  itself, ``dial_now(execute=False)``, come on top); a peer is dialed only when it is not
  connected, not being dialed, not banned, its backoff/cooldown has passed and, for automatic
  dials, its score is above ``disconnect_score`` and its netgroup has fewer than
  ``max_outbound_per_netgroup`` outbound connections + dials;
* automatic outbound dials stop at ``max_outbound`` (connections + regular dials in flight);
  upgrade dials add at most ``upgrade_slots``, and a successful one evicts the worst outbound
  peer; persistent and operator dials may exceed ``max_outbound`` (they then evict automatic
  peers the same way);
* an accepted inbound peer never exceeds the per-IP / per-netgroup limits; when the inbound
  slots are full one inbound peer is evicted (see ``_eviction``) or the newcomer is refused;
* unconditional peers are not counted anywhere and never evicted; persistent and unconditional
  peers are never banned automatically (only disconnected);
* all state is bounded: the address book by its buckets, peer records by
  ``max_peer_records``, IP bans and strikes by fixed caps; ``check_inbound`` allocates nothing.

Persistence: changed records are marked dirty; ``poll`` emits one ``Persist`` with the batch at
most every ``persist_interval`` seconds, and at the next poll after a ban or operator action.
"""

from __future__ import annotations

import logging
import math
from collections import deque

from overlay.address import NodeAddress
from overlay.errors import InvalidAddressError, LocalProtocolError
from overlay.identity import NodeId, parse_node_id
from overlay.peers._addrbook import AddressBook
from overlay.peers._core import DIAL_GRACE
from overlay.peers._planner import ManagerPlanner
from overlay.peers._scoring import apply_event
from overlay.peers._types import (
    Action,
    BanEntry,
    BanKind,
    Decision,
    DialPreference,
    DisconnectPeer,
    OperatorPeer,
    PeerFlag,
    PeerSnapshot,
    ProtectionHook,
    RefreshAddresses,
    ScoreEvent,
    ScoreRecord,
    Source,
)
from overlay.wire._netgroup import address_ip_key, ip_key, parse_ip

__all__ = ["MAX_CAPABILITY_RECORD_BYTES", "PeerManager"]

_log = logging.getLogger(__name__)

_DIAL_TICK = 1.0  # retry filling free outbound slots this often
_STARVED_TICK = 5.0  # ...or this often when the address book had no candidate
_LATENCY_ALPHA = 0.25  # EWMA weight of a new RTT sample
_RUNTIME_FLAGS = frozenset({PeerFlag.PERSISTENT, PeerFlag.PRIVATE})
MAX_CAPABILITY_RECORD_BYTES = 4096
"""Largest opaque capability record the manager keeps per peer."""


class PeerManager(ManagerPlanner):
    """Holds every known peer and decides, given facts and the time, what the driver does.

    Construct with ``PeerManager(config, self_id, now=..., rng=..., secret=...,
    store_state=...)``; see the module docstring for the protocol.
    """

    # -- facts: addresses -------------------------------------------------------------------

    def add_address(self, address: NodeAddress, *, source: Source, now: float) -> bool:
        """Learn ``address`` from ``source``; False when it was not kept.

        Gossip (``source`` a node id) is bounded per source and by the bucket layout.
        Addresses from local sources (operator, seed, config) are always remembered by their
        peer record, and seeds are dialed from there when the address book has no candidate.
        """
        self._now = now
        return self._learn(address, source, now)

    # -- facts: inbound -----------------------------------------------------------------------

    def check_inbound(self, remote_ip: str, now: float) -> Decision:
        """Before the handshake: IP bans and per-IP / per-netgroup limits. O(1), no state."""
        reason = self._ip_rejection(remote_ip, now)
        if reason is not None:
            return self._reject(reason)
        return Decision(True, "ok")

    def accept_inbound(self, node_id: NodeId, remote_ip: str, now: float) -> Decision:
        """After the handshake: bans, duplicates, capacity (maybe evicting a peer)."""
        self._now = now
        if node_id == self._self_id:
            return self._reject("self")
        rec = self._records.get(node_id)
        unconditional = node_id in self._unconditional
        if rec is not None and rec.banned(now):
            return self._reject("banned")
        if not unconditional:
            reason = self._ip_rejection(remote_ip, now)
            if reason is not None:
                return self._reject(reason)
        if rec is not None and rec.conn is not None:
            return self._reject("duplicate")
        if (
            rec is not None
            and not unconditional
            and self._score(rec, now) <= self._config.disconnect_score
        ):
            return self._reject("low_score")
        victim: NodeId | None = None
        if not unconditional and self._table.inbound_used() >= self._config.max_inbound:
            victim = self._inbound_victim(now)
            if victim is None:
                return self._reject("full")
            self._disconnect(self._records[victim], "evicted", evict=True)
            self._stats.evictions += 1
        rec = self._ensure(node_id, "inbound", now)
        self._table.attach(rec, "inbound", remote_ip=remote_ip, address=None, now=now)
        rec.last_seen = max(rec.last_seen, now)
        self._dirty.add(node_id)
        self._stats.inbound_accepted += 1
        return Decision(True, "ok", victim)

    # -- facts: dials and connections ------------------------------------------------------------

    def dial_succeeded(self, node_id: NodeId, address: NodeAddress, now: float) -> None:
        """The dial to ``address`` completed its handshake: the peer is connected outbound."""
        self._now = now
        if address.node_id != node_id:
            raise LocalProtocolError(f"dial_succeeded: {address} is not an address of {node_id}")
        rec = self._ensure(node_id, "outbound", now)
        dial = self._table.finish_dial(rec)
        feeler = dial is not None and dial.reason == "feeler"
        upgrade = dial is not None and dial.reason == "upgrade"
        if dial is not None:
            self._stats.dials_succeeded += 1
        rec.failures = 0
        rec.next_dial = min(rec.next_dial, now)
        rec.last_seen = max(rec.last_seen, now)
        self._store_verified(rec, address, now)
        if feeler:
            self._book.resolve_collisions(now)
        self._dirty.add(node_id)
        self._wake = True
        if rec.conn is not None:
            return
        self._table.attach(
            rec,
            "outbound",
            remote_ip=None,
            address=address,
            now=now,
            feeler=feeler,
            upgrade=upgrade,
            planned=dial is not None,
        )
        if rec.banned(now):
            self._disconnect(rec, "banned")
        elif feeler:
            self._disconnect(rec, "feeler")

    def dial_failed(self, node_id: NodeId, address: NodeAddress, now: float, reason: str) -> None:
        """The dial to ``address`` failed (``reason``: e.g. ``refused``, ``timeout``; a reason
        mentioning ``auth`` - the peer there proved another identity - also forgets the
        address, unless it is the configured address of a persistent/operator peer)."""
        self._now = now
        rec = self._records.get(node_id)
        if rec is None or rec.dial is None or rec.dial.address != address:
            return
        dial = self._table.finish_dial(rec)
        self._dial_failure(
            rec, address, now, reason, feeler=dial is not None and dial.reason == "feeler"
        )

    def connected(
        self,
        node_id: NodeId,
        *,
        outbound: bool,
        address: NodeAddress | None,
        remote_ip: str | None,
        now: float,
    ) -> None:
        """A connection to ``node_id`` is up (see the lifecycle in the module docstring).

        ``address`` is the peer's advertised listen address, if any: it is added to the address
        book with the peer itself as the source. For an outbound connection the address we
        dialed (if a dial is pending) is what counts as the successful one.
        """
        self._now = now
        rec = self._records.get(node_id)
        if outbound and (rec is None or rec.conn is None):
            # Only the address of our pending dial proves anything; the peer's advertised
            # ``address`` is learned below as its own claim, never stored as verified.
            dialed = rec.dial.address if rec is not None and rec.dial is not None else None
            if dialed is not None and dialed.node_id == node_id:
                self.dial_succeeded(node_id, dialed, now)
            else:
                rec = self._ensure(node_id, "outbound", now)
                self._table.attach(
                    rec, "outbound", remote_ip=None, address=None, now=now, planned=False
                )
        elif rec is None or rec.conn is None:
            rec = self._ensure(node_id, "inbound", now)
            self._table.attach(rec, "inbound", remote_ip=remote_ip, address=None, now=now)
        rec = self._records[node_id]
        conn = rec.conn
        assert conn is not None
        if remote_ip:
            if conn.remote_ip is None:
                conn.remote_ip = remote_ip
            rec.last_ip = remote_ip
            if self._bans.is_banned(ip_key(remote_ip), now):
                self._disconnect(rec, "ip_banned")
        rec.last_seen = max(rec.last_seen, now)
        self._dirty.add(node_id)
        if address is not None and address.node_id == node_id:
            # Its own listen address: gossip from itself, attributed to its netgroup.
            self._learn(address, node_id, now)

    def disconnected(self, node_id: NodeId, now: float, *, reason: str) -> None:
        """The connection to ``node_id`` is gone (``reason`` is informational)."""
        self._now = now
        rec = self._records.get(node_id)
        if rec is None or rec.conn is None:
            return
        self._table.detach(rec)
        self._queued = [
            a for a in self._queued if not (isinstance(a, DisconnectPeer) and a.node_id == node_id)
        ]
        rec.last_seen = max(rec.last_seen, now)
        rec.next_dial = max(rec.next_dial, now + self._config.disconnect_cooldown)
        self._dirty.add(node_id)
        self._wake = True
        _log.debug("peer %s disconnected: %s", node_id, reason)

    # -- facts: behaviour -------------------------------------------------------------------------

    def report(self, node_id: NodeId, event: ScoreEvent, now: float) -> None:
        """Apply a score event; may disconnect or ban the peer. Unknown peers are ignored."""
        self._now = now
        rec = self._records.get(node_id)
        if rec is None:
            return
        c = self._config
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
        self._dirty.add(node_id)
        trusted = rec.has(PeerFlag.PERSISTENT) or rec.has(PeerFlag.UNCONDITIONAL)
        if score <= c.ban_score and not trusted and not rec.banned(now):
            self._ban(rec, now + c.ban_duration, f"score:{event.value}", now, automatic=True)
        elif score <= c.disconnect_score and rec.conn is not None:
            if self._disconnect(rec, "low_score"):
                self._stats.score_disconnects += 1

    def record_latency(self, node_id: NodeId, rtt: float) -> None:
        """A round-trip-time sample (seconds) for ``node_id``; smoothed (EWMA)."""
        if not math.isfinite(rtt) or rtt < 0:
            raise LocalProtocolError(f"rtt must be a finite non-negative number, got {rtt!r}")
        rec = self._records.get(node_id)
        if rec is None:
            return
        if rec.latency is None:
            rec.latency = rtt
        else:
            rec.latency += _LATENCY_ALPHA * (rtt - rec.latency)

    def mark_useful(self, node_id: NodeId, now: float) -> None:
        """The peer just did something useful (protects it from inbound eviction)."""
        rec = self._records.get(node_id)
        if rec is not None:
            rec.last_useful = now

    # -- operator control ---------------------------------------------------------------------

    def dial_now(
        self, address: NodeAddress, *, persistent: bool, now: float, execute: bool = True
    ) -> Decision:
        """Dial ``address`` soon, ignoring backoff, limits and diversity (operator action).

        With ``execute=True`` the next ``poll`` returns the ``DialPeer``. With
        ``execute=False`` the caller dials right away itself and must report the outcome
        with ``dial_succeeded`` / ``dial_failed`` (such a dial is not bounded by
        ``max_concurrent_dials``). ``persistent`` also keeps redialing it forever. The
        decision is ``ok``, ``connected`` (already connected: nothing to dial), or a refusal
        (``self``, ``banned``, ``ip_banned``, ``unspecified``).

        The typed address is *not* stored here: only ``dial_succeeded`` stores an address (a
        connection to it authenticated as its node id), so a mistyped address can never push
        a peer's real addresses out of its record or enter the address book. A persistent dial
        is the exception: the operator's address is remembered (and stored) so that it is
        redialed after a restart. When the peer is already connected nothing is dialed and the
        typed address is dropped; a persistent peer then keeps the address it was reached at.
        """
        self._now = now
        node_id = address.node_id
        if node_id == self._self_id:
            return Decision(False, "self")
        if address.unspecified:
            return Decision(False, "unspecified")
        rec = self._records.get(node_id)
        if rec is not None and rec.banned(now):
            return Decision(False, "banned")
        if self._bans.is_banned(address_ip_key(address), now):
            return Decision(False, "ip_banned")
        rec = self._ensure(node_id, "operator", now)
        if persistent:
            rec.saved_flags.add(PeerFlag.PERSISTENT)
            self._persistent[node_id] = None
        self._mark_urgent(node_id)
        if rec.conn is not None:
            if persistent and rec.dial_address is None:
                live = rec.conn.address or (rec.addresses[0] if rec.addresses else None)
                rec.dial_address = live
            return Decision(True, "connected")
        if persistent:
            rec.remember_address(address, self._config.max_addresses_per_peer)
            rec.dial_address = address
        rec.next_dial = now
        if not execute:
            if rec.dial is None:
                self._table.start_dial(rec, address, "operator", now)
                self._stats.dials_started += 1
        elif not persistent and rec.dial is None:
            self._operator_dials[node_id] = address
        return Decision(True, "ok")

    def ban_peer(self, node_id: NodeId, until: float, reason: str, now: float) -> None:
        """Ban ``node_id`` until ``until`` (disconnecting it); persisted at the next poll."""
        node_id = parse_node_id(node_id)
        if node_id == self._self_id:
            raise LocalProtocolError("cannot ban ourselves")
        if not until > now:
            raise LocalProtocolError("a ban must end in the future")
        self._now = now
        self._ban(self._ensure(node_id, "operator", now), until, reason, now, automatic=False)

    def unban_peer(self, node_id: NodeId, now: float) -> bool:
        """Lift a peer ban; True when an active ban was lifted."""
        self._now = now
        rec = self._records.get(node_id)
        if rec is None or rec.ban_until is None:
            return False
        active = rec.banned(now)
        rec.ban_until, rec.ban_reason = None, ""
        self._mark_urgent(node_id)
        return active

    def ban_ip(self, ip: str, until: float, reason: str, now: float) -> None:
        """Ban an IPv4 address or the /64 of an IPv6 address; disconnects its peers."""
        if parse_ip(ip) is None:
            raise InvalidAddressError(f"not an IP address: {ip!r}")
        if not until > now:
            raise LocalProtocolError("a ban must end in the future")
        self._now = now
        self._ban_ip_key(ip_key(ip), until, reason)

    def unban_ip(self, ip: str, now: float) -> bool:
        """Lift an IP ban (the /64 for IPv6); True when one was lifted."""
        self._now = now
        removed = self._bans.unban(ip_key(ip))
        self._urgent = self._urgent or removed
        return removed

    def add_seed(self, address: NodeAddress, now: float) -> bool:
        """Add a bootstrap address (source ``seed``)."""
        kept = self.add_address(address, source="seed", now=now)
        rec = self._records.get(address.node_id)
        if kept and rec is not None:
            rec.saved_flags.add(PeerFlag.SEED)
            self._seeds[address.node_id] = None
            self._mark_urgent(address.node_id)
        return kept

    def remove_seed(self, node_id: NodeId, now: float) -> bool:
        """Clear the ``seed`` flag an operator set with :meth:`add_seed` and stop using the peer
        as a fallback seed, unless the configuration names it too. The address stays in the
        address book. False when no operator-set seed flag was there."""
        self._now = now
        rec = self._records.get(node_id)
        if rec is None or PeerFlag.SEED not in rec.saved_flags:
            return False
        rec.saved_flags.discard(PeerFlag.SEED)
        if PeerFlag.SEED not in rec.config_flags:
            self._seeds.pop(node_id, None)
        self._mark_urgent(node_id)
        return True

    def disconnect_peer(self, node_id: NodeId, now: float) -> bool:
        """Operator disconnect: the peer is not redialed before ``disconnect_cooldown``."""
        self._now = now
        rec = self._records.get(node_id)
        if rec is None or rec.conn is None:
            return False
        rec.next_dial = max(rec.next_dial, now + self._config.disconnect_cooldown)
        return self._disconnect(rec, "operator")

    def set_flag(self, node_id: NodeId, flag: PeerFlag, enabled: bool, now: float) -> None:
        """Set or clear an operator flag (``persistent`` or ``private``) on a known peer."""
        if flag not in _RUNTIME_FLAGS:
            raise LocalProtocolError(f"flag {flag.value!r} can only be set in the configuration")
        rec = self._records.get(node_id)
        if rec is None:
            raise LocalProtocolError(f"unknown peer {node_id}")
        if enabled:
            rec.saved_flags.add(flag)
        else:
            rec.saved_flags.discard(flag)
        if flag is PeerFlag.PERSISTENT:
            if rec.has(PeerFlag.PERSISTENT):
                self._persistent[node_id] = None
                if rec.dial_address is None and rec.addresses:
                    rec.dial_address = rec.addresses[0]
            else:
                self._persistent.pop(node_id, None)
        self._mark_urgent(node_id)

    def set_capability_record(self, node_id: NodeId, record: bytes | None, now: float) -> bool:
        """Attach a peer's signed capability record (opaque bytes, persisted with the peer).

        The caller (discovery) verifies records; the manager only stores the newest one it is
        given and hands it back after a restart. ``None`` clears it. False for an unknown peer.
        """
        if record is not None and len(record) > MAX_CAPABILITY_RECORD_BYTES:
            raise LocalProtocolError(
                f"capability record of {len(record)} bytes (max {MAX_CAPABILITY_RECORD_BYTES})"
            )
        self._now = now
        rec = self._records.get(node_id)
        if rec is None:
            return False
        value = None if record is None else bytes(record)
        if rec.capability_record != value:
            rec.capability_record = value
            self._dirty.add(node_id)
            self._wake = True
        return True

    def capability_record(self, node_id: NodeId) -> bytes | None:
        """The record stored by ``set_capability_record`` (or restored from the store)."""
        rec = self._records.get(node_id)
        return None if rec is None else rec.capability_record

    def capability_records(self) -> dict[NodeId, bytes]:
        """Every peer's stored capability record (to re-verify and index after a restart)."""
        return {
            n: rec.capability_record
            for n, rec in self._records.items()
            if rec.capability_record is not None
        }

    # -- outside policy hooks ---------------------------------------------------------------------

    def add_protection(self, hook: ProtectionHook) -> None:
        """Add an eviction-protection category (see ``ProtectionHook``)."""
        self._hooks.append(hook)

    def remove_protection(self, name: str) -> None:
        self._hooks = [h for h in self._hooks if h.name != name]

    def set_dial_preference(self, preference: DialPreference | None) -> None:
        """Rank dial candidates and outbound peers with ``preference`` (None: by score)."""
        self._preference = preference

    # -- decisions ---------------------------------------------------------------------------

    def poll(self, now: float) -> list[Action]:
        """Everything the driver should do now."""
        self._now = self._last_poll = now
        if now >= self._next_maintenance:
            self._maintenance(now)
        self._expire_dials(now)
        self._enforce_outbound_limit(now)
        actions: list[Action] = [a for a in self._queued if self._still_relevant(a)]
        self._queued.clear()
        self._plan_dials(now, actions)
        if self._starved and now - self._last_refresh >= self._config.refresh_interval:
            self._last_refresh = now
            self._stats.refreshes += 1
            actions.append(RefreshAddresses())
        self._maybe_persist(now, actions)
        self._wake = False
        return actions

    def _still_relevant(self, action: Action) -> bool:
        if not isinstance(action, DisconnectPeer):
            return True
        rec = self._records.get(action.node_id)
        return rec is not None and rec.conn is not None  # it may have gone meanwhile

    def next_deadline(self) -> float | None:
        """When ``poll`` has something to do if no new fact arrives."""
        now = self._now
        if self._queued or self._wake:
            return now
        budget = self._config.max_concurrent_dials - len(self._table.dials)
        if self._operator_dials and budget > 0:
            return now
        times = [self._next_maintenance]
        grace = self._config.dial_timeout + DIAL_GRACE
        times.extend(rec.dial.started + grace for rec in self._table.dials.values() if rec.dial)
        for node_id in self._persistent:
            rec = self._records[node_id]
            if rec.conn is None and rec.dial is None:
                times.append(max(rec.next_dial, rec.ban_until or 0.0))
        if self._outbound_full():
            times.append(self._next_feeler)
            if self._config.upgrade_slots:
                times.append(self._next_upgrade)
        else:
            times.append(self._last_poll + (_STARVED_TICK if self._starved else _DIAL_TICK))
        if self._has_changes():
            times.append(
                now if self._urgent else self._last_persist + self._config.persist_interval
            )
        deadline = min(times)
        # A timer already due at the last poll is blocked (no dial budget, banned address...):
        # look again a little later instead of spinning.
        return deadline if deadline > self._last_poll else self._last_poll + _DIAL_TICK

    # -- views ------------------------------------------------------------------------------------

    def snapshot(self, now: float) -> list[PeerSnapshot]:
        """Every known peer."""
        return [self._snapshot(rec, now) for rec in self._records.values()]

    def peer(self, node_id: NodeId, now: float) -> PeerSnapshot | None:
        rec = self._records.get(node_id)
        return None if rec is None else self._snapshot(rec, now)

    def bans(self, now: float) -> list[BanEntry]:
        """Every active ban, peers and IPs, ending soonest first (``overlay bans``)."""
        out = [
            BanEntry(BanKind.PEER, rec.node_id, rec.ban_until, rec.ban_reason)
            for rec in self._records.values()
            if rec.ban_until is not None and rec.banned(now)
        ]
        out.extend(
            BanEntry(BanKind.IP, ban.ip, ban.until, ban.reason)
            for ban in self._bans.bans()
            if ban.until > now
        )
        return sorted(out, key=lambda b: (b.until, b.kind, b.target))

    def seeds(self, now: float) -> list[OperatorPeer]:
        """The seeds, from ``config.toml`` and ``add_seed`` (``overlay seeds list``)."""
        return self._operator_peers(PeerFlag.SEED, now)

    def persistent_peers(self, now: float) -> list[OperatorPeer]:
        """The persistent peers, from ``config.toml`` and the operator
        (``overlay persistent list``)."""
        return self._operator_peers(PeerFlag.PERSISTENT, now)

    def _operator_peers(self, flag: PeerFlag, now: float) -> list[OperatorPeer]:
        out = []
        for node_id in sorted(n for n, rec in self._records.items() if rec.has(flag)):
            rec = self._records[node_id]
            addresses = list(rec.addresses)
            if flag is PeerFlag.PERSISTENT and rec.dial_address is not None:
                addresses = [rec.dial_address, *(a for a in addresses if a != rec.dial_address)]
            out.append(OperatorPeer(
                node_id=node_id,
                addresses=tuple(addresses),
                in_config=flag in rec.config_flags,
                by_operator=flag in rec.saved_flags,
                state=rec.state(now),
            ))
        return out

    @property
    def address_book(self) -> AddressBook:
        """The address book (read it; change it only through the manager)."""
        return self._book
