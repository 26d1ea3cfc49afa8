"""Small testnets in each mode: nodes bootstrap from seeds, the harness measures targets and
role requests, perturbations are applied and the network re-converges, and the report and the
picture are written. In one process the run's clock is the event loop's, so the inproc runs
whose assertions are about time (re-convergence, perturbation windows) run on trio's mock
clock and cost no real time; the TCP and procs runs use real time on asyncio with bounds that
leave room for a loaded machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overlay.testnet import (
    Manifest,
    Mode,
    build_report,
    dumps,
    parse_manifest,
    plot_run,
    run_manifest,
)
from overlay.testnet._plot import figure
from overlay.testnet._relay import node_host
from tests.support import virtual_time

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def small(mode: Mode, *, duration: float = 2.5, nodes: int = 5,
          perturbations: list[dict[str, Any]] | None = None) -> Manifest:
    return parse_manifest({
        "testnet": {"nodes": nodes, "seeds": 1, "duration": duration, "seed": 3},
        "capabilities": {"archive": 2},
        "targets": {"archive": {"min_peers": 1}},
        "workload": {"rate": 5.0},
        "criteria": {"targets_met": 0.0, "request_success": 0.0},
        "perturbations": perturbations or [],
    }, mode=mode)


def peers_in_last_tick(report: dict[str, Any]) -> int:
    return sum(len(n["peers"]) for n in report["per_node"])


@pytest.mark.parametrize("mode", [Mode.INPROC, Mode.TCP])
async def test_a_small_testnet_runs_in_one_process(mode: Mode) -> None:
    result = await run_manifest(small(mode))
    report = build_report(result)
    assert report["mode"] == mode.value
    assert all(n["up"] for n in report["per_node"])
    # Every node found a peer starting from one seed, and role requests were answered.
    assert all(n["peers"] for n in report["per_node"])
    assert report["requests"]["ok"] > 0
    assert report["requests"]["latency_ms"]["p50"] is not None
    assert report["messages_per_node"]["mean"] > 0 and report["bytes_per_node"]["mean"] > 0
    assert "archive" in report["time_to_targets_s"]
    assert report["ok"], report["failures"]


def check_homes(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["n0", "n1", "n2", "n3"]
    for home in root.iterdir():
        assert (home / "data" / "peers.sqlite").is_file()  # each its own SQLite store
        assert (home / "admin_token").is_file()  # and its own admin API
        assert "metrics on http://127." in (home / "node.log").read_text()


async def test_procs_mode_runs_one_overlay_start_per_home(tmp_path: Path) -> None:
    result = await run_manifest(small(Mode.PROCS, duration=5.0, nodes=4), workdir=tmp_path)
    report = build_report(result)
    check_homes(tmp_path)
    assert all(n["peers"] for n in report["per_node"])
    assert report["requests"]["ok"] > 0


async def test_tcp_nodes_connect_from_their_own_loopback_address() -> None:
    # Every node has its own 127.A.B.1 in its own /16; the relay forwards from the dialer's
    # address, so a node's peers see it come from there (the netgroup limits apply).
    assert len({node_host(i).rsplit(".", 2)[0] for i in range(200)}) == 200
    result = await run_manifest(small(Mode.TCP, duration=1.5))
    assert sum(len(s.peers) for s in result.ticks[-1].nodes) > 0


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_the_network_reconverges_after_kill_and_restart() -> None:
    manifest = small(Mode.INPROC, duration=5.0, nodes=6, perturbations=[
        {"at": 1.0, "kind": "kill", "nodes": ["n2", "n3"], "duration": 1.5},
    ])
    result = await run_manifest(manifest)
    kill = result.perturbations[0]
    assert kill.ended is not None and kill.ended - kill.started >= 1.5 - 0.05  # sleep granularity
    during = [t for t in result.ticks if kill.started + 0.3 < t.t < kill.ended - 0.3]
    assert during and all(not t.nodes[2].up and not t.nodes[3].up for t in during)
    report = build_report(result)
    row = report["perturbations"][0]
    assert row["kind"] == "kill" and row["nodes"] == ["n2", "n3"]
    assert row["reconverge_s"] is not None and row["reconverge_s"] < 2.5
    assert result.ticks[-1].nodes[2].up and result.ticks[-1].nodes[2].peers


@pytest.mark.parametrize(("mode", "anyio_backend"), [
    pytest.param(Mode.INPROC, virtual_time().values[0], id="inproc-virtual-time"),
    pytest.param(Mode.TCP, "asyncio", id="tcp"),
])
async def test_the_network_reconverges_after_a_partition_heals(mode: Mode) -> None:
    manifest = small(mode, duration=5.0, nodes=6, perturbations=[
        {"at": 1.0, "kind": "partition", "groups": [["n0", "n1", "n2"]], "duration": 1.5},
    ])
    result = await run_manifest(manifest)
    log = result.perturbations[0]
    assert log.ended is not None
    # While partitioned no connection crosses the groups.
    during = [t for t in result.ticks if log.started + 0.6 < t.t < log.ended - 0.1]
    assert during
    for tick in during:
        for i in (0, 1, 2):
            assert not tick.nodes[i].peers & {3, 4, 5}
    row = build_report(result)["perturbations"][0]
    assert row["reconverge_s"] is not None and row["reconverge_s"] < 2.5
    assert row["requests"]["requests"] > 0


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_report_and_picture_are_written_and_well_formed(tmp_path: Path) -> None:
    import matplotlib.image

    manifest = small(Mode.INPROC, duration=3.0, perturbations=[
        {"at": 0.5, "kind": "latency", "latency": 0.02, "duration": 1.0},
        {"at": 1.5, "kind": "disconnect", "nodes": ["n4"], "duration": 0.5},
    ])
    result = await run_manifest(manifest)
    report_path, picture = tmp_path / "r.json", tmp_path / "p.png"
    report_path.write_text(dumps(build_report(result)))
    plot_run(result, picture)
    report = json.loads(report_path.read_text())
    for key in ("time_to_targets_s", "targets_met_at_end", "requests", "perturbations",
                "messages_per_node", "bytes_per_node", "dht_lookups", "timeline", "failures",
                "ok", "bootstrap", "request_kind"):
        assert key in report
    assert set(report["time_to_targets_s"]["archive"]) == {"nodes", "never", "p50", "p95",
                                                           "max"}
    assert [p["kind"] for p in report["perturbations"]] == ["latency", "disconnect"]
    assert all("reconverge_s" in p and "latency_ms" in p["requests"]
               for p in report["perturbations"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(picture)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 1000
    fig = figure(result)  # what plot_run saved: two titled panels
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["final topology (colour: capability)",
                      "targets met and request latency (perturbations in red)"]
    import matplotlib.pyplot as plt

    plt.close(fig)


async def test_failed_criteria_are_named() -> None:
    manifest = parse_manifest({
        "testnet": {"nodes": 4, "seeds": 1, "duration": 1.5},
        "capabilities": {"archive": 1},
        "targets": {"archive": {"min_peers": 1}},
        "workload": {"rate": 0.0},
        "criteria": {"targets_within": 0.01},
    })
    report = build_report(await run_manifest(manifest))
    assert not report["ok"]
    assert any(f.startswith("targets_within: archive") for f in report["failures"])


async def test_a_node_dials_from_its_listen_host_when_configured() -> None:
    from overlay.node._config import AdminConfig, ConnectionConfig, NodeConfig
    from overlay.node._node import Node

    def config(host: str, from_listen: bool) -> NodeConfig:
        return NodeConfig(listen=(f"tcp://{host}:0",), admin=AdminConfig(enabled=False),
                          connection=ConnectionConfig(dial_from_listen_host=from_listen))

    async with Node(config("127.3.0.1", False)) as a, \
            Node(config("127.4.0.1", True)) as b, Node(config("127.5.0.1", False)) as c:
        await b.dial(a.address)
        await c.dial(a.address)
        hosts = {s.conn.node_id: s.conn.remote_host for s in a.peer_summaries()}
        assert hosts[b.node_id] == "127.4.0.1"  # from its own address
        assert hosts[c.node_id] == "127.0.0.1"  # the system's choice


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_an_inproc_testnet_runs_on_a_mock_clock_and_reports_dht_totals() -> None:
    # In one process the run's clock is the event loop's: on trio's MockClock the whole run
    # (bootstrap, PEX, DHT, the workload, a latency perturbation) takes virtual time only.
    manifest = small(Mode.INPROC, duration=20.0, perturbations=[
        {"at": 0.0, "kind": "latency", "latency": 0.05},
    ])
    result = await run_manifest(manifest)
    report = build_report(result)
    assert result.ticks[-1].t >= 20.0
    assert 40 <= len(result.ticks) <= 42  # twice a second, on virtual time
    assert [p["at"] for p in report["perturbations"]] == [0.0]
    assert all(n["peers"] for n in report["per_node"])
    # Requests are timed on the same clock: 2 x 50 ms one way, plus nothing else on a mock clock
    assert report["requests"]["ok"] > 0
    assert report["requests"]["latency_ms"]["p50"] == pytest.approx(100.0, abs=1.0)
    dht = report["dht_lookups"]
    assert dht["lookups"] > 0 and dht["messages"] >= dht["lookups"]
    assert report["channel_messages"]["overlay.pex"] > 0
