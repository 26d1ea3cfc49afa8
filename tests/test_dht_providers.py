"""The provider store (expiry from the record, replicas never extend it, caps per key, per source
and in all, sweep) and the republish schedule of the local node's own records."""

from __future__ import annotations

import random

import pytest

from discovery import ProviderStore, ProviderStoreConfig, RepublishSchedule, StoreOutcome
from overlay.errors import ConfigError, LocalProtocolError

KEY = b"k" * 20
OTHER_KEY = b"o" * 20


def pid(i: int) -> bytes:
    return i.to_bytes(20, "big")


def test_replicas_never_extend_expiry_and_only_a_higher_seq_replaces() -> None:
    store: ProviderStore[str] = ProviderStore()
    put = store.put
    assert put(KEY, pid(1), "v1", seq=1, expires_at=100.0, source=pid(1), now=0.0) is (
        StoreOutcome.ADDED
    )
    # The same record stored again by a replica (even claiming a later expiry) changes nothing.
    assert put(KEY, pid(1), "v1", seq=1, expires_at=500.0, source=pid(9), now=50.0) is (
        StoreOutcome.DUPLICATE
    )
    assert put(KEY, pid(1), "v0", seq=0, expires_at=900.0, source=pid(9), now=50.0) is (
        StoreOutcome.STALE
    )
    (entry,) = store.get(KEY, 60.0)
    assert (entry.payload, entry.expires_at, entry.source) == ("v1", 100.0, pid(1))
    assert put(KEY, pid(1), "v2", seq=2, expires_at=300.0, source=pid(1), now=60.0) is (
        StoreOutcome.REPLACED
    )
    assert [e.payload for e in store.get(KEY, 200.0)] == ["v2"]
    assert store.get(KEY, 300.0) == []
    assert put(KEY, pid(2), "x", seq=1, expires_at=10.0, source=pid(2), now=10.0) is (
        StoreOutcome.EXPIRED
    )


def test_per_key_cap_keeps_the_freshest() -> None:
    store: ProviderStore[int] = ProviderStore(ProviderStoreConfig(max_per_key=3))
    for i, expiry in enumerate((50.0, 40.0, 60.0)):
        store.put(KEY, pid(i), i, seq=1, expires_at=expiry, source=pid(i), now=0.0)
    assert store.put(KEY, pid(7), 7, seq=1, expires_at=30.0, source=pid(7), now=0.0) is (
        StoreOutcome.KEY_FULL
    )
    assert store.put(KEY, pid(8), 8, seq=1, expires_at=70.0, source=pid(8), now=0.0) is (
        StoreOutcome.ADDED
    )
    assert [e.payload for e in store.get(KEY, 0.0)] == [8, 2, 0]  # freshest first
    assert [e.payload for e in store.get(KEY, 0.0, limit=1)] == [8]
    assert store.source_count(pid(1)) == 0  # its quota was freed


def test_per_source_and_global_caps() -> None:
    config = ProviderStoreConfig(max_per_source=2, max_total=4)
    store: ProviderStore[int] = ProviderStore(config)
    flooder = pid(66)
    assert [
        store.put(bytes([i]) * 20, pid(i), i, seq=1, expires_at=100.0, source=flooder, now=0.0)
        for i in range(3)
    ] == [StoreOutcome.ADDED, StoreOutcome.ADDED, StoreOutcome.SOURCE_FULL]
    store.put(KEY, pid(10), 10, seq=1, expires_at=50.0, source=pid(10), now=0.0)
    store.put(KEY, pid(11), 11, seq=1, expires_at=80.0, source=pid(11), now=0.0)
    assert len(store) == 4
    # Full: a record expiring later evicts the one expiring soonest; an earlier one is refused.
    assert store.put(KEY, pid(12), 12, seq=1, expires_at=40.0, source=pid(12), now=0.0) is (
        StoreOutcome.STORE_FULL
    )
    assert store.put(KEY, pid(13), 13, seq=1, expires_at=90.0, source=pid(13), now=0.0) is (
        StoreOutcome.ADDED
    )
    assert len(store) == 4
    assert [e.payload for e in store.get(KEY, 0.0)] == [13, 11]


def test_sweep_removes_expired_entries_and_reports_the_next_expiry() -> None:
    store: ProviderStore[int] = ProviderStore()
    assert store.next_expiry() is None
    for i in range(5):
        store.put(KEY, pid(i), i, seq=1, expires_at=10.0 * (i + 1), source=pid(i), now=0.0)
    store.put(KEY, pid(0), 0, seq=2, expires_at=45.0, source=pid(0), now=1.0)  # renewed
    store.remove(KEY, pid(1))
    assert store.next_expiry() == 30.0
    assert store.sweep(35.0) == 1
    assert sorted(e.payload for e in store.get(KEY, 35.0)) == [0, 3, 4]
    assert store.sweep(100.0) == 3
    assert len(store) == 0 and store.keys() == [] and store.next_expiry() is None


def test_many_renewals_keep_one_entry_and_the_right_expiry() -> None:
    store: ProviderStore[int] = ProviderStore()
    for seq in range(1, 2000):  # enough to rebuild the expiry heap several times
        store.put(KEY, pid(1), seq, seq=seq, expires_at=1e6 + seq, source=pid(1), now=0.0)
    assert len(store) == 1 and store.source_count(pid(1)) == 1
    assert store.next_expiry() == 1e6 + 1999
    assert [e.seq for e in store.get(KEY, 0.0)] == [1999]
    assert store.sweep(1e6 + 1998) == 0


def test_republish_before_expiry_with_jitter() -> None:
    schedule = RepublishSchedule(interval=100.0, margin=20.0, jitter=0.1, rng=random.Random(1))
    at = schedule.published(KEY, expires_at=1000.0, now=0.0)
    assert 90.0 <= at <= 100.0
    # A record that expires sooner than the interval is republished `margin` before expiry.
    assert schedule.published(OTHER_KEY, expires_at=50.0, now=0.0) == 30.0
    assert schedule.next_due() == 30.0
    assert schedule.due(29.0) == [] and schedule.due(30.0) == [OTHER_KEY]
    assert schedule.due(at) == [KEY, OTHER_KEY]
    assert schedule.withdraw(OTHER_KEY) and OTHER_KEY not in schedule
    assert schedule.due(at) == [KEY] and len(schedule) == 1
    with pytest.raises(LocalProtocolError):
        schedule.published(KEY, expires_at=5.0, now=10.0)
    with pytest.raises(ConfigError):
        RepublishSchedule(interval=0.0, rng=random.Random(1))
    with pytest.raises(ConfigError, match="dht.max_per_key"):
        ProviderStoreConfig(max_per_key=0)
