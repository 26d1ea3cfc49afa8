"""The record store: newest seq per node, replays refused, expiry, bounds, capability index."""

from __future__ import annotations

import pytest

from discovery import (
    CapabilityInfo,
    OfferOutcome,
    RecordStore,
    RecordStoreConfig,
    SignedRecord,
    sign_record,
    verify_signed_record,
)
from overlay.errors import ConfigError
from overlay.identity import NodeKey

NET = "overlay-test"
T0 = 1_700_000_000
KEYS = [NodeKey.from_seed(bytes([i]) * 32) for i in range(1, 13)]


def rec(
    key: NodeKey, seq: int, *caps: str, expires: int = T0 + 3600, region: str = ""
) -> SignedRecord:
    signed = sign_record(
        key,
        network=NET,
        seq=seq,
        issued_at=T0,
        expires_at=expires,
        addresses=["127.0.0.1:7000"],
        capabilities={c: CapabilityInfo(1, {"region": region} if region else {}) for c in caps},
    )
    # What a driver hands the store: verified bytes from the wire.
    return verify_signed_record(signed.data, network=NET, now=T0)


def test_highest_seq_wins_and_replays_are_stale() -> None:
    store = RecordStore()
    a, b = KEYS[0], KEYS[1]
    assert store.offer(rec(a, 5, "kv"), T0, "peer-1").outcome is OfferOutcome.ACCEPTED
    old = store.get(a.node_id, T0)
    newer = rec(a, 7, "blob")
    result = store.offer(newer, T0 + 1, "peer-2")
    assert result.outcome is OfferOutcome.REPLACED and result.previous == old and result.stored
    # Replays of older or equal seq change nothing, whoever sends them.
    for seq in (5, 6, 7):
        replay = store.offer(rec(a, seq, "kv"), T0 + 2, "peer-3")
        assert replay.outcome is OfferOutcome.STALE and not replay.stored
    assert store.get(a.node_id, T0 + 2) == newer and store.seq(a.node_id) == 7
    assert store.source(a.node_id) == "peer-2"
    # The index follows the replacement.
    assert [s.node_id for s in store.candidates("blob", T0)] == [a.node_id]
    assert store.candidates("kv", T0) == []
    assert store.offer(rec(b, 1, "kv"), T0, "peer-1").outcome is OfferOutcome.ACCEPTED
    assert store.capabilities() == {"blob": 1, "kv": 1} and len(store) == 2


def test_expiry_sweep_and_lookups_never_return_expired_records() -> None:
    store = RecordStore()
    short, long = rec(KEYS[0], 1, "kv", expires=T0 + 100), rec(KEYS[1], 1, "kv")
    store.offer(short, T0, "s")
    store.offer(long, T0, "s")
    assert store.next_expiry() == T0 + 100
    assert store.expire(T0 + 99) == [] and len(store) == 2
    # Past expiry but before a sweep: invisible to lookups already.
    assert store.get(short.node_id, T0 + 100) is None
    assert [s.node_id for s in store.candidates("kv", T0 + 100)] == [long.node_id]
    assert store.records(T0 + 100) == [long]
    assert store.expire(T0 + 100) == [short.node_id]
    assert short.node_id not in store and store.next_expiry() == T0 + 3600
    assert store.offer(rec(KEYS[2], 1, expires=T0 + 5), T0 + 5, "s").outcome is (
        OfferOutcome.EXPIRED
    )
    # An expired stored record is replaced even by a lower seq (it no longer exists).
    store.offer(rec(KEYS[3], 9, expires=T0 + 10), T0, "s")
    assert store.offer(rec(KEYS[3], 2), T0 + 20, "s").outcome is OfferOutcome.ACCEPTED
    assert store.expire(T0 + 3600) and len(store) == 0 and store.next_expiry() is None


def test_removed_records_leave_no_stale_expiry() -> None:
    store = RecordStore()
    a = rec(KEYS[0], 1, "kv", expires=T0 + 50)
    store.offer(a, T0, "s")
    assert store.remove(a.node_id) == a and store.remove(a.node_id) is None
    assert store.next_expiry() is None and store.capabilities() == {}
    # Re-offered with a later expiry: the old heap item must not drop it early.
    store.offer(rec(KEYS[0], 2, "kv", expires=T0 + 500), T0, "s")
    assert store.expire(T0 + 60) == [] and store.next_expiry() == T0 + 500


def test_candidates_are_ordered_by_the_callers_key() -> None:
    store = RecordStore()
    regions = ["eu", "us", "ap", "eu"]
    for i, region in enumerate(regions):
        store.offer(rec(KEYS[i], 1, "kv", region=region), T0, f"s{i}")
    store.offer(rec(KEYS[4], 1, "blob"), T0, "s4")
    cost = {"ap": 0.0, "eu": 1.0, "us": 2.0}

    def by_region(record: object) -> float:
        return cost[record.capabilities["kv"].attributes["region"]]  # type: ignore[attr-defined]

    ordered = store.candidates("kv", T0, key=by_region)
    assert [s.record.capabilities["kv"].attributes["region"] for s in ordered] == [
        "ap",
        "eu",
        "eu",
        "us",
    ]
    eu = sorted([KEYS[0].node_id, KEYS[3].node_id])
    assert [s.node_id for s in ordered[1:3]] == eu  # ties broken by node id
    assert len(store.candidates("kv", T0, key=by_region, limit=2)) == 2
    excluded = store.candidates("kv", T0, exclude=[KEYS[2].node_id])
    assert KEYS[2].node_id not in {s.node_id for s in excluded} and len(excluded) == 3
    assert [s.node_id for s in store.candidates("kv", T0)] == sorted(
        k.node_id for k in KEYS[:4]
    )


def test_per_source_limit() -> None:
    store = RecordStore(RecordStoreConfig(max_records=100, max_per_source=2))
    assert store.offer(rec(KEYS[0], 1), T0, "flooder").outcome is OfferOutcome.ACCEPTED
    assert store.offer(rec(KEYS[1], 1), T0, "flooder").outcome is OfferOutcome.ACCEPTED
    assert store.offer(rec(KEYS[2], 1), T0, "flooder").outcome is OfferOutcome.SOURCE_LIMIT
    # Newer versions of nodes it already brought are still welcome.
    assert store.offer(rec(KEYS[0], 2), T0, "flooder").outcome is OfferOutcome.REPLACED
    assert store.offer(rec(KEYS[2], 1), T0, "other").outcome is OfferOutcome.ACCEPTED


def test_full_store_evicts_from_the_largest_source() -> None:
    store = RecordStore(RecordStoreConfig(max_records=4, max_per_source=10))
    # One record learned from a connected peer's handshake, three from a PEX flooder.
    store.offer(rec(KEYS[0], 1, expires=T0 + 100), T0, KEYS[0].node_id)
    for i, expires in ((1, T0 + 300), (2, T0 + 200), (3, T0 + 400)):
        store.offer(rec(KEYS[i], 1, expires=expires), T0, "flooder")
    result = store.offer(rec(KEYS[4], 1), T0, "flooder")
    # The flooder's soonest-expiring record goes, not the handshake record (which expires first).
    assert result.outcome is OfferOutcome.ACCEPTED and result.evicted == (KEYS[2].node_id,)
    assert KEYS[0].node_id in store and len(store) == 4
    # Expired records are swept before anything live is evicted.
    result = store.offer(rec(KEYS[5], 1), T0 + 150, "another")
    assert result.evicted == (KEYS[0].node_id,) and len(store) == 4


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        RecordStoreConfig(max_records=0)
    with pytest.raises(ConfigError):
        RecordStoreConfig(max_per_source=0)
