"""The capability policy engine: a pure core that turns one snapshot into a plan.

Theory of operation
-------------------
Each tick the driver builds a :class:`PolicySnapshot` (connected peers with their confirmed
capabilities, dialable candidates with their advertised ones, the targets, the limits, dials in
flight and ``now``) and calls :meth:`PolicyEngine.tick`. The engine returns a
:class:`PolicyPlan`: ``Protect`` (always first), then ``Prune``, ``Dial`` and ``Discover``
actions, and a status per target. The peer manager stays the one place that dials and evicts.

With ``n`` connected peers, target ``c`` requires ``required(c) = target.required(n)`` peers.

1. **Keepers.** For every wanted capability the ``required(c)`` best holders (operator-protected
   first, then score, then longest connected, then id) are *keepers*; all holders are keepers
   while ``c`` is short. The union of keepers is the ``Protect`` set.
2. **Pruning** only ever picks from *eligible* peers: not operator-protected, not keepers, and
   (when outbound) not taking the outbound count below ``limits.min_outbound``. Because keepers
   of every capability stay, no prune can take a capability below its target, met or not, and
   since ``required`` never grows when ``n`` shrinks the invariant survives the smaller total.
   Prunes happen for: more than ``max_connections`` peers; more than ``max_peers`` holders of a
   capability (most over-served capability first); and to make room for a planned dial when all
   slots are taken. The order among eligible peers: negative score first, then peers holding no
   wanted capability, then those on the most over-represented capability, preferring the
   fewest wanted capabilities, then the lowest score, then the youngest connection, then node
   id bytes.
3. **Dialing** fills deficits one dial at a time: the capability with the highest priority, and
   among equals the largest *relative* deficit ``(required - connected - dialing) / required``
   (ties by name), gets the next dial. The deficit shrinks with each dial, so capabilities of one
   priority take turns (no starvation), and a capability without a dialable candidate never
   blocks the others. The candidate serving the most short capabilities wins, ties broken by
   XOR distance of node ids from our own (deterministic yet different on every node, so the
   network does not pile onto the lowest ids), then by id bytes.
4. **Bounds.** At most ``max_dials_per_tick`` dials per tick and ``max_dials_per_minute`` over
   any 60 s; a peer the engine dialed is not dialed again before its own exponential backoff
   with a deterministic per-node jitter (:meth:`PolicyEngine.dial_backoff`; reset once it is
   seen connected); a pruned peer is not dialed for ``reconnect_backoff``.
5. **Discovery** is asked for when the known providers of a short capability are not enough to
   cover its deficit (cached candidates come first). Per capability the interval doubles from
   ``discovery_interval`` to ``discovery_backoff_cap`` while it stays short of providers, and
   resets once enough are known; ``max_discoveries_per_minute`` bounds all capabilities.
6. **Determinism.** The plan is a function of the snapshot, our id and the engine state
   (below); input order does not matter (everything is sorted), and no clock or randomness is
   read (the dial jitter is a hash of the ids).

Engine state (all of it, each entry expiring): ``pruned_at`` per peer (until
``reconnect_backoff``), per-peer dial ``(attempts, next_allowed)``, per-capability discovery
``(failures, next_at)`` and the times of the dials and discoveries of the last 60 s.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from overlay.identity import NodeId
from routing._policy_types import (
    Candidate,
    CapabilityStatus,
    ConnectedPeer,
    Dial,
    Discover,
    PolicyAction,
    PolicyConfig,
    PolicyPlan,
    PolicySnapshot,
    Protect,
    Prune,
    PruneReason,
    TargetState,
)
from routing._targets import CapabilityTarget

__all__ = ["PolicyEngine"]

_WINDOW = 60.0


@dataclass(slots=True)
class _PeerDial:
    attempts: int
    next_allowed: float


@dataclass(slots=True)
class _CapDiscovery:
    failures: int = 0
    next_at: float = 0.0


def _id_bytes(node_id: NodeId) -> bytes:
    return bytes.fromhex(node_id)


class _Tick:
    """The working set of one tick: counts, keepers and eligibility, updated as actions are
    planned. Lives only inside :meth:`PolicyEngine.tick`."""

    def __init__(self, snap: PolicySnapshot, self_id: NodeId) -> None:
        self.snap = snap
        self.peers = sorted({p.node_id: p for p in snap.peers}.values(), key=lambda p: p.node_id)
        self.n = len(self.peers)
        self.targets: dict[str, CapabilityTarget] = {t.capability: t for t in snap.targets}
        self.wanted = {c for c, t in self.targets.items() if t.wanted}
        self.required = {c: t.required(self.n) for c, t in self.targets.items()}
        self.count = {c: 0 for c in self.targets}
        for p in self.peers:
            for c in p.capabilities & self.targets.keys():
                self.count[c] += 1
        self.outbound = sum(1 for p in self.peers if p.outbound)
        connected = {p.node_id for p in self.peers}
        self.candidates = {
            c.node_id: c
            for c in sorted(snap.candidates, key=lambda c: c.node_id)
            if c.node_id not in connected and c.node_id != self_id
        }
        self.in_flight = {d for d in snap.dialing if d not in connected}
        self.dialing = {c: 0 for c in self.targets}
        for d in self.in_flight:
            cand = self.candidates.get(d)
            if cand is not None:
                for c in cand.capabilities & self.targets.keys():
                    self.dialing[c] += 1
        self.keepers = self._keepers()
        self.pruned: dict[NodeId, ConnectedPeer] = {}

    def _keepers(self) -> set[NodeId]:
        keep: set[NodeId] = set()
        for c in sorted(self.wanted):
            holders = [p for p in self.peers if c in p.capabilities]
            holders.sort(key=lambda p: (not p.protected, -p.score, p.connected_since, p.node_id))
            keep.update(p.node_id for p in holders[: self.required[c]])
        return keep

    def short(self, c: str) -> int:
        """Peers still missing for ``c`` counting dials in flight and planned."""
        return self.required[c] - self.count[c] - self.dialing[c]

    def eligible(self, p: ConnectedPeer) -> bool:
        if p.protected or p.node_id in self.keepers or p.node_id in self.pruned:
            return False
        return not p.outbound or self.outbound - 1 >= self.snap.limits.min_outbound

    def prune_key(self, p: ConnectedPeer) -> tuple[object, ...]:
        mine = sorted(p.capabilities & self.wanted)
        over = max(
            ((self.count[c] - self.required[c]) / max(self.required[c], 1) for c in mine),
            default=0.0,
        )
        return (
            p.score >= 0,
            bool(mine),
            -over,
            len(mine),
            p.score,
            -p.connected_since,
            _id_bytes(p.node_id),
        )

    def victim(self, among: Iterable[ConnectedPeer]) -> ConnectedPeer | None:
        pool = [p for p in among if self.eligible(p)]
        return min(pool, key=self.prune_key) if pool else None

    def remove(self, p: ConnectedPeer) -> None:
        self.pruned[p.node_id] = p
        self.outbound -= p.outbound
        for c in p.capabilities & self.targets.keys():
            self.count[c] -= 1

    def room(self) -> int:
        used = self.n - len(self.pruned) + len(self.in_flight)
        return self.snap.limits.max_connections - used


class PolicyEngine:
    """Decides which peers to dial, protect and prune so that capability targets are met.

    Pure: :meth:`tick` takes a snapshot with ``now`` and returns a plan; see the module
    docstring for the rules and invariants.
    """

    def __init__(self, self_id: NodeId, config: PolicyConfig | None = None) -> None:
        self._self = int(self_id, 16)
        self._self_id = self_id
        self.config = config if config is not None else PolicyConfig()
        self._pruned_at: dict[NodeId, float] = {}
        self._peer_dials: dict[NodeId, _PeerDial] = {}
        self._discovery: dict[str, _CapDiscovery] = {}
        self._dial_times: deque[float] = deque()
        self._discover_times: deque[float] = deque()

    # -- introspection (tests, status) ------------------------------------------------------

    def pruned_recently(self, node_id: NodeId, now: float) -> bool:
        at = self._pruned_at.get(node_id)
        return at is not None and now - at < self.config.reconnect_backoff

    def state_size(self) -> int:
        """Entries held across ticks (bounded by the recent activity, not by history)."""
        return (
            len(self._pruned_at)
            + len(self._peer_dials)
            + len(self._discovery)
            + len(self._dial_times)
            + len(self._discover_times)
        )

    def dial_backoff(self, node_id: NodeId, attempts: int) -> float:
        """How long after its ``attempts``-th dial the engine waits before dialing ``node_id``
        again: ``dial_backoff_base * 2 ** (attempts - 1)``, capped at ``dial_backoff_cap``,
        times a jitter factor in [0.5, 1.5) drawn from a hash of our id, its id and
        ``attempts``. Deterministic, yet different on every node: nodes whose dials to one
        provider failed together (a herd that overflowed its pending handshakes) do not all
        come back at the same instant and overflow it again."""
        cfg = self.config
        delay = min(cfg.dial_backoff_base * 2.0 ** (attempts - 1), cfg.dial_backoff_cap)
        digest = hashlib.blake2b(
            bytes.fromhex(self._self_id) + bytes.fromhex(node_id) + attempts.to_bytes(8, "big"),
            digest_size=8,
        ).digest()
        return delay * (0.5 + int.from_bytes(digest, "big") / 2.0**64)

    # -- the tick ---------------------------------------------------------------------------

    def tick(self, snap: PolicySnapshot) -> PolicyPlan:
        now = snap.now
        self._expire(now, snap)
        t = _Tick(snap, self._self_id)
        for p in t.peers:
            self._peer_dials.pop(p.node_id, None)
        prunes = self._plan_excess_prunes(t)
        dials, blocked = self._plan_dials(t, now, prunes)
        discoveries, discover_backoff = self._plan_discoveries(t, now)
        for prune in prunes:
            self._pruned_at[prune.node_id] = now
        actions: list[PolicyAction] = [Protect(frozenset(t.keepers))]
        actions.extend(prunes)
        actions.extend(dials)
        actions.extend(discoveries)
        statuses = tuple(
            self._status(t, c, now, blocked, discover_backoff) for c in sorted(t.targets)
        )
        return PolicyPlan(tuple(actions), statuses)

    def _expire(self, now: float, snap: PolicySnapshot) -> None:
        cfg = self.config
        for node_id in [
            k for k, at in self._pruned_at.items() if now - at >= cfg.reconnect_backoff
        ]:
            del self._pruned_at[node_id]
        for node_id in [
            k for k, d in self._peer_dials.items() if now >= d.next_allowed + cfg.dial_backoff_cap
        ]:
            del self._peer_dials[node_id]
        caps = {t.capability for t in snap.targets}
        for c in [c for c in self._discovery if c not in caps]:
            del self._discovery[c]
        for times in (self._dial_times, self._discover_times):
            while times and now - times[0] >= _WINDOW:
                times.popleft()

    # -- pruning ----------------------------------------------------------------------------

    def _plan_excess_prunes(self, t: _Tick) -> list[Prune]:
        limit = self.config.max_prunes_per_tick
        prunes: list[Prune] = []
        excess = t.n - t.snap.limits.max_connections
        while excess > 0 and len(prunes) < limit:
            victim = t.victim(t.peers)
            if victim is None:
                break
            t.remove(victim)
            prunes.append(Prune(victim.node_id, PruneReason.OVER_CONNECTION_LIMIT))
            excess -= 1
        while len(prunes) < limit:
            over = [
                (t.count[c] / mp, c)
                for c, target in t.targets.items()
                if (mp := target.max_peers) is not None and t.count[c] > mp
            ]
            victim = None
            for _, c in sorted(over, key=lambda x: (-x[0], x[1])):
                victim = t.victim(p for p in t.peers if c in p.capabilities)
                if victim is not None:
                    t.remove(victim)
                    prunes.append(Prune(victim.node_id, PruneReason.OVER_MAX_PEERS, c))
                    break
            if victim is None:
                break
        return prunes

    # -- dialing ----------------------------------------------------------------------------

    def _dialable(self, t: _Tick, cand: Candidate, now: float) -> bool:
        if cand.node_id in t.in_flight:
            return False
        if cand.backoff_until > now or self.pruned_recently(cand.node_id, now):
            return False
        d = self._peer_dials.get(cand.node_id)
        return d is None or now >= d.next_allowed

    def _plan_dials(
        self, t: _Tick, now: float, prunes: list[Prune]
    ) -> tuple[list[Dial], dict[str, str]]:
        cfg = self.config
        budget = min(cfg.max_dials_per_tick, cfg.max_dials_per_minute - len(self._dial_times))
        pool = [c for c in t.candidates.values() if self._dialable(t, c, now)]
        dials: list[Dial] = []
        blocked: dict[str, str] = {}
        while True:
            short = [c for c in t.wanted if t.short(c) > 0 and c not in blocked]
            options = {c: [k for k in pool if c in k.capabilities] for c in short}
            short = [c for c in short if options[c]]
            if not short:
                break
            if budget <= 0:
                for c in short:
                    blocked[c] = "dial budget spent (max_dials_per_tick / max_dials_per_minute)"
                break
            cap = min(
                short,
                key=lambda c: (-t.targets[c].priority, -t.short(c) / max(t.required[c], 1), c),
            )
            if t.room() <= 0:
                victim = None
                if len(prunes) < cfg.max_prunes_per_tick:
                    victim = t.victim(t.peers)
                if victim is None:
                    blocked[cap] = "no free connection slot and no peer that no target needs"
                    continue
                t.remove(victim)
                prunes.append(Prune(victim.node_id, PruneReason.MAKE_ROOM, cap))
            wanted_now = {c for c in t.wanted if t.short(c) > 0}
            cand = min(
                options[cap],
                key=lambda k: (
                    -len(k.capabilities & wanted_now),
                    int(k.node_id, 16) ^ self._self,
                    _id_bytes(k.node_id),
                ),
            )
            pool.remove(cand)
            t.in_flight.add(cand.node_id)
            for c in cand.capabilities & t.targets.keys():
                t.dialing[c] += 1
            dials.append(Dial(cand.node_id, cap))
            budget -= 1
            self._dial_times.append(now)
            prev = self._peer_dials.get(cand.node_id)
            attempts = 1 if prev is None else prev.attempts + 1
            self._peer_dials[cand.node_id] = _PeerDial(
                attempts, now + self.dial_backoff(cand.node_id, attempts)
            )
        return dials, blocked

    # -- discovery --------------------------------------------------------------------------

    def _known(self, t: _Tick, c: str) -> int:
        return (
            t.count[c]
            + sum(1 for p in t.pruned.values() if c in p.capabilities)
            + sum(1 for k in t.candidates.values() if c in k.capabilities)
        )

    def _plan_discoveries(self, t: _Tick, now: float) -> tuple[list[Discover], dict[str, float]]:
        cfg = self.config
        need: list[str] = []
        for c in sorted(t.wanted):
            state = self._discovery.setdefault(c, _CapDiscovery())
            if t.required[c] - self._known(t, c) > 0:
                need.append(c)
            else:
                state.failures = 0
                state.next_at = 0.0
        need.sort(key=lambda c: (-t.targets[c].priority, -t.short(c) / max(t.required[c], 1), c))
        out: list[Discover] = []
        for c in need:
            state = self._discovery[c]
            if now < state.next_at:
                continue
            if len(self._discover_times) >= cfg.max_discoveries_per_minute:
                state.next_at = max(state.next_at, self._discover_times[0] + _WINDOW)
                continue
            out.append(Discover(c))
            self._discover_times.append(now)
            state.failures += 1
            delay = min(
                cfg.discovery_interval * 2 ** (state.failures - 1), cfg.discovery_backoff_cap
            )
            state.next_at = now + delay
        return out, {c: self._discovery[c].next_at for c in need}

    # -- status -----------------------------------------------------------------------------

    def _next_dialable(self, t: _Tick, c: str, now: float) -> float | None:
        times = []
        for k in t.candidates.values():
            if c not in k.capabilities or k.node_id in t.in_flight:
                continue
            at = k.backoff_until
            if (p := self._pruned_at.get(k.node_id)) is not None:
                at = max(at, p + self.config.reconnect_backoff)
            if (d := self._peer_dials.get(k.node_id)) is not None:
                at = max(at, d.next_allowed)
            times.append(at)
        return min(times) if times else None

    def _status(
        self,
        t: _Tick,
        c: str,
        now: float,
        blocked: Mapping[str, str],
        discover_backoff: Mapping[str, float],
    ) -> CapabilityStatus:
        target = t.targets[c]
        req, have, dialing = t.required[c], t.count[c], t.dialing[c]
        known = self._known(t, c)
        deficit = max(0, req - have)
        backoff: float | None = None
        if deficit == 0:
            state, reason = TargetState.MET, "met"
        elif c in discover_backoff:
            state = TargetState.UNATTAINABLE
            reason = f"{known} provider(s) known, {req} needed; discovery backs off"
            backoff = discover_backoff[c]
        elif t.short(c) <= 0:
            state, reason = TargetState.FILLING, f"{dialing} dial(s) in flight"
        elif c in blocked:
            state, reason = TargetState.BACKING_OFF, blocked[c]
            backoff = self._dial_times[0] + _WINDOW if self._dial_times else None
        else:
            state = TargetState.BACKING_OFF
            reason = "every known provider is in dial backoff"
            backoff = self._next_dialable(t, c, now)
        return CapabilityStatus(
            capability=c,
            priority=target.priority,
            connected=have,
            required=req,
            deficit=deficit,
            dialing=dialing,
            known_providers=known,
            state=state,
            reason=reason,
            backoff_until=backoff,
        )
