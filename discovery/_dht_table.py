"""The Kademlia routing table: k-buckets over 160-bit XOR distance (pure, sans-IO).

Theory of operation
-------------------
Node ids are 20-byte strings (``sha256(public key)[:20]``); the distance between two ids is their
XOR read as a big-endian integer. Bucket ``i`` holds contacts whose distance from the local id has
bit length ``i + 1`` (so bucket 159 covers half the id space, bucket 0 one id). Every bucket is
kept (no splitting); only the far ones ever fill.

Invariants:

* A bucket holds at most ``k`` contacts, least recently seen first (an LRU order: every success
  moves the contact to the tail). The local id is never stored.
* A contact is **verified** once the driver reached it over an authenticated connection
  (``add(..., verified=True)`` or ``on_success``); contacts learned from lookup answers are
  **unverified** until then. An unverified contact never displaces a verified one; a verified
  contact arriving at a full bucket displaces an unverified one first, then a stale one.
* A verified contact becomes **stale** after ``stale_after_failures`` consecutive failures (an
  unverified one is dropped at its first failure: it never proved it exists). A stale contact
  stays until a replacement arrives, is excluded from ``closest`` answers and is revived by a
  success.
* Each bucket has a bounded replacement cache (most recent kept) of contacts that found the
  bucket full; one is promoted when an entry leaves or turns stale.
* Diversity: at most ``max_per_netgroup_bucket`` contacts of one netgroup per bucket and
  ``max_per_netgroup_table`` in the whole table (the caller supplies the netgroup string, e.g.
  the IPv4 /24 or IPv6 /48; ``None`` exempts a contact, e.g. on a loopback testnet).
* ``closest(target, n)`` is exact (checked against brute force by property tests) and visits only
  the buckets it needs: for a target in bucket ``b``, bucket ``b`` holds the nearest contacts,
  buckets ``0..b-1`` together come next, then buckets ``b+1, b+2, ...`` in order.
"""

from __future__ import annotations

import bisect
import enum
import random
from dataclasses import dataclass, fields

from overlay.errors import ConfigError, LocalProtocolError

__all__ = [
    "AddOutcome",
    "ContactInfo",
    "ID_BITS",
    "ID_BYTES",
    "RoutingTable",
    "TableConfig",
    "bucket_index",
    "xor_distance",
]

ID_BYTES = 20
"""Length of a node id or DHT key."""
ID_BITS = ID_BYTES * 8


def xor_distance(a: bytes, b: bytes) -> int:
    """The Kademlia distance between two ids."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(local_id: bytes, other: bytes) -> int:
    """Index of the bucket ``other`` falls in (``-1`` for the local id itself)."""
    return xor_distance(local_id, other).bit_length() - 1


def _check_id(value: bytes, what: str) -> int:
    if not isinstance(value, bytes) or len(value) != ID_BYTES:
        raise LocalProtocolError(f"{what} must be {ID_BYTES} bytes, got {value!r}")
    return int.from_bytes(value, "big")


@dataclass(frozen=True, slots=True)
class TableConfig:
    """Sizes and limits of one routing table. Durations are seconds."""

    k: int = 20
    """Bucket size, and the number of contacts a lookup answer carries. Kademlia's k = 20: the
    chance that all k contacts of a bucket leave within an hour is negligible. Must be the same on
    every node of a network (the lookup's liar rule relies on it)."""
    stale_after_failures: int = 3
    """Consecutive failures after which a verified contact is stale (evicting at the first failure
    lets one lost packet, or an attacker dropping one, empty a bucket)."""
    replacement_cache_size: int = 8
    """Contacts kept per bucket to replace entries that leave or turn stale."""
    max_per_netgroup_bucket: int = 2
    """Contacts of one netgroup per bucket (the usual anti-eclipse limit: an attacker renting a
    /24 gets two slots of a bucket, not twenty)."""
    max_per_netgroup_table: int = 10
    """Contacts of one netgroup in the whole table."""
    refresh_interval: float = 600.0
    """A bucket with no lookup into its range for this long is due a refresh lookup."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise ConfigError(f"dht.{f.name}", f"must be positive, got {value!r}")
        if self.max_per_netgroup_table < self.max_per_netgroup_bucket:
            raise ConfigError("dht.max_per_netgroup_table", "must be >= max_per_netgroup_bucket")


class AddOutcome(enum.Enum):
    """What ``RoutingTable.add`` did with a contact."""

    ADDED = "added"
    """Inserted into a bucket with room."""
    UPDATED = "updated"
    """Already present; a verified sighting moved it to the LRU tail."""
    PROMOTED = "promoted"
    """Was unverified (in the bucket or the replacement cache) and is now verified."""
    DISPLACED = "displaced"
    """Took the place of an unverified or stale entry of a full bucket."""
    CACHED = "cached"
    """The bucket is full of live entries; kept in the bucket's replacement cache."""
    REJECTED_SELF = "rejected-self"
    """The local id."""
    REJECTED_DIVERSITY = "rejected-diversity"
    """Its netgroup already has its share of the bucket or the table."""


@dataclass(frozen=True, slots=True)
class ContactInfo:
    """A snapshot of one contact of the table."""

    node_id: bytes
    netgroup: str | None
    verified: bool
    stale: bool
    failures: int
    last_seen: float
    bucket: int


class _Entry:
    __slots__ = ("failures", "last_seen", "netgroup", "node_id", "num", "verified")

    def __init__(
        self, node_id: bytes, num: int, netgroup: str | None, verified: bool, now: float
    ) -> None:
        self.node_id = node_id
        self.num = num
        self.netgroup = netgroup
        self.verified = verified
        self.failures = 0
        self.last_seen = now


class _Bucket:
    # Plain dicts keep insertion order: re-inserting a key moves it to the tail (LRU touch).
    __slots__ = ("entries", "replacements")

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}  # LRU head first
        self.replacements: dict[int, _Entry] = {}  # most recent last


class RoutingTable:
    """k-buckets of one node (see the module docstring for the invariants)."""

    def __init__(self, local_id: bytes, config: TableConfig | None = None, *, now: float) -> None:
        self._local = _check_id(local_id, "local id")
        self.local_id = local_id
        self.config = config or TableConfig()
        # Buckets are made on first use: a table of N contacts has about log2(N) + 1 of them.
        self._buckets: dict[int, _Bucket] = {}
        self._indices: list[int] = []  # of self._buckets, ascending
        self._created = now
        self._last_lookup: dict[int, float] = {}  # bucket -> last lookup (default: _created)
        self._netgroups: dict[str, int] = {}  # netgroup -> contacts in buckets
        self._size = 0
        self._stale_limit = self.config.stale_after_failures

    # -- queries ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node_id: object) -> bool:
        if not isinstance(node_id, bytes) or len(node_id) != ID_BYTES:
            return False
        num = int.from_bytes(node_id, "big")
        bucket = self._buckets.get((num ^ self._local).bit_length() - 1)
        return bucket is not None and num in bucket.entries

    def get(self, node_id: bytes) -> ContactInfo | None:
        """The contact ``node_id`` (not a replacement-cache entry), or None."""
        num = _check_id(node_id, "node id")
        index = (num ^ self._local).bit_length() - 1
        bucket = self._buckets.get(index)
        entry = None if bucket is None else bucket.entries.get(num)
        return None if entry is None else self._info(entry, index)

    def contacts(self) -> list[ContactInfo]:
        """Every contact, bucket by bucket (nearest bucket first), LRU order inside a bucket."""
        return [self._info(e, i) for i in self._indices for e in self._buckets[i].entries.values()]

    def bucket_sizes(self) -> dict[int, int]:
        """Non-empty buckets and their sizes."""
        return {i: len(b.entries) for i in self._indices if (b := self._buckets[i]).entries}

    def estimate_size(self) -> int:
        """The network's size as the table sees it (0 for an empty table). Bucket ``i`` covers
        ``2**i`` ids; the buckets below the deepest full one hold every contact the node met in
        their ranges, so their contacts over the share of the id space they cover estimate the
        node count (exact in expectation for a table that met every node; lower when it met
        fewer)."""
        sizes = self.bucket_sizes()
        if not sizes:
            return 0
        k = self.config.k
        top = ID_BITS - 1
        while top >= 0 and sizes.get(top, 0) >= k:
            top -= 1
        if top < 0:
            return len(self) * 2  # every bucket full: at least that many
        below = sum(n for i, n in sizes.items() if i <= top)
        return max(len(self), below << (ID_BITS - 1 - top))

    def replacements(self, index: int) -> list[bytes]:
        """The replacement cache of bucket ``index`` (oldest first)."""
        bucket = self._buckets.get(index)
        return [] if bucket is None else [e.node_id for e in bucket.replacements.values()]

    def closest(self, target: bytes, n: int, *, verified_only: bool = False) -> list[bytes]:
        """The ``n`` contacts nearest to ``target``, nearest first; stale contacts excluded."""
        t = _check_id(target, "target")
        if n <= 0:
            return []
        limit = self._stale_limit
        b = (t ^ self._local).bit_length() - 1
        buckets = self._buckets
        picked: list[_Entry] = []
        # Groups in increasing distance from the target, each strictly nearer than the next:
        # bucket b, then buckets below b together, then b + 1, b + 2, ... Whole groups are taken
        # until there are n contacts; only they are sorted.
        indices = self._indices
        split = bisect.bisect_left(indices, b)
        groups: list[list[int] | tuple[int]] = [(b,)] if b in buckets else []
        groups.append(indices[:split])
        groups.extend((i,) for i in indices[split:] if i != b)
        for group in groups:
            for i in group:
                for e in buckets[i].entries.values():
                    if e.failures < limit and (e.verified or not verified_only):
                        picked.append(e)
            if len(picked) >= n:
                break
        picked.sort(key=lambda e: e.num ^ t)
        return [e.node_id for e in picked[:n]]

    # -- updates ---------------------------------------------------------------------------------

    def add(
        self, node_id: bytes, netgroup: str | None, *, verified: bool, now: float
    ) -> AddOutcome:
        """Offer a contact: ``verified`` when reached over an authenticated connection, else
        learned from a lookup answer."""
        num = _check_id(node_id, "node id")
        index = (num ^ self._local).bit_length() - 1
        if index < 0:
            return AddOutcome.REJECTED_SELF
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
            bisect.insort(self._indices, index)
        entry = bucket.entries.get(num)
        if entry is not None:
            if not verified:
                return AddOutcome.UPDATED  # hearsay does not refresh the LRU position
            was_verified = entry.verified
            entry.verified = True
            entry.failures = 0
            entry.last_seen = now
            bucket.entries[num] = bucket.entries.pop(num)
            return AddOutcome.UPDATED if was_verified else AddOutcome.PROMOTED
        cached = bucket.replacements.pop(num, None)
        new = _Entry(node_id, num, netgroup, verified or bool(cached and cached.verified), now)
        if not self._diverse(bucket, netgroup):
            return AddOutcome.REJECTED_DIVERSITY
        if len(bucket.entries) < self.config.k:
            self._insert(bucket, new)
            return AddOutcome.PROMOTED if cached is not None and verified else AddOutcome.ADDED
        if new.verified:
            victim = self._victim(bucket)
            if victim is not None:
                self._drop(bucket, victim)
                self._insert(bucket, new)
                return AddOutcome.DISPLACED
        self._cache(bucket, new)
        return AddOutcome.CACHED

    def on_success(self, node_id: bytes, now: float) -> bool:
        """The contact answered over an authenticated connection: it is verified, its failures
        reset and it moves to the LRU tail. Returns False if it is not in a bucket."""
        num = _check_id(node_id, "node id")
        index = (num ^ self._local).bit_length() - 1
        bucket = self._buckets.get(index)
        entry = None if bucket is None else bucket.entries.get(num)
        if bucket is None or entry is None:
            return False
        entry.verified = True
        entry.failures = 0
        entry.last_seen = now
        bucket.entries[num] = bucket.entries.pop(num)
        return True

    def on_failure(self, node_id: bytes) -> bool:
        """A query to the contact failed or timed out. Returns True when the contact left the
        table or turned stale (a replacement, if cached, then takes its place)."""
        num = _check_id(node_id, "node id")
        index = (num ^ self._local).bit_length() - 1
        bucket = self._buckets.get(index)
        if bucket is None:
            return False
        cached = bucket.replacements.get(num)
        if cached is not None and not cached.verified:
            del bucket.replacements[num]
            return True
        entry = bucket.entries.get(num)
        if entry is None:
            return False
        entry.failures += 1
        if not entry.verified:
            self._drop(bucket, entry)
            self._promote_replacement(bucket)
            return True
        if entry.failures < self._stale_limit:
            return False
        if bucket.replacements:
            self._drop(bucket, entry)
            self._promote_replacement(bucket)
        return True

    def remove(self, node_id: bytes) -> bool:
        """Forget a contact (e.g. banned); a replacement takes its place."""
        num = _check_id(node_id, "node id")
        index = (num ^ self._local).bit_length() - 1
        bucket = self._buckets.get(index)
        if bucket is None:
            return False
        bucket.replacements.pop(num, None)
        entry = bucket.entries.get(num)
        if entry is None:
            return False
        self._drop(bucket, entry)
        self._promote_replacement(bucket)
        return True

    # -- refresh ---------------------------------------------------------------------------------

    def mark_lookup(self, target: bytes, now: float) -> None:
        """A lookup towards ``target`` ran: its bucket needs no refresh for a while."""
        index = bucket_index(self.local_id, target)
        if index >= 0:
            self._last_lookup[index] = now

    def _refresh_range(self) -> range:
        # Buckets nearer than the nearest non-empty one are empty because the network is small,
        # not for lack of lookups: refreshing them would cost a lookup each for nothing.
        for i in self._indices:
            if self._buckets[i].entries:
                return range(max(i - 1, 0), ID_BITS)
        return range(0)

    def refresh_due(self, now: float) -> list[int]:
        """Buckets due a refresh lookup (see ``refresh_target``), farthest first."""
        limit = now - self.config.refresh_interval
        last = self._last_lookup
        return [i for i in reversed(self._refresh_range()) if last.get(i, self._created) <= limit]

    def next_refresh(self, now: float) -> float | None:
        """When the next bucket refresh is due (``<= now`` if one is due already), or None for an
        empty table."""
        due = [self._last_lookup.get(i, self._created) for i in self._refresh_range()]
        if not due:
            return None
        return min(due) + self.config.refresh_interval

    def refresh_target(self, index: int, rng: random.Random) -> bytes:
        """A random id in bucket ``index``, to look up when refreshing it."""
        if not 0 <= index < ID_BITS:
            raise LocalProtocolError(f"bucket index out of range: {index}")
        low = rng.getrandbits(index) if index else 0
        return ((self._local ^ (1 << index)) ^ low).to_bytes(ID_BYTES, "big")

    # -- internals -------------------------------------------------------------------------------

    def _info(self, entry: _Entry, index: int) -> ContactInfo:
        return ContactInfo(
            node_id=entry.node_id,
            netgroup=entry.netgroup,
            verified=entry.verified,
            stale=entry.failures >= self._stale_limit,
            failures=entry.failures,
            last_seen=entry.last_seen,
            bucket=index,
        )

    def _diverse(self, bucket: _Bucket, netgroup: str | None) -> bool:
        if netgroup is None:
            return True
        if self._netgroups.get(netgroup, 0) >= self.config.max_per_netgroup_table:
            return False
        same = sum(1 for e in bucket.entries.values() if e.netgroup == netgroup)
        return same < self.config.max_per_netgroup_bucket

    def _victim(self, bucket: _Bucket) -> _Entry | None:
        stale = None
        for e in bucket.entries.values():  # LRU first: the oldest unverified goes first
            if not e.verified:
                return e
            if stale is None and e.failures >= self._stale_limit:
                stale = e
        return stale

    def _insert(self, bucket: _Bucket, entry: _Entry) -> None:
        bucket.entries[entry.num] = entry
        self._size += 1
        if entry.netgroup is not None:
            self._netgroups[entry.netgroup] = self._netgroups.get(entry.netgroup, 0) + 1

    def _drop(self, bucket: _Bucket, entry: _Entry) -> None:
        del bucket.entries[entry.num]
        self._size -= 1
        if entry.netgroup is not None:
            left = self._netgroups[entry.netgroup] - 1
            if left:
                self._netgroups[entry.netgroup] = left
            else:
                del self._netgroups[entry.netgroup]

    def _cache(self, bucket: _Bucket, entry: _Entry) -> None:
        cache = bucket.replacements
        cache.pop(entry.num, None)
        cache[entry.num] = entry
        while len(cache) > self.config.replacement_cache_size:
            del cache[next(iter(cache))]

    def _promote_replacement(self, bucket: _Bucket) -> None:
        """Move the most recent diverse replacement (verified ones first) into ``bucket``, taking
        the place of a stale entry if the bucket is full."""
        for want_verified in (True, False):
            for num in reversed(bucket.replacements):
                cand = bucket.replacements[num]
                if cand.verified != want_verified or not self._diverse(bucket, cand.netgroup):
                    continue
                if len(bucket.entries) >= self.config.k:
                    victim = self._victim(bucket)
                    if victim is None or (victim.verified and not cand.verified):
                        return
                    self._drop(bucket, victim)
                del bucket.replacements[num]
                self._insert(bucket, cand)
                return
