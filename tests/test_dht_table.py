"""The DHT routing table: k-buckets, verified vs unverified contacts, staleness, the replacement
cache, netgroup diversity, exact ``closest`` (property-tested against brute force), refresh."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery import AddOutcome, RoutingTable, TableConfig, bucket_index, xor_distance
from overlay.errors import ConfigError, LocalProtocolError

LOCAL = bytes(20)


def in_bucket(index: int, n: int, *, seed: int = 0) -> list[bytes]:
    """``n`` distinct ids in bucket ``index`` of LOCAL."""
    rng = random.Random(seed)
    out: set[bytes] = set()
    while len(out) < n:
        low = rng.getrandbits(index) if index else 0
        out.add(((1 << index) | low).to_bytes(20, "big"))
    return sorted(out)


def brute_closest(ids: list[bytes], target: bytes, n: int) -> list[bytes]:
    return sorted(ids, key=lambda i: xor_distance(i, target))[:n]


ids_strategy = st.lists(st.binary(min_size=20, max_size=20), max_size=120, unique=True)


@settings(max_examples=60, deadline=None)
@given(ids=ids_strategy, target=st.binary(min_size=20, max_size=20), n=st.integers(0, 40))
def test_closest_matches_brute_force(ids: list[bytes], target: bytes, n: int) -> None:
    local = ids[0] if ids else LOCAL
    table = RoutingTable(local, TableConfig(k=4), now=0.0)
    for node_id in ids:
        table.add(node_id, None, verified=True, now=0.0)
    present = [c.node_id for c in table.contacts()]
    assert table.closest(target, n) == brute_closest(present, target, n)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 30))
def test_closest_matches_brute_force_in_a_dense_table(seed: int, n: int) -> None:
    rng = random.Random(seed)
    local = rng.randbytes(20)
    table = RoutingTable(local, TableConfig(k=20), now=0.0)
    # Ids sharing long prefixes with the local id fill many buckets, not only the far ones.
    lnum = int.from_bytes(local, "big")
    for _ in range(400):
        bits = rng.randrange(160)
        other = (lnum ^ (1 << bits) ^ rng.getrandbits(bits)) if bits else lnum ^ 1
        table.add(other.to_bytes(20, "big"), None, verified=rng.random() < 0.8, now=0.0)
    target = (lnum ^ rng.getrandbits(rng.randrange(1, 161))).to_bytes(20, "big")
    present = [c.node_id for c in table.contacts()]
    verified = [c.node_id for c in table.contacts() if c.verified]
    assert table.closest(target, n) == brute_closest(present, target, n)
    assert table.closest(target, n, verified_only=True) == brute_closest(verified, target, n)


def test_buckets_hold_k_and_never_the_local_id() -> None:
    table = RoutingTable(LOCAL, TableConfig(k=3), now=0.0)
    assert table.add(LOCAL, None, verified=True, now=0.0) is AddOutcome.REJECTED_SELF
    ids = in_bucket(100, 5)
    outcomes = [table.add(i, None, verified=True, now=0.0) for i in ids]
    assert outcomes == [AddOutcome.ADDED] * 3 + [AddOutcome.CACHED] * 2
    assert table.bucket_sizes() == {100: 3}
    assert table.replacements(100) == ids[3:]
    assert all(bucket_index(LOCAL, i) == 100 for i in ids)


def test_unverified_never_displace_verified_but_verified_displace_unverified() -> None:
    table = RoutingTable(LOCAL, TableConfig(k=2), now=0.0)
    a, b, c, d = in_bucket(50, 4)
    table.add(a, None, verified=True, now=0.0)
    table.add(b, None, verified=False, now=0.0)
    assert table.add(c, None, verified=False, now=0.0) is AddOutcome.CACHED
    assert c not in table
    assert table.add(d, None, verified=True, now=0.0) is AddOutcome.DISPLACED
    assert a in table and d in table and b not in table


def test_a_contact_is_verified_when_reached_and_touch_moves_it_to_the_lru_tail() -> None:
    table = RoutingTable(LOCAL, TableConfig(k=3), now=0.0)
    a, b, c = in_bucket(70, 3)
    table.add(a, None, verified=False, now=0.0)
    table.add(b, None, verified=True, now=0.0)
    table.add(c, None, verified=True, now=0.0)
    assert table.add(a, None, verified=True, now=5.0) is AddOutcome.PROMOTED
    assert table.on_success(b, 6.0)
    assert [x.node_id for x in table.contacts()] == [c, a, b]
    info = table.get(b)
    assert info is not None and info.verified and info.last_seen == 6.0
    # Hearsay about a known contact changes nothing.
    assert table.add(c, None, verified=False, now=7.0) is AddOutcome.UPDATED
    assert [x.node_id for x in table.contacts()] == [c, a, b]


def test_stale_after_n_failures_then_replaced_from_the_cache() -> None:
    table = RoutingTable(LOCAL, TableConfig(k=2, stale_after_failures=3), now=0.0)
    a, b, c = in_bucket(90, 3)
    table.add(a, None, verified=True, now=0.0)
    table.add(b, None, verified=True, now=0.0)
    assert [table.on_failure(a), table.on_failure(a)] == [False, False]
    assert table.on_success(a, 1.0)  # a success resets the count
    assert [table.on_failure(a), table.on_failure(a), table.on_failure(a)] == [False, False, True]
    # Stale with no replacement: kept, but not handed out.
    info = table.get(a)
    assert info is not None and info.stale
    assert table.closest(a, 5) == [b]
    # A verified newcomer takes the stale entry's place.
    assert table.add(c, None, verified=True, now=2.0) is AddOutcome.DISPLACED
    assert a not in table and c in table


def test_a_failing_contact_is_replaced_by_the_freshest_cached_one() -> None:
    table = RoutingTable(LOCAL, TableConfig(k=1, stale_after_failures=2), now=0.0)
    a, b, c = in_bucket(30, 3)
    table.add(a, None, verified=True, now=0.0)
    table.add(b, None, verified=True, now=0.0)
    table.add(c, None, verified=False, now=0.0)
    assert table.replacements(30) == [b, c]
    table.on_failure(a)
    assert table.on_failure(a)
    assert [x.node_id for x in table.contacts()] == [b]  # verified replacements first
    assert table.replacements(30) == [c]


def test_unverified_contacts_leave_at_their_first_failure() -> None:
    table = RoutingTable(LOCAL, now=0.0)
    (a,) = in_bucket(10, 1)
    table.add(a, None, verified=False, now=0.0)
    assert table.on_failure(a)
    assert a not in table and len(table) == 0


def test_replacement_cache_is_bounded_and_keeps_the_most_recent() -> None:
    table = RoutingTable(LOCAL, TableConfig(k=1, replacement_cache_size=3), now=0.0)
    ids = in_bucket(120, 7)
    for i in ids:
        table.add(i, None, verified=True, now=0.0)
    assert table.replacements(120) == ids[-3:]


def test_netgroup_diversity_per_bucket_and_per_table() -> None:
    table = RoutingTable(LOCAL, TableConfig(k=20), now=0.0)
    ids = in_bucket(150, 3)
    outcomes = [table.add(i, "10.0.0", verified=True, now=0.0) for i in ids]
    assert outcomes == [AddOutcome.ADDED, AddOutcome.ADDED, AddOutcome.REJECTED_DIVERSITY]
    # Up to 10 of one netgroup over the whole table (2 per bucket).
    for index in range(140, 150):
        for i in in_bucket(index, 2, seed=index):
            table.add(i, "10.0.0", verified=True, now=0.0)
    assert sum(1 for c in table.contacts() if c.netgroup == "10.0.0") == 10
    # None means exempt (e.g. a loopback testnet).
    assert all(
        table.add(i, None, verified=True, now=0.0) is AddOutcome.ADDED for i in in_bucket(130, 5)
    )
    # Removing one frees a slot of the table quota.
    first = next(c.node_id for c in table.contacts() if c.netgroup == "10.0.0")
    assert table.remove(first)
    (extra,) = in_bucket(20, 1)
    assert table.add(extra, "10.0.0", verified=True, now=0.0) is AddOutcome.ADDED


def test_refresh_due_times_and_targets() -> None:
    table = RoutingTable(LOCAL, TableConfig(refresh_interval=100.0), now=0.0)
    assert table.next_refresh(0.0) is None  # empty table
    for index in (157, 158, 159):
        for i in in_bucket(index, 2, seed=index):
            table.add(i, None, verified=True, now=0.0)
    assert table.next_refresh(0.0) == 100.0
    assert table.refresh_due(99.0) == []
    assert table.refresh_due(100.0) == [159, 158, 157, 156]
    rng = random.Random(3)
    target = table.refresh_target(158, rng)
    assert bucket_index(LOCAL, target) == 158
    table.mark_lookup(target, 150.0)
    assert 158 not in table.refresh_due(200.0)
    assert table.next_refresh(200.0) == 100.0
    for index in (159, 157, 156):
        table.mark_lookup(table.refresh_target(index, rng), 160.0)
    assert table.next_refresh(200.0) == 250.0
    with pytest.raises(LocalProtocolError):
        table.refresh_target(160, rng)


def test_bad_ids_and_configs_are_refused_with_clear_errors() -> None:
    with pytest.raises(LocalProtocolError, match="20 bytes"):
        RoutingTable(b"short", now=0.0)
    table = RoutingTable(LOCAL, now=0.0)
    with pytest.raises(LocalProtocolError, match="20 bytes"):
        table.add(b"x" * 21, None, verified=True, now=0.0)
    with pytest.raises(LocalProtocolError):
        table.closest(b"", 3)
    assert b"x" not in table
    with pytest.raises(ConfigError, match="dht.k"):
        TableConfig(k=0)
    with pytest.raises(ConfigError, match="max_per_netgroup_table"):
        TableConfig(max_per_netgroup_bucket=5, max_per_netgroup_table=4)
