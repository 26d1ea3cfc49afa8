"""The per-connection round-trip meter (a pure core) and the mapping of responders' error codes
to attempt outcomes."""

from __future__ import annotations

import math

import pytest

from overlay.connection._meter import RTT_ALPHA, RoundTripMeter
from overlay.connection._outcome import AttemptOutcome, outcome_of_error_code
from overlay.errors import ErrorCode


def test_rtt_is_an_ewma_of_valid_samples() -> None:
    meter = RoundTripMeter()
    assert meter.rtt is None and meter.samples == 0
    meter.sample(0.2)
    assert meter.rtt == pytest.approx(0.2)
    meter.sample(0.6)
    assert meter.rtt == pytest.approx(0.2 + RTT_ALPHA * 0.4)
    for bad in (math.nan, math.inf, -1.0):
        meter.sample(bad)
    assert meter.samples == 2 and meter.rtt == pytest.approx(0.2 + RTT_ALPHA * 0.4)


def test_in_flight_counts_add_up_per_channel() -> None:
    meter = RoundTripMeter()
    meter.started(1)
    meter.started(1)
    meter.started(7)
    assert meter.in_flight == 3 and dict(meter.in_flight_by_channel()) == {1: 2, 7: 1}
    snapshot = meter.in_flight_by_channel()
    meter.finished(1)
    meter.finished(7)
    assert dict(snapshot) == {1: 2, 7: 1}  # a copy, not a live view
    assert meter.in_flight == 1 and dict(meter.in_flight_by_channel()) == {1: 1}
    meter.finished(1)
    assert meter.in_flight == 0 and dict(meter.in_flight_by_channel()) == {}
    with pytest.raises(ValueError):
        meter.finished(1)  # never negative
    assert meter.in_flight == 0


def test_error_codes_map_to_refused_or_error() -> None:
    refused = {ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.NO_HANDLER,
               ErrorCode.CANCELLED}
    for code in ErrorCode:
        expected = AttemptOutcome.REFUSED if code in refused else AttemptOutcome.ERROR
        assert outcome_of_error_code(code) is expected, code
