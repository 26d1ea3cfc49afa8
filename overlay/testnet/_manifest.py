"""The testnet manifest: which nodes run, what they serve and want, what breaks when, what load
they carry and what counts as success. Pure: TOML mappings in, frozen dataclasses out.

A manifest is a TOML file (``overlay testnet --manifest FILE``) or the same mapping built from
the command line's flags (:func:`manifest_from_flags`). Every error is a
:class:`~overlay.errors.ConfigError` whose key is the dotted path of the offending field
(``perturbations[2].at``, ``capabilities.archive``, ``groups[0].targets.archive.min_peers``), so a
bad manifest says where it is wrong. The format is documented in ``docs/testnet-guide.md``.

Node names are ``n0`` .. ``n{N-1}``; the first ``seeds`` nodes (default 2) are seed nodes
(``[discovery] seed_mode``) that every other node bootstraps from. Groups (``[[groups]]``) take
the nodes after the seeds in order; the nodes left over form the group ``default``.
Capabilities from ``[capabilities]`` (``NAME = "30%"`` or ``NAME = 3``) are spread over the
non-seed nodes by the manifest's ``seed``; targets from ``[targets]`` apply to every node (a
group's own ``targets`` replace them for its nodes).
"""

from __future__ import annotations

import enum
import math
import random
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discovery._keys import valid_capability_name
from overlay.errors import ConfigError
from routing._targets import TargetSet, parse_target_assignments, parse_targets

__all__ = [
    "Criteria",
    "Manifest",
    "Mode",
    "NodeSpec",
    "Perturbation",
    "PerturbationKind",
    "Workload",
    "load_manifest",
    "manifest_from_flags",
    "parse_manifest",
]


class Mode(enum.StrEnum):
    """How the nodes run."""

    INPROC = "inproc"
    """One process, the in-memory network (``overlay.testing.MemoryNetwork``)."""
    TCP = "tcp"
    """One process, loopback TCP through the harness's relay."""
    PROCS = "procs"
    """One ``overlay start`` process per node, loopback TCP through the relay."""


class PerturbationKind(enum.StrEnum):
    KILL = "kill"
    """Stop the nodes abruptly (procs: SIGKILL; in one process: the node is cancelled);
    restart them after ``duration`` (none: they stay down)."""
    PAUSE = "pause"
    """SIGSTOP the nodes' processes, SIGCONT after ``duration`` (procs mode only)."""
    DISCONNECT = "disconnect"
    """Cut every link of the nodes (connections broken, dials fail) for ``duration``."""
    PARTITION = "partition"
    """Split the network into ``groups`` (or the first ``fraction`` of the nodes and the rest)
    for ``duration``, then heal."""
    LATENCY = "latency"
    """Add ``latency`` seconds one way to every link of the nodes (all when none are named)."""
    LOSS = "loss"
    """Delay a ``loss`` share of the chunks on the nodes' links by a retransmission (200 ms)."""
    PROVIDERS_LEAVE = "providers_leave"
    """Every node serving ``capability`` shuts down; back after ``duration`` (none: never)."""


_LINK_KINDS = (PerturbationKind.DISCONNECT, PerturbationKind.PARTITION,
               PerturbationKind.LATENCY, PerturbationKind.LOSS)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the testnet."""

    index: int
    name: str
    group: str
    capabilities: tuple[str, ...] = ()
    targets: TargetSet = field(default_factory=TargetSet)
    seed: bool = False
    """A seed node (``[discovery] seed_mode``): every node lists the seeds."""


@dataclass(frozen=True, slots=True)
class Perturbation:
    """Something that happens to the network at ``at`` seconds after the start."""

    at: float
    kind: PerturbationKind
    nodes: tuple[int, ...] = ()
    """Indexes of the nodes it acts on (link kinds: none means every link)."""
    duration: float | None = None
    """Seconds until it is undone (restart, SIGCONT, heal, links restored); None: never."""
    groups: tuple[tuple[int, ...], ...] = ()
    """A partition's groups (node indexes); nodes in no group form one more group."""
    capability: str = ""
    latency: float = 0.0
    loss: float = 0.0

    @property
    def end(self) -> float | None:
        return None if self.duration is None else self.at + self.duration

    def label(self) -> str:
        what = self.capability or ",".join(f"n{i}" for i in self.nodes[:4])
        if len(self.nodes) > 4:
            what += f",+{len(self.nodes) - 4}"
        if self.kind is PerturbationKind.PARTITION:
            what = "/".join(str(len(g)) for g in self.groups)
        return f"{self.kind.value}({what})" if what else self.kind.value


@dataclass(frozen=True, slots=True)
class Workload:
    """Role-addressed requests every node sends."""

    rate: float = 5.0
    """Requests per second per node (0: no workload)."""
    capabilities: tuple[str, ...] = ()
    """Roles requested (each request picks one at random); empty: every capability served."""
    timeout: float = 2.0
    """Seconds a request may take."""
    payload: int = 64
    """Request payload bytes."""


@dataclass(frozen=True, slots=True)
class Criteria:
    """What a successful run needs (each failed criterion is named in the result)."""

    targets_met: float = 1.0
    """Share of the targeted (node, capability) pairs met at the end of the run."""
    request_success: float = 0.9
    """Share of role requests that succeeded over the whole run."""
    targets_within: float | None = None
    """Every capability reaches its targets on all nodes within this many seconds (p100)."""
    reconverge_within: float | None = None
    """Seconds after each perturbation ends by which the targets are met again."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A whole testnet run."""

    nodes: tuple[NodeSpec, ...]
    mode: Mode = Mode.INPROC
    duration: float = 20.0
    seed: int = 1
    network: str = "overlay-testnet"
    perturbations: tuple[Perturbation, ...] = ()
    workload: Workload = field(default_factory=Workload)
    criteria: Criteria = field(default_factory=Criteria)

    @property
    def capabilities(self) -> tuple[str, ...]:
        return tuple(sorted({c for n in self.nodes for c in n.capabilities}))

    def providers(self, capability: str) -> tuple[int, ...]:
        return tuple(n.index for n in self.nodes if capability in n.capabilities)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(n.index for n in self.nodes if n.seed)


# -- parsing ---------------------------------------------------------------------------------

_TOP = ("testnet", "capabilities", "targets", "groups", "perturbations", "workload", "criteria")
_TESTNET = ("nodes", "seeds", "mode", "duration", "seed", "network")
_GROUP = ("name", "count", "capabilities", "targets")
_PERTURBATION = ("at", "kind", "nodes", "group", "duration", "groups", "fraction",
                 "capability", "latency", "loss")


def _table(value: object, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a table, got {type(value).__name__}")
    return value


def _known(table: Mapping[str, Any], known: Sequence[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown field (known: {', '.join(known)})")


def _int(value: object, key: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(key, f"must be {bound}, got {value}")
    return value


def _number(value: object, key: str, *, positive: bool = False, lo: float = 0.0,
            hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < lo or number > hi or (positive and number <= 0):
        what = "a positive number" if positive else f"a number in [{lo:g}, {hi:g}]"
        raise ConfigError(key, f"must be {what}, got {value!r}")
    return number


def _names(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    return tuple(value)


def _capability(name: object, key: str) -> str:
    if not isinstance(name, str) or not valid_capability_name(name):
        raise ConfigError(key, f"{name!r} is not a capability name (a-z, 0-9, _.-; 1-32)")
    return name


def _share(text: object, key: str, eligible: int) -> int:
    """``"30%"`` or ``3`` as a node count out of ``eligible``."""
    if isinstance(text, str) and text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ConfigError(key, f"expected a percentage like \"30%\", got {text!r}") from None
        if not 0 <= percent <= 100:
            raise ConfigError(key, f"a percentage must be within 0..100, got {text!r}")
        return max(1, round(percent / 100 * eligible)) if percent else 0
    count = _int(text, key, 0)
    if count > eligible:
        raise ConfigError(key, f"{count} nodes asked, only {eligible} non-seed nodes exist")
    return count


def parse_manifest(data: Mapping[str, Any], *, mode: Mode | None = None) -> Manifest:
    """Build a :class:`Manifest` from a TOML mapping (see the module docstring);
    ``mode`` overrides ``testnet.mode``."""
    data = _table(data, "<manifest>")
    _known(data, _TOP, "")
    top = _table(data.get("testnet", {}), "testnet")
    _known(top, _TESTNET, "testnet.")
    raw_groups = data.get("groups", [])
    if not isinstance(raw_groups, list):
        raise ConfigError("groups", "must be an array of tables ([[groups]])")
    grouped = 0
    for i, g in enumerate(raw_groups):
        grouped += _int(_table(g, f"groups[{i}]").get("count", 0), f"groups[{i}].count", 1)
    seeds = _int(top.get("seeds", 2), "testnet.seeds", 1)
    total = _int(top.get("nodes", seeds + max(grouped, 2)), "testnet.nodes", 2, 2000)
    if seeds >= total:
        raise ConfigError("testnet.seeds", f"{seeds} seeds leave no other node of {total}")
    if seeds + grouped > total:
        raise ConfigError("groups", f"{grouped} grouped nodes and {seeds} seeds exceed "
                                    f"testnet.nodes = {total}")
    try:
        chosen = Mode(mode if mode is not None else top.get("mode", "inproc"))
    except ValueError:
        raise ConfigError("testnet.mode", f"must be one of inproc, tcp, procs; got "
                                          f"{top.get('mode')!r}") from None
    duration = _number(top.get("duration", 20.0), "testnet.duration", positive=True)
    seed = _int(top.get("seed", 1), "testnet.seed", 0)
    network = top.get("network", "overlay-testnet")
    if not isinstance(network, str) or not 1 <= len(network) <= 64:
        raise ConfigError("testnet.network", "must be 1 to 64 characters")

    common = parse_targets(_table(data.get("targets", {}), "targets"))
    names = [f"n{i}" for i in range(total)]
    group_of = ["seed"] * seeds + ["default"] * (total - seeds)
    caps: list[set[str]] = [set() for _ in range(total)]
    targets = [TargetSet() if i < seeds else common for i in range(total)]
    start = seeds
    for i, g in enumerate(raw_groups):
        prefix = f"groups[{i}]."
        _known(g, _GROUP, prefix)
        name = g.get("name", f"group{i}")
        if not isinstance(name, str) or not name or name in ("seed", "default"):
            raise ConfigError(f"{prefix}name", f"must be a name other than seed/default, "
                                               f"got {name!r}")
        own_caps = tuple(_capability(c, f"{prefix}capabilities[{j}]")
                         for j, c in enumerate(_names(g.get("capabilities", []),
                                                      f"{prefix}capabilities")))
        own_targets = (_group_targets(g["targets"], f"{prefix}targets") if "targets" in g
                       else common)
        for k in range(start, start + g["count"]):
            group_of[k] = name
            caps[k].update(own_caps)
            targets[k] = own_targets
        start += g["count"]

    rng = random.Random(seed)
    eligible = list(range(seeds, total))
    spread = _table(data.get("capabilities", {}), "capabilities")
    for cap, share in spread.items():
        key = f"capabilities.{cap}"
        _capability(cap, key)
        for k in rng.sample(eligible, _share(share, key, len(eligible))):
            caps[k].add(cap)

    nodes = tuple(
        NodeSpec(index=i, name=names[i], group=group_of[i], capabilities=tuple(sorted(caps[i])),
                 targets=targets[i], seed=i < seeds)
        for i in range(total)
    )
    groups_by_name: dict[str, tuple[int, ...]] = {}
    for node in nodes:
        groups_by_name[node.group] = (*groups_by_name.get(node.group, ()), node.index)
    raw_perturbations = data.get("perturbations", [])
    if not isinstance(raw_perturbations, list):
        raise ConfigError("perturbations", "must be an array of tables ([[perturbations]])")
    perturbations = tuple(
        _perturbation(_table(p, f"perturbations[{i}]"), f"perturbations[{i}].", names,
                      groups_by_name, nodes, chosen, duration)
        for i, p in enumerate(raw_perturbations)
    )
    manifest = Manifest(
        nodes=nodes, mode=chosen, duration=duration, seed=seed, network=network,
        perturbations=tuple(sorted(perturbations, key=lambda p: p.at)),
        workload=_workload(_table(data.get("workload", {}), "workload"), nodes),
        criteria=_criteria(_table(data.get("criteria", {}), "criteria")),
    )
    return manifest


def _group_targets(value: object, key: str) -> TargetSet:
    try:
        return parse_targets(_table(value, key))
    except ConfigError as exc:
        raise ConfigError(f"{key}{exc.key.removeprefix('targets')}",
                          str(exc).split(": ", 1)[-1]) from None


def _node_refs(value: object, key: str, names: list[str],
               groups: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    out: list[int] = []
    for j, ref in enumerate(_names(value, key)):
        if ref in names:
            out.append(names.index(ref))
        elif ref in groups:
            out.extend(groups[ref])
        else:
            raise ConfigError(f"{key}[{j}]", f"{ref!r} names no node (n0..n{len(names) - 1}) "
                                             f"and no group ({', '.join(sorted(groups))})")
    return tuple(dict.fromkeys(out))


def _perturbation(p: Mapping[str, Any], prefix: str, names: list[str],
                  groups: Mapping[str, tuple[int, ...]], nodes: tuple[NodeSpec, ...],
                  mode: Mode, run: float) -> Perturbation:
    _known(p, _PERTURBATION, prefix)
    if "at" not in p:
        raise ConfigError(f"{prefix}at", "missing: seconds after the start")
    at = _number(p["at"], f"{prefix}at")
    if at >= run:
        raise ConfigError(f"{prefix}at", f"{at:g} s is not within the run ({run:g} s)")
    try:
        kind = PerturbationKind(str(p.get("kind")))
    except ValueError:
        raise ConfigError(f"{prefix}kind", f"must be one of "
                                           f"{', '.join(k.value for k in PerturbationKind)}; "
                                           f"got {p.get('kind')!r}") from None
    if kind is PerturbationKind.PAUSE and mode is not Mode.PROCS:
        raise ConfigError(f"{prefix}kind", "pause (SIGSTOP) needs --mode procs")
    duration = (_number(p["duration"], f"{prefix}duration", positive=True)
                if "duration" in p else None)
    refs: tuple[int, ...] = ()
    if "nodes" in p:
        refs = _node_refs(p["nodes"], f"{prefix}nodes", names, groups)
    if "group" in p:
        group = p["group"]
        if group not in groups:
            raise ConfigError(f"{prefix}group", f"no group {group!r} "
                                                f"({', '.join(sorted(groups))})")
        refs = tuple(dict.fromkeys((*refs, *groups[group])))
    capability = ""
    split: tuple[tuple[int, ...], ...] = ()
    latency = loss = 0.0
    match kind:
        case PerturbationKind.KILL | PerturbationKind.PAUSE | PerturbationKind.DISCONNECT:
            if not refs:
                raise ConfigError(f"{prefix}nodes", f"{kind.value} needs nodes or a group")
        case PerturbationKind.PARTITION:
            if "groups" in p:
                raw = p["groups"]
                if not isinstance(raw, list) or len(raw) < 1:
                    raise ConfigError(f"{prefix}groups", "must be a list of node lists")
                split = tuple(_node_refs(g, f"{prefix}groups[{j}]", names, groups)
                              for j, g in enumerate(raw))
            elif "fraction" in p:
                share = _number(p["fraction"], f"{prefix}fraction", lo=0.0, hi=1.0)
                first = max(1, min(len(names) - 1, round(share * len(names))))
                split = (tuple(range(first)),)
            else:
                raise ConfigError(f"{prefix}groups", "a partition needs groups or fraction")
            if duration is None:
                raise ConfigError(f"{prefix}duration", "a partition needs a duration (heal)")
        case PerturbationKind.LATENCY:
            if "latency" not in p:
                raise ConfigError(f"{prefix}latency", "missing: one-way seconds")
            latency = _number(p["latency"], f"{prefix}latency", lo=0.0, hi=10.0)
        case PerturbationKind.LOSS:
            if "loss" not in p:
                raise ConfigError(f"{prefix}loss", "missing: a probability")
            loss = _number(p["loss"], f"{prefix}loss", lo=0.0, hi=1.0)
        case PerturbationKind.PROVIDERS_LEAVE:
            capability = _capability(p.get("capability"), f"{prefix}capability")
            refs = tuple(n.index for n in nodes if capability in n.capabilities)
            if not refs:
                raise ConfigError(f"{prefix}capability", f"no node serves {capability!r}")
    if kind not in _LINK_KINDS and kind is not PerturbationKind.PROVIDERS_LEAVE and not refs:
        raise ConfigError(f"{prefix}nodes", "names no node")
    return Perturbation(at=at, kind=kind, nodes=refs, duration=duration, groups=split,
                        capability=capability, latency=latency, loss=loss)


def _workload(w: Mapping[str, Any], nodes: tuple[NodeSpec, ...]) -> Workload:
    _known(w, ("rate", "capabilities", "timeout", "payload"), "workload.")
    served = {c for n in nodes for c in n.capabilities}
    caps = tuple(_capability(c, f"workload.capabilities[{j}]")
                 for j, c in enumerate(_names(w.get("capabilities", []),
                                              "workload.capabilities")))
    for j, c in enumerate(caps):
        if c not in served:
            raise ConfigError(f"workload.capabilities[{j}]", f"no node serves {c!r}")
    return Workload(
        rate=_number(w.get("rate", 5.0), "workload.rate", lo=0.0, hi=1000.0),
        capabilities=caps,
        timeout=_number(w.get("timeout", 2.0), "workload.timeout", positive=True),
        payload=_int(w.get("payload", 64), "workload.payload", 1, 65536),
    )


def _criteria(c: Mapping[str, Any]) -> Criteria:
    _known(c, ("targets_met", "request_success", "targets_within", "reconverge_within"),
           "criteria.")

    def seconds(key: str) -> float | None:
        return _number(c[key], f"criteria.{key}", positive=True) if key in c else None

    return Criteria(
        targets_met=_number(c.get("targets_met", 1.0), "criteria.targets_met", lo=0, hi=1),
        request_success=_number(c.get("request_success", 0.9), "criteria.request_success",
                                lo=0, hi=1),
        targets_within=seconds("targets_within"),
        reconverge_within=seconds("reconverge_within"),
    )


def load_manifest(path: str | Path, *, mode: Mode | None = None) -> Manifest:
    """Read and check a manifest file; every problem raises :class:`ConfigError`."""
    target = Path(path)
    try:
        data = tomllib.loads(target.read_text())
    except OSError as exc:
        raise ConfigError("--manifest", f"cannot read {target}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--manifest", f"{target} is not valid TOML: {exc}") from exc
    return parse_manifest(data, mode=mode)


def manifest_from_flags(
    *,
    nodes: int,
    caps: Sequence[str] = (),
    targets: Sequence[str] = (),
    seeds: int = 2,
    mode: Mode = Mode.INPROC,
    duration: float = 20.0,
    seed: int = 1,
    rate: float = 5.0,
) -> Manifest:
    """The manifest the command-line flags describe: ``--cap NAME=30%`` / ``NAME=3`` and
    ``--target CAP:key=value[,key=value]``."""
    spread: dict[str, object] = {}
    for text in caps:
        name, sep, share = text.partition("=")
        if not sep:
            raise ConfigError("--cap", f"expected NAME=COUNT or NAME=PERCENT%, got {text!r}")
        spread[name] = share if share.endswith("%") else _count(share, f"capabilities.{name}")
    table: dict[str, dict[str, int | float]] = {}
    for text in targets:
        cap, sep, words = text.partition(":")
        if not sep:
            raise ConfigError("--target", f"expected CAP:key=value[,key=value], got {text!r}")
        table[cap] = parse_target_assignments(cap, words.split(",")).to_mapping()
    data = {
        "testnet": {"nodes": nodes, "seeds": seeds, "duration": duration, "seed": seed},
        "capabilities": spread, "targets": table, "workload": {"rate": rate},
    }
    return parse_manifest(data, mode=mode)


def _count(text: str, key: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(key, f"expected a node count or a percentage, got {text!r}") from None
