"""The picture of a run (``--plot FILE.png``, matplotlib, no display needed), for a testnet
(``plot_run``) and for a simulation (``plot_simulation``): both become one ``Picture`` (plain
data) drawn by ``draw``.

Two panels: left, the final topology (nodes on a circle, the inner group inside: a testnet's
seeds, a simulation's seekers; each node coloured by its first capability, grey when it serves
none, hollow when down; an edge per connection); right, the timeline: share of targets met per
capability (left axis) and a latency p50 per second (right axis, ms: role requests in a
testnet, provider lookups in a simulation), with every perturbation shaded from start to end (a
line when never undone) and labelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.sim import SimPicture
from overlay.testnet._report import RunResult, percentile, targets_status

__all__ = ["Picture", "draw", "figure", "plot_run", "plot_simulation", "simulation_figure"]

TOPOLOGY_TITLE = "final topology (colour: capability)"


@dataclass(frozen=True, slots=True)
class PicNode:
    label: str
    capabilities: tuple[str, ...]
    inner: bool
    up: bool


@dataclass(frozen=True, slots=True)
class Mark:
    label: str
    start: float
    end: float | None


@dataclass(frozen=True, slots=True)
class Picture:
    """What ``draw`` draws (times in seconds since the start)."""

    capabilities: tuple[str, ...]
    nodes: tuple[PicNode, ...]
    edges: tuple[tuple[int, int], ...]
    """Index pairs into ``nodes``."""
    inner_label: str
    topology_title: str
    met: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]
    """(capability, times, share of targeted nodes meeting it)."""
    latency: tuple[tuple[float, ...], tuple[float, ...]]
    """(times, p50 in ms)."""
    latency_label: str
    marks: tuple[Mark, ...]
    timeline_title: str


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def plot_run(result: RunResult, path: Path) -> None:
    """Draw a testnet's ``result`` (see the module docstring) into the PNG file ``path``."""
    _save(figure(result), path)


def plot_simulation(picture: SimPicture, path: Path) -> None:
    """Draw a simulation's picture data into the PNG file ``path``."""
    _save(simulation_figure(picture), path)


def _p50_per_second(samples: list[tuple[float, float]], seconds: int
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    buckets: list[list[float]] = [[] for _ in range(seconds + 1)]
    for t, ms in samples:
        if 0 <= int(t) <= seconds:
            buckets[int(t)].append(ms)
    xs = tuple(s + 0.5 for s, b in enumerate(buckets) if b)
    ys = tuple(percentile(b, 50) or 0.0 for b in buckets if b)
    return xs, ys


def figure(result: RunResult) -> Any:
    """A testnet's picture as a matplotlib figure (two titled panels; the timeline's latency
    axis is a twin of its panel)."""
    manifest = result.manifest
    last = result.ticks[-1] if result.ticks else None
    nodes = tuple(
        PicNode(spec.name, tuple(spec.capabilities), spec.seed,
                last is None or last.nodes[spec.index].up)
        for spec in manifest.nodes
    )
    edges: list[tuple[int, int]] = []
    if last is not None:
        edges = [(i, j) for i, sample in enumerate(last.nodes) for j in sample.peers if j > i]
    met = []
    targeted = sorted({t.capability for s in manifest.nodes for t in s.targets})
    for cap in targeted:
        shares = []
        for tick in result.ticks:
            ok, total = targets_status(manifest, tick).get(cap, (0, 0))
            shares.append(ok / total if total else float("nan"))
        met.append((cap, tuple(t.t for t in result.ticks), tuple(shares)))
    latency = _p50_per_second(
        [(r.t - result.t0, r.latency * 1000) for r in result.requests if r.ok],
        int(manifest.duration) + 1,
    )
    marks = tuple(Mark(log.perturbation.label(), log.started, log.ended)
                  for log in result.perturbations)
    return draw(Picture(
        capabilities=tuple(manifest.capabilities), nodes=nodes, edges=tuple(edges),
        inner_label="seed", topology_title=TOPOLOGY_TITLE, met=tuple(met), latency=latency,
        latency_label="role-request latency p50 (ms)", marks=marks,
        timeline_title="targets met and request latency (perturbations in red)",
    ))


def simulation_figure(sim: SimPicture) -> Any:
    """A simulation's picture: a sample of the nodes (every holder of a rare capability, some
    seekers, random others; see ``overlay.sim.SimPicture``), the connections among them, the
    share of seekers that reached each target, provider-lookup latency, and churn."""
    nodes = tuple(
        PicNode(f"n{i}", caps, seeker, up)
        for i, caps, seeker, up in zip(sim.sample, sim.capabilities_of, sim.seeker, sim.up,
                                       strict=True)
    )
    met = tuple((cap, times, shares) for cap, times, shares in sim.met)
    latency = _p50_per_second(list(sim.lookup_latency), int(sim.duration) + 1)
    marks = tuple(Mark("churn", t, None) for t in sim.leaves[:1]) + tuple(
        Mark("", t, None) for t in sim.leaves[1:]
    )
    return draw(Picture(
        capabilities=sim.all_capabilities, nodes=nodes, edges=sim.edges,
        inner_label="seeker (has targets)",
        topology_title=f"{TOPOLOGY_TITLE}, {len(nodes)} of {sim.total_nodes} nodes",
        met=met, latency=latency, latency_label="provider-lookup latency p50 (ms)",
        marks=marks, timeline_title="targets met and lookup latency (churn in red)",
    ))


def draw(picture: Picture) -> Any:
    """Draw ``picture`` (see the module docstring) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    colour = {cap: cmap(i % 10) for i, cap in enumerate(picture.capabilities)}
    fig, (topo, timeline) = plt.subplots(1, 2, figsize=(14, 6),
                                         gridspec_kw={"width_ratios": [1, 1.4]})
    # -- topology ----------------------------------------------------------------------------
    n = len(picture.nodes)
    positions: list[tuple[float, float]] = [(0.0, 0.0)] * n
    inner = [i for i, node in enumerate(picture.nodes) if node.inner]
    outer = [i for i, node in enumerate(picture.nodes) if not node.inner]
    for radius, group in ((0.3, inner), (1.0, outer)):
        for k, i in enumerate(group):
            angle = 2 * math.pi * k / max(1, len(group))
            positions[i] = (radius * math.cos(angle), radius * math.sin(angle))
    width = 0.6 if len(picture.edges) < 500 else 0.2
    for i, j in picture.edges:
        (x1, y1), (x2, y2) = positions[i], positions[j]
        topo.plot([x1, x2], [y1, y2], color="0.75", linewidth=width, zorder=1)
    size = 1.0 if n <= 64 else 0.3
    for i, node in enumerate(picture.nodes):
        x, y = positions[i]
        face: Any = colour[node.capabilities[0]] if node.capabilities else "0.6"
        topo.scatter([x], [y], s=(160 if node.inner else 90) * size,
                     marker="s" if node.inner else "o",
                     facecolors=face if node.up else "none", edgecolors="black", zorder=2)
        if n <= 64:
            topo.annotate(node.label, (x, y), fontsize=6, ha="center", va="center", zorder=3)
    for cap in picture.capabilities:
        topo.scatter([], [], color=colour[cap], label=cap)
    topo.scatter([], [], color="0.6", label="no capability")
    topo.scatter([], [], marker="s", color="white", edgecolors="black",
                 label=picture.inner_label)
    topo.legend(loc="lower left", fontsize=7, frameon=False)
    topo.set_title(picture.topology_title)
    topo.set_aspect("equal")
    topo.axis("off")
    # -- timeline ----------------------------------------------------------------------------
    for cap, times, shares in picture.met:
        timeline.plot(times, shares, label=f"targets met: {cap}",
                      color=colour.get(cap, "black"), linewidth=1.5)
    timeline.set_ylim(-0.05, 1.05)
    timeline.set_xlabel("seconds since start")
    timeline.set_ylabel("share of targeted nodes meeting the target")
    latency = timeline.twinx()
    xs, ys = picture.latency
    latency.plot(xs, ys, color="black", linestyle=":", linewidth=1,
                 label=picture.latency_label.replace(" latency", ""))
    latency.set_ylabel(picture.latency_label)
    for mark in picture.marks:
        if mark.end is not None:
            timeline.axvspan(mark.start, mark.end, color="red", alpha=0.12)
        else:
            timeline.axvline(mark.start, color="red", linewidth=1)
        if mark.label:
            timeline.annotate(mark.label, (mark.start, 1.02), fontsize=7, color="red",
                              rotation=30, ha="left", va="bottom")
    lines = timeline.get_legend_handles_labels()
    extra = latency.get_legend_handles_labels()
    timeline.legend(lines[0] + extra[0], lines[1] + extra[1], loc="lower right", fontsize=7)
    timeline.set_title(picture.timeline_title)
    fig.tight_layout()
    return fig
