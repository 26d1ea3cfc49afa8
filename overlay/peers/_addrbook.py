"""The anti-eclipse address book ("addrman" after Bitcoin Core), a pure data structure.

Theory of operation
-------------------
Addresses live in two tables of fixed-size buckets:

* **new** holds addresses we heard of but never connected to. An address's bucket is chosen by
  a keyed hash of (its netgroup, the netgroup of whoever told us), restricted so that all the
  addresses from one *source* netgroup land in at most ``new_buckets_per_source_group`` (32) of
  the ``new_bucket_count`` (256) buckets, i.e. at most 1/8 of the table. A peer, or a whole /16
  of peers, gossiping millions of addresses can therefore overwrite at most 1/8 of what we know,
  and all the addresses of one netgroup heard from one source netgroup share a single bucket
  (64 slots), so flooding addresses from few netgroups fills only a handful of buckets.
  Each gossiping peer is additionally limited to ``max_addresses_per_source`` (500) entries.
* **tried** holds addresses we successfully connected to. The bucket is a keyed hash of the
  address netgroup and (a hash of) the address, restricted so that one netgroup reaches at most
  ``tried_buckets_per_group`` (8) of the ``tried_bucket_count`` (64) buckets (1/8). An attacker
  must run real, reachable nodes in many netgroups to occupy the tried table.

Inside a bucket the slot is a keyed hash of the address (``host:port``; the node id is not part
of it, so one ``host:port`` holds one entry however many ids are claimed for it). The key is the
node's secret, persisted with the store: placement is stable across restarts and an attacker
cannot precompute which addresses collide with honest ones.

Collisions. In **new**, a newcomer only replaces an occupant that is *terrible* (never
connected after 3 attempts, 10 failures in a week, or not seen for 30 days); otherwise the
newcomer is dropped (first come, first kept: a flood cannot flush established entries), except
that an address from a local source (operator, configuration, seed) replaces gossip. In
**tried** the rule is *test-before-evict*: when a successful connection wants to move an
address into an occupied tried slot, the pair is queued (at most ``max_tried_collisions``,
10) and the occupant is tested with a short *feeler* connection. If the occupant connected
within the last 4 hours, or answers the test, it stays; if the test fails (no success within
60 s of the attempt), or nothing is resolved within 40 minutes, the newcomer takes the slot and
the occupant goes back to **new**.

Selection (``select``) picks a table (tried or new, 50/50 when both have entries), then a
uniformly random *non-empty bucket*, then a random entry in it; an entry is taken with a
probability that falls with recent attempts and failures (0.01 if tried in the last 10
minutes, times 0.66 per failed attempt, up to 8), raised 1.2x after each rejected probe so the
loop ends. Choosing buckets before entries means a flooded source, confined to its few
buckets, is not picked more often for having many addresses. The caller's ``accept`` filter
(bans, backoff, one outbound per netgroup...) is applied to each probe; after ``max_probes``
(128) failed probes the buckets are scanned exhaustively in random order, so a rare acceptable
entry (e.g. the only honest netgroup not yet connected) is still found.

Sizes: 256 x 64 new + 64 x 64 tried = 20,480 entries, a few MB; Bitcoin uses 4x more buckets
for a network of ~60k reachable nodes, an overlay is expected to be smaller.

Every change marks the entry dirty so the manager can persist it; nothing here does IO.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from overlay.address import NodeAddress
from overlay.errors import InvalidAddressError
from overlay.peers._config import PeerManagerConfig
from overlay.peers._state import StoredAddress
from overlay.wire._netgroup import address_netgroup, parse_ip

__all__ = [
    "AddrEntry",
    "AddressBook",
    "LOCAL_SOURCES",
    "TableName",
    "placement_key",
]

_HOUR = 3600.0
_DAY = 86400.0
_REPLACEMENT_WINDOW = 4 * _HOUR  # an occupant seen this recently survives a tried collision
_TEST_GRACE = 60.0  # a feeler gets this long to succeed
_TEST_WINDOW = 40 * 60.0  # unresolved collisions evict the occupant after this long
_RECENT_TRY = 600.0  # probability penalty for addresses tried in the last 10 minutes
_HORIZON = 30 * _DAY  # not seen for this long: terrible
_MAX_RETRIES = 3  # never connected after this many attempts: terrible
_MAX_FAILURES = 10  # this many failures...
_MIN_FAIL_WINDOW = 7 * _DAY  # ...without success for a week: terrible
DEFAULT_MAX_PROBES = 128
LOCAL_SOURCES = frozenset({"operator", "seed", "config"})
"""Sources we trust: their addresses are not capped and win new-table collisions over gossip."""

TableName = Literal["new", "tried"]


def placement_key(address: NodeAddress) -> str:
    """The hashed identity of an address: normalized ``host:port`` (memory: node id)."""
    if address.protocol == "memory" or not address.host:
        return f"memory:{address.node_id}"
    ip = parse_ip(address.host)
    host = str(ip) if ip is not None else address.host.strip().lower()
    return f"{host}:{address.port}"


@dataclass(slots=True, eq=False)
class AddrEntry:
    """One address and its history (mutable; owned by the book)."""

    address: NodeAddress
    key: str
    group: str
    source: str
    source_group: str
    added: float
    last_seen: float
    last_try: float = 0.0
    last_success: float = 0.0
    attempts: int = 0
    tried: bool = False
    bucket: int = -1
    position: int = -1

    def is_terrible(self, now: float) -> bool:
        if self.last_try and now - self.last_try < _TEST_GRACE:
            return False
        if now - self.last_seen > _HORIZON:
            return True
        if not self.last_success and self.attempts >= _MAX_RETRIES:
            return True
        return now - self.last_success > _MIN_FAIL_WINDOW and self.attempts >= _MAX_FAILURES

    def chance(self, now: float) -> float:
        value = 1.0
        if self.last_try and now - self.last_try < _RECENT_TRY:
            value *= 0.01
        return value * 0.66 ** min(self.attempts, 8)

    def stored(self) -> StoredAddress:
        return StoredAddress(
            address=str(self.address),
            source=self.source,
            source_group=self.source_group,
            added=self.added,
            last_seen=self.last_seen,
            last_try=self.last_try,
            last_success=self.last_success,
            attempts=self.attempts,
            tried=self.tried,
        )


class _Table:
    """Buckets of slots, with an index of the non-empty buckets for O(1) random picks."""

    __slots__ = ("_picks", "buckets", "index", "nonempty", "size")

    def __init__(self) -> None:
        self.buckets: dict[int, dict[int, AddrEntry]] = {}
        self.nonempty: list[int] = []
        self.index: dict[int, int] = {}
        self.size = 0
        self._picks: dict[int, tuple[AddrEntry, ...]] = {}
        """A bucket's entries in slot-dict order, built on the first random pick after it
        changed (a starved planner probes the same buckets many times between changes)."""

    def get(self, bucket: int, position: int) -> AddrEntry | None:
        slots = self.buckets.get(bucket)
        return None if slots is None else slots.get(position)

    def put(self, bucket: int, position: int, entry: AddrEntry) -> None:
        slots = self.buckets.get(bucket)
        if slots is None:
            slots = self.buckets[bucket] = {}
            self.index[bucket] = len(self.nonempty)
            self.nonempty.append(bucket)
        assert position not in slots
        slots[position] = entry
        self._picks.pop(bucket, None)
        entry.bucket, entry.position = bucket, position
        self.size += 1

    def take(self, entry: AddrEntry) -> None:
        slots = self.buckets[entry.bucket]
        del slots[entry.position]
        self._picks.pop(entry.bucket, None)
        self.size -= 1
        if not slots:
            del self.buckets[entry.bucket]
            i = self.index.pop(entry.bucket)
            last = self.nonempty.pop()
            if last != entry.bucket:
                self.nonempty[i] = last
                self.index[last] = i
        entry.bucket = entry.position = -1

    def random_entry(self, rng: random.Random) -> AddrEntry | None:
        if not self.nonempty:
            return None
        bucket = self.nonempty[rng.randrange(len(self.nonempty))]
        picks = self._picks.get(bucket)
        if picks is None:
            picks = self._picks[bucket] = tuple(self.buckets[bucket].values())
        return rng.choice(picks)


class AddressBook:
    """New and tried tables, keyed by a secret; see the module docstring."""

    def __init__(self, config: PeerManagerConfig, secret: bytes, rng: random.Random) -> None:
        self._config = config
        self._key = secret if len(secret) <= 64 else hashlib.sha512(secret).digest()
        self._rng = rng
        self._new = _Table()
        self._tried = _Table()
        self._entries: dict[NodeAddress, AddrEntry] = {}
        self._by_key: dict[str, AddrEntry] = {}
        self._per_source: dict[str, int] = {}
        self._collisions: dict[NodeAddress, None] = {}
        self.dirty: set[NodeAddress] = set()
        """Entries changed since the manager last drained this set."""
        self.deleted: set[str] = set()
        """String forms of addresses removed since the manager last drained this set."""
        self.added: list[NodeAddress] = []
        """Addresses that entered the book since the planner last drained this list (so that
        a planner starved of candidates looks at what is new instead of probing again)."""

    # -- hashing ------------------------------------------------------------------------------

    def _hash(self, *parts: str | int) -> int:
        h = hashlib.blake2b(key=self._key, digest_size=8)
        for part in parts:
            data = str(part).encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(4, "big"))
            h.update(data)
        return int.from_bytes(h.digest(), "big")

    def new_bucket(self, group: str, source_group: str) -> int:
        """Bucket of the new table for an address of ``group`` heard from ``source_group``."""
        c = self._config
        slot = self._hash("new-1", group, source_group) % c.new_buckets_per_source_group
        return self._hash("new-2", source_group, slot) % c.new_bucket_count

    def tried_bucket(self, key: str, group: str) -> int:
        """Bucket of the tried table for an address with placement ``key`` in ``group``."""
        c = self._config
        slot = self._hash("tried-1", key) % c.tried_buckets_per_group
        return self._hash("tried-2", group, slot) % c.tried_bucket_count

    def position(self, table: TableName, bucket: int, key: str) -> int:
        return self._hash("pos", table, bucket, key) % self._config.bucket_size

    def keyed_group_hash(self, group: str) -> int:
        """A secret, stable ordering key for netgroups (used by inbound eviction)."""
        return self._hash("group", group)

    # -- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    @property
    def new_count(self) -> int:
        return self._new.size

    @property
    def tried_count(self) -> int:
        return self._tried.size

    @property
    def collision_count(self) -> int:
        return len(self._collisions)

    def get(self, address: NodeAddress) -> AddrEntry | None:
        return self._entries.get(address)

    def entries(self) -> Iterator[AddrEntry]:
        return iter(list(self._entries.values()))

    def source_count(self, source: str) -> int:
        return self._per_source.get(source, 0)

    # -- changes ------------------------------------------------------------------------------

    def add(
        self,
        address: NodeAddress,
        *,
        source: str,
        source_group: str,
        now: float,
        limit_source: bool = True,
    ) -> bool:
        """Add (or refresh) ``address`` in the new table; False when it was not kept."""
        existing = self._entries.get(address)
        if existing is not None:
            if now > existing.last_seen:
                existing.last_seen = now
                self.dirty.add(address)
            return True
        key = placement_key(address)
        same_key = self._by_key.get(key)
        if same_key is not None:
            if not same_key.is_terrible(now):
                return False
            self._delete(same_key)
        if (
            limit_source
            and self._per_source.get(source, 0) >= self._config.max_addresses_per_source
        ):
            return False
        entry = AddrEntry(
            address=address,
            key=key,
            group=address_netgroup(address),
            source=source,
            source_group=source_group,
            added=now,
            last_seen=now,
        )
        if not self._place_new(entry, now, replace_any=False):
            return False
        self._index(entry)
        self.added.append(address)
        return True

    def attempt(self, address: NodeAddress, now: float, *, failed: bool = True) -> None:
        """Record a connection attempt to ``address`` (a failure unless ``failed=False``)."""
        entry = self._entries.get(address)
        if entry is None:
            return
        entry.last_try = now
        if failed:
            entry.attempts += 1
        self.dirty.add(address)

    def good(self, address: NodeAddress, now: float, *, test_before_evict: bool = True) -> bool:
        """Record a successful connection; move the entry to tried (maybe via a collision).

        Returns True when the entry is (now) in the tried table.
        """
        entry = self._entries.get(address)
        if entry is None:
            return False
        entry.last_success = entry.last_try = entry.last_seen = max(now, entry.last_seen)
        entry.attempts = 0
        self.dirty.add(address)
        if entry.tried:
            return True
        bucket = self.tried_bucket(entry.key, entry.group)
        position = self.position("tried", bucket, entry.key)
        occupant = self._tried.get(bucket, position)
        if occupant is not None and test_before_evict:
            if len(self._collisions) < self._config.max_tried_collisions:
                self._collisions[address] = None
            return False
        self._new.take(entry)
        self._collisions.pop(address, None)
        if occupant is not None:
            self._tried.take(occupant)
            self._place_new(occupant, now, replace_any=True)
        entry.tried = True
        self._tried.put(bucket, position, entry)
        return True

    def remove(self, address: NodeAddress) -> bool:
        entry = self._entries.get(address)
        if entry is None:
            return False
        self._delete(entry)
        return True

    def select(
        self,
        now: float,
        accept: Callable[[AddrEntry], bool] = lambda _entry: True,
        *,
        table: TableName | None = None,
        max_probes: int = DEFAULT_MAX_PROBES,
        exhaustive: bool = True,
    ) -> AddrEntry | None:
        """A random entry passing ``accept`` (see the module docstring), or None.

        When ``max_probes`` random probes find nothing and ``exhaustive`` is set, every bucket
        is visited (in random order) so that None really means "no acceptable entry".
        """
        factor = 1.0
        for _ in range(max_probes):
            source = self._pick_table(table)
            if source is None:
                return None
            entry = source.random_entry(self._rng)
            if entry is None or not accept(entry):
                continue
            if self._rng.random() < min(1.0, factor * entry.chance(now)):
                return entry
            factor *= 1.2
        return self._scan(accept, table) if exhaustive else None

    def _scan(
        self, accept: Callable[[AddrEntry], bool], table: TableName | None
    ) -> AddrEntry | None:
        """The fallback when probing failed: visit buckets in random order (O(entries))."""
        tables = [
            t for name, t in (("new", self._new), ("tried", self._tried)) if table in (None, name)
        ]
        buckets = [(t, b) for t in tables for b in t.nonempty]
        self._rng.shuffle(buckets)
        for t, bucket in buckets:
            slots = list(t.buckets[bucket].values())
            self._rng.shuffle(slots)
            for entry in slots:
                if accept(entry):
                    return entry
        return None

    def _pick_table(self, table: TableName | None) -> _Table | None:
        if table == "new":
            return self._new if self._new.size else None
        if table == "tried":
            return self._tried if self._tried.size else None
        if not self._tried.size:
            return self._new if self._new.size else None
        if not self._new.size or self._rng.random() < 0.5:
            return self._tried
        return self._new

    # -- test-before-evict ----------------------------------------------------------------------

    def collision_to_test(self) -> AddrEntry | None:
        """The tried occupant blocking a random pending collision (dial it as a feeler)."""
        if not self._collisions:
            return None
        candidates = list(self._collisions)
        address = candidates[self._rng.randrange(len(candidates))]
        entry = self._entries.get(address)
        if entry is None or entry.tried:
            return None
        bucket = self.tried_bucket(entry.key, entry.group)
        return self._tried.get(bucket, self.position("tried", bucket, entry.key))

    def resolve_collisions(self, now: float) -> None:
        """Settle pending tried collisions whose outcome is known (module docstring rules)."""
        for address in list(self._collisions):
            entry = self._entries.get(address)
            if entry is None or entry.tried:
                self._collisions.pop(address, None)
                continue
            bucket = self.tried_bucket(entry.key, entry.group)
            occupant = self._tried.get(bucket, self.position("tried", bucket, entry.key))
            replace = False
            if occupant is None:
                replace = True
            elif now - occupant.last_success < _REPLACEMENT_WINDOW:
                self._collisions.pop(address, None)
            elif now - occupant.last_try < _REPLACEMENT_WINDOW:
                replace = now - occupant.last_try > _TEST_GRACE
            elif now - entry.last_success > _TEST_WINDOW:
                replace = True
            if replace:
                self._collisions.pop(address, None)
                self.good(address, max(now, entry.last_success), test_before_evict=False)

    # -- persistence ----------------------------------------------------------------------------

    def restore(self, stored: Iterable[StoredAddress]) -> int:
        """Re-place persisted entries (tried first); returns how many were dropped."""
        rows = sorted(stored, key=lambda row: not row.tried)
        dropped = 0
        for row in rows:
            try:
                address = NodeAddress.parse(row.address)
            except InvalidAddressError:
                dropped += 1
                continue
            key = placement_key(address)
            if address in self._entries or key in self._by_key:
                dropped += 1
                continue
            entry = AddrEntry(
                address=address,
                key=key,
                group=address_netgroup(address),
                source=row.source,
                source_group=row.source_group,
                added=row.added,
                last_seen=row.last_seen,
                last_try=row.last_try,
                last_success=row.last_success,
                attempts=row.attempts,
            )
            placed = False
            if row.tried:
                bucket = self.tried_bucket(key, entry.group)
                position = self.position("tried", bucket, key)
                if self._tried.get(bucket, position) is None:
                    entry.tried = True
                    self._tried.put(bucket, position, entry)
                    placed = True
            if not placed:
                placed = self._place_new(entry, row.last_seen, replace_any=False)
            if placed:
                self._index(entry)
            else:
                dropped += 1
                self.deleted.add(row.address)
        self.dirty.clear()
        return dropped

    # -- internals ------------------------------------------------------------------------------

    def _place_new(self, entry: AddrEntry, now: float, *, replace_any: bool) -> bool:
        bucket = self.new_bucket(entry.group, entry.source_group)
        position = self.position("new", bucket, entry.key)
        occupant = self._new.get(bucket, position)
        if occupant is not None:
            trumps = entry.source in LOCAL_SOURCES and occupant.source not in LOCAL_SOURCES
            if not (replace_any or trumps or occupant.is_terrible(now)):
                return False
            self._delete(occupant)
        entry.tried = False
        self._new.put(bucket, position, entry)
        self.dirty.add(entry.address)
        return True

    def _index(self, entry: AddrEntry) -> None:
        self._entries[entry.address] = entry
        self._by_key[entry.key] = entry
        self._per_source[entry.source] = self._per_source.get(entry.source, 0) + 1
        self.deleted.discard(str(entry.address))
        self.dirty.add(entry.address)

    def _unindex(self, entry: AddrEntry) -> None:
        self._entries.pop(entry.address, None)
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        remaining = self._per_source.get(entry.source, 0) - 1
        if remaining > 0:
            self._per_source[entry.source] = remaining
        else:
            self._per_source.pop(entry.source, None)
        self._collisions.pop(entry.address, None)
        self.dirty.discard(entry.address)
        self.deleted.add(str(entry.address))

    def _delete(self, entry: AddrEntry) -> None:
        table = self._tried if entry.tried else self._new
        if entry.bucket >= 0:
            table.take(entry)
        self._unindex(entry)
