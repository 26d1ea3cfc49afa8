"""``overlay simulate``: deterministic for a seed, a well-formed report, sane liar figures, and
the XOR-nearest helper checked against brute force."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.cli._main import main
from overlay.errors import ConfigError
from overlay.sim import SimConfig, load_manifest, render_report, simulate, simulate_with_picture
from overlay.sim._net import nearest

SMALL = {"find_trials": 40, "lookup_trials": 60, "liar_trials": 60, "liar_keys": 10}


def small(nodes: int = 200, seed: int = 5, **kw: object) -> SimConfig:
    return SimConfig(nodes=nodes, seed=seed, **{**SMALL, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    return simulate(small())


def test_same_seed_same_bytes_across_processes(tmp_path: Path) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        "duration = 40.0\nfind_trials = 20\nlookup_trials = 20\nliar_trials = 20\n"
        "liar_keys = 5\n[capabilities]\nblocksync = 0.3\narchive = 0.05\n"
        "[targets.archive]\nmin_peers = 2\n"
    )
    outs = []
    for hashseed in ("1", "2"):
        out = tmp_path / f"r{hashseed}.json"
        subprocess.run(
            [sys.executable, "-m", "overlay.cli", "simulate", "--nodes", "200", "--seed", "9",
             "--manifest", str(manifest), "--report", str(out)],
            check=True, capture_output=True, env={"PYTHONHASHSEED": hashseed, "PATH": ""},
            cwd=Path(__file__).resolve().parent.parent,
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    other = simulate(load_manifest(manifest, nodes=200, seed=10))
    assert render_report(other) != outs[0]


def test_report_is_well_formed(report: dict[str, object]) -> None:
    data = json.loads(render_report(report))
    assert data["config"]["nodes"] == 200
    for cap in ("archive", "blocksync"):
        entry = data["time_to_target"][cap]
        assert entry["seekers"] == 10 and 0 <= entry["met_pct"] <= 100
        assert set(entry["seconds_to_target"]) == {"p50", "p95", "max"}
    # blocksync is held by 30 % of nodes: every seeker gets 3 holders, within the run
    block = data["time_to_target"]["blocksync"]
    assert block["met_pct"] == 100.0
    assert 0 < block["seconds_to_target"]["p50"] <= block["seconds_to_target"]["max"] < 120
    for cap in ("archive", "blocksync", "oracle"):
        find = data["find_providers"][cap]
        assert find["trials"] == 40 and find["want"] == min(3, find["holders"])
        assert find["found_pct"] >= 90.0  # 200 honest nodes, 1 % loss
    lookups = data["dht_node_lookups"]
    assert 1 <= lookups["rounds"]["p50"] <= lookups["rounds"]["p95"] <= 8
    assert lookups["found_true_closest_pct"] >= 90.0
    totals = data["totals"]
    assert totals["dials"] > 0 and totals["pex_requests"] > 0 and totals["dht_lookups"] > 0
    assert totals["online_at_end"] <= 200


def test_liar_experiment_sanity(report: dict[str, object]) -> None:
    liars = report["liars"]
    assert isinstance(liars, list) and len(liars) == 8
    by = {(e["kind"], e["liar_share"], e["paths"]): e for e in liars}
    for share in (0.2, 0.3):
        for kind in ("colluding", "fresh"):
            two = by[(kind, share, 2)]
            assert two["trials"] == 60 and two["netgroup_diversity"] is True
            # disjoint paths and netgroup diversity beat both kinds of liar at N = 200
            assert two["success_pct"] >= 95.0
            assert two["honest_replicas_per_provider"]["p50"] > 0
    for entry in liars:
        assert 0 <= entry["all_providers_pct"] <= entry["success_pct"] <= 100


def test_plot_is_written_with_its_two_panels(tmp_path: Path) -> None:
    import matplotlib.image
    import matplotlib.pyplot as plt

    from overlay.testnet._plot import simulation_figure

    manifest = tmp_path / "m.toml"
    manifest.write_text("duration = 30.0\nfind_trials = 5\nlookup_trials = 5\nliar_trials = 0\n"
                        "churn_per_hour = 0.5\n")
    out, picture = tmp_path / "r.json", tmp_path / "p.png"
    assert main(["simulate", "--nodes", "400", "--seed", "3", "--manifest", str(manifest),
                 "--report", str(out), "--plot", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(picture)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 1000
    _, data = simulate_with_picture(load_manifest(manifest, nodes=400, seed=3))
    # 400 nodes: a sample of 300, every holder of a rare (<= 1 %) capability in it
    assert len(data.sample) == 300 and data.total_nodes == 400
    assert any(data.seeker) and any("oracle" in caps for caps in data.capabilities_of)
    assert data.edges and all(0 <= i < j < 300 for i, j in data.edges)
    assert data.leaves  # churn happened and is marked
    fig = simulation_figure(data)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["final topology (colour: capability), 300 of 400 nodes",
                      "targets met and lookup latency (churn in red)"]
    plt.close(fig)


def test_liar_experiment_can_be_skipped() -> None:
    data = simulate(small(nodes=60, liar_trials=0, find_trials=5, lookup_trials=5))
    assert data["liars"] == []


def test_manifest_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    for text, field in [
        ("loss = 2.0\n", "loss"),
        ("bogus = 1\n", "bogus"),
        ("[capabilities]\nBad = 0.1\n", "capabilities.Bad"),
        ("[capabilities]\na = 0.1\n[targets.b]\nmin_peers = 1\n", "targets.b"),
        ("k = 1.5\n", "k"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_manifest(bad, nodes=100, seed=1)


def test_cli_refuses_bad_plot_names_and_small_networks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    assert main(["simulate", "--nodes", "50", "--report", str(out), "--plot", "x.svg"]) == 2
    assert "--plot" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--nodes", "5", "--report", str(out)])
    assert not out.exists()


@settings(max_examples=100, deadline=None)
@given(
    values=st.sets(st.integers(0, 2**160 - 1), min_size=1, max_size=200),
    target=st.integers(0, 2**160 - 1),
    k=st.integers(1, 30),
)
def test_nearest_matches_brute_force(values: set[int], target: int, k: int) -> None:
    nums = sorted(values)
    expected = sorted(nums, key=lambda n: n ^ target)[:k]
    assert [nums[i] for i in nearest(nums, target, k)] == expected


def test_nearest_on_clustered_ids() -> None:
    rng = random.Random(3)
    base = rng.getrandbits(160)
    nums = sorted({base ^ rng.getrandbits(rng.choice((8, 20, 160))) for _ in range(500)})
    for _ in range(50):
        target = base ^ rng.getrandbits(rng.choice((4, 12, 160)))
        got = [nums[i] for i in nearest(nums, target, 16)]
        assert got == sorted(nums, key=lambda n: n ^ target)[:16]
