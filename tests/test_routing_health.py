"""Peer health: the circuit breaker's transitions, the decaying success rate and the ranking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.errors import ConfigError, LocalProtocolError
from routing import (
    BREAKER_TRANSITIONS,
    BreakerState,
    HealthConfig,
    HealthTable,
    Outcome,
    PeerHealth,
    rank,
)
from tests.routing_support import nid

CFG = HealthConfig(failure_threshold=3, open_cooldown=10.0, success_half_life=60.0)
FAILURES = (Outcome.ERROR, Outcome.TIMEOUT, Outcome.REFUSED)


def attempt(h: PeerHealth, outcome: Outcome, now: float, rtt: float | None = None) -> None:
    assert h.start(now)
    h.finish(outcome, now, rtt)


def test_the_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    h = PeerHealth(CFG)
    attempt(h, Outcome.ERROR, 0.0)
    attempt(h, Outcome.TIMEOUT, 1.0)
    assert h.state(1.0) is BreakerState.CLOSED
    attempt(h, Outcome.REFUSED, 2.0)
    assert h.state(2.0) is BreakerState.OPEN and not h.start(5.0)
    assert h.state(12.0) is BreakerState.HALF_OPEN
    assert h.start(12.0)  # the one probe
    assert not h.start(12.0)  # no second one while it is in flight
    h.finish(Outcome.TIMEOUT, 13.0)
    assert h.state(13.0) is BreakerState.OPEN  # cool-down starts again
    assert h.state(22.9) is BreakerState.OPEN and h.state(23.0) is BreakerState.HALF_OPEN
    attempt(h, Outcome.SUCCESS, 23.0, rtt=0.05)
    assert h.state(23.0) is BreakerState.CLOSED and h.consecutive_failures == 0


def test_a_cancelled_probe_frees_the_probe_slot_and_is_no_penalty() -> None:
    h = PeerHealth(CFG)
    for t in range(3):
        attempt(h, Outcome.ERROR, float(t))
    assert h.start(20.0)
    h.finish(Outcome.CANCELLED, 20.5)
    assert h.state(20.5) is BreakerState.HALF_OPEN and h.available(20.5)


def test_a_success_resets_the_failure_streak() -> None:
    h = PeerHealth(CFG)
    for t in range(10):
        attempt(h, Outcome.ERROR, float(t))
        attempt(h, Outcome.ERROR, float(t))
        attempt(h, Outcome.SUCCESS, float(t), 0.1)
    assert h.state(10.0) is BreakerState.CLOSED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Outcome)), st.floats(0, 5)), max_size=60))
def test_breaker_transitions_follow_the_table(events: list[tuple[Outcome, float]]) -> None:
    h, now = PeerHealth(CFG), 0.0
    for outcome, step in events:
        now += step
        before = h.state(now)
        if not h.start(now):
            assert before is not BreakerState.CLOSED
            continue
        h.finish(outcome, now, 0.1)
        after = h.state(now)
        if after is not before:
            assert any(k[0] is before and v is after for k, v in BREAKER_TRANSITIONS.items())
        if outcome is Outcome.CANCELLED:
            assert after is before
        if outcome is Outcome.SUCCESS:
            assert after is BreakerState.CLOSED
        if after is BreakerState.OPEN:
            assert h.consecutive_failures >= 1
    assert h.in_flight == 0


def test_cancelled_attempts_never_count() -> None:
    h = PeerHealth(CFG)
    for _ in range(50):
        attempt(h, Outcome.CANCELLED, 1.0)
    assert h.success_rate(1.0) == 1.0 and h.attempts == 0 and h.rtt_ewma is None


def test_the_success_rate_decays_towards_recent_behaviour() -> None:
    h = PeerHealth(CFG)
    for _ in range(2):
        attempt(h, Outcome.ERROR, 0.0)
    low = h.success_rate(0.0)
    assert low == pytest.approx(1 / 3)
    for t in range(20):
        attempt(h, Outcome.SUCCESS, 600.0 + t, 0.1)
    assert h.success_rate(620.0) > 0.95


def test_the_rtt_ewma_moves_by_alpha() -> None:
    h = PeerHealth(HealthConfig(rtt_alpha=0.5))
    attempt(h, Outcome.SUCCESS, 0.0, 0.2)
    attempt(h, Outcome.SUCCESS, 0.0, 0.4)
    assert h.rtt_ewma == pytest.approx(0.3)


def test_finish_without_start_is_a_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        PeerHealth(CFG).finish(Outcome.SUCCESS, 0.0)
    with pytest.raises(ConfigError):
        HealthConfig(failure_threshold=0)


def test_rank_orders_by_breaker_success_latency_and_load() -> None:
    table = HealthTable(CFG)
    fast, slow, busy, failing, fresh = nid(1), nid(2), nid(3), nid(4), nid(5)
    for _ in range(5):
        attempt(table.get(fast, "x"), Outcome.SUCCESS, 0.0, 0.02)
        attempt(table.get(slow, "x"), Outcome.SUCCESS, 0.0, 0.5)
        attempt(table.get(busy, "x"), Outcome.SUCCESS, 0.0, 0.02)
    for _ in range(3):
        attempt(table.get(failing, "x"), Outcome.TIMEOUT, 0.0)
    for _ in range(30):
        assert table.get(busy, "x").start(0.0)  # 30 requests in flight
    order = table.rank("x", [failing, slow, busy, fresh, fast], now=1.0)
    assert order == [fast, fresh, slow, busy, failing]
    assert rank([], 0.0) == []
    table.forget(busy)
    assert table.get(busy, "x").in_flight == 0


def test_rank_is_deterministic_by_node_id_on_ties() -> None:
    table = HealthTable(CFG)
    ids = [nid(i) for i in (9, 3, 7)]
    assert table.rank("x", ids, 0.0) == sorted(ids)


def test_a_stalling_attempt_makes_its_peer_look_slow_at_once() -> None:
    table = HealthTable()
    fast, stalled = nid(1), nid(2)
    for node_id in (fast, stalled):
        h = table.get(node_id, "cap")
        h.start(0.0)
        h.finish(Outcome.SUCCESS, 0.05, 0.05)
    table.get(stalled, "cap").start(1.0)  # one in flight that does not answer
    busy = table.get(fast, "cap")
    busy.start(1.99)
    busy.start(1.99)  # two in flight, just sent
    assert table.rank("cap", [fast, stalled], 1.0)[0] == stalled  # less loaded looks better
    assert table.get(stalled, "cap").pending_age(2.0) == 1.0
    assert table.rank("cap", [fast, stalled], 2.0)[0] == fast  # a 1 s stall outweighs load
    table.get(stalled, "cap").finish(Outcome.CANCELLED, 2.0)
    assert table.get(stalled, "cap").pending_age(2.0) == 0.0
