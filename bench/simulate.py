"""Long simulation runs (issue 11, item 5): 10,000 nodes (stretch: 100,000) of the real discovery
and routing cores on virtual time. Results and commands in docs/benchmarks.md ("Simulation").

    .venv/bin/python bench/simulate.py --nodes 10000 --seed 1 --report bench-sim-10k.json \
        --plot bench-sim-10k.png

Prints progress and the wall-clock time to stderr; the report is the same JSON that
``overlay simulate`` writes (byte-identical for the same nodes, seed and manifest).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overlay.sim import load_manifest, render_report, simulate_with_picture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="write the picture (PNG) here")
    args = parser.parse_args()
    config = load_manifest(args.manifest, nodes=args.nodes, seed=args.seed)
    start = time.perf_counter()
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
