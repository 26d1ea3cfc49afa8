"""Shared pieces of the benchmark suite: figures, targets, rate measurement, machine facts.

A *figure* is one measured case: our number, the baseline's number measured in the same process
and on the same event loop, and the target (a minimum ratio ours / baseline, or a maximum value).
Throughput cases use :func:`measure_rate`: worker tasks bump a :class:`Counter`; after a warm-up
the counter is sampled at the start and the end of a fixed window of wall-clock time. The
process CPU time (user + system: both ends of every loopback connection live in this process) is
sampled too: operations per CPU-second do not depend on what else the machine is running, so
they give a fair ratio on a shared or loaded machine where wall-clock rates are noisy.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc

__all__ = [
    "Counter",
    "Figure",
    "Rate",
    "Settings",
    "Target",
    "best",
    "machine_facts",
    "measure_rate",
    "percentile",
    "rss_bytes",
]


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how often each case runs."""

    quick: bool
    """True for ``--quick`` (the whole run in well under 30 s)."""
    warmup: float
    """Seconds of traffic before a throughput window starts."""
    duration: float
    """Seconds of one throughput window."""
    rounds: int
    """Alternating baseline/ours windows per case; the best window of each side is kept."""
    dials: int
    """Measured dial + disconnect cycles."""
    nodes: int
    """Nodes of the memory-network case."""
    fanout: int
    """Peers each node of the memory-network case dials."""
    profile_requests: int
    """Round trips run under cProfile by ``--profile``."""
    fanout_rounds: int
    """Alternated bursts (50 single sends, one BROADCAST to 50 peers) of the fan-out case."""
    mesh_sizes: tuple[int, int]
    """Full meshes built by the mesh case: time per dial of the second vs the first."""

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick=True, warmup=0.15, duration=0.6, rounds=1, dials=50, nodes=100,
                       fanout=8, profile_requests=3000, fanout_rounds=50, mesh_sizes=(20, 50))
        return cls(quick=False, warmup=0.5, duration=2.5, rounds=3, dials=200, nodes=100,
                   fanout=8, profile_requests=20000, fanout_rounds=300, mesh_sizes=(50, 200))


@dataclass(frozen=True, slots=True)
class Target:
    """A goal: ``ratio_min`` means ours / baseline ≥ value; ``ratio_max`` means ours / baseline
    ≤ value (a cost against a reference cost); ``max`` means ours ≤ value."""

    kind: Literal["ratio_min", "ratio_max", "max"]
    value: float

    def describe(self, unit: str) -> str:
        if self.kind == "ratio_min":
            return f">= {self.value * 100:.0f} %"
        if self.kind == "ratio_max":
            return f"<= {self.value:g}x"
        return f"<= {self.value:g} {unit}"


@dataclass(frozen=True, slots=True)
class Figure:
    """One case's result."""

    key: str
    """Short identifier (used in JSON)."""
    title: str
    """What was measured."""
    unit: str
    """Unit of ``ours`` and ``baseline``."""
    ours: float
    """Our figure."""
    baseline: float | None
    """The baseline's figure (None when there is none)."""
    baseline_name: str
    """What the baseline is."""
    target: Target | None
    """The goal, if any."""
    extra: dict[str, float] = field(default_factory=dict)
    """Further figures of the case (p90, counts, the other side's details)."""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    @property
    def verdict(self) -> str:
        """``PASS``, ``MISS`` or ``-`` (no target)."""
        target = self.target
        if target is None:
            return "-"
        if target.kind == "ratio_min":
            ratio = self.ratio
            return "PASS" if ratio is not None and ratio >= target.value else "MISS"
        if target.kind == "ratio_max":
            ratio = self.ratio
            return "PASS" if ratio is not None and ratio <= target.value else "MISS"
        return "PASS" if self.ours <= target.value else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "target": None if self.target is None
            else {"kind": self.target.kind, "value": self.target.value},
            "verdict": self.verdict,
            "extra": dict(self.extra),
        }


@dataclass(frozen=True, slots=True)
class Rate:
    """One throughput window."""

    per_second: float
    """Operations per wall-clock second."""
    per_cpu_second: float
    """Operations per second of this process's CPU time (user + system)."""
    cpu_share: float
    """CPU time / wall time over the window (1.0: the process never waited for a CPU or I/O)."""


def best(rates: Sequence[Rate]) -> Rate:
    """The best wall-clock rate and, independently, the best CPU-time rate of several windows."""
    top = max(rates, key=lambda r: r.per_second)
    return Rate(top.per_second, max(r.per_cpu_second for r in rates), top.cpu_share)


class Counter:
    """A mutable operation counter shared by worker tasks."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


async def measure_rate(
    start: Callable[[anyio.abc.TaskGroup, Counter], None], warmup: float, duration: float
) -> Rate:
    """Start workers with ``start(tg, counter)``, then measure counter increments per second
    over ``duration`` seconds following ``warmup`` seconds; the workers are cancelled after."""
    counter = Counter()
    async with anyio.create_task_group() as tg:
        start(tg, counter)
        await anyio.sleep(warmup)
        n0, t0, c0 = counter.n, time.perf_counter(), time.process_time()
        await anyio.sleep(duration)
        n1, t1, c1 = counter.n, time.perf_counter(), time.process_time()
        tg.cancel_scope.cancel()
    ops, wall, cpu = n1 - n0, t1 - t0, max(c1 - c0, 1e-9)
    return Rate(ops / wall, ops / cpu, cpu / wall)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank on the sorted values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm`` (0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def machine_facts() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 0),
        "anyio": ver("anyio"),
        "cryptography": ver("cryptography"),
        "uvloop": ver("uvloop"),
    }
