"""The lookup state machine, scripted step by step: alpha-parallel queries without rounds,
termination, timeouts and the retry policy, cancel safety, providers streamed and early stop,
disjoint paths, and liars (the far-contacts rule, too many contacts, driver-reported forgeries)."""

from __future__ import annotations

import pytest

from discovery import (
    Lookup,
    LookupConfig,
    LookupDone,
    LookupEvent,
    LookupMode,
    LookupOutcome,
    Misbehaved,
    Misbehaviour,
    ProviderFound,
    Query,
)
from overlay.errors import ConfigError, LocalProtocolError

TARGET = bytes(20)
LOCAL = b"\xff" * 20


def nid(distance: int) -> bytes:
    """The id at ``distance`` from TARGET."""
    return distance.to_bytes(20, "big")


def queries(events: list[LookupEvent[str]]) -> list[bytes]:
    return [e.peer for e in events if isinstance(e, Query)]


def done(events: list[LookupEvent[str]]) -> LookupDone:
    (event,) = [e for e in events if isinstance(e, LookupDone)]
    return event


def make(
    seeds: list[int],
    *,
    k: int = 3,
    alpha: int = 2,
    mode: LookupMode = LookupMode.FIND_NODE,
    paths: int | None = None,
    want: int | None = None,
    retries: int = 1,
) -> Lookup[str]:
    config = LookupConfig(k=k, alpha=alpha, query_timeout=1.0, retries=retries)
    return Lookup(
        TARGET,
        mode,
        [nid(s) for s in seeds],
        local_id=LOCAL,
        config=config,
        want=want,
        paths=paths,
    )


def test_alpha_queries_in_flight_and_a_new_one_as_soon_as_one_returns() -> None:
    lookup = make([50, 60, 70, 80], k=3, alpha=2)
    assert queries(lookup.start(0.0)) == [nid(50), nid(60)]
    assert lookup.next_deadline() == 1.0
    # 60 answers with nearer nodes: the nearest new one goes out at once, no waiting for 50.
    events = lookup.on_response(nid(60), [nid(10), nid(20)], now=0.1)
    assert queries(events) == [nid(10)]
    assert set(lookup.pending()) == {nid(50), nid(10)}
    assert lookup.rounds == 2 and lookup.messages == 3


def test_find_node_ends_when_the_k_nearest_have_answered() -> None:
    lookup = make([50, 60, 70, 80], k=2, alpha=2)
    lookup.start(0.0)
    assert queries(lookup.on_response(nid(60), [nid(10)], now=0.1)) == [nid(10)]
    assert queries(lookup.on_response(nid(10), [nid(60), LOCAL], now=0.2)) == []
    # The 2 nearest live candidates are 10 (answered) and 50 (pending).
    events = lookup.on_response(nid(50), [nid(10)], now=0.3)
    result = done(events).result
    assert result.outcome is LookupOutcome.COMPLETED
    assert result.closest == (nid(10), nid(50))
    assert (result.messages, result.responses, result.rounds) == (3, 3, 2)
    assert lookup.pending() == () and lookup.next_deadline() is None
    # Inputs after the end are ignored.
    assert lookup.on_response(nid(70), [], now=0.4) == []
    assert lookup.on_timer(10.0) == []


def test_a_timed_out_query_is_retried_once_then_failed_and_late_answers_count() -> None:
    lookup = make([50, 60], k=2, alpha=1, retries=1)
    assert queries(lookup.start(0.0)) == [nid(50)]
    assert lookup.on_timer(0.5) == []
    events = lookup.on_timer(1.0)
    assert [(e.peer, e.attempt) for e in events if isinstance(e, Query)] == [(nid(50), 2)]
    events = lookup.on_timer(2.0)  # the retry timed out too: 50 failed, 60 is next
    assert queries(events) == [nid(60)]
    events = lookup.on_response(nid(60), [nid(55)], now=2.1)
    assert queries(events) == [nid(55)]
    # 50's first answer arrives late: still used.
    assert not [
        e for e in lookup.on_response(nid(50), [nid(55)], now=2.2) if isinstance(e, Misbehaved)
    ]
    result = done(lookup.on_response(nid(55), [nid(50)], now=2.3)).result
    assert result.closest == (nid(50), nid(55))
    assert result.timeouts == 2


def test_explicit_failures_are_not_retried() -> None:
    lookup = make([50], k=2, alpha=1)
    lookup.start(0.0)
    result = done(lookup.on_failure(nid(50), 0.1)).result
    assert result.outcome is LookupOutcome.COMPLETED
    assert result.closest == () and result.failures == 1 and result.messages == 1


def test_cancel_leaves_nothing_pending() -> None:
    lookup = make([50, 60, 70], alpha=3)
    assert len(lookup.start(0.0)) == 3
    result = done(lookup.cancel()).result
    assert result.outcome is LookupOutcome.CANCELLED
    assert lookup.finished and lookup.pending() == () and lookup.next_deadline() is None
    assert lookup.cancel() == []
    assert lookup.on_response(nid(50), [nid(1)], now=0.1) == []
    assert lookup.on_invalid(nid(60), Misbehaviour.FORGED_RECORD, 0.1) == []


def test_no_seeds_ends_at_once_and_start_is_once_only() -> None:
    lookup = make([])
    assert done(lookup.start(0.0)).result.closest == ()
    with pytest.raises(LocalProtocolError):
        lookup.start(0.0)


def test_providers_stream_deduplicated_and_want_stops_early() -> None:
    lookup = make([50, 60, 70], k=3, alpha=3, mode=LookupMode.GET_PROVIDERS, paths=1, want=2)
    assert len(lookup.start(0.0)) == 2  # narrow start: want=2 on one path
    events = lookup.on_response(nid(50), [nid(5)], [(b"p" * 20, "rec-p")], now=0.1)
    found = [e for e in events if isinstance(e, ProviderFound)]
    assert [(f.provider_id, f.payload, f.source, f.rounds) for f in found] == [
        (b"p" * 20, "rec-p", nid(50), 1)
    ]
    events = lookup.on_response(nid(60), [], [(b"p" * 20, "rec-p")], now=0.2)
    assert not [e for e in events if isinstance(e, ProviderFound)]
    events = lookup.on_response(nid(5), [nid(1)], [(b"q" * 20, "rec-q")], now=0.3)
    result = done(events).result
    assert result.outcome is LookupOutcome.ENOUGH_PROVIDERS
    assert result.providers == 2 and result.first_provider_rounds == 1
    assert result.first_provider_messages == 2
    assert lookup.pending() == ()


def test_a_lookup_wanting_one_provider_starts_with_one_query_per_path_then_widens() -> None:
    seeds = [50, 60, 70, 80, 90, 100, 110, 120]
    lookup = make(seeds, k=8, alpha=3, mode=LookupMode.GET_PROVIDERS, paths=2, want=1)
    sent = lookup.start(0.0)
    assert [(e.peer, e.path) for e in sent if isinstance(e, Query)] == [(nid(50), 0), (nid(60), 1)]
    # Path 0's first answer has no provider: path 0 widens to alpha, path 1 stays narrow.
    events = lookup.on_response(nid(50), [], now=0.1)
    assert [e.path for e in events if isinstance(e, Query)] == [0, 0, 0]
    # Path 1's first query times out: it widens too (the retry and two more).
    events = lookup.on_timer(1.05)
    assert [e.path for e in events if isinstance(e, Query)] == [1, 1, 1]
    # The nearest holder answers: the lookup ends at once, after 8 messages.
    events = lookup.on_response(nid(70), [nid(5)], [(b"p" * 20, "rec")], now=1.06)
    result = done(events).result
    assert result.outcome is LookupOutcome.ENOUGH_PROVIDERS and result.messages == 8
    assert lookup.pending() == ()


def test_a_lookup_wanting_one_provider_held_by_the_nearest_nodes_sends_one_per_path() -> None:
    lookup = make([50, 60, 70, 80], k=4, alpha=3, mode=LookupMode.GET_PROVIDERS, paths=2, want=1)
    assert len(lookup.start(0.0)) == 2
    result = done(lookup.on_response(nid(60), [], [(b"p" * 20, "rec")], now=0.1)).result
    assert result.messages == 2 and result.first_provider_messages == 2


def test_disjoint_paths_never_query_the_same_node() -> None:
    lookup = make([50, 60, 70, 80], k=2, alpha=1, paths=2)
    sent = lookup.start(0.0)
    assert [(e.peer, e.path) for e in sent if isinstance(e, Query)] == [(nid(50), 0), (nid(60), 1)]
    # Path 0 learns 10; path 1 then names 10 too: it stays path 0's.
    events = lookup.on_response(nid(50), [nid(10)], now=0.1)
    assert [(e.peer, e.path) for e in events if isinstance(e, Query)] == [(nid(10), 0)]
    events = lookup.on_response(nid(60), [nid(10), nid(20)], now=0.2)
    assert [(e.peer, e.path) for e in events if isinstance(e, Query)] == [(nid(20), 1)]
    queried = [nid(50), nid(60), nid(10), nid(20)]
    for peer in (nid(10), nid(20), nid(70), nid(80)):
        for event in lookup.on_response(peer, [], now=0.3):
            if isinstance(event, Query):
                assert event.peer not in queried
                queried.append(event.peer)
    assert lookup.finished
    assert len(queried) == len(set(queried))


def test_provider_lookups_use_two_disjoint_paths_by_default() -> None:
    lookup = make([50, 60], mode=LookupMode.GET_PROVIDERS)
    assert {e.path for e in lookup.start(0.0) if isinstance(e, Query)} == {0, 1}
    assert {e.path for e in make([50, 60]).start(0.0) if isinstance(e, Query)} == {0}


def test_far_contacts_rule_flags_a_short_answer_with_nothing_nearer() -> None:
    lookup = make([40, 50, 60, 70], k=3, alpha=4)
    lookup.start(0.0)
    lookup.on_response(nid(40), [nid(1), nid(2), nid(3)], now=0.1)
    lookup.on_response(nid(50), [nid(1), nid(2), nid(3)], now=0.1)
    # Two others answered, so an honest node knows >= 2 contacts; 60 returns one, farther than
    # itself.
    events = lookup.on_response(nid(60), [nid(900)], now=0.2)
    assert [e for e in events if isinstance(e, Misbehaved)] == [
        Misbehaved(nid(60), Misbehaviour.FAR_CONTACTS)
    ]
    assert nid(900) not in [e.peer for e in events if isinstance(e, Query)]
    # A full answer (k contacts), or one with something nearer, is never flagged.
    assert not [
        e
        for e in lookup.on_response(nid(70), [nid(800), nid(801), nid(802)], now=0.3)
        if isinstance(e, Misbehaved)
    ]


def test_far_contacts_rule_spares_honest_nodes_near_the_target() -> None:
    lookup = make([4, 50], k=3, alpha=2)
    lookup.start(0.0)
    # Nothing answered yet: a short answer with nothing nearer is fine (small network).
    events = lookup.on_response(nid(4), [nid(50)], now=0.1)
    assert not [e for e in events if isinstance(e, Misbehaved)]
    # One other answered: an answer with >= 1 contact is fine.
    events = lookup.on_response(nid(50), [nid(4)], now=0.2)
    assert not [e for e in events if isinstance(e, Misbehaved)]
    assert done(events).result.closest == (nid(4), nid(50))


def test_too_many_contacts_and_driver_reported_forgeries_drop_the_peer_once() -> None:
    lookup = make([40, 50, 60], k=2, alpha=3)
    lookup.start(0.0)
    events = lookup.on_response(nid(40), [nid(1), nid(2), nid(3)], now=0.1)
    assert Misbehaved(nid(40), Misbehaviour.TOO_MANY_CONTACTS) in events
    events = lookup.on_invalid(nid(50), Misbehaviour.SPOOFED_ID, 0.1)
    assert events == [Misbehaved(nid(50), Misbehaviour.SPOOFED_ID)]
    assert lookup.on_invalid(nid(50), Misbehaviour.SPOOFED_ID, 0.1) == []
    assert lookup.on_response(nid(50), [nid(1)], now=0.2) == []  # no second chance
    result = done(lookup.on_response(nid(60), [], now=0.2)).result
    assert result.closest == (nid(60),)
    assert result.misbehaved == 2


def test_a_peer_flagged_after_answering_leaves_the_result() -> None:
    lookup = make([40, 50], k=2, alpha=1)
    lookup.start(0.0)
    lookup.on_response(nid(40), [], now=0.1)
    lookup.on_invalid(nid(40), Misbehaviour.FORGED_RECORD, 0.1)
    result = done(lookup.on_response(nid(50), [], now=0.2)).result
    assert result.closest == (nid(50),) and result.responses == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        make([1], want=2)  # want is for provider lookups
    with pytest.raises(LocalProtocolError):
        make([1], paths=0)
    with pytest.raises(LocalProtocolError):
        Lookup(b"short", LookupMode.FIND_NODE, [], local_id=LOCAL)
    lookup = make([50])
    lookup.start(0.0)
    with pytest.raises(LocalProtocolError, match="20 bytes"):
        lookup.on_response(nid(50), [b"short"], now=0.1)
    assert lookup.on_response(nid(99), [], now=0.1) == []  # never queried: ignored
    with pytest.raises(ConfigError, match="dht.alpha"):
        LookupConfig(alpha=0)
    with pytest.raises(ConfigError, match="dht.retries"):
        LookupConfig(retries=-1)
