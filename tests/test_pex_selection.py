"""PEX: which records a responder hands out, the per-peer rate limit, and the asker's schedule."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery import (
    PexAsker,
    PexConfig,
    PexRequest,
    PexResponder,
    PexVerdict,
    RecordStore,
    SignedRecord,
    record_netgroup,
    sign_record,
)
from overlay.errors import ConfigError
from overlay.identity import NodeId, NodeKey

T0 = 1_700_000_000
KEYS = [NodeKey.from_seed(bytes([i]) * 32) for i in range(1, 41)]


def record(i: int, *caps: str, group: int | None = None, expires: int = T0 + 3600) -> SignedRecord:
    """Node ``i``'s record; ``group`` picks its /16 (default: its own)."""
    g = i if group is None else group
    return sign_record(
        KEYS[i], network="pex-test", seq=1, issued_at=T0, expires_at=expires,
        addresses=(f"10.{g}.0.{i + 1}:26656",), capabilities={c: 1 for c in caps},
    )


def store_of(records: list[SignedRecord]) -> RecordStore:
    store = RecordStore()
    for r in records:
        assert store.offer(r, T0, "test").stored
    return store


ASKER = KEYS[0].node_id


def test_answer_never_holds_private_peers_the_asker_or_expired_records() -> None:
    records = [record(i) for i in range(1, 30)] + [record(30, expires=T0 + 5)]
    store = store_of(records + [record(0)])
    private = {records[0].node_id, records[1].node_id}
    responder = PexResponder(rng=random.Random(1))
    answer = responder.handle(ASKER, PexRequest(max=64), store, now=T0 + 10, private=private)
    assert answer.verdict is PexVerdict.SERVED
    ids = {r.node_id for r in answer.records}
    assert len(answer.records) == 27  # records 1..29 less 2 private (30 expired, 0 asked)
    assert not ids & private
    assert ASKER not in ids
    assert records[-1].node_id not in ids  # expired at T0 + 5


def test_answer_is_capped_by_request_and_config() -> None:
    store = store_of([record(i) for i in range(1, 40)])
    responder = PexResponder(PexConfig(max_per_response=10, burst=10), rng=random.Random(2))
    assert len(responder.handle(ASKER, PexRequest(max=64), store, now=T0).records) == 10
    assert len(responder.handle(ASKER, PexRequest(max=3), store, now=T0).records) == 3
    assert responder.handle(ASKER, PexRequest(max=0), store, now=T0).records == ()


def test_rate_limit_is_a_token_bucket_per_peer() -> None:
    store = store_of([record(i) for i in range(1, 5)])
    responder = PexResponder(PexConfig(burst=2, rate=0.1), rng=random.Random(3))
    other = KEYS[39].node_id
    verdicts = [responder.handle(ASKER, PexRequest(max=4), store, now=T0).verdict
                for _ in range(3)]
    assert verdicts == [PexVerdict.SERVED, PexVerdict.SERVED, PexVerdict.RATE_LIMITED]
    assert responder.handle(other, PexRequest(max=4), store, now=T0).verdict is PexVerdict.SERVED
    assert not responder.allow(ASKER, T0 + 9.9)  # 0.99 tokens
    assert responder.allow(ASKER, T0 + 10.0)
    responder.forget(ASKER)
    assert responder.allow(ASKER, T0 + 10.0)  # full bucket again


def test_diversity_one_record_per_netgroup_before_any_repeats() -> None:
    # 30 records in 3 netgroups of 10, plus 5 records alone in their own netgroups.
    records = [record(i, group=100 + i % 3) for i in range(1, 31)]
    records += [record(i) for i in range(31, 36)]
    store = store_of(records)
    for seed in range(20):
        responder = PexResponder(rng=random.Random(seed))
        answer = responder.handle(ASKER, PexRequest(max=8), store, now=T0).records
        groups = Counter(record_netgroup(r.record) for r in answer)
        assert len(groups) == 8 and max(groups.values()) == 1


def test_wanted_capabilities_are_favoured() -> None:
    records = [record(i, "archive") if i % 10 == 0 else record(i) for i in range(1, 40)]
    store = store_of(records)
    with_archive = 0
    without = 0
    for seed in range(200):
        responder = PexResponder(rng=random.Random(seed))
        want = responder.handle(ASKER, PexRequest(4, ("archive",)), store, now=T0).records
        plain = responder.handle(KEYS[39].node_id, PexRequest(4), store, now=T0).records
        with_archive += sum(r.record.has("archive") for r in want)
        without += sum(r.record.has("archive") for r in plain)
    # 3 of 38 records serve archive: a plain answer of 4 holds ~0.3, a wanted one far more.
    assert with_archive > 3 * without
    assert with_archive / 200 > 0.9  # weight 5 against 1: about a third of the answer


def test_recent_successes_are_favoured() -> None:
    records = [record(i) for i in range(1, 40)]
    store = store_of(records)
    good = {r.node_id: float(T0) for r in records[:5]}
    old = {r.node_id: float(T0 - 10_000) for r in records[:5]}
    hits_good = hits_old = 0
    for seed in range(200):
        answer = PexResponder(rng=random.Random(seed)).handle(
            ASKER, PexRequest(4), store, now=T0, successes=good).records
        hits_good += sum(r.node_id in good for r in answer)
        answer = PexResponder(rng=random.Random(seed)).handle(
            ASKER, PexRequest(4), store, now=T0, successes=old).records
        hits_old += sum(r.node_id in old for r in answer)
    assert hits_good > 1.8 * hits_old


@settings(max_examples=60, deadline=None)
@given(
    caps=st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=1, max_size=39),
    groups=st.lists(st.integers(1, 5), min_size=39, max_size=39),
    private=st.sets(st.integers(1, 39), max_size=10),
    wanted=st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True),
    limit=st.integers(0, 64),
    seed=st.integers(0, 2**32),
)
def test_selection_properties(
    caps: list[str], groups: list[int], private: set[int], wanted: list[str], limit: int,
    seed: int,
) -> None:
    records = [
        record(i, *([c] if c else []), group=groups[i - 1]) for i, c in enumerate(caps, start=1)
    ]
    private_ids = {KEYS[i].node_id for i in private}
    request = PexRequest(limit, tuple(wanted))

    def run() -> tuple[SignedRecord, ...]:
        return PexResponder(rng=random.Random(seed)).select(
            records, request, asker=ASKER, now=T0, private=private_ids)

    answer = run()
    assert answer == run()  # deterministic for one seed
    eligible = [r for r in records if r.node_id not in private_ids]
    assert len(answer) == min(limit, 32, len(eligible))
    assert len({r.node_id for r in answer}) == len(answer)
    assert not {r.node_id for r in answer} & private_ids
    # diversity: a netgroup appears twice only once every eligible netgroup appears once
    counts = Counter(record_netgroup(r.record) for r in answer)
    all_groups = {record_netgroup(r.record) for r in eligible}
    if counts and max(counts.values()) > 1:
        assert set(counts) == all_groups


def test_asker_interval_adapts_to_the_address_book() -> None:
    cfg = PexConfig(min_interval=5, max_interval=120, thin_below=32, full_at=256, jitter=0.1)
    asker = PexAsker(cfg, rng=random.Random(4))
    thin = [asker.interval(5) for _ in range(50)]
    mid = [asker.interval(90) for _ in range(50)]
    full = [asker.interval(1000) for _ in range(50)]
    assert all(4.5 <= x <= 5.5 for x in thin)
    assert all(108 <= x <= 132 for x in full)
    assert max(thin) < min(mid) and max(mid) < min(full)


def test_asker_rotates_peers_and_names_deficits() -> None:
    asker = PexAsker(PexConfig(max_wanted=2), rng=random.Random(5))
    peers = [k.node_id for k in KEYS[1:5]]
    asked: list[NodeId] = []
    for step in range(8):
        plan = asker.plan(T0 + step, peers, known=10, deficits={"a": 1, "b": 3, "c": 0, "d": 1})
        assert plan.peer is not None
        asked.append(plan.peer)
        assert plan.request.wanted_capabilities == ("b", "a")
        assert plan.next_at > T0 + step
    assert sorted(asked[:4]) == sorted(peers) and sorted(asked[4:]) == sorted(peers)
    assert asker.plan(T0, [], known=0, deficits={}).peer is None
    asker.forget(peers[0])
    assert asker.choose_peer(peers) == peers[0]  # forgotten: never asked again


def test_asker_is_deterministic_for_a_seed() -> None:
    peers = [k.node_id for k in KEYS[1:10]]

    def run(seed: int) -> list[tuple[NodeId | None, float]]:
        asker = PexAsker(rng=random.Random(seed))
        out = []
        for step in range(20):
            plan = asker.plan(T0 + step, peers, known=step * 10, deficits={})
            out.append((plan.peer, plan.next_at))
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_per_response": 0}, {"max_per_response": 65}, {"burst": 0.5}, {"rate": 0},
     {"min_interval": 10, "max_interval": 5}, {"thin_below": 300}, {"jitter": 1.0},
     {"max_wanted": 33}, {"rate": float("nan")}],
)
def test_config_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PexConfig(**kwargs)  # type: ignore[arg-type]
