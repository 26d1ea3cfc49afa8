"""Node homes on disk: what ``--mode procs`` runs and what ``overlay testnet init`` writes.

A home is what ``overlay init`` writes (``config.toml`` with every key documented, the node
key) with the testnet's settings written live (listen address, external address, seeds,
capabilities, seed mode, admin and metrics) and ``testnet.json`` for the testnet app
(:mod:`overlay.testnet._app`: capabilities served, providers, workload). Targets are written
as ``[routing.targets.CAP]`` tables when this build's configuration has a ``[routing]`` section;
otherwise they are kept in ``testnet.json`` only (``targets``) and the node ignores them.

``overlay testnet init --compose`` adds a ``docker-compose.yml`` (one service per node, named
like the node, ``n0`` .. ``nN-1``; the seeds' addresses name the services) and a
``Dockerfile`` that installs this checkout and runs ``overlay start``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from overlay.errors import ConfigError
from overlay.identity import NodeKey
from overlay.node._config import load_config, render_config
from overlay.testnet._app import CONFIG_FILE
from overlay.testnet._manifest import Manifest
from overlay.testnet._plan import NodePlan, plan_nodes
from overlay.testnet._relay import node_host

__all__ = [
    "COMPOSE_FILE",
    "CONTAINER_HOME",
    "P2P_PORT",
    "compose_text",
    "dockerfile_text",
    "init_testnet",
    "write_home",
]

P2P_PORT = 26656
METRICS_PORT = 26660
CONTAINER_HOME = "/home/node"
COMPOSE_FILE = "docker-compose.yml"


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _toml_tables(prefix: str, table: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for name, values in table.items():
        lines.append(f"\n[{prefix}.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_home(home: Path, plan: NodePlan) -> None:
    """Write ``plan``'s home (see the module docstring) and check it loads back."""
    home.mkdir(parents=True, exist_ok=True)
    mapping = dict(plan.mapping)
    routing = mapping.pop("routing", None)
    text = render_config(plan.config(), overrides=_flatten(mapping))
    if routing is not None:
        text += _toml_tables("routing.targets", routing["targets"])
    (home / "config.toml").write_text(text)
    key_path = home / "node_key"
    if not key_path.exists():
        plan.key.save(key_path)
    app = json.loads(plan.app.to_json())
    app["targets"] = plan.spec.targets.to_mapping()
    (home / CONFIG_FILE).write_text(json.dumps(app, indent=1, sort_keys=True))
    load_config(home / "config.toml")  # what `overlay start` will read must load


def init_testnet(manifest: Manifest, out: Path, *, compose: bool = False,
                 keys: Sequence[NodeKey] | None = None) -> list[NodePlan]:
    """Write one home per node under ``out`` (``out/n0`` ..), for ``overlay start`` on this
    machine (each node on its own ``127.A.B.1``, ports from 26656 up) or, with ``compose``,
    for Docker Compose (each node a service named like it, port 26656 inside)."""
    count = len(manifest.nodes)
    keys = list(keys) if keys is not None else [NodeKey.generate() for _ in range(count)]
    if compose:
        hosts = [n.name for n in manifest.nodes]
        ports = [P2P_PORT] * count
        listen = [f"tcp://0.0.0.0:{P2P_PORT}"] * count
        metrics = [f"0.0.0.0:{METRICS_PORT}"] * count
    else:
        hosts = [node_host(i) for i in range(count)]
        ports = [P2P_PORT + i for i in range(count)]
        listen = [f"tcp://{h}:{p}" for h, p in zip(hosts, ports, strict=True)]
        metrics = [f"{h}:{METRICS_PORT + 1000 + i}" for i, h in enumerate(hosts)]
    advertised = [f"{k.node_id}@{h}:{p}" for k, h, p in zip(keys, hosts, ports, strict=True)]
    plans = plan_nodes(manifest, keys, hosts=hosts, ports=ports, advertised=advertised,
                       listen=listen, extra={"log": {"level": "info"}})
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for plan, listen_metrics in zip(plans, metrics, strict=True):
        mapping = dict(plan.mapping)
        mapping["metrics"] = {"enabled": True, "listen": listen_metrics}
        if compose:
            mapping["external_addresses"] = [plan.advertised]
            mapping["connection"] = {"dial_from_listen_host": False}
        plan = _with_mapping(plan, mapping)
        write_home(out / plan.spec.name, plan)
        written.append(plan)
    plans = written
    if compose:
        (out / "Dockerfile").write_text(dockerfile_text())
        (out / COMPOSE_FILE).write_text(compose_text(manifest, plans, out / "Dockerfile"))
    return plans


def _with_mapping(plan: NodePlan, mapping: Mapping[str, Any]) -> NodePlan:
    return NodePlan(spec=plan.spec, key=plan.key, host=plan.host, port=plan.port,
                    advertised=plan.advertised, mapping=mapping, app=plan.app)


def source_root() -> Path:
    """The checkout this package is installed from (the Dockerfile's build context)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError("--compose", f"{root} is not a source checkout (no pyproject.toml): "
                                       "the image is built from the checkout")
    return root


def dockerfile_text() -> str:
    return (
        "# Runs one overlay node; the node's home is mounted at /home/node.\n"
        "FROM python:3.12-slim\n"
        "WORKDIR /src\n"
        "COPY pyproject.toml README.md ./\n"
        "COPY overlay overlay\nCOPY discovery discovery\nCOPY routing routing\n"
        "COPY proto proto\n"
        "RUN pip install --no-cache-dir .\n"
        f"EXPOSE {P2P_PORT} {METRICS_PORT}\n"
        'ENTRYPOINT ["overlay"]\n'
        f'CMD ["start", "--home", "{CONTAINER_HOME}", "--app", "overlay.testnet._app:setup"]\n'
    )


def compose_text(manifest: Manifest, plans: Sequence[NodePlan], dockerfile: Path) -> str:
    """One service per node; host ports 26656+i (P2P) and 27660+i (metrics) are unique."""
    root = source_root()
    lines = [
        f"# {len(plans)}-node overlay testnet ({manifest.network}); see docs/testnet-guide.md",
        "name: overlay-testnet",
        "services:",
    ]
    for i, plan in enumerate(plans):
        name = plan.spec.name
        seeds = plan.mapping["peers"]["seeds"]
        depends = sorted({s.rsplit("@", 1)[1].rsplit(":", 1)[0] for s in seeds} - {name})
        lines += [
            f"  {name}:",
            "    image: overlay-node:latest",
            "    build:",
            f"      context: {json.dumps(str(root))}",
            f"      dockerfile: {json.dumps(str(dockerfile.resolve()))}",
            f"    hostname: {name}",
            "    volumes:",
            f"      - ./{name}:{CONTAINER_HOME}",
            "    ports:",
            f'      - "{P2P_PORT + i}:{P2P_PORT}"',
            f'      - "{METRICS_PORT + 1000 + i}:{METRICS_PORT}"',
            "    networks: [overlay]",
        ]
        if depends:
            lines.append(f"    depends_on: [{', '.join(depends)}]")
    lines += ["networks:", "  overlay: {}", ""]
    return "\n".join(lines)
