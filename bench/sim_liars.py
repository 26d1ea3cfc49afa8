"""The DHT's defence against liars in the simulation (issue 11): provider lookups on N nodes
(the real ``discovery.Lookup``) with colluding liars and liars that mint fresh nearer ids, one
path (the control) against disjoint paths, with and without netgroup diversity. Results and
commands in docs/benchmarks.md ("Simulation") and docs/scale.md.

    .venv/bin/python bench/sim_liars.py --nodes 10000 --trials 1000

Prints one row per scenario (a Markdown table) and the wall-clock time to stderr. ``--shares 0``
gives the honest baseline (no liars) of the same lookups.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discovery import LookupConfig
from overlay.sim._experiments import liar_experiment
from overlay.sim._net import SimNetwork

HEADER = (
    "| liars | paths | netgroup diversity | density limit | success | all 3 providers "
    "| first provider rounds p95 | first provider messages p95 | messages p95 "
    "| honest replicas per provider p50 |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--kinds", nargs="+", default=["colluding", "fresh"],
                        choices=["colluding", "fresh", "fresh-colluding"])
    parser.add_argument("--shares", nargs="+", type=float, default=[0.2, 0.3])
    parser.add_argument("--paths", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--diversity", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--max-per-netgroup", type=int, default=LookupConfig().max_per_netgroup,
                        help="the lookups' per-path netgroup cap (LookupConfig)")
    parser.add_argument("--density", nargs="+", choices=["on", "off"], default=["off"],
                        help="the lookups' density limit (network size from the origin's "
                             "table)")
    parser.add_argument("--density-factor", type=float, default=LookupConfig().density_factor)
    parser.add_argument("--density-slack", type=int, default=LookupConfig().density_slack)
    parser.add_argument("--self-vouching", choices=["on", "off"], default="off",
                        help="on: query contacts named only by their own netgroup (the rule "
                             "off; LookupConfig.self_vouching)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = time.perf_counter()
    net = SimNetwork(args.nodes, random.Random(rng.getrandbits(64)), k=16, rtt=(0.05, 0.15),
                     now=0.0)
    config = LookupConfig(k=16, alpha=3, query_timeout=0.5,
                          max_per_netgroup=args.max_per_netgroup,
                          self_vouching=args.self_vouching == "on",
                          density_factor=args.density_factor, density_slack=args.density_slack)
    print(f"network of {args.nodes} built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(HEADER, flush=True)
    for kind in args.kinds:
        for share in args.shares:
            for diversity, density, paths in itertools.product(
                args.diversity, args.density, args.paths
            ):
                r = liar_experiment(
                    net, random.Random(args.seed * 1000 + paths), config, kind=kind,
                    share=share, paths=paths, keys=args.keys, trials=args.trials, now=0.0,
                    loss=0.01, ttl=7200.0, diversity=diversity == "on", density=density == "on",
                )
                print(
                    f"| {share:.0%} {kind} | {paths} | {diversity} | {density} "
                    f"| {r['success_pct']} % "
                    f"| {r['all_providers_pct']} % | {r['first_provider_rounds']['p95']} "
                    f"| {r['first_provider_messages']['p95']} | {r['messages']['p95']} "
                    f"| {r['honest_replicas_per_provider']['p50']} |", flush=True,
                )
    print(f"{time.perf_counter() - start:.1f} s wall clock", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
