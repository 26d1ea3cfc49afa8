"""Long testnet runs (hundreds of nodes) that do not belong in CI: one manifest, a mode, a
report and a picture. Results and commands in docs/benchmarks.md ("Testnets").

    .venv/bin/python bench/testnet.py --nodes 200 --mode inproc --duration 60 \\
        --report bench-testnet-200.json --plot bench-testnet-200.png

The manifest is the default one (testnets/default.toml) scaled to ``--nodes``: the same
capability shares and targets, its perturbations at the same times scaled to ``--duration``.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from overlay.testnet import (
    Mode,
    build_report,
    dumps,
    parse_manifest,
    plot_run,
    render_summary,
    run_manifest,
)

DEFAULT = Path(__file__).resolve().parent.parent / "testnets" / "default.toml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--mode", choices=[m.value for m in Mode], default="inproc")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    data = tomllib.loads(DEFAULT.read_text())
    scale = args.duration / data["testnet"]["duration"]
    data["testnet"].update(nodes=args.nodes, duration=args.duration,
                           seeds=max(2, args.nodes // 50))
    data["capabilities"]["archive"] = max(3, args.nodes // 20)
    for p in data["perturbations"]:
        p["at"] *= scale
        if "duration" in p:
            p["duration"] *= scale
    manifest = parse_manifest(data, mode=Mode(args.mode))
    start = time.perf_counter()
    result = anyio.run(run_manifest, manifest)
    report = build_report(result)
    report["wall_clock_s"] = round(time.perf_counter() - start, 1)
    args.report.write_text(dumps(report))
    if args.plot is not None:
        plot_run(result, args.plot)
    print(render_summary(report))
    print(f"wall clock {report['wall_clock_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
