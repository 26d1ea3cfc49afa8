"""Capability routing benchmarks (issue 10): role requests with healthy and 30 % slow peers,
hedging on and off, and the time full in-process nodes take to meet their targets versus N.
Results and commands in docs/benchmarks.md ("Capability routing").

    .venv/bin/python bench/roles.py roles
    .venv/bin/python bench/roles.py targets --nodes 50 200

Everything runs real nodes (Noise, framing, router, peer manager, policy engine) over the
in-process memory network on trio's mock clock: latencies and times to targets are *virtual*
seconds (exact, link latency included), requests/s is wall-clock throughput of the whole
process (one core).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import trio
import trio.testing

import overlay  # noqa: F401  (before discovery: see docs/benchmarks.md)
from overlay.errors import OverlayError
from overlay.node import Node
from overlay.peers import PeerManagerConfig
from overlay.testing import LinkConditions, MemoryNetwork
from routing import CapabilityTarget, Role, TargetSet, TargetState
from tests.routing_hedging import run_workload
from tests.routing_network import SERVE, routing_network, spread

TARGETS = TargetSet.of(
    CapabilityTarget("blocksync", min_fraction=0.3),
    CapabilityTarget("archive", min_peers=2),
)


def _virtual(main: object) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def roles(requests: int) -> None:
    print("| slow peers | hedging | p50 (s) | p99 (s) | p99.9 (s) | max (s) | extra requests "
          "| requests/s (wall) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    cases = [
        ("none", 0, None), ("30 %, fixed", 3, None), ("30 %, moving every 200", 3, 200),
    ]

    async def main() -> None:
        for label, slow, rotate in cases:
            for hedging in (True, False):
                started = time.perf_counter()
                work = await run_workload(slow=slow, hedging=hedging, requests=requests,
                                          warmup=0, rotate_every=rotate)
                wall = time.perf_counter() - started
                print(f"| {label} | {'on' if hedging else 'off'} | {work.quantile(0.5):.3f} | "
                      f"{work.quantile(0.99):.3f} | {work.quantile(0.999):.3f} | "
                      f"{max(work.latencies):.3f} | {work.extra:.1%} | "
                      f"{work.requests / wall:.0f} |", flush=True)

    _virtual(main)


def _progress(text: str) -> None:
    """A progress line on stderr (a 1,000-node run takes many minutes)."""
    print(f"[{time.strftime('%H:%M:%S')} cpu {time.process_time():.0f} s] {text}",
          file=sys.stderr, flush=True)


def _met(node: Node) -> bool:
    statuses = node.routing.statuses()
    return len(statuses) == len(node.routing.targets) and all(
        s.state is TargetState.MET for s in statuses
    )


async def _role_requests(nodes: list[Node]) -> tuple[int, list[str]]:
    """Every node asks ``Role("blocksync")`` and ``Role("archive")`` once (all at once):
    the number of requests and what failed."""
    failed: list[str] = []
    sent = 0

    async def ask(node: Node, cap: str) -> None:
        try:
            response = await node.routing.request(node.channel(SERVE), Role(cap), b"q",
                                                  timeout=2)
            if response.value != response.peer.encode() or response.peer == node.node_id:
                failed.append(f"{node.node_id[:8]} {cap}: wrong answer")
        except OverlayError as exc:
            failed.append(f"{node.node_id[:8]} {cap}: {exc}")

    async with anyio.create_task_group() as tg:
        for node in nodes:
            for cap in ("blocksync", "archive"):
                sent += 1
                tg.start_soon(ask, node, cap)
    return sent, failed


def targets(sizes: list[int], timeout: float) -> None:
    print("| nodes | met | p50 (s) | p95 (s) | max (s) | role requests ok | start-up (wall s) "
          "| run (wall s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failures: list[str] = []

    async def one(n: int) -> None:
        plan = spread(n, {"blocksync": 0.3, "archive": 0.03})
        archive_nodes = sum("archive" in c for c in plan.capabilities)
        wanted = 2 * n // max(1, archive_nodes) + 16
        server = {"archive": PeerManagerConfig(max_connections=wanted, max_outbound=4)}
        network = MemoryNetwork(default_link=LinkConditions(latency=0.02))
        began = time.perf_counter()
        async with routing_network(plan, targets=TARGETS, server_peers=server,
                                   network=network, gossip=False) as nodes:
            up = time.perf_counter() - began
            _progress(f"{n} nodes up in {up:.1f} s")
            start = anyio.current_time()
            times: dict[int, float] = {}
            report = 0.0
            with anyio.move_on_after(timeout):
                while len(times) < n:
                    for i, node in enumerate(nodes):
                        if i not in times and _met(node):
                            times[i] = anyio.current_time() - start
                    if anyio.current_time() - start >= report:
                        _progress(f"virtual {report:.0f} s: {len(times)}/{n} met")
                        report += 5.0
                    await anyio.sleep(0.05)
            sent, failed = await _role_requests(nodes)
            failures.extend(failed)
            run = time.perf_counter() - began - up
        got = sorted(times.values()) or [float("nan")]
        print(f"| {n} | {len(times)}/{n} | {statistics.median(got):.2f} | "
              f"{got[int(0.95 * (len(got) - 1))]:.2f} | {got[-1]:.2f} | "
              f"{sent - len(failed)}/{sent} | {up:.1f} | {run:.1f} |", flush=True)

    async def main() -> None:
        for n in sizes:
            await one(n)

    # routing_network enters every node's context in one exit stack: the bench's own tasks
    # sit under one cancel scope per node, which trio walks recursively for a deadline
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * max(sizes) + 1000))

    _virtual(main)
    if failures:
        raise SystemExit("role requests failed:\n" + "\n".join(failures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("roles", help="role requests: healthy vs 30 %% slow, hedging on/off")
    p.add_argument("--requests", type=int, default=2000)
    p = sub.add_parser("targets", help="time for every node to meet its targets vs N")
    p.add_argument("--nodes", type=int, nargs="+", default=[50, 200])
    p.add_argument("--timeout", type=float, default=120.0, help="virtual seconds")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.what == "roles":
        roles(args.requests)
    else:
        targets(args.nodes, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
