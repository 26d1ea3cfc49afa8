"""TokenBucket: pure float-time token bucket (fake clock = plain floats)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.connection._ratelimit import TokenBucket


def test_starts_full_and_refills_at_rate() -> None:
    b = TokenBucket(100.0, 50, now=0.0)
    assert b.available(0.0) == 50
    b.consume(50, 0.0)
    assert b.available(0.0) == 0
    assert b.available(0.1) == pytest.approx(10)
    assert b.available(0.25) == pytest.approx(25)
    assert b.available(10.0) == 50  # capped at burst


def test_consume_may_go_into_debt_and_time_until_is_exact() -> None:
    b = TokenBucket(1000.0, 100, now=5.0)
    b.consume(300, 5.0)
    assert b.available(5.0) == -200
    assert not b.can_consume(1, 5.0)
    assert b.time_until(0, 5.0) == pytest.approx(0.2)
    assert b.time_until(100, 5.0) == pytest.approx(0.3)
    assert b.ready_at(100) == pytest.approx(5.3)
    # Waking exactly at the reported deadline always succeeds despite float rounding.
    deadline = b.ready_at(100)
    assert b.can_consume(100, deadline)
    assert b.time_until(100, deadline) == 0.0


def test_ready_at_is_last_update_when_already_available_and_inf_above_burst() -> None:
    b = TokenBucket(10.0, 20, now=1.0)
    assert b.ready_at(5) == 1.0
    assert b.ready_at(21) == math.inf
    assert b.time_until(21, 1.0) == math.inf


def test_unlimited_bucket() -> None:
    b = TokenBucket(0, 0, now=0.0)
    assert b.unlimited
    b.consume(10**9, 0.0)
    assert b.available(0.0) == math.inf
    assert b.can_consume(10**12, 0.0)
    assert b.time_until(10**12, 0.0) == 0.0
    assert b.ready_at(10**12) == -math.inf


def test_time_going_backwards_is_ignored() -> None:
    b = TokenBucket(100.0, 100, now=10.0)
    b.consume(100, 10.0)
    assert b.available(9.0) == 0  # no refill, no crash
    assert b.available(10.5) == pytest.approx(50)


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 10), (math.nan, 10), (math.inf, 10), (5, 0)])
def test_invalid_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)


@given(
    rate=st.floats(1.0, 1e6),
    burst=st.integers(1, 10**6),
    steps=st.lists(st.tuples(st.floats(0, 10), st.integers(0, 10**5)), max_size=30),
)
def test_long_run_rate_is_respected(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    """Whoever only consumes what ``can_consume`` allows never exceeds burst + rate * t."""
    b = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    total = 0
    for dt, n in steps:
        now += dt
        want = min(n, burst)
        if b.can_consume(want, now):
            b.consume(want, now)
            total += want
        assert b.available(now) <= burst
    assert total <= burst + rate * now + 1e-3
