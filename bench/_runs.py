"""Repeated runs of ``bench/run.py`` (``--runs N``): each in its own interpreter, then
min / median / max of every figure and ratio.

Each run is a child ``bench/run.py`` process with the same options and ``--json`` to a
temporary file (a fresh process, so one run's heap, caches and loop do not carry into the
next). The summary keeps, per figure key, the value of ours, of the baseline, of the ratio and
of the CPU ratio in every run; the verdict comes from the **median**: the median ratio against
a ratio target, the median of ours against a value target.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Summary", "render_summary", "run_children", "summarise"]


def run_children(script: Path, child_args: Sequence[str], runs: int,
                 progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run ``script`` ``runs`` times with ``child_args`` (plus ``--json``) and return each
    run's JSON document; a run that fails stops the series with ``RuntimeError``."""
    documents: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="overlay-bench-") as tmp:
        for i in range(runs):
            out = Path(tmp) / f"run{i}.json"
            progress(f"run {i + 1} of {runs} (a separate process) ...")
            done = subprocess.run([sys.executable, str(script), *child_args, "--json", str(out)],
                                  stdout=subprocess.DEVNULL, check=False)
            if done.returncode != 0 or not out.exists():
                raise RuntimeError(f"run {i + 1} failed (exit status {done.returncode})")
            documents.append(json.loads(out.read_text()))
    return documents


@dataclass(frozen=True, slots=True)
class Summary:
    """One figure over every run."""

    key: str
    title: str
    unit: str
    target: dict[str, Any] | None
    ours: tuple[float, ...]
    baseline: tuple[float, ...]
    ratio: tuple[float, ...]
    cpu_ratio: tuple[float, ...]

    @property
    def verdict(self) -> str:
        """``PASS``/``MISS`` from the median (``-`` without a target)."""
        if self.target is None:
            return "-"
        kind, value = self.target["kind"], float(self.target["value"])
        if kind == "max":
            return "PASS" if statistics.median(self.ours) <= value else "MISS"
        if not self.ratio:
            return "MISS"
        median = statistics.median(self.ratio)
        return "PASS" if (median >= value if kind == "ratio_min" else median <= value) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        def spread(values: tuple[float, ...]) -> dict[str, float] | None:
            if not values:
                return None
            return {"min": min(values), "median": statistics.median(values), "max": max(values)}

        return {"key": self.key, "title": self.title, "unit": self.unit, "target": self.target,
                "verdict": self.verdict, "ours": spread(self.ours),
                "baseline": spread(self.baseline), "ratio": spread(self.ratio),
                "cpu_ratio": spread(self.cpu_ratio)}


def summarise(documents: Sequence[dict[str, Any]]) -> list[Summary]:
    """Group the figures of every run by key (in the first run's order)."""
    order: list[str] = []
    by_key: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        for figure in document["figures"]:
            if figure["key"] not in by_key:
                order.append(figure["key"])
            by_key.setdefault(figure["key"], []).append(figure)
    summaries = []
    for key in order:
        figures = by_key[key]
        first = figures[0]
        summaries.append(Summary(
            key=key, title=first["title"], unit=first["unit"], target=first["target"],
            ours=tuple(float(f["ours"]) for f in figures),
            baseline=tuple(float(f["baseline"]) for f in figures if f["baseline"] is not None),
            ratio=tuple(float(f["ratio"]) for f in figures if f["ratio"] is not None),
            cpu_ratio=tuple(float(f["extra"]["cpu_ratio"]) for f in figures
                            if "cpu_ratio" in f["extra"]),
        ))
    return summaries


def _value(value: float, unit: str) -> str:
    if unit in ("ms", "KiB/node", "us"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _ratio(value: float, as_times: bool) -> str:
    return f"{value:.2f}x" if as_times else f"{value * 100:.1f} %"


def _spread(values: tuple[float, ...], unit: str, as_ratio: bool, as_times: bool) -> str:
    if not values:
        return "-"
    spread = (min(values), statistics.median(values), max(values))
    if as_ratio:
        return " / ".join(_ratio(v, as_times) for v in spread)
    return " / ".join(_value(v, unit) for v in spread) + f" {unit}"


def _target(target: dict[str, Any] | None, unit: str) -> str:
    if target is None:
        return "-"
    kind, value = target["kind"], float(target["value"])
    if kind == "ratio_min":
        return f">= {value * 100:.0f} %"
    if kind == "ratio_max":
        return f"<= {value:g}x"
    return f"<= {value:g} {unit}"


def render_summary(summaries: Sequence[Summary], runs: int) -> str:
    """The table of ``--runs``: min / median / max of ours, the baseline and the ratios."""
    header = ("case", f"ours (min / median / max of {runs})", "baseline (median)",
              "ratio (min / median / max)", "CPU ratio (median)", "target", "result (median)")
    rows: list[tuple[str, ...]] = [header]
    for i, s in enumerate(summaries, 1):
        as_times = s.target is not None and s.target["kind"] in ("max", "ratio_max")
        baseline = f"{_value(statistics.median(s.baseline), s.unit)}" if s.baseline else "-"
        cpu = _ratio(statistics.median(s.cpu_ratio), as_times) if s.cpu_ratio else "-"
        rows.append((f"{i}. {s.title}", _spread(s.ours, s.unit, False, as_times), baseline,
                     _spread(s.ratio, s.unit, True, as_times), cpu, _target(s.target, s.unit),
                     s.verdict))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = []
    last = len(header) - 1
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, last)]
        cells.append(row[last].ljust(widths[last]))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
