"""What ``overlay start`` refuses before it runs: a missing node key (it never creates one) and
``external_addresses`` that name another node."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from overlay import cli
from overlay.errors import ConfigError
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import NodeConfig, load_config
from overlay.node._service import run_node


def _init(home: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["init", "--home", str(home), "--listen", "tcp://127.0.0.1:0"]) == 0
    return capsys.readouterr().out.strip()


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_start_never_creates_a_key_or_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    _init(home, capsys)
    config = dataclasses.replace(load_config(home / "config.toml"),
                                 node_key_file="../keys/nodekey")  # a typo
    before = _tree(tmp_path)
    with pytest.raises(ConfigError) as info:
        await run_node(config, home)
    message = str(info.value)
    assert f"no node key at {home / '../keys/nodekey'}" in message
    assert f"run `overlay init --home {home}`" in message
    assert _tree(tmp_path) == before  # no keys/ directory, no data/ directory, no new key
    # The library may still run a node on a throwaway key: no home, no key file.
    async with Node(NodeConfig(listen=("tcp://127.0.0.1:0",))) as node:
        assert node.listen_addresses


def test_overlay_start_with_a_mistyped_key_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    _init(home, capsys)
    config_path = home / "config.toml"
    text = config_path.read_text()
    assert '# node_key_file = "node_key"' in text
    config_path.write_text(text.replace('# node_key_file = "node_key"',
                                        'node_key_file = "../other/node_kye"'))
    before = _tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "overlay.cli", "start", "--home", str(home)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("config error: config key 'node_key_file': no node key at ")
    assert "overlay init" in result.stderr
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_external_addresses_naming_another_node_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    own = _init(home, capsys)
    other = NodeKey.generate().node_id
    config = dataclasses.replace(load_config(home / "config.toml"),
                                 external_addresses=(f"{other}@198.51.100.7:26656",))
    with pytest.raises(ConfigError) as info:
        await run_node(config, home)
    assert str(info.value) == (
        f"config key 'external_addresses[0]': '{other}@198.51.100.7:26656' names node "
        f"{other}, but this node's id is {own} (`overlay id`): advertise "
        f"{own}@198.51.100.7:26656"
    )
    assert not (home / "data").exists()  # refused before anything started
    # Its own id is fine, and is exactly what it advertises.
    mine = (f"{own}@198.51.100.7:26656",)
    key = NodeKey.load(home / "node_key")
    async with Node(dataclasses.replace(config, external_addresses=mine), key=key) as node:
        assert [str(a) for a in node.advertised_addresses] == list(mine)
        assert node.local_info().listen_addrs == mine
