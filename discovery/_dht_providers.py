"""Provider records held for the DHT, and the local node's republish schedule (pure, sans-IO).

Theory of operation
-------------------
``ProviderStore`` is a multimap ``key -> {provider_id -> entry}`` where an entry is an opaque
payload (the driver's verified signed record), its ``seq``, its ``expires_at`` and its ``source``
(the peer that stored it). The driver verifies a record before ``put`` and passes the expiry and
sequence number *taken from the record*, so:

* **Replicas never extend expiry.** A provider's entry is replaced only by a record with a higher
  ``seq`` (which the provider signed anew); the same record stored again by anyone changes
  nothing, and an older one is refused.
* **Bounded.** At most ``max_per_key`` providers per key (when full, a fresher record, i.e. one
  expiring later, evicts the one expiring soonest), at most ``max_per_source`` entries stored by
  one source over all keys, at most ``max_total`` entries in all (when full, the entry expiring
  soonest anywhere makes room for one expiring later).
* **Expiry.** ``get`` never returns an expired entry; ``sweep(now)`` removes them (the driver
  calls it at ``next_expiry()``). A min-heap of expiry times with lazy deletion keeps both cheap.

``RepublishSchedule`` tracks the local node's own provider keys: each is republished every
``interval`` seconds (with jitter), and always at least ``margin`` seconds before the record
stored under it expires.
"""

from __future__ import annotations

import enum
import heapq
import random
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from overlay.errors import ConfigError, LocalProtocolError

__all__ = [
    "ProviderEntry",
    "ProviderStore",
    "ProviderStoreConfig",
    "RepublishSchedule",
    "StoreOutcome",
]

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class ProviderStoreConfig:
    """Caps of one node's provider store."""

    max_per_key: int = 64
    """Providers kept per key (the freshest). A lookup stops after a few; 64 leaves room for a
    popular capability without letting one key fill the store."""
    max_per_source: int = 256
    """Entries one peer may have stored here, over all keys (a flooding peer fills its own quota,
    not the store). A provider storing its own record is its own source."""
    max_total: int = 65_536
    """Entries in all (about 64 MiB at the 1 KiB record cap)."""
    max_per_response: int = 20
    """Providers returned by one ``get`` unless the caller asks for fewer."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise ConfigError(f"dht.{f.name}", f"must be positive, got {value!r}")


class StoreOutcome(enum.Enum):
    ADDED = "added"
    REPLACED = "replaced"
    """A higher ``seq`` from the same provider took the place of its older record."""
    DUPLICATE = "duplicate"
    """Same provider, same ``seq``: nothing changed (replicas never extend expiry)."""
    STALE = "stale"
    """An older ``seq`` than the one held."""
    EXPIRED = "expired"
    KEY_FULL = "key-full"
    """The key holds ``max_per_key`` providers, all expiring no sooner than this one."""
    SOURCE_FULL = "source-full"
    STORE_FULL = "store-full"


@dataclass(frozen=True, slots=True)
class ProviderEntry(Generic[P]):
    provider_id: bytes
    payload: P
    seq: int
    expires_at: float
    source: bytes


class ProviderStore(Generic[P]):
    """Provider records by DHT key (see the module docstring)."""

    def __init__(self, config: ProviderStoreConfig | None = None) -> None:
        self.config = config or ProviderStoreConfig()
        self._keys: dict[bytes, dict[bytes, ProviderEntry[P]]] = {}
        self._per_source: dict[bytes, int] = {}
        self._size = 0
        self._heap: list[tuple[float, bytes, bytes, int]] = []  # (expires_at, key, provider, seq)

    def __len__(self) -> int:
        return self._size

    def keys(self) -> list[bytes]:
        return list(self._keys)

    def source_count(self, source: bytes) -> int:
        return self._per_source.get(source, 0)

    def put(
        self,
        key: bytes,
        provider_id: bytes,
        payload: P,
        *,
        seq: int,
        expires_at: float,
        source: bytes,
        now: float,
    ) -> StoreOutcome:
        """Store a verified record; ``seq`` and ``expires_at`` come from the record itself."""
        if expires_at <= now:
            return StoreOutcome.EXPIRED
        providers = self._keys.get(key)
        old = providers.get(provider_id) if providers is not None else None
        if old is not None and old.expires_at > now:
            if seq < old.seq:
                return StoreOutcome.STALE
            if seq == old.seq:
                return StoreOutcome.DUPLICATE
        entry = ProviderEntry(provider_id, payload, seq, expires_at, source)
        if old is not None:  # a newer record (or a dead one) from the same provider
            quota = self._per_source.get(source, 0)
            if old.source != source and quota >= self.config.max_per_source:
                return StoreOutcome.SOURCE_FULL
            self._remove(key, old)
            self._insert(key, entry)
            return StoreOutcome.REPLACED
        if self._per_source.get(source, 0) >= self.config.max_per_source:
            return StoreOutcome.SOURCE_FULL
        if providers is not None and len(providers) >= self.config.max_per_key:
            soonest = min(providers.values(), key=lambda e: e.expires_at)
            if soonest.expires_at > now and soonest.expires_at >= expires_at:
                return StoreOutcome.KEY_FULL
            self._remove(key, soonest)
        if self._size >= self.config.max_total:
            victim = self._soonest()
            if victim is None or now < victim[1].expires_at >= expires_at:
                return StoreOutcome.STORE_FULL
            self._remove(*victim)
        self._insert(key, entry)
        return StoreOutcome.ADDED

    def get(self, key: bytes, now: float, limit: int | None = None) -> list[ProviderEntry[P]]:
        """Live providers of ``key``, the freshest (latest expiry) first, at most ``limit``
        (default ``max_per_response``)."""
        providers = self._keys.get(key)
        if not providers:
            return []
        n = self.config.max_per_response if limit is None else limit
        live = [e for e in providers.values() if e.expires_at > now]
        return heapq.nlargest(n, live, key=lambda e: e.expires_at) if n > 0 else []

    def remove(self, key: bytes, provider_id: bytes) -> bool:
        entry = self._keys.get(key, {}).get(provider_id)
        if entry is None:
            return False
        self._remove(key, entry)
        return True

    def sweep(self, now: float) -> int:
        """Remove expired entries; returns how many."""
        removed = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key, provider_id, seq = heapq.heappop(heap)
            entry = self._keys.get(key, {}).get(provider_id)
            if entry is not None and entry.seq == seq and entry.expires_at <= now:
                self._remove(key, entry)
                removed += 1
        return removed

    def next_expiry(self) -> float | None:
        """When ``sweep`` next has something to do (possibly a little early), or None."""
        self._drop_dead_heap_tops()
        return self._heap[0][0] if self._heap else None

    # -- internals -------------------------------------------------------------------------------

    def _insert(self, key: bytes, entry: ProviderEntry[P]) -> None:
        self._keys.setdefault(key, {})[entry.provider_id] = entry
        self._per_source[entry.source] = self._per_source.get(entry.source, 0) + 1
        self._size += 1
        heapq.heappush(self._heap, (entry.expires_at, key, entry.provider_id, entry.seq))
        if len(self._heap) > 2 * self._size + 64:  # too many dead heap items: rebuild
            self._heap = [
                (e.expires_at, k, e.provider_id, e.seq)
                for k, providers in self._keys.items()
                for e in providers.values()
            ]
            heapq.heapify(self._heap)

    def _remove(self, key: bytes, entry: ProviderEntry[P]) -> None:
        # Its heap item stays behind (lazy deletion) unless the caller popped it.
        providers = self._keys[key]
        del providers[entry.provider_id]
        if not providers:
            del self._keys[key]
        left = self._per_source[entry.source] - 1
        if left:
            self._per_source[entry.source] = left
        else:
            del self._per_source[entry.source]
        self._size -= 1

    def _drop_dead_heap_tops(self) -> None:
        heap = self._heap
        while heap:
            _, key, provider_id, seq = heap[0]
            entry = self._keys.get(key, {}).get(provider_id)
            if entry is not None and entry.seq == seq:
                return
            heapq.heappop(heap)

    def _soonest(self) -> tuple[bytes, ProviderEntry[P]] | None:
        self._drop_dead_heap_tops()
        if not self._heap:
            return None
        _, key, provider_id, _ = self._heap[0]
        return key, self._keys[key][provider_id]


@dataclass(slots=True)
class _Own:
    next_at: float
    expires_at: float


class RepublishSchedule:
    """When to republish the local node's own provider records.

    Each key is republished ``interval`` seconds after it was last published, spread by up to
    ``jitter`` of the interval so that nodes restarted together do not republish together, and
    never later than ``margin`` seconds before the published record expires.
    """

    def __init__(
        self,
        *,
        interval: float = 1800.0,
        margin: float = 300.0,
        jitter: float = 0.1,
        rng: random.Random,
    ) -> None:
        if interval <= 0 or margin < 0 or not 0 <= jitter < 1:
            raise ConfigError(
                "dht.republish", "needs interval > 0, margin >= 0 and 0 <= jitter < 1"
            )
        self.interval = interval
        self.margin = margin
        self.jitter = jitter
        self._rng = rng
        self._own: dict[bytes, _Own] = {}

    def __len__(self) -> int:
        return len(self._own)

    def __contains__(self, key: object) -> bool:
        return key in self._own

    def published(self, key: bytes, *, expires_at: float, now: float) -> float:
        """The record for ``key`` (expiring at ``expires_at``) was just stored; returns when to
        republish it."""
        if expires_at <= now:
            raise LocalProtocolError("a published record must expire in the future")
        spread = self.interval * self.jitter * self._rng.random()
        next_at = min(now + self.interval - spread, expires_at - self.margin)
        self._own[key] = _Own(max(next_at, now), expires_at)
        return self._own[key].next_at

    def withdraw(self, key: bytes) -> bool:
        """Stop republishing ``key`` (the capability was dropped)."""
        return self._own.pop(key, None) is not None

    def due(self, now: float) -> list[bytes]:
        """Keys to republish now (each stays due until ``published`` is called again)."""
        return [key for key, own in self._own.items() if own.next_at <= now]

    def next_due(self) -> float | None:
        if not self._own:
            return None
        return min(own.next_at for own in self._own.values())
