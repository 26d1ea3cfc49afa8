"""``overlay testnet`` and ``overlay testnet init``: the command line of
:mod:`overlay.testnet` (the testnet itself lives there)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from overlay.errors import ConfigError
from overlay.testnet import (
    Manifest,
    Mode,
    build_report,
    dumps,
    init_testnet,
    load_manifest,
    manifest_from_flags,
    plot_run,
    plot_simulation,
    render_summary,
    run_manifest,
    view_for,
)

__all__ = ["add_testnet_parser", "cmd_testnet", "plot_simulation"]

TESTNET_HELP = ("run a local testnet (capabilities, targets, perturbations, live view, report, "
                "plot), or with 'init' write node homes and a Docker Compose file for it")


def _manifest(args: argparse.Namespace) -> Manifest:
    mode = Mode(args.mode) if args.mode is not None else None
    if args.manifest is not None:
        for flag, value in (("--cap", args.cap), ("--target", args.target)):
            if value:
                raise ConfigError(flag, "give capabilities and targets in the manifest "
                                        "when --manifest is used")
        return load_manifest(args.manifest, mode=mode)
    return manifest_from_flags(
        nodes=args.nodes, caps=args.cap or (), targets=args.target or (), seeds=args.seeds,
        mode=mode or Mode.INPROC, duration=args.duration, seed=args.seed, rate=args.rate,
    )


def cmd_testnet(args: argparse.Namespace, backend_options: Callable[[str], Any]) -> int:
    from overlay.cli._logging import setup_logging

    manifest = _manifest(args)
    if args.action == "init":
        if args.out is None:
            raise ConfigError("--out", "overlay testnet init needs --out DIR")
        plans = init_testnet(manifest, args.out, compose=args.compose)
        for plan in plans:
            print(f"{plan.spec.name}: {plan.advertised} "
                  f"{','.join(plan.spec.capabilities) or '-'}")
        print(f"wrote {len(plans)} homes to {args.out}"
              + (" with docker-compose.yml and Dockerfile" if args.compose else ""))
        return 0
    setup_logging("error", "text")

    async def main() -> dict[str, Any]:
        with view_for(sys.stdout) as view:
            result = await run_manifest(manifest, workdir=args.workdir, listener=view)
        if args.plot is not None:
            plot_run(result, args.plot)
        return build_report(result)

    report = anyio.run(main, backend=args.backend,
                       backend_options=backend_options(args.backend))
    print(render_summary(report))
    if args.report is not None:
        args.report.write_text(dumps(report))
        print(f"report written to {args.report}")
    if args.plot is not None:
        print(f"picture written to {args.plot}")
    return 0 if report["ok"] else 1


def add_testnet_parser(p: argparse.ArgumentParser, *, at_least: Callable[[int], Any],
                       seconds: Callable[[str], float], backend_help: str) -> None:
    p.add_argument("action", nargs="?", choices=("init",),
                   help="init: write per-node homes (config, key, seeds, capabilities, "
                        "targets) to --out instead of running")
    p.add_argument("--nodes", type=at_least(3), default=8,
                   help="number of nodes, seeds included (at least 3)")
    p.add_argument("--seeds", type=at_least(1), default=2,
                   help="seed nodes every node bootstraps from")
    p.add_argument("--cap", action="append", metavar="NAME=SHARE",
                   help="capability served by a share of the non-seed nodes: NAME=30%% or "
                        "NAME=3 (repeatable)")
    p.add_argument("--target", action="append", metavar="CAP:KEY=VALUE[,KEY=VALUE]",
                   help="target of every non-seed node, e.g. archive:min_peers=2 "
                        "(repeatable)")
    p.add_argument("--manifest", type=Path,
                   help="TOML manifest: groups, capabilities, targets, seeds, perturbations, "
                        "workload, success criteria (replaces --nodes/--cap/--target)")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=None,
                   help="inproc: one process, memory network; tcp: one process, loopback TCP; "
                        "procs: one 'overlay start' process per node (default: the manifest's, "
                        "else inproc)")
    p.add_argument("--duration", type=seconds, default=15.0, help="seconds the run lasts")
    p.add_argument("--rate", type=float, default=5.0,
                   help="role requests per second per node")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the random choices (which nodes serve what, node keys, the "
                        "workload)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--plot", type=Path,
                   help="write a PNG here: final topology and timeline (matplotlib)")
    p.add_argument("--workdir", type=Path,
                   help="procs mode: directory for the node homes (default: a temporary one)")
    p.add_argument("--out", type=Path, help="init: directory to write the homes to")
    p.add_argument("--compose", action="store_true",
                   help="init: also write docker-compose.yml and a Dockerfile")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                   help=backend_help)
