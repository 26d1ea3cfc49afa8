"""The picture of a run (``--plot FILE.png``, matplotlib, no display needed).

Two panels: left, the final topology (nodes on a circle, seeds inside; each node coloured by its
first capability, grey when it serves none, hollow when down; an edge per connection); right,
the timeline: share of targets met per capability (left axis) and role-request latency p50 per
second (right axis, ms), with every perturbation shaded from start to end (a line when never
undone) and labelled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from overlay.testnet._report import RunResult, percentile, targets_status

__all__ = ["figure", "plot_run"]


def plot_run(result: RunResult, path: Path) -> None:
    """Draw ``result`` (see the module docstring) into the PNG file ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def figure(result: RunResult) -> Any:
    """The picture as a matplotlib figure (two titled panels; the timeline's latency axis is
    a twin of its panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = result.manifest
    caps = list(manifest.capabilities)
    cmap = plt.get_cmap("tab10")
    colour = {cap: cmap(i % 10) for i, cap in enumerate(caps)}
    fig, (topo, timeline) = plt.subplots(1, 2, figsize=(14, 6),
                                         gridspec_kw={"width_ratios": [1, 1.4]})
    # -- topology ----------------------------------------------------------------------------
    n = len(manifest.nodes)
    positions: dict[int, tuple[float, float]] = {}
    seeds = manifest.seeds
    others = [s.index for s in manifest.nodes if not s.seed]
    for k, i in enumerate(seeds):
        angle = 2 * math.pi * k / max(1, len(seeds))
        positions[i] = (0.3 * math.cos(angle), 0.3 * math.sin(angle))
    for k, i in enumerate(others):
        angle = 2 * math.pi * k / max(1, len(others))
        positions[i] = (math.cos(angle), math.sin(angle))
    last = result.ticks[-1] if result.ticks else None
    if last is not None:
        for i, sample in enumerate(last.nodes):
            for j in sample.peers:
                if j > i:
                    (x1, y1), (x2, y2) = positions[i], positions[j]
                    topo.plot([x1, x2], [y1, y2], color="0.75", linewidth=0.6, zorder=1)
    for spec in manifest.nodes:
        x, y = positions[spec.index]
        face: Any = colour[spec.capabilities[0]] if spec.capabilities else "0.6"
        up = last is None or last.nodes[spec.index].up
        topo.scatter([x], [y], s=160 if spec.seed else 90, marker="s" if spec.seed else "o",
                     facecolors=face if up else "none", edgecolors="black", zorder=2)
        if n <= 64:
            topo.annotate(spec.name, (x, y), fontsize=6, ha="center", va="center", zorder=3)
    for cap in caps:
        topo.scatter([], [], color=colour[cap], label=cap)
    topo.scatter([], [], color="0.6", label="no capability")
    topo.scatter([], [], marker="s", color="white", edgecolors="black", label="seed")
    topo.legend(loc="lower left", fontsize=7, frameon=False)
    topo.set_title("final topology (colour: capability)")
    topo.set_aspect("equal")
    topo.axis("off")
    # -- timeline ----------------------------------------------------------------------------
    times = [t.t for t in result.ticks]
    for cap in sorted({c for s in manifest.nodes for t in s.targets for c in [t.capability]}):
        shares = []
        for tick in result.ticks:
            met, total = targets_status(manifest, tick).get(cap, (0, 0))
            shares.append(met / total if total else float("nan"))
        timeline.plot(times, shares, label=f"targets met: {cap}",
                      color=colour.get(cap, "black"), linewidth=1.5)
    timeline.set_ylim(-0.05, 1.05)
    timeline.set_xlabel("seconds since start")
    timeline.set_ylabel("share of targeted nodes meeting the target")
    latency = timeline.twinx()
    seconds = int(manifest.duration) + 1
    buckets: list[list[float]] = [[] for _ in range(seconds + 1)]
    for r in result.requests:
        second = int(r.t - result.t0)
        if r.ok and 0 <= second <= seconds:
            buckets[second].append(r.latency * 1000)
    xs = [s + 0.5 for s, b in enumerate(buckets) if b]
    ys = [percentile(b, 50) or 0.0 for b in buckets if b]
    latency.plot(xs, ys, color="black", linestyle=":", linewidth=1, label="request p50 (ms)")
    latency.set_ylabel("role-request latency p50 (ms)")
    for log in result.perturbations:
        if log.ended is not None:
            timeline.axvspan(log.started, log.ended, color="red", alpha=0.12)
        else:
            timeline.axvline(log.started, color="red", linewidth=1)
        timeline.annotate(log.perturbation.label(), (log.started, 1.02), fontsize=7,
                          color="red", rotation=30, ha="left", va="bottom")
    lines = timeline.get_legend_handles_labels()
    extra = latency.get_legend_handles_labels()
    timeline.legend(lines[0] + extra[0], lines[1] + extra[1], loc="lower right", fontsize=7)
    timeline.set_title("targets met and request latency (perturbations in red)")
    fig.tight_layout()
    return fig
