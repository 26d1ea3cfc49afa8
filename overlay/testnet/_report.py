"""What a testnet run measured, and the verdict: pure functions over the samples.

The harness samples every node twice a second (:class:`Tick`: up, connected peers, traffic)
and collects every role request (:class:`~overlay.testnet._app.RequestRecord`). From those:

* **targets met**: node ``i`` meets its target for capability ``C`` when its connected peers
  serving ``C`` number at least ``required(connected)`` of the target, capped by the providers
  of ``C`` that are up (other than ``i``): a target cannot ask for more than exists. Measured
  by the harness from the connections it sees, whatever the node's own routing believes.
* **converged**: every up node meets every target and has at least one peer.
* **time to targets** per capability: for each targeted node, the first tick it met the
  target in full (not capped by absent providers); p50/p95/max over the nodes (nodes that
  never did are counted as ``never``).
* **re-convergence** after a perturbation: from its end (or its start, when it is never
  undone) to the first tick where every up node has a peer and the share of targets met is
  back to at least its value just before the perturbation.
* **requests**: success share and latency percentiles (nearest rank), overall and within each
  perturbation's window (from its start to its re-convergence, or 5 s after its end).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from overlay.testnet._app import RequestRecord
from overlay.testnet._cluster import NodeSample
from overlay.testnet._manifest import Manifest, Perturbation

__all__ = ["PerturbationLog", "RunResult", "Tick", "build_report", "render_summary"]


@dataclass(frozen=True, slots=True)
class Tick:
    t: float
    """Seconds since the start."""
    nodes: tuple[NodeSample, ...]


@dataclass(frozen=True, slots=True)
class PerturbationLog:
    """A perturbation as it happened (times in seconds since the start)."""

    perturbation: Perturbation
    started: float
    ended: float | None = None


@dataclass(slots=True)
class RunResult:
    manifest: Manifest
    ticks: list[Tick] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    perturbations: list[PerturbationLog] = field(default_factory=list)
    t0: float = 0.0
    """The run's clock at the start (see ``overlay.testnet._runner``; request records carry
    times on the same clock)."""
    meta: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def targets_status(manifest: Manifest, tick: Tick) -> dict[str, tuple[int, int]]:
    """Per capability: (targeted up nodes meeting it, targeted up nodes)."""
    up = {i for i, s in enumerate(tick.nodes) if s.up}
    out: dict[str, tuple[int, int]] = {}
    for spec in manifest.nodes:
        if spec.index not in up:
            continue
        sample = tick.nodes[spec.index]
        for target in spec.targets:
            if not target.wanted:
                continue
            providers = set(manifest.providers(target.capability)) & up - {spec.index}
            have = len(sample.peers & providers)
            need = min(target.required(len(sample.peers)), len(providers))
            met, total = out.get(target.capability, (0, 0))
            out[target.capability] = (met + (have >= need), total + 1)
    return out


def converged(manifest: Manifest, tick: Tick) -> bool:
    if any(s.up and not s.peers for s in tick.nodes):
        return False
    return all(met == total for met, total in targets_status(manifest, tick).values())


def _first_met(manifest: Manifest, ticks: Sequence[Tick]) -> dict[str, list[float | None]]:
    firsts: dict[tuple[int, str], float] = {}
    for tick in ticks:
        for spec in manifest.nodes:
            sample = tick.nodes[spec.index]
            if not sample.up:
                continue
            up = {i for i, s in enumerate(tick.nodes) if s.up}
            for target in spec.targets:
                key = (spec.index, target.capability)
                if key in firsts or not target.wanted:
                    continue
                providers = set(manifest.providers(target.capability)) & up - {spec.index}
                need = target.required(len(sample.peers))
                if need <= len(providers) and len(sample.peers & providers) >= need:
                    firsts[key] = tick.t  # really met, not capped by absent providers
    out: dict[str, list[float | None]] = {}
    for spec in manifest.nodes:
        for target in spec.targets:
            if target.wanted:
                out.setdefault(target.capability, []).append(
                    firsts.get((spec.index, target.capability)))
    return out


def _request_stats(records: Sequence[RequestRecord]) -> dict[str, Any]:
    latencies = [r.latency for r in records if r.ok]
    errors = Counter(r.error for r in records if not r.ok)
    return {
        "requests": len(records),
        "ok": len(latencies),
        "success": (len(latencies) / len(records)) if records else None,
        "latency_ms": {q: _ms(percentile(latencies, n))
                       for q, n in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "errors": dict(errors.most_common()),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def met_share(manifest: Manifest, tick: Tick) -> float:
    """Share of the targeted (up node, capability) pairs met (1.0 when none is targeted)."""
    status = targets_status(manifest, tick).values()
    total = sum(t for _, t in status)
    return sum(m for m, _ in status) / total if total else 1.0


def reconvergence(result: RunResult, log: PerturbationLog) -> float | None:
    """Seconds from the perturbation's end (its start, if never undone) until the network is
    back where it was just before it: every up node has a peer and the share of targets met is
    at least what it was (all met, when the network had converged)."""
    manifest = result.manifest
    before = [t for t in result.ticks if t.t < log.started]
    baseline = met_share(manifest, before[-1]) if before else 1.0
    since = log.ended if log.ended is not None else log.started
    for tick in result.ticks:
        if tick.t < since or any(s.up and not s.peers for s in tick.nodes):
            continue
        if met_share(manifest, tick) >= baseline - 1e-9:
            return tick.t - since
    return None


def build_report(result: RunResult) -> dict[str, Any]:
    """The JSON report (``--report FILE``; fields in docs/testnet-guide.md)."""
    manifest = result.manifest
    requests = [r for r in result.requests]
    rel = [(r.t - result.t0, r) for r in requests]
    to_targets = {}
    for cap, firsts in sorted(_first_met(manifest, result.ticks).items()):
        reached = [t for t in firsts if t is not None]
        to_targets[cap] = {
            "nodes": len(firsts), "never": len(firsts) - len(reached),
            "p50": _round(percentile(reached, 50)), "p95": _round(percentile(reached, 95)),
            "max": _round(max(reached, default=None)),
        }
    perturbations = []
    for log in result.perturbations:
        p = log.perturbation
        back = reconvergence(result, log)
        end = (log.ended if log.ended is not None else log.started)
        window_end = end + back if back is not None else end + 5.0
        around = [r for t, r in rel if log.started <= t <= window_end]
        perturbations.append({
            "kind": p.kind.value, "label": p.label(), "at": round(log.started, 3),
            "ended": _round(log.ended), "nodes": [f"n{i}" for i in p.nodes],
            "reconverge_s": _round(back), "requests": _request_stats(around),
        })
    last = result.ticks[-1] if result.ticks else None
    final = targets_status(manifest, last) if last is not None else {}
    per_node: list[dict[str, Any]] = []
    for spec in manifest.nodes:
        sample = last.nodes[spec.index] if last is not None else NodeSample(up=False)
        per_node.append({
            "name": spec.name, "group": spec.group, "capabilities": list(spec.capabilities),
            "seed": spec.seed, "up": sample.up, "peers": sorted(f"n{i}" for i in sample.peers),
            "messages": sample.messages, "bytes": sample.bytes,
        })
    report: dict[str, Any] = {
        "mode": manifest.mode.value,
        "nodes": len(manifest.nodes),
        "duration": manifest.duration,
        "seed": manifest.seed,
        **result.meta,
        "time_to_targets_s": to_targets,
        "targets_met_at_end": {cap: {"met": m, "of": t} for cap, (m, t) in sorted(final.items())},
        "requests": _request_stats(requests),
        "perturbations": perturbations,
        "per_node": per_node,
        "messages_per_node": _spread([n["messages"] for n in per_node]),
        "bytes_per_node": _spread([n["bytes"] for n in per_node]),
        "timeline": [
            {"t": round(tick.t, 3), "up": sum(s.up for s in tick.nodes),
             "connections": sum(len(s.peers) for s in tick.nodes) // 2,
             "targets_met": {cap: round(m / t, 4) if t else None
                             for cap, (m, t) in sorted(targets_status(manifest, tick).items())}}
            for tick in result.ticks
        ],
    }
    report["failures"] = failures(result, report)
    report["ok"] = not report["failures"]
    return report


def _spread(values: Sequence[int]) -> dict[str, float | None]:
    return {"mean": round(sum(values) / len(values), 1) if values else None,
            "p50": percentile([float(v) for v in values], 50),
            "max": max(values, default=None)}


def failures(result: RunResult, report: dict[str, Any]) -> list[str]:
    """The success criteria that failed, each named."""
    criteria = result.manifest.criteria
    out = []
    met = sum(v["met"] for v in report["targets_met_at_end"].values())
    total = sum(v["of"] for v in report["targets_met_at_end"].values())
    if total and met / total < criteria.targets_met:
        out.append(f"targets_met: {met}/{total} targets met at the end, "
                   f"criterion {criteria.targets_met:.0%}")
    success = report["requests"]["success"]
    if result.manifest.workload.rate > 0:
        if success is None:
            out.append("request_success: no role request was made")
        elif success < criteria.request_success:
            out.append(f"request_success: {success:.1%} of role requests succeeded, "
                       f"criterion {criteria.request_success:.0%}")
    if criteria.targets_within is not None:
        for cap, row in report["time_to_targets_s"].items():
            if row["never"] or (row["max"] or 0) > criteria.targets_within:
                out.append(f"targets_within: {cap} not met on every node within "
                           f"{criteria.targets_within:g} s (max {row['max']}, "
                           f"never {row['never']})")
    if criteria.reconverge_within is not None:
        for row in report["perturbations"]:
            back = row["reconverge_s"]
            if back is None or back > criteria.reconverge_within:
                out.append(f"reconverge_within: after {row['label']} at {row['at']} s: "
                           f"{'never' if back is None else f'{back} s'}, criterion "
                           f"{criteria.reconverge_within:g} s")
    return out


def render_summary(report: dict[str, Any]) -> str:
    """The text summary printed at the end of a run."""
    req = report["requests"]
    lat = req["latency_ms"]
    lines = [
        f"testnet: {report['nodes']} nodes, mode {report['mode']}, {report['duration']:g} s, "
        f"bootstrap: {report.get('bootstrap', '?')}",
        f"  requests ({report.get('request_kind', '?')}): {req['ok']}/{req['requests']} ok"
        + (f" ({req['success']:.1%})" if req["success"] is not None else "")
        + f", latency p50 {lat['p50']} ms p95 {lat['p95']} ms max {lat['max']} ms",
    ]
    if req["errors"]:
        lines.append("  request errors: " + ", ".join(f"{k} {v}" for k, v in req["errors"].items()))
    for cap, row in report["time_to_targets_s"].items():
        end = report["targets_met_at_end"].get(cap, {"met": 0, "of": 0})
        lines.append(f"  targets {cap}: met {end['met']}/{end['of']} at the end; reached in "
                     f"p50 {row['p50']} s p95 {row['p95']} s max {row['max']} s"
                     + (f", never on {row['never']} nodes" if row["never"] else ""))
    for row in report["perturbations"]:
        lines.append(f"  {row['at']:>7.2f} s {row['label']}: re-converged "
                     + (f"after {row['reconverge_s']} s" if row["reconverge_s"] is not None
                        else "never") + f", requests ok {row['requests']['ok']}/"
                     f"{row['requests']['requests']}")
    lines.append(f"  messages per node: mean {report['messages_per_node']['mean']}, "
                 f"bytes per node: mean {report['bytes_per_node']['mean']}")
    lines.append("  result: " + ("OK" if report["ok"] else "FAILED: "
                                 + "; ".join(report["failures"])))
    return "\n".join(lines)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1, sort_keys=False) + "\n"
