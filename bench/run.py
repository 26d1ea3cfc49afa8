#!/usr/bin/env python3
"""Benchmark overlay against baselines measured in the same process, on the same event loop.

Usage (from the repository root)::

    python bench/run.py [--quick] [--json FILE] [--backend asyncio|uvloop|trio] [--profile]
                        [--cases 4,6,8] [--runs 3] [--libp2p-python PATH]

Cases (ours / baseline; the table prints the ratio next to the target):

1. 64-byte request/response round trips, one caller, TCP + Noise vs a plain TCP echo;
2. 256 requests in flight on one connection vs the same plain pipeline (length-prefixed);
3. bulk 1 MiB fire-and-forget messages vs plain streams writing 1 MiB chunks (MiB/s);
4. ``dial()`` = TCP connect + Noise + NodeInfo exchange, median and p90 (plain TCP connect for
   reference);
5. LOCAL delivery (``send(LOCAL, x)`` + ``receive()``) vs a bare memory stream or channel;
6. memory of an idle connected node in a 100-node ``MemoryNetwork`` (KiB per node);
7. fan-out: sender CPU per delivery of ``send(BROADCAST, 64 B)`` to 50 TCP peers vs one
   ``send(peer, 64 B)`` (target: at most half);
8. a full mesh on a ``MemoryNetwork``: time per dial at N = 200 vs N = 50 (``--quick``: 50 vs
   20; target: at most 2x).

"Plain" is asyncio streams and an anyio memory object stream on asyncio and uvloop, trio socket
streams and a trio memory channel on trio (``--backend``): ours and the baseline always share
one loop. ``--runs N`` repeats the run in N separate processes and prints min / median / max.
``--profile`` adds a cProfile breakdown of the round-trip case. py-libp2p is a second baseline
for round trips and connection set-up, run by the interpreter of its own venv
(``--libp2p-python`` or ``$OVERLAY_BENCH_LIBP2P_PYTHON``; it cannot share overlay's venv), or
in-process when it is importable. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # ``python bench/run.py`` from a fresh checkout
    sys.path.insert(0, str(_ROOT))


from bench import _baseline as base
from bench import _ours as ours
from bench._common import Figure, Rate, Settings, Target, best, machine_facts, percentile
from bench._libp2p import (
    LIBP2P_PYTHON_ENV,
    Libp2pResult,
    libp2p_available,
    libp2p_baseline,
    libp2p_figures,
    libp2p_notes,
    libp2p_subprocess,
)
from bench._loops import BACKENDS, Baselines, loop_named, missing_module
from bench._memnet import measure_memory, measure_mesh
from bench._profile import ProfileReport, profile_round_trips, render_profile
from bench._runs import render_summary, run_children, summarise

PAYLOAD = b"\x5a" * 64
IN_FLIGHT = 256
CHUNK = b"\xa5" * (1 << 20)
MIB = float(1 << 20)
FANOUT_PEERS = 50


_STARTED = time.perf_counter()


def _progress(message: str) -> None:
    print(f"{time.perf_counter() - _STARTED:6.1f} s  {message}", file=sys.stderr, flush=True)


async def _alternate(
    baseline: Callable[[], Awaitable[Rate]], mine: Callable[[], Awaitable[Rate]], rounds: int
) -> tuple[list[Rate], list[Rate]]:
    """Alternate baseline and ours ``rounds`` times (so load changes hit both alike)."""
    base_runs: list[Rate] = []
    our_runs: list[Rate] = []
    for _ in range(rounds):
        base_runs.append(await baseline())
        our_runs.append(await mine())
    return base_runs, our_runs


def _throughput(
    key: str,
    title: str,
    unit: str,
    runs: tuple[list[Rate], list[Rate]],
    baseline_name: str,
    target: Target,
    scale: float = 1.0,
) -> Figure:
    """A figure from alternated windows: the best wall-clock rate of each side is the figure;
    the best rate per CPU-second of each side gives the load-independent ``cpu_ratio``."""
    base_runs, our_runs = runs
    b, o = best(base_runs), best(our_runs)
    extra: dict[str, float] = {
        "cpu_ratio": o.per_cpu_second / b.per_cpu_second,
        "ours_per_cpu_second": o.per_cpu_second / scale,
        "baseline_per_cpu_second": b.per_cpu_second / scale,
        "ours_cpu_share": o.cpu_share,
        "baseline_cpu_share": b.cpu_share,
    }
    for side, rates in (("ours", our_runs), ("baseline", base_runs)):
        for i, rate in enumerate(rates):
            extra[f"{side}_window_{i}"] = rate.per_second / scale
    return Figure(key, title, unit, o.per_second / scale, b.per_second / scale, baseline_name,
                  target, extra)


ALL_CASES = frozenset(range(1, 9))
"""Case numbers as in the table (1 round trips ... 8 mesh)."""


def parse_cases(text: str) -> frozenset[int]:
    """``"1,2,3"`` or ``"1-3,5"`` -> the case numbers; every number must be a case."""
    cases: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a case list: {text!r}") from None
        cases.update(range(first, last + 1))
    if not cases or not cases <= ALL_CASES:
        raise argparse.ArgumentTypeError(f"cases are 1-8, got {text!r}")
    return frozenset(cases)


async def run_cases(s: Settings, cases: frozenset[int] = ALL_CASES,
                    plain: Baselines | None = None) -> list[Figure]:
    """Run ``cases`` against the ``plain`` baselines (default: asyncio's)."""
    plain = plain or loop_named("asyncio").baselines
    figures: list[Figure] = []
    w, d = s.warmup, s.duration
    memory_figures: list[Figure] = []
    if 6 in cases:
        memory_figures = [await _memory_case(s, discovery) for discovery in (False, True)]
    if 1 in cases:
        figures.append(await _round_trip_case(s, plain))
    if 2 in cases:
        _progress(f"[3/8] pipelined requests ({IN_FLIGHT} in flight) ...")
        runs = await _alternate(lambda: plain.pipelined(PAYLOAD, IN_FLIGHT, w, d),
                                lambda: ours.overlay_pipelined(PAYLOAD, IN_FLIGHT, w, d),
                                s.rounds)
        figures.append(_throughput("pipelined",
                                   f"64 B requests, {IN_FLIGHT} in flight, 1 connection",
                                   "req/s", runs, f"{plain.tcp_name} length-prefixed pipeline",
                                   Target("ratio_min", 1.0)))
        if plain.pipelined_reference is not None:  # trio: batched writes, for reference
            batched = best([await plain.pipelined_reference(PAYLOAD, IN_FLIGHT, w, d)
                            for _ in range(s.rounds)])
            figures[-1].extra["batched_baseline_per_second"] = batched.per_second
    if 3 in cases:
        _progress("[4/8] bulk 1 MiB messages ...")
        runs = await _alternate(lambda: plain.bulk(CHUNK, w, d),
                                lambda: ours.overlay_bulk(CHUNK, w, d), s.rounds)
        figures.append(_throughput("bulk", "bulk one-way, 1 MiB messages", "MiB/s", runs,
                                   f"{plain.tcp_name} streams, 1 MiB writes",
                                   Target("ratio_min", 0.3),
                                   MIB))
    if 4 in cases:
        figures.append(await _dial_case(s, plain))
    if 5 in cases:
        _progress("[6/8] LOCAL delivery ...")
        item = object()
        size = ours.LOCAL_SPEC.recv_queue_size
        runs = await _alternate(lambda: plain.local(size, item, w, d),
                                lambda: ours.overlay_local_rate(item, w, d), s.rounds)
        figures.append(_throughput("local", "LOCAL send + receive", "msg/s", runs,
                                   f"{plain.local_name} ({size} buffered)",
                                   Target("ratio_min", 0.5)))
    figures.extend(memory_figures)
    if 7 in cases:
        figures.append(await _fanout_case(s))
    if 8 in cases:
        figures.append(await _mesh_case(s))
    return figures


async def _memory_case(s: Settings, discovery: bool) -> Figure:
    what = "default config" if discovery else "discovery off"
    _progress(f"[1/8] memory ({what}): {s.nodes} nodes in a MemoryNetwork, "
              f"{s.fanout} dials each ...")
    mem = await measure_memory(s.nodes, s.fanout, discovery=discovery)
    return Figure(
        key="memory_default" if discovery else "memory",
        title=f"idle node, {mem.nodes}-node memory network, {what} (RSS)",
        unit="KiB/node",
        ours=mem.rss_kib_per_node,
        baseline=None,
        baseline_name="-",
        target=Target("max", 150.0),
        extra={
            "connections_per_node": 2 * mem.connections / mem.nodes,
            "rss_kib_per_node": mem.rss_kib_per_node,
            "tracemalloc_kib_per_node": mem.traced_kib_per_node,
            "nodes": mem.nodes,
            "connections": mem.connections,
            "dial_failures": mem.dial_failures,
            "build_seconds": mem.build_seconds,
        },
    )


async def _round_trip_case(s: Settings, plain: Baselines) -> Figure:
    w, d = s.warmup, s.duration
    _progress("[2/8] round trips (64 B, one caller) ...")
    runs = await _alternate(lambda: plain.round_trips(PAYLOAD, w, d),
                            lambda: ours.overlay_round_trips(PAYLOAD, w, d), s.rounds)
    round_trips = _throughput("round_trip", "64 B request/response, 1 caller (TCP+Noise)",
                              "req/s", runs, f"{plain.tcp_name} TCP echo",
                              Target("ratio_min", 0.5))
    anyio_echo = best([await base.anyio_round_trips(PAYLOAD, w, d) for _ in range(s.rounds)])
    round_trips.extra["anyio_echo_per_second"] = anyio_echo.per_second
    round_trips.extra["anyio_echo_per_cpu_second"] = anyio_echo.per_cpu_second
    return round_trips


async def _dial_case(s: Settings, plain: Baselines) -> Figure:
    _progress(f"[5/8] dial + disconnect x {s.dials} ...")
    tcp_times = await plain.connect_times(s.dials, 3)  # 3 warm-up connects
    dial_cpu: list[float] = []
    dial_times = await ours.overlay_dial_times(s.dials, warm=3, cpu=dial_cpu)
    ms = 1000.0
    return Figure(
        "dial", "dial(): TCP connect + Noise + NodeInfo (median)", "ms",
        statistics.median(dial_times) * ms, statistics.median(tcp_times) * ms,
        "plain TCP connect (reference)", Target("max", 1.5),
        {
            "ours_p90_ms": percentile(dial_times, 90) * ms,
            "ours_min_ms": min(dial_times) * ms,
            "ours_max_ms": max(dial_times) * ms,
            "baseline_p90_ms": percentile(tcp_times, 90) * ms,
            "cycles": float(len(dial_times)),
            "ours_cpu_median_ms": statistics.median(dial_cpu) * ms,
        },
    )


async def _fanout_case(s: Settings) -> Figure:
    _progress(f"[7/8] fan-out: BROADCAST to {FANOUT_PEERS} TCP peers vs single sends ...")
    singles, broadcasts = await ours.overlay_fanout_costs(PAYLOAD, FANOUT_PEERS, s.fanout_rounds)
    us = 1e6
    return Figure(
        "fanout", f"BROADCAST 64 B to {FANOUT_PEERS} peers, CPU per delivery (median)", "us",
        statistics.median(broadcasts) * us, statistics.median(singles) * us,
        "one send(peer) (CPU per call)", Target("ratio_max", 0.5),
        {"broadcast_min_us": min(broadcasts) * us, "single_min_us": min(singles) * us,
         "rounds": float(len(singles))},
    )


async def _mesh_case(s: Settings) -> Figure:
    small, large = s.mesh_sizes
    _progress(f"[8/8] full mesh: {small} nodes, then {large} nodes, one dial at a time ...")
    meshes = [await measure_mesh(n) for n in (small, large)]
    return Figure(
        "mesh", f"full mesh: time per dial at N = {large} vs N = {small}", "ms",
        meshes[1].ms_per_dial, meshes[0].ms_per_dial, f"time per dial at N = {small}",
        Target("ratio_max", 2.0),
        {f"n{m.nodes}_{key}": float(value) for m in meshes
         for key, value in (("dials", m.dials), ("failures", m.failures),
                            ("seconds", m.seconds), ("last_dial_ms", m.last_dial_ms),
                            ("connections", m.connections), ("complete", m.complete),
                            ("cpu_ms_per_dial", m.cpu_ms_per_dial))}
        | {"cpu_ratio": meshes[1].cpu_ms_per_dial / max(1e-9, meshes[0].cpu_ms_per_dial)},
    )


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "KiB/node", "us"):
        return f"{value:,.2f} {unit}"
    if unit == "MiB/s":
        return f"{value:,.0f} {unit}"
    return f"{value:,.0f} {unit}"


def render_table(figures: list[Figure]) -> str:
    header = ("case", "ours", "baseline", "ratio", "CPU ratio", "target", "result")
    rows: list[tuple[str, ...]] = [header]
    for i, f in enumerate(figures, 1):
        ratio = f.ratio
        if f.target is not None and f.target.kind in ("max", "ratio_max"):
            ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        else:
            ratio_text = f"{ratio * 100:.1f} %" if ratio is not None else "-"
        cpu = f.extra.get("cpu_ratio")
        if cpu is None:
            cpu_text = "-"
        elif f.target is not None and f.target.kind == "ratio_max":
            cpu_text = f"{cpu:.2f}x"
        else:
            cpu_text = f"{cpu * 100:.1f} %"
        rows.append((f"{i}. {f.title}", _fmt(f.ours, f.unit), _fmt(f.baseline, f.unit),
                     ratio_text, cpu_text, f.target.describe(f.unit) if f.target else "-",
                     f.verdict))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        last = len(header) - 1
        cells = [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, last)]
        cells.append(row[last].ljust(widths[last]))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_details(figures: list[Figure]) -> str:
    lines = []
    for f in figures:
        if f.key == "dial":
            e = f.extra
            lines.append(f"dial: p90 {e['ours_p90_ms']:.2f} ms, min {e['ours_min_ms']:.2f} ms, "
                         f"max {e['ours_max_ms']:.2f} ms over {e['cycles']:.0f} cycles; CPU "
                         f"(both ends) median {e['ours_cpu_median_ms']:.2f} ms; plain "
                         f"TCP connect p90 {e['baseline_p90_ms']:.3f} ms")
        elif f.key == "fanout":
            e = f.extra
            lines.append(f"fanout: {e['rounds']:.0f} alternated bursts; min per delivery: "
                         f"broadcast {e['broadcast_min_us']:.2f} us, single send "
                         f"{e['single_min_us']:.2f} us")
        elif f.key == "mesh":
            parts = []
            for key in sorted(k for k in f.extra if k.endswith("_dials")):
                n = key.split("_")[0]
                e = f.extra
                parts.append(f"{n[1:]} nodes: {e[key]:.0f} dials ({e[n + '_failures']:.0f} "
                             f"failed, {e[n + '_connections']:.0f} connections) in "
                             f"{e[n + '_seconds']:.1f} s, last node "
                             f"{e[n + '_last_dial_ms']:.2f} ms/dial, CPU "
                             f"{e[n + '_cpu_ms_per_dial']:.2f} ms/dial"
                             + ("" if e[n + "_complete"] else ", NOT FINISHED (time budget)"))
            lines.append("mesh: " + "; ".join(parts))
        elif f.key in ("memory", "memory_default"):
            e = f.extra
            lines.append(f"{f.key}: {e['nodes']:.0f} nodes, {e['connections']:.0f} connections "
                         f"({e['connections_per_node']:.1f} per node, "
                         f"{e['dial_failures']:.0f} failed dials), built in "
                         f"{e['build_seconds']:.2f} s; RSS {e['rss_kib_per_node']:.1f} KiB/node, "
                         f"tracemalloc {e['tracemalloc_kib_per_node']:.1f} KiB/node")
        elif f.baseline is not None and "ours_per_cpu_second" in f.extra:
            if "batched_baseline_per_second" in f.extra:
                lines.append(f"{f.key}: reference {f.baseline_name} with batched writes (one "
                             f"writer task): {f.extra['batched_baseline_per_second']:,.0f} req/s")
            if "anyio_echo_per_second" in f.extra:
                lines.append(f"{f.key}: reference anyio TCP echo (no overlay, no Noise): "
                             f"{f.extra['anyio_echo_per_second']:,.0f} req/s, "
                             f"{f.extra['anyio_echo_per_cpu_second']:,.0f} per CPU-second")
            ours_w = [v for k, v in f.extra.items() if k.startswith("ours_window")]
            base_w = [v for k, v in f.extra.items() if k.startswith("baseline_window")]
            e = f.extra
            lines.append(f"{f.key}: windows ours {', '.join(f'{v:,.0f}' for v in ours_w)}; "
                         f"baseline {', '.join(f'{v:,.0f}' for v in base_w)} ({f.unit}); "
                         f"per CPU-second ours {e['ours_per_cpu_second']:,.0f}, baseline "
                         f"{e['baseline_per_cpu_second']:,.0f}; CPU share of the best window "
                         f"ours {e['ours_cpu_share'] * 100:.0f} %, "
                         f"baseline {e['baseline_cpu_share'] * 100:.0f} %")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short windows (< 30 s in all)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="event loop of ours and the baselines (default: asyncio)")
    parser.add_argument("--uvloop", action="store_true", help="the same as --backend uvloop")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the round-trip case (cProfile + micro-timings)")
    parser.add_argument("--cases", default="1-8", metavar="LIST",
                        help="run only these cases, e.g. 1,2,3 or 1-3,5,7 (default: all)")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="repeat the run N times, each in a new process, and print min / "
                             "median / max (default: 1)")
    parser.add_argument("--libp2p-python", metavar="PATH",
                        default=os.environ.get(LIBP2P_PYTHON_ENV) or None,
                        help="interpreter of a venv with py-libp2p 0.8.1: the second baseline "
                             f"(default: ${LIBP2P_PYTHON_ENV})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.uvloop and args.backend not in (None, "uvloop"):
        parser.error(f"--uvloop contradicts --backend {args.backend}")
    backend: str = "uvloop" if args.uvloop else args.backend or "asyncio"
    try:
        cases = parse_cases(args.cases)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--cases: {exc}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if (missing := missing_module(backend)) is not None:
        parser.error(f"--backend {backend}: {missing}")
    if args.runs > 1:
        return _repeat(args, backend)
    loop = loop_named(backend)
    settings = Settings.make(args.quick)
    notes: list[str] = []
    started = time.perf_counter()
    _progress(f"overlay benchmarks ({'quick' if args.quick else 'full'}, {backend} loop)")
    if loop.name == "trio":
        notes.append("trio: the TCP baselines are trio.SocketStream (serve_tcp / "
                     "open_tcp_stream); LOCAL's baseline is a trio memory channel")
    figures: list[Figure] = loop.run(run_cases, settings, cases, loop.baselines)
    libp2p: Libp2pResult | None = None
    if {1, 4} <= cases and (args.libp2p_python or libp2p_available()):
        # Each (untimed) py-libp2p disconnect() sleeps 0.2 s, so a quarter of the dial cycles.
        connects = max(10, settings.dials // 4)
        where = args.libp2p_python or "this interpreter"
        _progress(f"[+] py-libp2p round trips, connect x {connects} (trio, {where}) ...")
        try:
            if args.libp2p_python:
                libp2p = libp2p_subprocess(args.libp2p_python, PAYLOAD, settings.warmup,
                                           settings.duration, settings.rounds, connects)
            else:
                libp2p = libp2p_baseline(PAYLOAD, settings.warmup, settings.duration,
                                         settings.rounds, connects)
        except Exception as exc:  # an optional baseline must never sink the run
            notes.append(f"py-libp2p baseline failed: {exc!r}")
        else:
            by_key = {f.key: f for f in figures}
            notes.extend(libp2p_notes(libp2p, by_key["round_trip"], by_key["dial"]))
            figures.extend(libp2p_figures(libp2p, by_key["round_trip"], by_key["dial"]))
    elif {1, 4} <= cases:
        notes.append(f"py-libp2p: not importable and neither --libp2p-python nor "
                     f"${LIBP2P_PYTHON_ENV} given: second baseline skipped")
    profile: ProfileReport | None = None
    if args.profile:
        _progress("[+] profiling the round-trip case ...")
        profile = loop.run(profile_round_trips, settings.profile_requests)
    elapsed = time.perf_counter() - started

    facts = machine_facts()
    print()
    print(f"overlay benchmarks: {'quick' if args.quick else 'full'} run, {backend} event loop, "
          f"Python {facts['python']}, {facts['nproc']} CPUs, {elapsed:.1f} s")
    print()
    print(render_table(figures))
    print()
    print(render_details(figures))
    for note in notes:
        print(f"note: {note}")
    if profile is not None:
        print()
        print(render_profile(profile))
    if args.json:
        document: dict[str, Any] = {
            "machine": facts,
            "loop": backend,
            "cases": sorted(cases),
            "quick": args.quick,
            "settings": {"warmup": settings.warmup, "duration": settings.duration,
                         "rounds": settings.rounds, "dials": settings.dials,
                         "nodes": settings.nodes, "fanout": settings.fanout},
            "elapsed_seconds": elapsed,
            "figures": [f.as_dict() for f in figures],
            "libp2p_round_trips": libp2p.round_trips.per_second if libp2p else None,
            "libp2p": libp2p.as_dict() if libp2p is not None else None,
            "notes": notes,
            "profile": profile.as_dict() if profile is not None else None,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        _progress(f"wrote {args.json}")
    return 0


def _repeat(args: argparse.Namespace, backend: str) -> int:
    """``--runs N``: N child runs, then the min / median / max table (and every run in JSON)."""
    child = ["--backend", backend, "--cases", args.cases]
    child += ["--quick"] * args.quick + ["--profile"] * args.profile
    if args.libp2p_python:
        child += ["--libp2p-python", args.libp2p_python]
    started = time.perf_counter()
    documents = run_children(Path(__file__).resolve(), child, args.runs, _progress)
    elapsed = time.perf_counter() - started
    summaries = summarise(documents)
    facts = machine_facts()
    print()
    print(f"overlay benchmarks: {args.runs} {'quick' if args.quick else 'full'} runs, {backend} "
          f"event loop, Python {facts['python']}, {facts['nproc']} CPUs, {elapsed:.1f} s")
    print()
    print(render_summary(summaries, args.runs))
    for i, document in enumerate(documents, 1):
        for note in document["notes"]:
            print(f"note (run {i}): {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": facts, "loop": backend, "quick": args.quick, "runs": documents,
             "summary": [s.as_dict() for s in summaries], "elapsed_seconds": elapsed},
            indent=2) + "\n")
        _progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
