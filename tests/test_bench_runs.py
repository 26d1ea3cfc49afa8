"""The benchmark harness's repeated runs: ``bench/run.py --runs N`` summarises every figure of N
run documents as min / median / max and judges the target on the median; the py-libp2p result
crosses the process boundary intact. (No timing is measured here: the documents are made up.)"""

from __future__ import annotations

from typing import Any

import pytest

from bench._common import Rate
from bench._libp2p import Libp2pError, Libp2pResult
from bench._loops import loop_named
from bench._runs import render_summary, summarise


def _figure(key: str, ours: float, baseline: float | None, target: dict[str, Any] | None,
            cpu_ratio: float | None = None, unit: str = "req/s") -> dict[str, Any]:
    extra = {} if cpu_ratio is None else {"cpu_ratio": cpu_ratio}
    return {"key": key, "title": key.replace("_", " "), "unit": unit, "ours": ours,
            "baseline": baseline, "ratio": None if baseline is None else ours / baseline,
            "target": target, "extra": extra}


RATIO_MIN = {"kind": "ratio_min", "value": 0.5}
VALUE_MAX = {"kind": "max", "value": 1.5}


def _runs(*ours: float) -> list[dict[str, Any]]:
    return [{"figures": [_figure("round_trip", o, 100.0, RATIO_MIN, o / 100.0),
                         _figure("dial", o / 40.0, 0.2, VALUE_MAX, unit="ms")], "notes": []}
            for o in ours]


def test_the_summary_keeps_every_run_and_judges_the_median() -> None:
    summary = {s.key: s for s in summarise(_runs(45.0, 60.0, 52.0))}
    rt = summary["round_trip"]
    assert rt.ours == (45.0, 60.0, 52.0)
    assert rt.ratio == pytest.approx((0.45, 0.60, 0.52))
    assert rt.as_dict()["ratio"] == pytest.approx({"min": 0.45, "median": 0.52, "max": 0.60})
    assert rt.verdict == "PASS"  # one run missed; the median did not
    dial = summary["dial"]  # 1.125 / 1.5 / 1.3 ms against <= 1.5 ms: judged on the value
    assert dial.as_dict()["ours"]["median"] == pytest.approx(1.3)
    assert dial.verdict == "PASS"
    assert summarise(_runs(40.0, 60.0, 45.0))[0].verdict == "MISS"


def test_a_figure_missing_from_some_runs_is_summarised_over_the_others() -> None:
    runs = _runs(50.0, 50.0)
    runs[1]["figures"].append(_figure("libp2p_round_trip", 50.0, 10.0, None))
    keys = [s.key for s in summarise(runs)]
    assert keys == ["round_trip", "dial", "libp2p_round_trip"]
    extra = summarise(runs)[2]
    assert extra.ours == (50.0,) and extra.verdict == "-"


def test_the_table_shows_min_median_max_and_the_result() -> None:
    table = render_summary(summarise(_runs(45.0, 60.0, 52.0)), 3)
    header, _rule, rt_row, dial_row = table.splitlines()
    assert "min / median / max" in header
    assert "45 / 52 / 60 req/s" in rt_row and "45.0 % / 52.0 % / 60.0 %" in rt_row
    assert rt_row.rstrip().endswith("PASS")
    assert "1.12 / 1.30 / 1.50 ms" in dial_row and "<= 1.5 ms" in dial_row


def test_the_libp2p_result_survives_the_json_line() -> None:
    result = Libp2pResult("0.8.1", "TCP + Noise + Yamux",
                          (Rate(900.0, 1500.0, 0.6), Rate(950.0, 1400.0, 0.7)),
                          (0.010, 0.012, 0.011))
    again = Libp2pResult.from_json(result.to_json())
    assert again == result
    assert again.round_trips.per_second == 950.0
    assert again.connect_median == pytest.approx(0.011)
    with pytest.raises(Libp2pError, match="unreadable"):
        Libp2pResult.from_json('{"version": "0.8.1"}')


def test_each_backend_names_its_own_baselines() -> None:
    assert loop_named("asyncio").baselines.local_name == "anyio memory stream"
    assert loop_named("uvloop").options == {"use_uvloop": True}
    trio_loop = loop_named("trio")
    assert (trio_loop.backend, trio_loop.baselines.tcp_name) == ("trio", "trio")
    assert trio_loop.baselines.local_name == "trio memory channel"
    with pytest.raises(ValueError, match="unknown backend"):
        loop_named("tokio")
