"""``overlay simulate``: a seeded discrete-event simulation of the real pure cores at scale.

Part of the assembly: it may import discovery, routing and the peers layer; nothing imports it.
``simulate(config)`` returns the report as a plain dict; ``render_report`` turns it into the
exact bytes written by ``--report`` (sorted keys, so the same seed gives the same bytes).
``simulate_with_picture`` also returns the data of the ``--plot`` picture (``SimPicture``).
See docs/scale.md for what is modelled and what is left out.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from overlay.sim._config import SimConfig, load_manifest
from overlay.sim._experiments import find_trials, liar_experiment, node_lookups, summary
from overlay.sim._net import SimNetwork
from overlay.sim._picture import SimPicture, picture
from overlay.sim._world import NETWORK, T0, World

__all__ = [
    "SimConfig", "SimPicture", "load_manifest", "render_report", "simulate",
    "simulate_with_picture",
]

LIAR_SCENARIOS = (("colluding", 0.2), ("fresh", 0.2), ("colluding", 0.3), ("fresh", 0.3))


def simulate(config: SimConfig, *, progress: Any = None) -> dict[str, Any]:
    """Run the main run and the experiments of ``config``; the report as a dict."""
    return simulate_with_picture(config, progress=progress)[0]


def simulate_with_picture(
    config: SimConfig, *, progress: Any = None
) -> tuple[dict[str, Any], SimPicture]:
    """``simulate``, and the data of the run's picture (taken at the end of the main run)."""

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    rng = random.Random(config.seed)
    clock = time.perf_counter()
    net = SimNetwork(config.nodes, random.Random(rng.getrandbits(64)), k=config.k,
                     rtt=(config.rtt_min, config.rtt_max), now=T0,
                     full_tables=not config.seed_nodes)
    say(f"network of {config.nodes} nodes built in {time.perf_counter() - clock:.1f} s")
    world = World(config, net, rng)
    world.run()
    say(f"main run: {world.counters.events} events, {time.perf_counter() - clock:.1f} s")
    drawing = picture(world, seed=config.seed)

    seekers = [world.nodes[i] for i in world.seekers]
    targets: dict[str, Any] = {}
    for target in config.targets:
        cap = target.capability
        times = [n.met_at[cap] for n in seekers if cap in n.met_at]
        # unmet seekers count as never: a percentile that lands on them is null
        padded = sorted(times) + [float("inf")] * (len(seekers) - len(times))
        stats = summary(padded)
        targets[cap] = {
            "target": target.to_mapping(),
            "holders": len(world.holders[cap]),
            "seekers": len(seekers),
            "met_pct": round(100.0 * len(times) / len(seekers), 2),
            "seconds_to_target": {
                k: (None if v is None or v == float("inf") else v) for k, v in stats.items()
            },
        }
    messages = [float(n.messages) for n in seekers]
    c = world.counters
    online = [i for i, n in enumerate(world.nodes) if n.online]
    now = world.now
    exp_rng = random.Random(rng.getrandbits(64))
    finds = {
        cap: find_trials(
            net, world.responder, world.lookup_config, exp_rng, network=NETWORK, capability=cap,
            holders=len(world.holders[cap]), origins=online, trials=config.find_trials,
            now=now, loss=config.loss, within=config.find_within,
        )
        for cap, _ in config.capabilities
    }
    say(f"find trials done, {time.perf_counter() - clock:.1f} s")
    lookups = node_lookups(net, world.responder, world.lookup_config, exp_rng, origins=online,
                           trials=config.lookup_trials, now=now, loss=config.loss)
    liars = []
    if config.liar_trials:
        for kind, share in LIAR_SCENARIOS:
            for paths in (1, 2):
                liars.append(liar_experiment(
                    net, random.Random(exp_rng.getrandbits(64)), world.lookup_config, kind=kind,
                    share=share, paths=paths, keys=config.liar_keys, trials=config.liar_trials,
                    now=now, loss=config.loss, ttl=config.provider_ttl,
                ))
                say(f"liars {kind} {share:.0%} paths={paths}: "
                    f"{liars[-1]['success_pct']} % success, {time.perf_counter() - clock:.1f} s")
    discover = world.provider_lookups
    report = {
        "config": {
            "nodes": config.nodes,
            "seed": config.seed,
            "duration": config.duration,
            "capabilities": {name: share for name, share in config.capabilities},
            "seekers": len(seekers),
            "churn_per_hour": config.churn_per_hour,
            "loss": config.loss,
            "rtt": [config.rtt_min, config.rtt_max],
            "k": config.k,
            "alpha": config.alpha,
            "query_timeout": config.query_timeout,
            "heartbeat": config.heartbeat,
            "max_connections": config.max_connections,
            "bootstrap_peers": config.bootstrap_peers,
            "seed_nodes": config.seed_nodes,
        },
        "time_to_target": targets,
        "seeker_messages": summary(messages, 1),
        "discover_lookups": {
            "count": len(discover),
            "rounds": summary([float(r) for r, _ in discover], 1),
            "messages": summary([float(m) for _, m in discover], 1),
        },
        "find_providers": finds,
        "dht_node_lookups": lookups,
        "liars": liars,
        "totals": {
            "events": c.events,
            "dials": c.dials,
            "dial_failures": c.dial_failures,
            "pex_requests": c.pex_requests,
            "pex_rate_limited": c.pex_rate_limited,
            "pex_records": c.pex_records,
            "dht_lookups": c.dht_lookups,
            "bootstrap_lookups": c.bootstrap_lookups,
            "publish_lookups": c.publish_lookups,
            "dht_messages": c.dht_messages,
            "policy_ticks": c.policy_ticks,
            "prunes": c.prunes,
            "discoveries": c.discoveries,
            "discover_pex_requests": c.discover_pex,
            "provider_lookups": c.provider_lookups,
            "leaves": c.leaves,
            "online_at_end": len(online),
        },
    }
    return report, drawing


def render_report(report: dict[str, Any]) -> bytes:
    """The report file's bytes (sorted keys, two-space indent, trailing newline)."""
    return (json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()
