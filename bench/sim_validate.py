"""Validate the simulation against a testnet (issue 11): the same network run twice, once as an
``inproc`` testnet of real nodes (Noise, router, peer manager, PEX, DHT, policy driver) on trio's
mock clock, once as ``overlay simulate``, and the figures both report side by side.
Results, tolerance and commands in docs/scale.md ("Validation").

    .venv/bin/python bench/sim_validate.py --nodes 200 --duration 60

The network: ``--nodes`` nodes, ``archive`` held by 5 % and ``blocksync`` by 30 % of them,
every node wanting ``archive`` min_peers 2 and ``blocksync`` min_peers 3, 50 ms one-way latency
on every link (RTT 100 ms), no loss, no churn, no perturbation, no role-request workload. Both
bootstrap from ``nodes / 50`` seed nodes (at least 2): the simulation's tables start empty and
grow as a node's do (``SimConfig.seed_nodes``; self-lookups at start and every 10 s while a
table is thin). Both use k = 20, alpha = 3, a 2 s per-query
timeout and a 1 s policy heartbeat (the node's defaults). Times on the testnet are virtual
(``MockClock``), so machine load does not distort them; the nodes' wall clock follows the
virtual clock too (``LocalCluster.wall_clock``), so the DHT's bucket refreshes (every 600 s)
do not fire in a 60-virtual-second run however long it takes in real time.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import trio.testing

from discovery import DhtService
from overlay.sim import SimConfig
from overlay.sim._experiments import summary
from overlay.sim._net import SimNetwork
from overlay.sim._world import T0, World
from overlay.testnet import Mode, build_report, parse_manifest, run_manifest
from routing import CapabilityTarget, TargetSet

CAPS = (("archive", 0.05), ("blocksync", 0.30))
TARGETS = {"archive": 2, "blocksync": 3}
ONE_WAY = 0.05
TOLERANCE = 0.5
"""Relative tolerance on time-to-target and per-lookup figures (see docs/scale.md)."""


def seeds_of(nodes: int) -> int:
    """Seed nodes of both sides: one per 50 nodes, at least 2."""
    return max(2, nodes // 50)


def count_lookups(counts: dict[str, int]) -> None:
    """Count the testnet's DHT lookups by kind: wrap the public entry points of
    ``DhtService`` (bootstrap self-lookups, publishing, provider lookups) in this process."""
    original_bootstrap = DhtService.bootstrap
    original_provide = DhtService.provide
    original_find = DhtService.find_providers

    async def bootstrap(self: DhtService, *args: Any, **kwargs: Any) -> int:
        counts["bootstrap"] += 1
        return await original_bootstrap(self, *args, **kwargs)

    async def provide(self: DhtService, *args: Any, **kwargs: Any) -> Any:
        counts["publish"] += 1
        return await original_provide(self, *args, **kwargs)

    def find_providers(self: DhtService, *args: Any, **kwargs: Any) -> Any:
        counts["providers"] += 1
        return original_find(self, *args, **kwargs)

    DhtService.bootstrap = bootstrap  # type: ignore[method-assign]
    DhtService.provide = provide  # type: ignore[method-assign]
    DhtService.find_providers = find_providers  # type: ignore[method-assign]


def testnet_side(nodes: int, duration: float, seed: int) -> dict[str, Any]:
    counts = {"bootstrap": 0, "publish": 0, "providers": 0}
    count_lookups(counts)
    manifest = parse_manifest({
        "testnet": {"nodes": nodes, "seeds": seeds_of(nodes), "mode": "inproc",
                    "duration": duration, "seed": seed},
        "capabilities": {cap: f"{round(share * 100)}%" for cap, share in CAPS},
        "targets": {cap: {"min_peers": n} for cap, n in TARGETS.items()},
        "workload": {"rate": 0.0},
        "perturbations": [{"at": 0.0, "kind": "latency", "latency": ONE_WAY}],
    }, mode=Mode.INPROC)
    clock = trio.testing.MockClock(autojump_threshold=0)
    result = anyio.run(run_manifest, manifest, backend="trio", backend_options={"clock": clock})
    report = build_report(result)
    dht = report["dht_lookups"]
    count = len(manifest.nodes)
    return {
        "time_to_target": {cap: {k: row[k] for k in ("p50", "p95", "max")}
                           | {"met_pct": round(100 * (row["nodes"] - row["never"])
                                               / max(1, row["nodes"]), 1)}
                           for cap, row in report["time_to_targets_s"].items()},
        "dht_lookups_per_node": round(dht["lookups"] / count, 2),
        "bootstrap_lookups_per_node": round(counts["bootstrap"] / count, 2),
        "publish_lookups_per_node": round(counts["publish"] / count, 2),
        "provider_lookups_per_node": round(counts["providers"] / count, 2),
        "rounds_per_lookup": round(dht["rounds"] / max(1, dht["lookups"]), 2),
        "messages_per_lookup": round(dht["messages"] / max(1, dht["lookups"]), 2),
        "dht_queries_per_node": round(dht["messages"] / count, 1),
        "messages_per_node": report["messages_per_node"],
        "channel_messages_per_node": {k: round(v / count, 1)
                                      for k, v in report["channel_messages"].items()},
    }


def sim_side(nodes: int, duration: float, seed: int) -> dict[str, Any]:
    config = SimConfig(
        nodes=nodes, seed=seed, capabilities=CAPS,
        targets=TargetSet.of(*(CapabilityTarget(c, min_peers=n) for c, n in TARGETS.items())),
        seekers=1.0, duration=duration, churn_per_hour=0.0, loss=0.0,
        rtt_min=2 * ONE_WAY, rtt_max=2 * ONE_WAY, k=20, query_timeout=2.0, heartbeat=1.0,
        find_trials=0, lookup_trials=0, liar_trials=0, seed_nodes=seeds_of(nodes),
    )
    rng = random.Random(seed)
    net = SimNetwork(nodes, random.Random(rng.getrandbits(64)), k=config.k,
                     rtt=(config.rtt_min, config.rtt_max), now=T0, full_tables=False)
    world = World(config, net, rng)
    world.run()
    seekers = [world.nodes[i] for i in world.seekers]
    times: dict[str, Any] = {}
    for cap, _ in CAPS:
        reached = [n.met_at[cap] for n in seekers if cap in n.met_at]
        times[cap] = summary(reached) | {"met_pct": round(100 * len(reached) / len(seekers), 1)}
    c = world.counters
    return {
        "time_to_target": times,
        "dht_lookups_per_node": round(c.dht_lookups / nodes, 2),
        "bootstrap_lookups_per_node": round(c.bootstrap_lookups / nodes, 2),
        "publish_lookups_per_node": round(c.publish_lookups / nodes, 2),
        "provider_lookups_per_node": round(c.provider_lookups / nodes, 2),
        "discover_actions_per_node": round(c.discoveries / nodes, 2),
        "discover_pex_per_node": round(c.discover_pex / nodes, 2),
        "rounds_per_lookup": round(c.dht_rounds / max(1, c.dht_lookups), 2),
        "messages_per_lookup": round(c.dht_messages / max(1, c.dht_lookups), 2),
        "dht_queries_per_node": round(c.dht_messages / nodes, 1),
        "pex_requests_per_node": round(c.pex_requests / nodes, 1),
        "dials_per_node": round(c.dials / nodes, 1),
    }


def compare(testnet: dict[str, Any], sim: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    rows: list[tuple[str, Any, Any, str]] = []

    def check(name: str, a: float | None, b: float | None, slack: float = 0.0) -> None:
        if a is None or b is None:
            rows.append((name, a, b, "n/a"))
            return
        ok = abs(a - b) <= TOLERANCE * max(abs(a), abs(b)) + slack
        rows.append((name, a, b, "within" if ok else "OUTSIDE"))

    for cap, _ in CAPS:
        for q in ("p50", "p95"):
            check(f"time to target {cap} {q} (s)", testnet["time_to_target"][cap][q],
                  sim["time_to_target"][cap][q], slack=1.0)  # 1 s: the testnet samples at 2 Hz
        check(f"targets met {cap} (%)", testnet["time_to_target"][cap]["met_pct"],
              sim["time_to_target"][cap]["met_pct"])
    for key in ("rounds_per_lookup", "messages_per_lookup", "dht_lookups_per_node",
                "bootstrap_lookups_per_node", "publish_lookups_per_node",
                "provider_lookups_per_node", "dht_queries_per_node"):
        check(key, testnet.get(key), sim.get(key))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write both sides' figures here")
    parser.add_argument("--reuse-testnet", type=Path,
                        help="take the testnet side from a --json file of an earlier run")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the nodes' "target unattainable" notes while they start
    start = time.perf_counter()
    sim = sim_side(args.nodes, args.duration, args.seed)
    print(f"simulation: {time.perf_counter() - start:.1f} s wall clock", file=sys.stderr,
          flush=True)
    start = time.perf_counter()
    if args.reuse_testnet is not None:
        testnet = json.loads(args.reuse_testnet.read_text())["testnet"]
    else:
        testnet = testnet_side(args.nodes, args.duration, args.seed)
        print(f"testnet: {time.perf_counter() - start:.1f} s wall clock", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({"testnet": testnet, "simulation": sim}, indent=1))
    print(f"| figure ({args.nodes} nodes, {args.duration:g} s) | inproc testnet | simulation "
          f"| within ±{TOLERANCE:.0%} |\n|---|---|---|---|")
    for name, a, b, verdict in compare(testnet, sim):
        print(f"| {name} | {a} | {b} | {verdict} |")
    print(f"\ntestnet messages per node (all channels, sent + received): "
          f"{testnet['messages_per_node']}; per channel: {testnet['channel_messages_per_node']}")
    print(f"simulation per node: PEX requests {sim['pex_requests_per_node']}, dials "
          f"{sim['dials_per_node']}, DHT queries {sim['dht_queries_per_node']}, DHT lookups "
          f"{sim['dht_lookups_per_node']} (bootstrap {sim['bootstrap_lookups_per_node']}, "
          f"publish {sim['publish_lookups_per_node']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
