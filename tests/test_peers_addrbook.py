"""The anti-eclipse address book: placement, bounds, collisions, selection, restore."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers import AddressBook, PeerManagerConfig
from overlay.peers._addrbook import AddrEntry, placement_key
from overlay.wire._netgroup import address_netgroup

SECRET = b"k" * 32
DAY = 86400.0


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def addr(i: int, host: str, port: int = 7000) -> NodeAddress:
    return NodeAddress(nid(i), "tcp", host, port)


def book(
    config: PeerManagerConfig | None = None, secret: bytes = SECRET, seed: int = 1
) -> AddressBook:
    return AddressBook(config or PeerManagerConfig(), secret, random.Random(seed))


def check_invariants(b: AddressBook) -> None:
    entries = list(b.entries())
    assert len(entries) == len(b) == b.new_count + b.tried_count
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys)), "one entry per host:port"
    for e in entries:
        if e.tried:
            assert e.bucket == b.tried_bucket(e.key, e.group)
            assert e.position == b.position("tried", e.bucket, e.key)
        else:
            assert e.bucket == b.new_bucket(e.group, e.source_group)
            assert e.position == b.position("new", e.bucket, e.key)
    sources: dict[str, int] = {}
    for e in entries:
        sources[e.source] = sources.get(e.source, 0) + 1
    for source, count in sources.items():
        assert b.source_count(source) == count


def test_placement_is_keyed_and_stable() -> None:
    a, b2, other = book(), book(seed=99), book(secret=b"x" * 32)
    groups = [f"v4:10.{i}" for i in range(200)]
    # Same secret: same buckets whatever the rng; another secret: a different layout.
    assert [a.new_bucket(g, "v4:1.2") for g in groups] == [
        b2.new_bucket(g, "v4:1.2") for g in groups
    ]
    assert [a.new_bucket(g, "v4:1.2") for g in groups] != [
        other.new_bucket(g, "v4:1.2") for g in groups
    ]


def test_one_source_group_reaches_at_most_its_share_of_new_buckets() -> None:
    b = book()
    buckets = {b.new_bucket(f"v4:{i // 256}.{i % 256}", "v4:66.6") for i in range(20000)}
    assert len(buckets) <= PeerManagerConfig().new_buckets_per_source_group
    assert len(buckets) >= 24  # and it does spread over (most of) them
    many_sources = {b.new_bucket("v4:10.0", f"v4:{i}.0") for i in range(2000)}
    assert len(many_sources) > 200


def test_one_group_reaches_at_most_its_share_of_tried_buckets() -> None:
    b = book()
    buckets = {b.tried_bucket(f"10.0.{i // 256}.{i % 256}:7000", "v4:10.0") for i in range(5000)}
    assert len(buckets) <= PeerManagerConfig().tried_buckets_per_group


def test_add_refreshes_and_dedupes_by_host_port() -> None:
    b = book()
    a1 = addr(1, "10.1.0.1")
    assert b.add(a1, source="seed", source_group="local:seed", now=100.0)
    assert b.add(a1, source="seed", source_group="local:seed", now=200.0)
    entry = b.get(a1)
    assert entry is not None and entry.last_seen == 200.0 and len(b) == 1
    # Another node id claiming the same host:port is not kept while the first is fine...
    impostor = addr(2, "10.1.0.1")
    assert not b.add(impostor, source="seed", source_group="local:seed", now=300.0)
    # ...but replaces it once the first is terrible (3 failed attempts, never connected).
    for t in (400.0, 500.0, 600.0):
        b.attempt(a1, t)
    assert b.add(impostor, source="seed", source_group="local:seed", now=700.0)
    assert a1 not in b and impostor in b
    assert str(a1) in b.deleted
    check_invariants(b)


def test_per_source_cap() -> None:
    b = book(PeerManagerConfig(max_addresses_per_source=10))
    src = str(nid(77))
    kept = sum(
        b.add(addr(i, f"10.{i}.0.1"), source=src, source_group="v4:1.1", now=1.0)
        for i in range(1, 50)
    )
    assert kept == 10 == b.source_count(src)
    # Local sources are not capped.
    assert b.add(
        addr(99, "11.0.0.1"),
        source="operator",
        source_group="local:operator",
        now=1.0,
        limit_source=False,
    )


def test_new_collision_keeps_the_occupant() -> None:
    config = PeerManagerConfig(new_bucket_count=1, new_buckets_per_source_group=1, bucket_size=1)
    b = book(config)
    first, second = addr(1, "10.1.0.1"), addr(2, "10.2.0.1")
    assert b.add(first, source="seed", source_group="local:seed", now=1.0)
    assert not b.add(second, source="seed", source_group="local:seed", now=2.0)
    assert first in b and second not in b
    # An occupant not seen for 30 days is terrible and gets replaced.
    assert b.add(second, source="seed", source_group="local:seed", now=1.0 + 31 * DAY)
    assert first not in b and second in b
    check_invariants(b)


def test_good_moves_to_tried_and_resets_attempts() -> None:
    b = book()
    a1 = addr(1, "10.1.0.1")
    b.add(a1, source="seed", source_group="local:seed", now=1.0)
    b.attempt(a1, 2.0)
    assert b.good(a1, 3.0)
    entry = b.get(a1)
    assert entry is not None and entry.tried and entry.attempts == 0 and entry.last_success == 3.0
    assert b.tried_count == 1 and b.new_count == 0
    check_invariants(b)


def _colliding_pair(b: AddressBook) -> tuple[NodeAddress, NodeAddress]:
    """Two addresses (different netgroups) that want the same tried slot."""
    seen: dict[tuple[int, int], NodeAddress] = {}
    for i in range(1, 100000):
        a = addr(i, f"10.{i % 250}.{i // 250}.1")
        key = placement_key(a)
        bucket = b.tried_bucket(key, address_netgroup(a))
        slot = (bucket, b.position("tried", bucket, key))
        if slot in seen and address_netgroup(seen[slot]) != address_netgroup(a):
            return seen[slot], a
        seen.setdefault(slot, a)
    raise AssertionError("no collision found")


def _collision_setup(now: float) -> tuple[AddressBook, NodeAddress, NodeAddress]:
    b = book(PeerManagerConfig(tried_bucket_count=4, bucket_size=2, tried_buckets_per_group=2))
    old, new = _colliding_pair(b)
    b.add(old, source="seed", source_group="local:seed", now=now)
    assert b.good(old, now)
    b.add(new, source="seed", source_group="local:seed", now=now)
    return b, old, new


def test_test_before_evict_keeps_a_recently_good_occupant() -> None:
    b, old, new = _collision_setup(1000.0)
    assert not b.good(new, 2000.0)  # collision queued, not moved
    assert b.collision_count == 1
    tested = b.collision_to_test()
    assert tested is not None and tested.address == old
    b.resolve_collisions(2001.0)  # old succeeded < 4 h ago: it stays
    assert b.collision_count == 0
    old_entry, new_entry = b.get(old), b.get(new)
    assert old_entry is not None and old_entry.tried
    assert new_entry is not None and not new_entry.tried
    check_invariants(b)


def test_test_before_evict_replaces_an_occupant_that_fails_the_feeler() -> None:
    b, old, new = _collision_setup(1000.0)
    later = 1000.0 + 5 * 3600  # old's last success is now more than 4 h ago
    assert not b.good(new, later)
    b.attempt(old, later + 1)  # the feeler to old fails
    b.resolve_collisions(later + 30)  # within the 60 s grace: undecided
    assert b.collision_count == 1
    b.resolve_collisions(later + 62)
    assert b.collision_count == 0
    old_entry, new_entry = b.get(old), b.get(new)
    assert new_entry is not None and new_entry.tried
    assert old_entry is not None and not old_entry.tried  # back to "new", not forgotten
    check_invariants(b)


def test_unresolved_collision_times_out() -> None:
    b, old, new = _collision_setup(1000.0)
    later = 1000.0 + 5 * 3600
    assert not b.good(new, later)
    b.resolve_collisions(later + 39 * 60)
    assert b.collision_count == 1
    b.resolve_collisions(later + 41 * 60)
    new_entry = b.get(new)
    assert new_entry is not None and new_entry.tried
    check_invariants(b)


def test_select_honours_filter_and_tables() -> None:
    b = book()
    assert b.select(0.0) is None
    for i in range(1, 40):
        b.add(addr(i, f"10.{i}.0.1"), source="seed", source_group="local:seed", now=0.0)
    for i in range(1, 5):
        b.good(addr(i, f"10.{i}.0.1"), 1.0)
    wanted = {addr(7, "10.7.0.1"), addr(9, "10.9.0.1")}
    for _ in range(50):
        e = b.select(10_000.0, lambda entry: entry.address in wanted)
        assert e is not None and e.address in wanted
        t = b.select(10_000.0, table="tried")
        assert t is not None and t.tried
        n = b.select(10_000.0, table="new")
        assert n is not None and not n.tried
    assert b.select(10_000.0, lambda entry: False) is None


def test_recently_tried_entries_are_rarely_selected() -> None:
    b = book()
    fresh, tried = addr(1, "10.1.0.1"), addr(2, "10.2.0.1")
    for a in (fresh, tried):
        b.add(a, source="seed", source_group="local:seed", now=0.0)
    for t in (1.0, 2.0):
        b.attempt(tried, 1000.0 + t)
    picks = [b.select(1005.0, max_probes=1, exhaustive=False) for _ in range(2000)]
    fresh_count = sum(1 for p in picks if p is not None and p.address == fresh)
    tried_count = sum(1 for p in picks if p is not None and p.address == tried)
    assert fresh_count > 500
    assert tried_count < 20


def test_restore_reproduces_placement() -> None:
    b = book()
    for i in range(1, 300):
        b.add(
            addr(i, f"10.{i % 200}.{i // 200}.1"),
            source=str(nid(1000 + i % 7)),
            source_group=f"v4:1.{i % 7}",
            now=float(i),
        )
    for i in range(1, 300, 3):
        b.good(addr(i, f"10.{i % 200}.{i // 200}.1"), 500.0)
    stored = [e.stored() for e in b.entries()]
    again = book(seed=5)
    assert again.restore(stored) == 0
    check_invariants(again)
    placement = {(e.address, e.tried, e.bucket, e.position) for e in b.entries()}
    assert {(e.address, e.tried, e.bucket, e.position) for e in again.entries()} == placement


def test_restore_skips_garbage() -> None:
    b = book()
    b.add(addr(1, "10.1.0.1"), source="seed", source_group="local:seed", now=1.0)
    rows = [e.stored() for e in b.entries()]
    from dataclasses import replace

    rows.append(replace(rows[0], address="not an address"))
    rows.append(replace(rows[0]))  # duplicate
    again = book()
    assert again.restore(rows) == 2
    assert len(again) == 1


def test_tried_eviction_without_test_sends_the_occupant_back_to_new() -> None:
    b, old, new = _collision_setup(1000.0)
    assert b.good(new, 2000.0, test_before_evict=False)
    old_entry = b.get(old)
    assert old_entry is not None and not old_entry.tried
    check_invariants(b)


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "attempt", "good", "remove", "resolve", "select"]),
        st.integers(0, 60),
        st.integers(0, 5),
        st.floats(0, 10 * DAY),
    ),
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_random_operations_keep_the_tables_consistent(
    sequence: list[tuple[str, int, int, float]],
) -> None:
    config = PeerManagerConfig(
        new_bucket_count=8,
        tried_bucket_count=4,
        bucket_size=4,
        new_buckets_per_source_group=2,
        tried_buckets_per_group=2,
        max_addresses_per_source=6,
        max_tried_collisions=3,
    )
    b = book(config)
    now = 0.0
    for op, i, src, dt in sequence:
        now += dt / 100
        a = addr(i + 1, f"10.{i % 9}.{i % 4}.1", 7000 + i % 2)
        if op == "add":
            b.add(a, source=str(nid(500 + src)), source_group=f"v4:9.{src}", now=now)
        elif op == "attempt":
            b.attempt(a, now)
        elif op == "good":
            b.good(a, now)
        elif op == "remove":
            b.remove(a)
        elif op == "resolve":
            b.resolve_collisions(now)
        else:
            picked = b.select(now)
            assert picked is None or isinstance(picked, AddrEntry)
        check_invariants(b)
        assert b.collision_count <= 3
        assert all(b.source_count(str(nid(500 + s))) <= 6 for s in range(6))
