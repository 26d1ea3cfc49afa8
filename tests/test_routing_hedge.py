"""Hedging: the adaptive delay tracks a percentile within floor and cap; the plan of one request
starts, hedges, moves on after errors, picks a winner and cancels the rest."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.errors import ConfigError, LocalProtocolError
from routing import (
    CancelAttempt,
    HedgeConfig,
    HedgeDelay,
    HedgePlan,
    Outcome,
    PlanOutcome,
    StartAttempt,
)
from tests.routing_support import nid

A, B, C, D = nid(1), nid(2), nid(3), nid(4)


def test_the_delay_starts_at_the_initial_value_then_tracks_p95() -> None:
    d = HedgeDelay(HedgeConfig(initial_delay=0.3, min_samples=10, floor=0.05, cap=2.0))
    assert d.delay() == 0.3
    for i in range(1, 101):
        d.observe(i / 1000)  # 1 ms .. 100 ms
    assert d.delay() == pytest.approx(0.095)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_the_delay_is_the_window_percentile_clamped(samples: list[float], q: float) -> None:
    cfg = HedgeConfig(quantile=q, window=64, min_samples=1, floor=0.05, cap=2.0)
    d = HedgeDelay(cfg)
    for s in samples:
        d.observe(s)
    window = sorted(samples[-64:])
    expected = window[max(0, math.ceil(q * len(window) - 1e-9) - 1)]
    assert d.raw_quantile() == expected
    assert d.delay() == min(max(expected, 0.05), 2.0)
    below = sum(1 for s in window if s <= expected)
    assert below / len(window) >= q - 1e-9


def test_bad_samples_are_ignored_and_bad_config_refused() -> None:
    d = HedgeDelay()
    d.observe(float("nan"))
    d.observe(-1.0)
    assert len(d) == 0
    with pytest.raises(ConfigError):
        HedgeConfig(floor=3.0, cap=2.0)
    with pytest.raises(ConfigError):
        HedgeConfig(quantile=0.0)


def test_a_slow_first_peer_gets_a_hedge_and_the_winner_cancels_the_rest() -> None:
    plan = HedgePlan([A, B, C], now=0.0, hedge_delay=0.1, max_in_flight=2)
    assert plan.poll(0.0) == [StartAttempt(A, 1)]
    assert plan.next_deadline() == pytest.approx(0.1)
    assert plan.poll(0.05) == []
    assert plan.poll(0.1) == [StartAttempt(B, 2)]
    assert plan.next_deadline() is None  # two in flight: no more hedges
    assert plan.succeeded(B, 0.15) == [CancelAttempt(A)]
    assert plan.result is not None
    assert plan.result.outcome is PlanOutcome.WON
    assert (plan.result.winner, plan.result.winner_attempt, plan.result.attempts) == (B, 2, 2)
    assert plan.succeeded(A, 0.2) == [] and plan.poll(1.0) == []  # a straggler changes nothing


def test_an_error_moves_on_at_once() -> None:
    plan = HedgePlan([A, B, C], now=0.0, hedge_delay=1.0, max_in_flight=1)
    plan.poll(0.0)
    assert plan.failed(A, Outcome.ERROR, 0.01) == [StartAttempt(B, 2)]
    assert plan.failed(B, Outcome.REFUSED, 0.02) == [StartAttempt(C, 3)]
    assert plan.failed(C, Outcome.TIMEOUT, 0.03) == []
    assert plan.result is not None and plan.result.outcome is PlanOutcome.ALL_FAILED
    assert plan.result.failures == ((A, Outcome.ERROR), (B, Outcome.REFUSED), (C, Outcome.TIMEOUT))


def test_the_deadline_cancels_everything_in_flight() -> None:
    plan = HedgePlan([A, B, C, D], now=0.0, hedge_delay=0.1, max_in_flight=3, deadline=0.25)
    plan.poll(0.0)
    plan.poll(0.1)
    plan.poll(0.2)
    assert plan.in_flight == {A, B, C}
    assert plan.poll(0.25) == [CancelAttempt(A), CancelAttempt(B), CancelAttempt(C)]
    assert plan.result is not None and plan.result.outcome is PlanOutcome.DEADLINE


def test_no_candidates_finishes_at_once() -> None:
    plan = HedgePlan([], now=0.0, hedge_delay=0.1, max_in_flight=2)
    assert plan.done and plan.result is not None
    assert plan.result.outcome is PlanOutcome.NO_CANDIDATES


def test_misuse_is_a_caller_error() -> None:
    plan = HedgePlan([A], now=0.0, hedge_delay=0.1, max_in_flight=1)
    with pytest.raises(LocalProtocolError):
        plan.succeeded(B, 0.0)
    plan.poll(0.0)
    with pytest.raises(LocalProtocolError):
        plan.failed(A, Outcome.SUCCESS, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["tick", "ok", "fail"]), max_size=40),
    st.integers(1, 3),
)
def test_the_plan_never_exceeds_max_in_flight_nor_asks_a_peer_twice(
    events: list[str], max_in_flight: int
) -> None:
    peers = [nid(i) for i in range(1, 7)]
    plan = HedgePlan(peers, now=0.0, hedge_delay=0.1, max_in_flight=max_in_flight)
    started: list[str] = []
    now = 0.0
    for ev in events:
        now += 0.05
        actions = []
        if ev == "tick" or not plan.in_flight:
            actions = plan.poll(now)
        elif ev == "ok":
            actions = plan.succeeded(min(plan.in_flight), now)
        else:
            actions = plan.failed(min(plan.in_flight), Outcome.ERROR, now)
        started += [a.node_id for a in actions if isinstance(a, StartAttempt)]
        assert len(plan.in_flight) <= max_in_flight
        assert len(started) == len(set(started))
        if plan.done:
            assert plan.in_flight == frozenset()


def test_rerank_reorders_only_the_candidates_not_asked_yet() -> None:
    a, b, c, d = (nid(i) for i in range(1, 5))
    plan = HedgePlan([a, b, c, d], now=0.0, hedge_delay=0.1, max_in_flight=3)
    assert plan.poll(0.0) == [StartAttempt(a, 1)]
    plan.rerank([d, a, c])  # a is in flight already; b is not named: it goes last
    assert plan.poll(0.1) == [StartAttempt(d, 2)]
    assert plan.poll(0.2) == [StartAttempt(c, 3)]
    plan.succeeded(c, 0.25)
    assert plan.result is not None and plan.result.winner == c and plan.result.attempts == 3
