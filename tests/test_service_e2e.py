"""End to end: two nodes run as services (peering driver, SQLite store, admin API), driven by the
real CLI commands over the admin API."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from overlay import cli
from overlay.node import Node
from overlay.node._config import NodeConfig, load_config
from overlay.node._service import run_node
from tests.support import wait_until


def _init(home: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["init", "--home", str(home), "--listen", "tcp://127.0.0.1:0",
                     "--network", "e2e"]) == 0
    return capsys.readouterr().out.strip()


def _run_cli(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as exc:  # argparse usage errors exit 2
        return int(exc.code or 0)


async def _cli(args: list[str]) -> int:
    return await anyio.to_thread.run_sync(_run_cli, args)


@pytest.mark.anyio
async def test_cli_drives_a_running_node(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    id_a = _init(home_a, capsys)
    id_b = _init(home_b, capsys)
    assert len(id_a) == 40 and id_a != id_b
    assert (home_a / "node_key").stat().st_mode & 0o777 == 0o600
    config_a: NodeConfig = load_config(home_a / "config.toml")
    config_b: NodeConfig = load_config(home_b / "config.toml")
    async with anyio.create_task_group() as tg:
        control_a: Node = await tg.start(run_node, config_a, home_a)
        control_b: Node = await tg.start(run_node, config_b, home_b)
        addr_b = str(control_b.address)

        assert await _cli(["status", "--home", str(home_a)]) == 0
        status = capsys.readouterr().out
        assert id_a in status

        assert await _cli(["dial", addr_b, "--persistent", "--home", str(home_a)]) == 0
        capsys.readouterr()
        assert control_a.connected_peers() == [id_b]

        assert await _cli(["peers", "--json", "--home", str(home_a)]) == 0
        peers = json.loads(capsys.readouterr().out)
        entry = next(p for p in peers if p["id"] == id_b)
        assert entry["connected"] is True
        assert entry["direction"] == "outbound"
        assert "connection" in entry and "score" in entry

        # Unknown peers and bad input get clear errors and non-zero exits.
        assert await _cli(["disconnect", "f" * 40, "--home", str(home_a)]) != 0
        assert await _cli(["dial", "not-an-address", "--home", str(home_a)]) != 0
        capsys.readouterr()

        # Ban the peer: it is disconnected and the ban is listed.
        assert await _cli(["ban", id_b, "--for", "1h", "--home", str(home_a)]) == 0
        await wait_until(lambda: not control_a.connected_peers())
        assert await _cli(["unban", id_b, "--home", str(home_a)]) == 0
        assert await _cli(["seeds", "add", addr_b, "--home", str(home_a)]) == 0
        tg.cancel_scope.cancel()
    # The peer store survived the run.
    assert (home_a / "data" / "peers.sqlite").exists()
