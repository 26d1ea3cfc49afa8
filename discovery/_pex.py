"""Peer exchange (PEX) with signed records: what to answer, whom to ask, when (pure, sans-IO).

Theory of operation
-------------------
PEX is a request/response on the PEX channel: the asker sends ``PexRequest(max,
wanted_capabilities)``, the responder answers with up to ``max`` signed records from its record
store. This module decides; the driver sends, receives, verifies and stores.

**Responder** (:class:`PexResponder`):

* A per-peer token bucket (``burst`` requests, refilled at ``rate`` per second, on the ``now``
  passed in) admits a request or refuses it (:attr:`PexVerdict.RATE_LIMITED`); a refused
  request costs the responder nothing but the check.
* The answer holds at most ``min(request.max, config.max_per_response)`` records, never the
  asker's own record, never a record of a *private* peer (a set the caller owns: peers the
  operator marked private, persistent peers it does not want gossiped), never an expired one.
* Selection is a weighted random order (Efraimidis-Spirakis keys ``u ** (1 / w)`` from the
  injected ``random.Random``), then taken netgroup by netgroup: the first pass takes at most one
  record per netgroup, the next at most two, and so on, so an answer spans as many netgroups as
  the store holds before it repeats one. A record's weight is ``1``, plus ``capability_weight``
  per capability it has that the asker wants (the asker names its deficits), plus
  ``success_weight`` when the caller saw the node succeed within ``success_horizon`` seconds.

**Asker** (:class:`PexAsker`):

* The interval to the next request grows with the address book: ``min_interval`` while it holds
  fewer than ``thin_below`` records, ``max_interval`` once it holds ``full_at``, geometric in
  between; every interval gets ``+-jitter`` so nodes started together drift apart.
* The peer asked next is the connected peer asked least recently (never asked first); ties are
  broken by the injected random generator.
* The wanted capabilities are those with a deficit, the largest deficit first (ties by name),
  at most ``max_wanted``.

Determinism: the same inputs and the same ``random.Random`` state give the same outputs.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields

from discovery._record import CapabilityRecord, SignedRecord
from discovery._recordstore import RecordStore
from discovery._wire import MAX_RECORDS_PER_MESSAGE, MAX_WANTED_CAPABILITIES, PexRequest
from overlay.errors import ConfigError
from overlay.identity import NodeId
from overlay.wire._netgroup import netgroup as _host_netgroup

__all__ = [
    "PexAnswer",
    "PexAsker",
    "PexConfig",
    "PexPlan",
    "PexResponder",
    "PexVerdict",
    "record_netgroup",
]


@dataclass(frozen=True, slots=True)
class PexConfig:
    """Parameters of both PEX roles. Durations are seconds."""

    max_per_response: int = 32
    """Records in one answer at most (a request may ask for fewer)."""
    burst: float = 3.0
    """Requests one peer may make back to back."""
    rate: float = 0.1
    """Requests per second one peer may make in the long run (one per 10 s)."""
    capability_weight: float = 4.0
    """Weight added per wanted capability a record has."""
    success_weight: float = 2.0
    """Weight added for a node seen succeeding within ``success_horizon``."""
    success_horizon: float = 600.0
    """How long a success counts."""
    min_interval: float = 5.0
    """Asker interval while the address book is thin."""
    max_interval: float = 120.0
    """Asker interval once the address book is full."""
    thin_below: int = 32
    """Records below which the address book is thin. While it is thin, a newly connected peer is
    asked at once; from `thin_below` records on, new connections wake nothing and peers are
    asked only at the asker interval (the work does not grow with the connections made)."""
    full_at: int = 256
    """Records at which the address book is full."""
    jitter: float = 0.1
    """Relative jitter of the asker interval (0.1: +-10 %)."""
    max_wanted: int = 8
    """Capabilities named in one request at most."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"pex.{f.name}", f"must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"pex.{f.name}", f"must be finite and >= 0, got {value!r}")
        if not 1 <= self.max_per_response <= MAX_RECORDS_PER_MESSAGE:
            raise ConfigError(
                "pex.max_per_response", f"must be within 1..{MAX_RECORDS_PER_MESSAGE}"
            )
        if not 0 <= self.max_wanted <= MAX_WANTED_CAPABILITIES:
            raise ConfigError("pex.max_wanted", f"must be within 0..{MAX_WANTED_CAPABILITIES}")
        if self.burst < 1 or self.rate <= 0:
            raise ConfigError("pex.burst", "burst must be >= 1 and rate > 0")
        if not 0 < self.min_interval <= self.max_interval:
            raise ConfigError("pex.min_interval", "must be > 0 and <= max_interval")
        if not 0 < self.thin_below < self.full_at:
            raise ConfigError("pex.thin_below", "must be > 0 and < full_at")
        if self.jitter >= 1:
            raise ConfigError("pex.jitter", "must be < 1")


def record_netgroup(record: CapabilityRecord) -> str:
    """The netgroup of a record's first address (its node id when it has none)."""
    if not record.addresses:
        return f"id:{record.node_id}"
    host = record.addresses[0].rpartition(":")[0].strip("[]")
    return _host_netgroup(host)


class PexVerdict(enum.Enum):
    SERVED = "served"
    RATE_LIMITED = "rate-limited"
    """The asker exceeded its token bucket: answer nothing (the driver may penalise)."""


@dataclass(frozen=True, slots=True)
class PexAnswer:
    verdict: PexVerdict
    records: tuple[SignedRecord, ...] = ()


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class PexResponder:
    """Answers PEX requests from a record store (see the module docstring)."""

    def __init__(
        self,
        config: PexConfig | None = None,
        *,
        rng: random.Random,
        netgroup: Callable[[CapabilityRecord], str] = record_netgroup,
    ) -> None:
        self.config = config or PexConfig()
        self._rng = rng
        self._netgroup = netgroup
        self._buckets: dict[NodeId, _Bucket] = {}

    def allow(self, peer: NodeId, now: float) -> bool:
        """Take one token from ``peer``'s bucket; False when it is empty."""
        cfg = self.config
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = _Bucket(cfg.burst, now)
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(cfg.burst, bucket.tokens + elapsed * cfg.rate)
        bucket.at = max(bucket.at, now)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def forget(self, peer: NodeId) -> None:
        """The peer disconnected: drop its bucket (a reconnect starts with a full one)."""
        self._buckets.pop(peer, None)

    def handle(
        self,
        peer: NodeId,
        request: PexRequest,
        store: RecordStore,
        *,
        now: float,
        private: Collection[NodeId] = (),
        successes: Mapping[NodeId, float] | None = None,
    ) -> PexAnswer:
        """Rate-limit, then select (``successes``: node id -> time of its last success)."""
        if not self.allow(peer, now):
            return PexAnswer(PexVerdict.RATE_LIMITED)
        records = self.select(
            store.records(now), request, asker=peer, now=now, private=private,
            successes=successes,
        )
        return PexAnswer(PexVerdict.SERVED, records)

    def select(
        self,
        records: Sequence[SignedRecord],
        request: PexRequest,
        *,
        asker: NodeId,
        now: float,
        private: Collection[NodeId] = (),
        successes: Mapping[NodeId, float] | None = None,
    ) -> tuple[SignedRecord, ...]:
        """Choose the answer among ``records`` (ordered input, e.g. by node id)."""
        cfg = self.config
        limit = min(max(request.max, 0), cfg.max_per_response)
        if limit == 0:
            return ()
        wanted = frozenset(request.wanted_capabilities)
        horizon = now - cfg.success_horizon
        rng = self._rng
        keyed: list[tuple[float, int, SignedRecord]] = []
        for i, signed in enumerate(records):
            record = signed.record
            node_id = record.node_id
            if node_id == asker or node_id in private or record.expires_at <= now:
                continue
            weight = 1.0
            if wanted:
                weight += cfg.capability_weight * sum(1 for c in record.capabilities if c in wanted)
            if successes is not None:
                seen = successes.get(node_id)
                if seen is not None and seen >= horizon:
                    weight += cfg.success_weight
            # Efraimidis-Spirakis: sorting by u ** (1 / w) descending is weighted sampling
            # without replacement; log(u) / w keeps the same order without underflow.
            u = rng.random() or 1e-300
            keyed.append((math.log(u) / weight, i, signed))
        keyed.sort(key=lambda item: (-item[0], item[1]))
        return self._diverse([s for _, _, s in keyed], limit)

    def _diverse(self, ordered: list[SignedRecord], limit: int) -> tuple[SignedRecord, ...]:
        picked: list[SignedRecord] = []
        per_group: dict[str, int] = {}
        rest = ordered
        allowed = 1
        while rest and len(picked) < limit:
            deferred: list[SignedRecord] = []
            for signed in rest:
                if len(picked) >= limit:
                    break
                group = self._netgroup(signed.record)
                if per_group.get(group, 0) < allowed:
                    per_group[group] = per_group.get(group, 0) + 1
                    picked.append(signed)
                else:
                    deferred.append(signed)
            rest = deferred
            allowed += 1
        return tuple(picked)


@dataclass(frozen=True, slots=True)
class PexPlan:
    """What the asker does next: ask ``peer`` (None: nobody to ask) with ``request``, then plan
    again at ``next_at``."""

    peer: NodeId | None
    request: PexRequest
    next_at: float


class PexAsker:
    """Decides when to ask, whom, and for what (see the module docstring)."""

    def __init__(self, config: PexConfig | None = None, *, rng: random.Random) -> None:
        self.config = config or PexConfig()
        self._rng = rng
        self._asked: dict[NodeId, float] = {}

    def interval(self, known: int) -> float:
        """Seconds to the next request with ``known`` records in the address book (jittered)."""
        cfg = self.config
        if known < cfg.thin_below:
            base = cfg.min_interval
        elif known >= cfg.full_at:
            base = cfg.max_interval
        else:
            share = math.log(known / cfg.thin_below) / math.log(cfg.full_at / cfg.thin_below)
            base = cfg.min_interval * (cfg.max_interval / cfg.min_interval) ** share
        return base * (1 + cfg.jitter * (2 * self._rng.random() - 1))

    def wanted(self, deficits: Mapping[str, int]) -> tuple[str, ...]:
        """Capabilities with a deficit, largest first (ties by name), at most ``max_wanted``."""
        short = sorted((c for c, d in deficits.items() if d > 0), key=lambda c: (-deficits[c], c))
        return tuple(short[: self.config.max_wanted])

    def choose_peer(self, connected: Collection[NodeId]) -> NodeId | None:
        """The connected peer asked least recently (never asked first), ties at random."""
        if not connected:
            return None
        never = -math.inf
        oldest = min(self._asked.get(p, never) for p in connected)
        ties = sorted(p for p in connected if self._asked.get(p, never) == oldest)
        return ties[0] if len(ties) == 1 else self._rng.choice(ties)

    def plan(
        self,
        now: float,
        connected: Collection[NodeId],
        *,
        known: int,
        deficits: Mapping[str, int],
    ) -> PexPlan:
        """Pick the peer and request for a PEX round at ``now`` and record the ask."""
        peer = self.choose_peer(connected)
        if peer is not None:
            self._asked[peer] = now
        request = PexRequest(max=self.config.max_per_response, wanted_capabilities=self.wanted(
            deficits))
        return PexPlan(peer, request, now + self.interval(known))

    def forget(self, peer: NodeId) -> None:
        """The peer disconnected."""
        self._asked.pop(peer, None)
