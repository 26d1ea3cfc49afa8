"""One iterative Kademlia lookup as a state machine (pure, sans-IO).

Theory of operation
-------------------
A ``Lookup`` walks towards a 20-byte ``target``. The driver feeds it what happened (``start``,
``on_response``, ``on_failure``, ``on_invalid``, ``on_timer``, ``cancel``) with the current time
and gets back a list of events: ``Query(peer)`` to send, ``ProviderFound`` as provider payloads
arrive, ``Misbehaved(peer, reason)`` for the driver to penalise, and one final ``LookupDone``.
The driver verifies every contact and record before feeding them in; the lookup deals in ids and
opaque payloads only.

* **Candidates.** Every node the lookup hears of is a candidate, in one of four states: *new*,
  *pending* (queried, waiting), *answered*, *failed* (timed out for the last time, refused, or
  flagged as a liar). Each candidate belongs to exactly one **path**: the path whose answer first
  named it (seeds are dealt round-robin in distance order). With ``d`` paths the lookups are
  disjoint in the manner of S/Kademlia: no node is ever queried by two paths.
* **Progress without rounds.** A path keeps at most ``alpha`` queries in flight, always to the
  nearest *new* candidates among its ``k`` nearest live (not failed) ones; a new query goes out as
  soon as one returns. A lookup that wants ``want`` providers starts *narrow*: each path sends
  ``ceil(want / d)`` queries (at most ``alpha``) until its first query has an outcome (answer,
  failure or timeout), then widens to ``alpha``; when the nearest known nodes hold a provider,
  as they do once providers stored their records, the lookup ends after ``d`` messages instead
  of ``d * alpha``. A path is done when its ``k`` nearest live candidates have all answered;
  queries still in flight to farther nodes are then abandoned. The lookup is done when every path
  is done (FIND_NODE, and GET_PROVIDERS that did not find enough), or as soon as ``want`` distinct
  providers were found (GET_PROVIDERS).
* **Timeouts and the retry policy.** Each query has a deadline ``query_timeout`` after it was
  sent (``next_deadline``/``on_timer``). A query that times out is retried ``retries`` times
  (default once); an explicit failure (``on_failure``: dial refused, connection lost, error
  reply) is final. A late answer to a timed-out query is still used.
* **Cancel safety.** After ``cancel()`` or ``LookupDone`` nothing is pending: ``pending()`` is
  empty, ``next_deadline()`` is None, and every further input is ignored.
* **Hop depth.** Seeds are at hop 1; a node first named by an answer from hop ``h`` is at hop
  ``h + 1``. ``rounds`` is the deepest hop queried; ``messages`` counts queries sent (retries too).
* **Liars.** The driver reports answers carrying spoofed ids or forged records with
  ``on_invalid``; the lookup itself rejects answers with more than ``k`` contacts and answers that
  break the *far-contacts rule* (``_breaks_far_rule``; see docs/discovery.md, "DHT"). A flagged
  peer is failed, its answer dropped, and ``Misbehaved`` is emitted once.
* **Netgroup diversity.** Given a ``netgroup`` function (id -> netgroup of its verified
  address, None to exempt), each path queries at most ``max_per_netgroup`` candidates of one
  netgroup, and at most that many of one netgroup count among its ``k`` nearest live ones;
  the rest are skipped (never queried, not counted). A liar can mint ids nearer any target for
  the cost of a few key generations, but each must be reachable at an address it controls, so
  its minted ids share its netgroup: it gets ``max_per_netgroup`` slots of a path, not all ``k``,
  and cannot lead a path down an endless chain of ever nearer ids (see docs/scale.md).
* **No self-vouching.** With a ``netgroup`` function, a contact is *vouched* when it is a seed
  (the driver's routing table) or some responder of another netgroup named it; a contact named
  only by responders of its own netgroup is never queried nor counted (unless
  ``LookupConfig.self_vouching``). An honest node rarely names nodes of its own /16; a liar's
  minted ids are all of its own, so a minting liar costs a path one query, not
  ``max_per_netgroup``, while two honest nodes of one /16 that others name are still queried.
* **Density.** Given ``network_size`` (an estimate, e.g. ``RoutingTable.estimate_size``), a
  path counts at most ``density_slack + density_factor * E(d)`` live candidates within any
  distance ``d`` of the target, where ``E(d) = network_size * d / 2**160`` is how many nodes a
  network of that size holds there, and queries at most that many within any distance;
  candidates beyond (in distance order) are skipped like the netgroup cap's, and seeds are
  exempt. Ids minted ever nearer the target (at many
  addresses) form a cluster far denser than the network allows: they get ``density_slack``
  slots of a path, and the walk goes on to the honest nodes around the key. An attacker that
  mints at the network's own density near the key still competes for the slots
  (docs/scale.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import Generic

from discovery._dht_lookup_types import (
    LookupConfig,
    LookupDone,
    LookupEvent,
    LookupMode,
    LookupOutcome,
    LookupResult,
    Misbehaved,
    Misbehaviour,
    P,
    ProviderFound,
    Query,
)
from overlay.errors import LocalProtocolError

__all__ = ["Lookup"]

_NEW, _PENDING, _ANSWERED, _FAILED = 0, 1, 2, 3
_ID_BYTES = 20


class _Cand:
    __slots__ = (
        "attempts", "deadline", "dist", "flagged", "group", "hop", "node_id", "path", "state",
        "vouched",
    )

    def __init__(
        self, node_id: bytes, dist: int, path: int, hop: int, group: str | None, vouched: bool
    ) -> None:
        self.node_id = node_id
        self.group = group
        self.vouched = vouched
        self.dist = dist
        self.path = path
        self.hop = hop
        self.state = _NEW
        self.attempts = 0
        self.deadline = 0.0
        self.flagged = False


def _dist_key(c: _Cand) -> int:
    return c.dist


class _Path:
    __slots__ = ("done", "in_flight", "near", "opened", "order", "queried")

    def __init__(self) -> None:
        self.order: list[_Cand] = []  # by distance to the target
        self.in_flight = 0
        self.done = False
        self.opened = False
        """A query of this path had an outcome: it may keep ``alpha`` in flight."""
        self.queried: dict[str, int] = {}  # netgroup -> candidates queried
        self.near: list[int] = []  # distances of the learned candidates queried, ascending


def _too_dense(near: list[int], d: int, unit: int, slack: int) -> bool:
    """Would one more query at distance ``d`` put more than ``slack + x // unit`` queried
    learned candidates within some distance ``x`` (``near``: those queried, ascending)?"""
    i = bisect.bisect_left(near, d)
    if i + 1 > slack + d // unit:
        return True
    for j in range(i, len(near)):
        if j + 2 > slack + near[j] // unit:
            return True
    return False


def _diverse(cands: Iterable[_Cand], cap: int, n: int, unit: int | None, slack: int
             ) -> list[_Cand]:
    """The first ``n`` of ``cands`` (in distance order) keeping at most ``cap`` of one netgroup
    and, with a density ``unit``, at most ``slack + dist // unit`` within each one's distance
    (seeds exempt)."""
    out: list[_Cand] = []
    counts: dict[str, int] = {}
    for c in cands:
        if unit is not None and c.hop > 1 and len(out) >= slack + c.dist // unit:
            continue
        g = c.group
        if g is not None:
            seen = counts.get(g, 0)
            if seen >= cap:
                continue
            counts[g] = seen + 1
        out.append(c)
        if len(out) >= n:
            break
    return out


class Lookup(Generic[P]):
    """An iterative lookup (see the module docstring). Create it, call ``start(now)``, feed it."""

    def __init__(
        self,
        target: bytes,
        mode: LookupMode,
        seeds: Iterable[bytes],
        *,
        local_id: bytes,
        config: LookupConfig | None = None,
        want: int | None = None,
        paths: int | None = None,
        netgroup: Callable[[bytes], str | None] | None = None,
        network_size: int | None = None,
    ) -> None:
        """``netgroup`` maps a candidate's id to the netgroup of its verified address (None
        exempts it); without it no diversity limit applies. ``network_size`` (an estimate of
        the node count) turns the density limit on."""
        for value, what in ((target, "target"), (local_id, "local id")):
            if not isinstance(value, bytes) or len(value) != _ID_BYTES:
                raise LocalProtocolError(f"{what} must be {_ID_BYTES} bytes")
        if want is not None and (mode is not LookupMode.GET_PROVIDERS or want <= 0):
            raise LocalProtocolError("want is a positive count, for GET_PROVIDERS lookups only")
        cfg = config or LookupConfig()
        if paths is None:
            paths = cfg.provider_paths if mode is LookupMode.GET_PROVIDERS else cfg.node_paths
        if paths <= 0:
            raise LocalProtocolError(f"paths must be positive, got {paths}")
        self.target = target
        self.mode = mode
        self.config = cfg
        self.want = want
        self._t = int.from_bytes(target, "big")
        self._local = int.from_bytes(local_id, "big")
        self._k = cfg.k
        self._narrow = cfg.alpha if want is None else min(cfg.alpha, -(-want // paths))
        self._netgroup = netgroup
        if network_size is not None and network_size <= 0:
            raise LocalProtocolError(f"network_size must be positive, got {network_size}")
        self._unit = None if network_size is None else max(
            1, int((1 << (8 * _ID_BYTES)) / (cfg.density_factor * network_size))
        )
        """Distance per extra candidate the density limit allows (None: no limit)."""
        self._paths = [_Path() for _ in range(paths)]
        self._cands: dict[int, _Cand] = {}
        self._pending: dict[int, _Cand] = {}
        self._providers: set[bytes] = set()
        self._result: LookupResult | None = None
        self._started = False
        self._messages = 0
        self._responses = 0
        self._timeouts = 0
        self._misbehaved = 0
        self._rounds = 0
        self._first_provider: tuple[int, int] | None = None
        unique = {}
        for seed in seeds:
            num = self._num(seed)
            if num != self._local:
                unique[num] = seed
        for i, num in enumerate(sorted(unique, key=lambda n: n ^ self._t)):
            self._add(unique[num], num, i % paths, 1, None)

    # -- queries ---------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> LookupResult | None:
        """The result once finished (or cancelled), else None."""
        return self._result

    @property
    def messages(self) -> int:
        return self._messages

    @property
    def rounds(self) -> int:
        return self._rounds

    def pending(self) -> tuple[bytes, ...]:
        """Peers with a query in flight."""
        return tuple(c.node_id for c in self._pending.values())

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called, or None."""
        if not self._pending:
            return None
        return min(c.deadline for c in self._pending.values())

    def providers_found(self) -> int:
        return len(self._providers)

    def path_closest(self, path: int) -> tuple[bytes, ...]:
        """Up to ``k`` nodes of ``path`` that answered, nearest first, at most
        ``max_per_netgroup`` of one netgroup: where to store a record through that path
        (S/Kademlia stores through every disjoint path)."""
        order = self._paths[path].order
        answered = (c for c in order if c.state == _ANSWERED)
        return tuple(c.node_id for c in self._counted(answered))

    # -- inputs ----------------------------------------------------------------------------------

    def start(self, now: float) -> list[LookupEvent[P]]:
        """The first queries (or ``LookupDone`` at once when there is no seed)."""
        if self._started:
            raise LocalProtocolError("lookup already started")
        self._started = True
        out: list[LookupEvent[P]] = []
        self._advance(now, out)
        return out

    def on_response(
        self,
        peer: bytes,
        contacts: Sequence[bytes],
        providers: Sequence[tuple[bytes, P]] = (),
        *,
        now: float,
    ) -> list[LookupEvent[P]]:
        """``peer`` answered with verified ``contacts`` (ids) and, for GET_PROVIDERS, verified
        ``(provider_id, payload)`` pairs. Answers from peers not queried are ignored."""
        out: list[LookupEvent[P]] = []
        c = self._cands.get(self._num(peer))
        if self._result is not None or c is None or c.flagged or c.attempts == 0:
            return out
        if c.state == _ANSWERED:
            return out
        for contact in contacts:
            if len(contact) != _ID_BYTES:
                raise LocalProtocolError(f"ids must be {_ID_BYTES} bytes, got {contact!r}")
        nums = [int.from_bytes(contact, "big") for contact in contacts]
        if len(nums) > self._k:
            self._flag(c, Misbehaviour.TOO_MANY_CONTACTS, out)
        elif self.config.far_rule and self._breaks_far_rule(c, nums):
            self._flag(c, Misbehaviour.FAR_CONTACTS, out)
        else:
            self._answered(c)
            hop = c.hop + 1
            for contact, num in zip(contacts, nums, strict=True):
                if num == self._local or num == c.dist ^ self._t:
                    continue
                known = self._cands.get(num)
                if known is None:
                    self._add(contact, num, c.path, hop, c.group)
                    continue
                if not known.vouched and known.group != c.group:
                    known.vouched = True
                if known.path == c.path and known.state == _NEW and hop < known.hop:
                    known.hop = hop
            for provider_id, payload in providers:
                if provider_id in self._providers:
                    continue
                self._providers.add(provider_id)
                if self._first_provider is None:
                    self._first_provider = (c.hop, self._messages)
                out.append(ProviderFound(provider_id, payload, peer, c.hop, self._messages))
            if self.want is not None and len(self._providers) >= self.want:
                self._finish(LookupOutcome.ENOUGH_PROVIDERS, out)
                return out
        self._advance(now, out)
        return out

    def on_failure(self, peer: bytes, now: float) -> list[LookupEvent[P]]:
        """The query to ``peer`` failed for good (dial refused, connection lost, error reply)."""
        out: list[LookupEvent[P]] = []
        c = self._cands.get(self._num(peer))
        if self._result is None and c is not None and c.state == _PENDING:
            self._unpend(c)
            c.state = _FAILED
            self._advance(now, out)
        return out

    def on_invalid(self, peer: bytes, reason: Misbehaviour, now: float) -> list[LookupEvent[P]]:
        """``peer``'s answer carried spoofed ids, forged records or garbage: drop the peer."""
        out: list[LookupEvent[P]] = []
        c = self._cands.get(self._num(peer))
        if self._result is None and c is not None and c.attempts and not c.flagged:
            self._flag(c, reason, out)
            self._advance(now, out)
        return out

    def on_timer(self, now: float) -> list[LookupEvent[P]]:
        """Expire queries whose deadline passed (retrying them per the retry policy)."""
        out: list[LookupEvent[P]] = []
        if self._result is not None:
            return out
        expired = [c for c in self._pending.values() if c.deadline <= now]
        for c in expired:
            self._unpend(c)
            self._timeouts += 1
            c.state = _NEW if c.attempts <= self.config.retries else _FAILED
        if expired:
            self._advance(now, out)
        return out

    def cancel(self) -> list[LookupEvent[P]]:
        """Stop: nothing stays pending. Returns ``[LookupDone]`` unless already finished."""
        out: list[LookupEvent[P]] = []
        if self._result is None:
            self._finish(LookupOutcome.CANCELLED, out)
        return out

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _num(node_id: bytes) -> int:
        if len(node_id) != _ID_BYTES:
            raise LocalProtocolError(f"ids must be {_ID_BYTES} bytes, got {node_id!r}")
        return int.from_bytes(node_id, "big")

    def _add(
        self, node_id: bytes, num: int, path: int, hop: int, named_by: str | None
    ) -> None:
        """``named_by``: the netgroup of the responder that named it (None for a seed)."""
        group = None if self._netgroup is None else self._netgroup(node_id)
        vouched = (group is None or named_by is None or group != named_by
                   or self.config.self_vouching)
        c = _Cand(node_id, num ^ self._t, path, hop, group, vouched)
        self._cands[num] = c
        bisect.insort(self._paths[path].order, c, key=_dist_key)

    def _counted(self, cands: Iterable[_Cand]) -> list[_Cand]:
        cfg = self.config
        return _diverse(cands, cfg.max_per_netgroup, self._k, self._unit, cfg.density_slack)

    def _breaks_far_rule(self, c: _Cand, nums: list[int]) -> bool:
        """The far-contacts rule. An answer is flagged when all three hold:

        1. it carries fewer than ``k`` contacts;
        2. none of them is nearer to the target than the responder itself;
        3. it carries fewer contacts than ``min(k, m)``, where ``m`` is the number of other
           nodes that already answered this lookup (each proved to exist).

        An honest node answers with ``min(k, live contacts)`` of its nearest contacts; once
        bootstrapped it knows at least ``min(k, N - 1)`` nodes, and ``m <= N - 2``, so it never
        breaks the rule. A liar that answers with few, far contacts (to stall the walk or hide the
        region near the target) does."""
        count = len(nums)
        if count >= self._k:
            return False
        t = self._t
        own = c.dist
        for num in nums:
            if num ^ t < own:
                return False
        others = self._responses  # c has not been counted yet
        return count < min(self._k, others)

    def _answered(self, c: _Cand) -> None:
        if c.state == _PENDING:
            self._unpend(c)
        c.state = _ANSWERED
        self._responses += 1

    def _flag(self, c: _Cand, reason: Misbehaviour, out: list[LookupEvent[P]]) -> None:
        if c.state == _PENDING:
            self._unpend(c)
        elif c.state == _ANSWERED:
            self._responses -= 1
        c.state = _FAILED
        c.flagged = True
        self._misbehaved += 1
        out.append(Misbehaved(c.node_id, reason))

    def _unpend(self, c: _Cand) -> None:
        del self._pending[c.dist ^ self._t]
        path = self._paths[c.path]
        path.in_flight -= 1
        path.opened = True

    def _advance(self, now: float, out: list[LookupEvent[P]]) -> None:
        if self._result is not None:
            return
        k, cap = self._k, self.config.max_per_netgroup
        unit, slack = self._unit, self.config.density_slack
        all_done = True
        for path in self._paths:
            if path.done:
                continue
            alpha = self.config.alpha if path.opened else self._narrow
            live = 0
            waiting = False
            counts: dict[str, int] = {}
            queried = path.queried
            for c in path.order:
                state = c.state
                if state == _FAILED:
                    continue
                if unit is not None and c.hop > 1 and (  # density (module docstring)
                    live >= slack + c.dist // unit
                    or (c.attempts == 0 and _too_dense(path.near, c.dist, unit, slack))
                ):
                    continue
                g = c.group
                if g is not None:  # netgroup diversity (module docstring)
                    if not c.vouched and c.attempts == 0:
                        continue
                    seen = counts.get(g, 0)
                    if seen >= cap or (c.attempts == 0 and queried.get(g, 0) >= cap):
                        continue
                    counts[g] = seen + 1
                live += 1
                if state == _NEW:
                    waiting = True
                    if path.in_flight < alpha:
                        self._send(c, path, now, out)
                elif state == _PENDING:
                    waiting = True
                if live >= k:
                    break
            if waiting:
                all_done = False
            else:
                path.done = True
                for c in path.order:  # abandon queries to nodes beyond the k nearest
                    if c.state == _PENDING:
                        self._unpend(c)
                        c.state = _NEW
        if all_done:
            self._finish(LookupOutcome.COMPLETED, out)

    def _send(self, c: _Cand, path: _Path, now: float, out: list[LookupEvent[P]]) -> None:
        if c.attempts == 0 and c.group is not None:
            path.queried[c.group] = path.queried.get(c.group, 0) + 1
        if c.attempts == 0 and c.hop > 1 and self._unit is not None:
            bisect.insort(path.near, c.dist)
        c.state = _PENDING
        c.attempts += 1
        c.deadline = now + self.config.query_timeout
        self._pending[c.dist ^ self._t] = c
        path.in_flight += 1
        self._messages += 1
        if c.hop > self._rounds:
            self._rounds = c.hop
        out.append(Query(c.node_id, c.attempts, self._paths.index(path)))

    def _finish(self, outcome: LookupOutcome, out: list[LookupEvent[P]]) -> None:
        for c in self._pending.values():
            c.state = _NEW
        self._pending.clear()
        for path in self._paths:
            path.in_flight = 0
            path.done = True
        answered = self._counted(
            sorted((c for c in self._cands.values() if c.state == _ANSWERED), key=_dist_key)
        )
        failed = sum(1 for c in self._cands.values() if c.state == _FAILED)
        first = self._first_provider
        self._result = LookupResult(
            outcome=outcome,
            closest=tuple(c.node_id for c in answered),
            providers=len(self._providers),
            rounds=self._rounds,
            messages=self._messages,
            responses=self._responses,
            timeouts=self._timeouts,
            failures=failed,
            misbehaved=self._misbehaved,
            first_provider_rounds=None if first is None else first[0],
            first_provider_messages=None if first is None else first[1],
        )
        out.append(LookupDone(self._result))
