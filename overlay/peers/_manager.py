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

* peers protected by name (``set_protected`` / ``protect``), by a ``ProtectionHook`` or by the
  persistent / unconditional flags are never chosen for eviction, and their records are never
  pruned; protection does not stop bans, score disconnects or operator disconnects.

Persistence: changed records are marked dirty; ``poll`` emits one ``Persist`` with the batch at
most every ``persist_interval`` seconds, and at the next poll after a ban or operator action.

Composition
-----------
:class:`PeerManager` is a thin facade over concept objects, each owning its state (one object
per concept, wired here and nowhere else; none of them knows the facade)::

    PeerManager ── PeerDirectory   records by node id, the dirty set, bounded growth (_directory)
               ├── AddressBook     new/tried buckets, anti-eclipse placement (_addrbook)
               ├── ConnTable       live connections, dials in flight, limit counters (_conntable)
               ├── BanList         peer bans (on records) and IP bans + strikes (_bans)
               ├── Scorer          score decay/events, latency, the outside ranking (_scoring)
               ├── Protection      named protected sets and protection hooks (_protection)
               ├── Evictor         inbound / outbound victim choice (_eviction)
               ├── Admission       pre-/post-handshake inbound decisions (_admission)
               ├── AddressIntake   which addresses are stored and which shared (_intake)
               ├── Lifecycle       dial outcomes, connections up and gone (_lifecycle)
               ├── OperatorSurface seeds, persistent peers, dial_now queue (_operator)
               ├── DialPlanner     dial priorities, feeler/upgrade schedule, backoff (_planner)
               ├── ChangeLog       Persist batches from the three stored concepts (_persistence)
               ├── Agenda          disconnects decided between polls; wake/urgent (_agenda)
               └── Counters        cumulative counters (_counters)

The facade turns facts into calls on those objects, keeps the clock it was last given
(``_now``, ``_last_poll``) and the maintenance schedule, and assembles ``poll``'s actions in a
fixed order: queued disconnects (still connected), dials, ``RefreshAddresses``, ``Persist``.
Cross-object invariants: a record's ``conn`` / ``dial`` is set only through the ``ConnTable``
(so its counters match the records); every decided disconnect goes through the ``Agenda`` (so a
connection is asked to close at most once); the ``OperatorSurface`` lists mirror the records'
flags; only ``ChangeLog`` clears dirty marks (restoring from the store marks nothing dirty).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from overlay.address import NodeAddress
from overlay.errors import ConfigError, InvalidAddressError, LocalProtocolError
from overlay.identity import NodeId, parse_node_id
from overlay.peers._addrbook import AddressBook
from overlay.peers._admission import Admission
from overlay.peers._agenda import Agenda
from overlay.peers._bans import BanList
from overlay.peers._config import PeerManagerConfig
from overlay.peers._conntable import ConnTable
from overlay.peers._counters import Counters
from overlay.peers._directory import MAX_CAPABILITY_RECORD_BYTES, PeerDirectory
from overlay.peers._eviction import Evictor
from overlay.peers._intake import AddressIntake
from overlay.peers._lifecycle import Lifecycle
from overlay.peers._operator import OperatorSurface
from overlay.peers._persistence import ChangeLog
from overlay.peers._planner import DIAL_TICK, DialPlanner
from overlay.peers._protection import Protection
from overlay.peers._records import PeerRecord
from overlay.peers._scoring import Scorer
from overlay.peers._state import LoadedState, StoreChanges
from overlay.peers._types import (
    Action,
    BanEntry,
    Decision,
    DialPreference,
    DisconnectCause,
    OperatorPeer,
    PeerFlag,
    PeerManagerCounters,
    PeerManagerStatistics,
    PeerSnapshot,
    Persist,
    ProtectionHook,
    ScoreEvent,
    Source,
)
from overlay.wire._netgroup import ip_key, parse_ip

__all__ = ["MAINTENANCE_INTERVAL", "MAX_CAPABILITY_RECORD_BYTES", "PeerManager"]

MAINTENANCE_INTERVAL = 60.0
"""Ban expiry, tried-collision resolution and record pruning run this often."""


class PeerManager:
    """Holds every known peer and decides, given facts and the time, what the driver does.

    Construct with ``PeerManager(config, self_id, now=..., rng=..., secret=...,
    store_state=...)``; see the module docstring for the protocol and the composition.
    """

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
        self._now = self._last_poll = now
        self._next_maintenance = now + MAINTENANCE_INTERVAL
        self._counters = Counters()
        self._agenda = Agenda()
        self._protection = Protection(max_per_source=config.max_peer_records)
        self._book = AddressBook(config, secret, rng)
        self._peers = PeerDirectory(config, self_id, pinned=self._pinned)
        self._table = ConnTable(config.exempt())
        self._scorer = Scorer(config)
        self._bans = BanList(
            config, directory=self._peers, table=self._table, agenda=self._agenda,
            counters=self._counters,
        )
        self._operator = OperatorSurface(
            config, directory=self._peers, table=self._table, bans=self._bans,
            agenda=self._agenda, counters=self._counters,
        )
        self._evictor = Evictor(
            config, table=self._table, book=self._book, scorer=self._scorer,
            protection=self._protection,
        )
        self._planner = DialPlanner(
            config, rng=rng, now=now, directory=self._peers, book=self._book,
            table=self._table, bans=self._bans, scorer=self._scorer, evictor=self._evictor,
            operator=self._operator, agenda=self._agenda, counters=self._counters,
        )
        self._intake = AddressIntake(
            config, rng=rng, directory=self._peers, book=self._book, bans=self._bans,
            scorer=self._scorer, agenda=self._agenda,
        )
        self._admission = Admission(
            config, directory=self._peers, table=self._table, bans=self._bans,
            scorer=self._scorer, evictor=self._evictor, agenda=self._agenda,
            counters=self._counters,
        )
        self._lifecycle = Lifecycle(
            config, directory=self._peers, book=self._book, table=self._table,
            bans=self._bans, intake=self._intake, planner=self._planner, agenda=self._agenda,
            counters=self._counters,
        )
        self._changes = ChangeLog(
            config, directory=self._peers, book=self._book, ip_bans=self._bans.ips,
            agenda=self._agenda, counters=self._counters, now=now,
        )
        if store_state is not None:
            self._restore(store_state)
        self._apply_config(now)

    # -- wiring -----------------------------------------------------------------------------------

    def _pinned(self) -> set[NodeId]:
        """Records the directory must keep: in the address book, an operator dial, protected."""
        pinned = {entry.address.node_id for entry in self._book.entries()}
        pinned |= self._operator.pinned()
        pinned |= self._protection.pinned
        return pinned

    def _restore(self, state: LoadedState) -> None:
        for rec in self._peers.restore(state.peers):
            self._operator.restore(rec)
        self._book.restore(state.addresses)
        for entry in self._book.entries():
            node_id = entry.address.node_id
            if node_id == self._self_id:
                self._book.remove(entry.address)
            elif node_id not in self._peers:
                rec = self._peers.ensure(node_id, entry.source, entry.added)
                rec.last_seen = entry.last_seen
                rec.remember_address(entry.address, self._config.max_addresses_per_peer)
        self._bans.ips.restore(state.ip_bans)
        self._peers.dirty.clear()

    def _apply_config(self, now: float) -> None:
        for address in self._config.persistent_addresses():
            if address.node_id == self._self_id:
                continue
            self._book.add(
                address, source="config", source_group="local:config", now=now,
                limit_source=False,
            )
            self._operator.configure_persistent(address, now)
        for node_id in self._peers.unconditional | self._peers.private:
            if node_id != self._self_id:
                self._peers.ensure(node_id, "config", now)
        for address in self._config.seed_addresses():
            if self._intake.learn(address, "seed", now):
                self._operator.configure_seed(address.node_id)

    # -- internals shared by several facts -----------------------------------------------------

    def _ban(self, rec: PeerRecord, until: float, reason: str, now: float, *,
             automatic: bool) -> None:
        self._operator.take_dial(rec.node_id)
        self._bans.ban_peer(rec, until, reason, now, automatic=automatic)

    def _maintenance(self, now: float) -> None:
        self._next_maintenance = now + MAINTENANCE_INTERVAL
        self._bans.expire(now)
        for rec in self._table.conns.values():
            conn = rec.conn
            if conn is not None and conn.address is not None and not conn.feeler:
                self._book.good(conn.address, now)
        self._book.resolve_collisions(now)
        if len(self._peers) > self._config.max_peer_records:
            self._peers.prune(now)

    # -- facts: addresses -------------------------------------------------------------------

    def add_address(self, address: NodeAddress, *, source: Source, now: float) -> bool:
        """Learn ``address`` from ``source``; False when it was not kept.

        Gossip (``source`` a node id) is bounded per source and by the bucket layout.
        Addresses from local sources (operator, seed, config) are always remembered by their
        peer record, and seeds are dialed from there when the address book has no candidate.
        """
        self._now = now
        return self._intake.learn(address, source, now)

    # -- facts: inbound -----------------------------------------------------------------------

    def check_inbound(self, remote_ip: str, now: float) -> Decision:
        """Before the handshake: IP bans and per-IP / per-netgroup limits. O(1), no state."""
        return self._admission.check(remote_ip, now)

    def accept_inbound(self, node_id: NodeId, remote_ip: str, now: float) -> Decision:
        """After the handshake: bans, duplicates, capacity (maybe evicting a peer)."""
        self._now = now
        return self._admission.accept(node_id, remote_ip, now)

    # -- facts: dials and connections ------------------------------------------------------------

    def dial_succeeded(self, node_id: NodeId, address: NodeAddress, now: float) -> None:
        """The dial to ``address`` completed its handshake: the peer is connected outbound."""
        self._now = now
        self._lifecycle.dial_succeeded(node_id, address, now)

    def dial_failed(self, node_id: NodeId, address: NodeAddress, now: float, reason: str) -> None:
        """The dial to ``address`` failed (``reason``: e.g. ``refused``, ``timeout``; a reason
        mentioning ``auth`` - the peer there proved another identity - also forgets the
        address, unless it is the configured address of a persistent/operator peer)."""
        self._now = now
        self._lifecycle.dial_failed(node_id, address, now, reason)

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
        self._lifecycle.connected(
            node_id, outbound=outbound, address=address, remote_ip=remote_ip, now=now
        )

    def disconnected(self, node_id: NodeId, now: float, *, reason: str) -> None:
        """The connection to ``node_id`` is gone (``reason`` is informational)."""
        self._now = now
        self._lifecycle.disconnected(node_id, now, reason=reason)

    # -- facts: behaviour -------------------------------------------------------------------------

    def report(self, node_id: NodeId, event: ScoreEvent, now: float) -> None:
        """Apply a score event; may disconnect or ban the peer. Unknown peers are ignored."""
        self._now = now
        rec = self._peers.get(node_id)
        if rec is None:
            return
        c = self._config
        score = self._scorer.apply(rec, event, now)
        self._peers.touch(node_id)
        trusted = rec.has(PeerFlag.PERSISTENT) or rec.has(PeerFlag.UNCONDITIONAL)
        if score <= c.ban_score and not trusted and not rec.banned(now):
            self._ban(rec, now + c.ban_duration, f"score:{event.value}", now, automatic=True)
        elif score <= c.disconnect_score and rec.conn is not None:
            if self._agenda.disconnect(rec, DisconnectCause.LOW_SCORE):
                self._counters.score_disconnects += 1

    def record_latency(self, node_id: NodeId, rtt: float) -> None:
        """A round-trip-time sample (seconds) for ``node_id``; smoothed (EWMA)."""
        self._scorer.record_latency(self._peers.get(node_id), rtt)

    def mark_useful(self, node_id: NodeId, now: float) -> None:
        """The peer just did something useful (protects it from inbound eviction)."""
        rec = self._peers.get(node_id)
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
        return self._operator.dial_now(address, persistent=persistent, now=now, execute=execute)

    def ban_peer(self, node_id: NodeId, until: float, reason: str, now: float) -> None:
        """Ban ``node_id`` until ``until`` (disconnecting it); persisted at the next poll."""
        node_id = parse_node_id(node_id)
        if node_id == self._self_id:
            raise LocalProtocolError("cannot ban ourselves")
        if not until > now:
            raise LocalProtocolError("a ban must end in the future")
        self._now = now
        self._ban(self._peers.ensure(node_id, "operator", now), until, reason, now,
                  automatic=False)

    def unban_peer(self, node_id: NodeId, now: float) -> bool:
        """Lift a peer ban; True when an active ban was lifted."""
        self._now = now
        return self._bans.unban_peer(node_id, now)

    def ban_ip(self, ip: str, until: float, reason: str, now: float) -> None:
        """Ban an IPv4 address or the /64 of an IPv6 address; disconnects its peers."""
        if parse_ip(ip) is None:
            raise InvalidAddressError(f"not an IP address: {ip!r}")
        if not until > now:
            raise LocalProtocolError("a ban must end in the future")
        self._now = now
        self._bans.ban_ip_key(ip_key(ip), until, reason)

    def unban_ip(self, ip: str, now: float) -> bool:
        """Lift an IP ban (the /64 for IPv6); True when one was lifted."""
        self._now = now
        return self._bans.unban_ip(ip)

    def add_seed(self, address: NodeAddress, now: float) -> bool:
        """Add a bootstrap address (source ``seed``)."""
        kept = self.add_address(address, source="seed", now=now)
        if kept:
            self._operator.add_seed(address.node_id)
        return kept

    def remove_seed(self, node_id: NodeId, now: float) -> bool:
        """Clear the ``seed`` flag an operator set with :meth:`add_seed` and stop using the peer
        as a fallback seed, unless the configuration names it too. The address stays in the
        address book. False when no operator-set seed flag was there."""
        self._now = now
        return self._operator.remove_seed(node_id)

    def disconnect_peer(self, node_id: NodeId, now: float) -> bool:
        """Operator disconnect: the peer is not redialed before ``disconnect_cooldown``."""
        self._now = now
        return self._operator.disconnect(node_id, now)

    def set_flag(self, node_id: NodeId, flag: PeerFlag, enabled: bool, now: float) -> None:
        """Set or clear an operator flag (``persistent`` or ``private``) on a known peer."""
        self._operator.set_flag(node_id, flag, enabled)

    def set_capability_record(self, node_id: NodeId, record: bytes | None, now: float) -> bool:
        """Attach a peer's signed capability record (opaque bytes, persisted with the peer).

        The caller (discovery) verifies records; the manager only stores the newest one it is
        given and hands it back after a restart. ``None`` clears it. False for an unknown peer.
        """
        changed = self._peers.set_capability_record(node_id, record)
        self._now = now
        if changed:
            self._agenda.wake = True
        return changed is not None

    def capability_record(self, node_id: NodeId) -> bytes | None:
        """The record stored by ``set_capability_record`` (or restored from the store)."""
        rec = self._peers.get(node_id)
        return None if rec is None else rec.capability_record

    def capability_records(self) -> dict[NodeId, bytes]:
        """Every peer's stored capability record (to re-verify and index after a restart)."""
        return self._peers.capability_records()

    # -- outside policy hooks ---------------------------------------------------------------------

    def protect(self, node_ids: Iterable[NodeId], reason: str) -> None:
        """Shield ``node_ids`` from eviction and record pruning, adding them to the protected
        set named ``reason`` (never from bans or score disconnects; see the module docstring).
        Unknown peers may be named: they are shielded once known."""
        self._protection.protect(node_ids, reason)

    def set_protected(self, source: str, node_ids: Iterable[NodeId]) -> None:
        """Replace the protected set of ``source`` with ``node_ids`` (empty: clear it).

        The routing policy engine's ``Protect`` action maps here:
        ``set_protected("routing", action.node_ids)``.
        """
        self._protection.set_protected(source, node_ids)

    def protected_sets(self) -> dict[str, frozenset[NodeId]]:
        """The named protected sets, by source (``protect`` / ``set_protected``)."""
        return self._protection.sets()

    def add_protection(self, hook: ProtectionHook) -> None:
        """Add an eviction-protection category (see ``ProtectionHook``)."""
        self._protection.add_hook(hook)

    def remove_protection(self, name: str) -> None:
        self._protection.remove_hook(name)

    def set_dial_preference(self, preference: DialPreference | None) -> None:
        """Rank dial candidates and outbound peers with ``preference`` (None: by score)."""
        self._scorer.preference = preference

    # -- decisions ---------------------------------------------------------------------------

    def poll(self, now: float) -> list[Action]:
        """Everything the driver should do now."""
        self._now = self._last_poll = now
        if now >= self._next_maintenance:
            self._maintenance(now)
        self._planner.expire_dials(now)
        self._planner.enforce_outbound_limit(now)
        actions: list[Action] = []
        actions.extend(self._agenda.take(self._still_connected))
        self._planner.plan(now, actions)
        refresh = self._planner.refresh(now)
        if refresh is not None:
            actions.append(refresh)
        persist = self._changes.poll(now)
        if persist is not None:
            actions.append(persist)
        self._agenda.wake = False
        return actions

    def flush(self, now: float) -> Persist | None:
        """Every change not yet persisted, whatever ``persist_interval`` says (the driver's
        last write at shutdown); None when there is none."""
        self._now = now
        self._agenda.urgent = True
        return self._changes.poll(now)

    def _still_connected(self, node_id: NodeId) -> bool:
        rec = self._peers.get(node_id)
        return rec is not None and rec.conn is not None  # it may have gone meanwhile

    def next_deadline(self) -> float | None:
        """When ``poll`` has something to do if no new fact arrives."""
        now = self._now
        if self._agenda or self._agenda.wake:
            return now
        budget = self._config.max_concurrent_dials - len(self._table.dials)
        if self._operator.dials() and budget > 0:
            return now
        times = [self._next_maintenance, *self._planner.deadlines(self._last_poll)]
        persist = self._changes.deadline(now)
        if persist is not None:
            times.append(persist)
        deadline = min(times)
        # A timer already due at the last poll is blocked (no dial budget, banned address...):
        # look again a little later instead of spinning.
        return deadline if deadline > self._last_poll else self._last_poll + DIAL_TICK

    def persist_failed(self, changes: StoreChanges) -> None:
        """The driver could not write ``changes``: keep them for the next ``Persist``."""
        self._changes.failed(changes)

    # -- views ------------------------------------------------------------------------------------

    def snapshot(self, now: float) -> list[PeerSnapshot]:
        """Every known peer."""
        return [self._scorer.snapshot(rec, now) for rec in self._peers]

    def peer(self, node_id: NodeId, now: float) -> PeerSnapshot | None:
        rec = self._peers.get(node_id)
        return None if rec is None else self._scorer.snapshot(rec, now)

    def bans(self, now: float) -> list[BanEntry]:
        """Every active ban, peers and IPs, ending soonest first (``overlay bans``)."""
        return self._bans.entries(now)

    def seeds(self, now: float) -> list[OperatorPeer]:
        """The seeds, from ``config.toml`` and ``add_seed`` (``overlay seeds list``)."""
        return self._operator.listing(PeerFlag.SEED, now)

    def persistent_peers(self, now: float) -> list[OperatorPeer]:
        """The persistent peers, from ``config.toml`` and the operator
        (``overlay persistent list``)."""
        return self._operator.listing(PeerFlag.PERSISTENT, now)

    def gossip_addresses(
        self, now: float, *, limit: int = 1000, exclude: NodeId | None = None
    ) -> list[NodeAddress]:
        """Up to ``limit`` random addresses fit to share (never private, banned or terrible)."""
        return self._intake.gossip(now, limit=limit, exclude=exclude)

    def counters(self) -> PeerManagerCounters:
        """The cumulative counters alone, in O(1) (``statistics`` walks every record)."""
        return self._counters.frozen()

    def statistics(self) -> PeerManagerStatistics:
        """Gauges (counts by state and direction) and cumulative counters, for metrics."""
        now = self._now
        live = [rec for rec in self._table.conns.values() if rec.conn is not None]
        counted = [rec.conn for rec in live if rec.conn is not None and rec.conn.counted]
        return self._counters.statistics(
            known_peers=len(self._peers),
            connected_inbound=sum(1 for conn in counted if conn.direction == "inbound"),
            connected_outbound=sum(1 for conn in counted if conn.direction == "outbound"),
            connected_unconditional=sum(1 for r in live if r.has(PeerFlag.UNCONDITIONAL)),
            dialing=len(self._table.dials),
            banned_peers=sum(1 for r in self._peers if r.banned(now)),
            banned_ips=self._bans.ips.active_count(now),
            address_book_new=self._book.new_count,
            address_book_tried=self._book.tried_count,
        )

    @property
    def connections(self) -> ConnTable:  # live ones and dials; change them via the manager
        return self._table

    @property
    def address_book(self) -> AddressBook:
        """The address book (read it; change it only through the manager)."""
        return self._book
