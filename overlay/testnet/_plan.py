"""From a manifest to each node's configuration: keys, addresses, seeds, capabilities and
targets, as the ``config.toml`` mapping ``overlay start`` reads.

Capabilities go into ``[discovery] capabilities``; targets into ``[routing] targets`` when this
build's :class:`~overlay.node.NodeConfig` has a ``routing`` section (else the harness keeps
them: it measures the targets itself either way, from the connections it sees). Seed nodes
run with ``[discovery] seed_mode``; every node lists the seeds in ``[peers] seeds``. On a build
without the PEX service (``overlay.node._pex``) a node would only ever learn the seeds, so each
non-seed node also gets :data:`FALLBACK_ADDRESSES` random other nodes as seeds, and the report
says so (``"bootstrap"``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlay.identity import NodeId, NodeKey
from overlay.node._config import NodeConfig
from overlay.node._configio import from_mapping
from overlay.testnet._app import AppConfig
from overlay.testnet._manifest import Manifest, NodeSpec

__all__ = [
    "FALLBACK_ADDRESSES",
    "NodePlan",
    "has_pex",
    "has_routing_config",
    "plan_nodes",
]

FALLBACK_ADDRESSES = 3
"""Extra random seeds per node when the build has no PEX service."""


def has_pex() -> bool:
    """Whether the node runs the PEX service on this build."""
    return importlib.util.find_spec("overlay.node._pex") is not None


def has_routing_config() -> bool:
    """Whether :class:`NodeConfig` has a ``[routing]`` section (targets) on this build."""
    return any(f.name == "routing" for f in dataclasses.fields(NodeConfig))


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node, ready to run."""

    spec: NodeSpec
    key: NodeKey
    host: str
    """Its own listen host (``127.A.B.1``; a synthetic host in the memory network)."""
    port: int
    """Listen port (0: any free port)."""
    advertised: str
    """The address others dial (``ID@HOST:PORT`` or ``memory:ID``)."""
    mapping: Mapping[str, Any]
    """The node's ``config.toml`` as a mapping."""
    app: AppConfig

    @property
    def node_id(self) -> NodeId:
        return self.key.node_id

    def config(self) -> NodeConfig:
        return from_mapping(NodeConfig, self.mapping)


def bootstrap_label() -> str:
    return ("seeds + PEX/DHT" if has_pex() else
            f"seeds + {FALLBACK_ADDRESSES} random addresses per node (fallback: no PEX service "
            "in this build)")


def plan_nodes(
    manifest: Manifest,
    keys: Sequence[NodeKey],
    *,
    hosts: Sequence[str],
    ports: Sequence[int],
    advertised: Sequence[str],
    listen: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> list[NodePlan]:
    """Each node's plan. ``listen[i]`` is what node ``i`` listens on, ``advertised[i]`` what the
    others dial; ``extra`` is merged into every mapping (admin, metrics, log sections)."""
    rng = random.Random(manifest.seed ^ 0x5EED)
    seeds = [advertised[i] for i in manifest.seeds]
    pex = has_pex()
    ids = [k.node_id for k in keys]
    providers = {cap: tuple(ids[i] for i in manifest.providers(cap))
                 for cap in manifest.capabilities}
    plans = []
    for spec in manifest.nodes:
        i = spec.index
        my_seeds = [s for j, s in zip(manifest.seeds, seeds, strict=True) if j != i]
        if not pex and not spec.seed:
            others = [j for j in range(len(manifest.nodes))
                      if j != i and j not in manifest.seeds]
            my_seeds += [advertised[j] for j in rng.sample(others, min(FALLBACK_ADDRESSES,
                                                                      len(others)))]
        mapping: dict[str, Any] = {
            "network": manifest.network,
            "moniker": spec.name,
            "listen": [listen[i]],
            "connection": {"dial_from_listen_host": True},
            "peers": {"seeds": my_seeds, "dial_timeout": 3.0, "backoff_cap": 5.0,
                      "disconnect_cooldown": 2.0},
            "discovery": {"capabilities": list(spec.capabilities), "seed_mode": spec.seed},
        }
        if advertised[i] != listen[i] and "@" in advertised[i]:
            mapping["external_addresses"] = [advertised[i]]
        if len(spec.targets) and has_routing_config():
            mapping["routing"] = {"targets": spec.targets.to_mapping()}
        for section, values in (extra or {}).items():
            if isinstance(values, Mapping):
                mapping[section] = {**mapping.get(section, {}), **values}
            else:
                mapping[section] = values
        app = AppConfig(
            index=i, capabilities=spec.capabilities, providers=providers,
            peers={node_id: j for j, node_id in enumerate(ids)},
            rate=manifest.workload.rate, roles=manifest.workload.capabilities,
            timeout=manifest.workload.timeout, payload=manifest.workload.payload,
            seed=manifest.seed,
        )
        plans.append(NodePlan(spec=spec, key=keys[i], host=hosts[i], port=ports[i],
                              advertised=advertised[i], mapping=mapping, app=app))
    return plans
