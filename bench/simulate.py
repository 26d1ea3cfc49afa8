"""Long simulation runs (issue 11, item 5): 10,000 nodes (stretch: 100,000) of the real discovery
and routing cores on virtual time. Results and commands in docs/benchmarks.md ("Simulation").

    .venv/bin/python bench/simulate.py --nodes 10000 --seed 1 --manifest bench/sim_main.toml \
        --report bench-sim-10k.json --plot bench-sim-10k.png

(``bench/sim_main.toml``: the defaults without the liar experiment, which
``bench/sim_liars.py`` runs on its own; the main runs of docs/scale.md use it, at 100,000 nodes
too.)

Prints progress and the wall-clock time to stderr; the report is the same JSON that
``overlay simulate`` writes (byte-identical for the same nodes, seed and manifest).

``--lookups-only`` skips the main run and the other experiments: it builds the network and
runs ``--lookups`` FIND_NODE lookups to random targets from random nodes (every node online,
the manifest's loss), the DHT-efficiency figures of the report, at a fraction of the cost::

    .venv/bin/python bench/simulate.py --nodes 100000 --lookups-only --report sim-100k.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discovery import LookupConfig, ProviderStore
from overlay.sim import SimConfig, load_manifest, render_report, simulate_with_picture
from overlay.sim._experiments import node_lookups
from overlay.sim._net import SimNetwork, honest_responder
from overlay.sim._world import T0


def lookups_only(config: SimConfig, trials: int) -> dict[str, object]:
    start = time.perf_counter()
    rng = random.Random(config.seed)
    net = SimNetwork(config.nodes, random.Random(rng.getrandbits(64)), k=config.k,
                     rtt=(config.rtt_min, config.rtt_max), now=T0)
    built = time.perf_counter() - start
    print(f"network of {config.nodes} nodes built in {built:.1f} s", file=sys.stderr, flush=True)
    stores: dict[int, ProviderStore[int]] = {}
    responder = honest_responder(net, stores, lambda i: True, lambda: T0)
    lookup_config = LookupConfig(k=config.k, alpha=config.alpha,
                                 query_timeout=config.query_timeout)
    figures = node_lookups(net, responder, lookup_config, random.Random(rng.getrandbits(64)),
                           origins=list(range(config.nodes)), trials=trials, now=T0,
                           loss=config.loss)
    return {"nodes": config.nodes, "seed": config.seed, "k": config.k, "alpha": config.alpha,
            "loss": config.loss, "dht_node_lookups": figures,
            "network_build_s": round(built, 1),
            "lookups_s": round(time.perf_counter() - start - built, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="write the picture (PNG) here")
    parser.add_argument("--lookups-only", action="store_true",
                        help="only build the network and run FIND_NODE lookups")
    parser.add_argument("--lookups", type=int, default=500)
    args = parser.parse_args()
    config = load_manifest(args.manifest, nodes=args.nodes, seed=args.seed)
    start = time.perf_counter()
    if args.lookups_only:
        result = lookups_only(config, args.lookups)
        args.report.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"{time.perf_counter() - start:.1f} s wall clock, report in {args.report}",
              file=sys.stderr)
        return 0
    report, picture = simulate_with_picture(
        config, progress=lambda text: print(text, file=sys.stderr, flush=True)
    )
    args.report.write_bytes(render_report(report))
    if args.plot is not None:
        from overlay.testnet import plot_simulation

        plot_simulation(picture, args.plot)
    print(f"{args.nodes} nodes, seed {args.seed}: {time.perf_counter() - start:.1f} s wall clock, "
          f"report in {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
