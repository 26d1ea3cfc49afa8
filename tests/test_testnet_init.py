"""``overlay testnet init`` writes homes ``overlay start`` can run, and with ``--compose`` a
Compose file and Dockerfile for the same testnet: parsed back, every seed names a service,
ports unique, every node's configuration loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from overlay.address import NodeAddress
from overlay.cli import main
from overlay.identity import NodeKey
from overlay.node._config import load_config
from overlay.node._transports import dial_source
from overlay.testnet._relay import node_host


def _homes(out: Path) -> list[Path]:
    return sorted((p for p in out.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))


def test_init_writes_loadable_homes_with_seeds_capabilities_and_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "net"
    assert main(["testnet", "init", "--nodes", "6", "--cap", "archive=2",
                 "--target", "archive:min_peers=1", "--out", str(out)]) == 0
    assert "wrote 6 homes" in capsys.readouterr().out
    homes = _homes(out)
    assert [h.name for h in homes] == [f"n{i}" for i in range(6)]
    ids, listens, capabilities = [], set(), []
    for i, home in enumerate(homes):
        config = load_config(home / "config.toml")
        key = NodeKey.load(home / config.node_key_file)
        ids.append(key.node_id)
        (listen,) = config.listen_addresses()
        assert listen.host == node_host(i)  # each node on its own 127.A.B.1
        listens.add((listen.host, listen.port))
        assert config.connection.dial_from_listen_host
        assert dial_source(config) == node_host(i)
        app = json.loads((home / "testnet.json").read_text())
        assert tuple(app["capabilities"]) == config.discovery.capabilities
        capabilities.append(config.discovery.capabilities)
        assert config.discovery.seed_mode == (i < 2)
        assert app["targets"] == ({} if i < 2 else {"archive": {"min_peers": 1}})
        for seed in config.peers.seeds:
            assert NodeAddress.parse(seed).node_id != key.node_id
    assert len(listens) == 6
    assert sum("archive" in c for c in capabilities) == 2
    # Every node's seeds are the other nodes' addresses (the seeds at least).
    for home in homes[2:]:
        seeds = {NodeAddress.parse(s).node_id for s in load_config(home / "config.toml")
                 .peers.seeds}
        assert {ids[0], ids[1]} <= seeds <= set(ids)


def test_compose_services_resolve_every_seed_and_use_unique_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "net"
    assert main(["testnet", "init", "--nodes", "5", "--cap", "archive=1", "--out", str(out),
                 "--compose"]) == 0
    capsys.readouterr()
    compose = (out / "docker-compose.yml").read_text()
    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.startswith("# Runs one overlay node")
    assert "RUN pip install --no-cache-dir ." in dockerfile
    assert 'ENTRYPOINT ["overlay"]' in dockerfile and "--home" in dockerfile
    services = re.findall(r"^  (n\d+):$", compose, flags=re.MULTILINE)
    assert services == [f"n{i}" for i in range(5)]
    host_ports = re.findall(r'^      - "(\d+):\d+"$', compose, flags=re.MULTILINE)
    assert len(host_ports) == 10 and len(set(host_ports)) == 10
    volumes = re.findall(r"^      - \./(n\d+):/home/node$", compose, flags=re.MULTILINE)
    assert volumes == services
    dockerfile_refs = re.findall(r"^      dockerfile: \"(.*)\"$", compose, flags=re.MULTILINE)
    assert {Path(p) for p in dockerfile_refs} == {(out / "Dockerfile").resolve()}
    context = re.findall(r"^      context: \"(.*)\"$", compose, flags=re.MULTILINE)
    assert all((Path(c) / "pyproject.toml").is_file() for c in context)
    for name in services:
        config = load_config(out / name / "config.toml")
        (external,) = config.external_addresses
        assert NodeAddress.parse(external).host == name  # peers dial the service name
        assert config.listen == ("tcp://0.0.0.0:26656",)
        for seed in config.peers.seeds:
            assert NodeAddress.parse(seed).host in services  # resolves to a service
        assert config.metrics.enabled and config.metrics.listen == "0.0.0.0:26660"
