"""The simulation's bootstrap from seeds (``SimConfig.seed_nodes``): routing tables start empty
and grow as a node's do (connected peers, bootstrap self-lookups, what lookups teach), seeds
hand out records and hang up, and the network still reaches its targets; deterministic."""

from __future__ import annotations

import random

from overlay.sim import SimConfig, render_report, simulate
from overlay.sim._net import SimNetwork
from overlay.sim._world import T0, World
from routing import CapabilityTarget, TargetSet


def config(**kw: object) -> SimConfig:
    base: dict[str, object] = {
        "nodes": 150, "seed": 3, "seed_nodes": 3, "seekers": 1.0, "duration": 40.0,
        "churn_per_hour": 0.0, "loss": 0.0, "heartbeat": 1.0, "capabilities":
        (("archive", 0.1), ("blocksync", 0.3)), "find_trials": 5, "lookup_trials": 5,
        "liar_trials": 0, "targets": TargetSet.of(CapabilityTarget("archive", min_peers=2),
                                                  CapabilityTarget("blocksync", min_peers=3)),
    }
    return SimConfig(**{**base, **kw})  # type: ignore[arg-type]


def run(cfg: SimConfig) -> World:
    rng = random.Random(cfg.seed)
    net = SimNetwork(cfg.nodes, random.Random(rng.getrandbits(64)), k=cfg.k,
                     rtt=(cfg.rtt_min, cfg.rtt_max), now=T0, full_tables=False)
    assert all(len(t) == 0 for t in net.tables)
    world = World(cfg, net, rng)
    world.run()
    return world


def test_tables_grow_from_seeds_and_every_node_bootstraps() -> None:
    cfg = config()
    world = run(cfg)
    seeds = set(range(cfg.seed_nodes))
    others = [n for n in world.nodes if n.idx not in seeds]
    # Seeds hold no capability and seek nothing; every other node may.
    assert all(not world.nodes[i].caps and world.nodes[i].engine is None for i in seeds)
    # Every node ran its bootstrap lookup and holds a table of at least k contacts by the end.
    assert all(n.bootstrapped for n in others)
    assert world.counters.bootstrap_lookups >= len(others)
    sizes = sorted(len(world.net.tables[n.idx]) for n in others)
    assert sizes[0] >= cfg.k
    # Every holder published once its table had contacts.
    assert world.counters.publish_lookups == sum(len(n.caps) for n in others)
    # Seeds hung up: they hold no connection to a node that finished starting long ago.
    assert all(len(world.nodes[i].conns) < 10 for i in seeds)
    # Most seekers reached both targets through PEX, the DHT and the policy engine.
    seekers = [world.nodes[i] for i in world.seekers]
    for cap in ("archive", "blocksync"):
        met = sum(cap in n.met_at for n in seekers)
        assert met >= 0.9 * len(seekers), (cap, met, len(seekers))


def test_the_bootstrap_is_deterministic_and_reported() -> None:
    first = simulate(config(nodes=80, seed_nodes=2))
    second = simulate(config(nodes=80, seed_nodes=2))
    assert render_report(first) == render_report(second)
    totals = first["totals"]
    assert first["config"]["seed_nodes"] == 2
    assert totals["bootstrap_lookups"] >= 78
    assert totals["publish_lookups"] > 0
    assert totals["dht_lookups"] >= totals["bootstrap_lookups"] + totals["publish_lookups"]
