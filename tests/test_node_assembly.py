"""The library's ``Node`` is the full node: its peer manager, store, admin API and metrics run
inside ``async with Node(...)``; without a home it needs no key file and writes nothing; its
transports are passed in, never selected by a flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overlay import Node, NodeConfig, NodeKey
from overlay.errors import ConfigError, LocalProtocolError, NodeClosed
from overlay.node._config import AdminConfig, MetricsConfig
from overlay.testing import MemoryNetwork
from overlay.transport._secure import SecureIdentity
from tests.support import both_backends

pytestmark = pytest.mark.anyio
anyio_backend = both_backends()

LOOPBACK = ("tcp://127.0.0.1:0",)


async def test_a_node_without_a_home_writes_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = NodeConfig(listen=LOOPBACK, metrics=MetricsConfig(enabled=True, listen="127.0.0.1:0"))
    async with Node(config) as a, Node(config) as b:
        await a.dial(b.address)
        assert a.peering.store is None  # the peer manager runs, in memory
        assert a.peering.manager.statistics().connected_outbound == 1
        assert a.admin_url is None  # the admin API needs a home (token, admin.json)
        assert a.metrics_url is not None and a.metrics_url.startswith("http://127.0.0.1:")
        assert a.metrics_snapshot().peers_outbound == 1
    assert os.listdir(tmp_path) == []


async def test_a_node_with_a_home_runs_what_overlay_start_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = NodeKey.generate()
    config = NodeConfig(listen=LOOPBACK, admin=AdminConfig(listen="127.0.0.1:0"))
    async with Node(config, key=key, home=home) as node:
        assert node.peering.store is not None
        assert (home / "data" / "peers.sqlite").exists()
        assert node.admin_url is not None and (home / "admin.json").exists()
        assert node.control.status()["node_id"] == key.node_id
    assert not (home / "admin.json").exists()  # withdrawn on exit; the store stays
    assert (home / "data" / "peers.sqlite").exists()
    assert not (home / "node_key").exists()  # the key was given: none was written


async def test_tasks_need_a_running_node() -> None:
    node = Node(NodeConfig(listen=LOOPBACK))
    with pytest.raises(NodeClosed):
        node.start_soon(node.aclose)
    with pytest.raises(LocalProtocolError, match="not running"):
        node.peering  # noqa: B018 - the property raises
    async with node:
        node.start_soon(node.aclose)  # runs in the node's task group
    with pytest.raises(NodeClosed):
        await node.start(node.aclose)


async def test_a_memory_listen_address_needs_a_memory_transport() -> None:
    with pytest.raises(ConfigError, match="node_transport"):
        Node(NodeConfig(listen=("memory:",)))
    net = MemoryNetwork()
    async with Node(NodeConfig(listen=("memory:",)), transports=[net.node_transport()]) as node:
        assert [t.protocol for t in node.transports] == ["memory"]
        assert str(node.address) == f"memory:{node.node_id}"


def test_a_ready_transport_must_carry_the_nodes_key() -> None:
    net = MemoryNetwork()
    other = net.transport(SecureIdentity(NodeKey.generate()))
    with pytest.raises(LocalProtocolError, match="was given to node"):
        Node(NodeConfig(listen=("memory:",)), transports=[other])
