"""What an operator set is listed back: ``overlay bans``, ``seeds list`` and ``persistent
list|add`` against running nodes on loopback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from overlay import cli
from overlay.connection._observer import Observer
from overlay.identity import NodeId
from overlay.peers import PeerManagerConfig
from tests.test_operator_service import _client_call, _init, services, start

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
NOW = 1_900_000_000.0


class Connects(Observer):
    """Records the peers that connected."""

    def __init__(self) -> None:
        self.peers: set[NodeId] = set()
        self.changed = anyio.Event()

    def on_peer_connected(self, peer: NodeId, *, outbound: bool, remote_host: str,
                          listen_addrs: tuple[str, ...]) -> None:
        self.peers.add(peer)
        self.changed.set()
        self.changed = anyio.Event()


async def _cli(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> list[str]:
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(cli.main, [*argv, "--home", str(home)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.splitlines()


@pytest.mark.anyio
async def test_bans_seeds_and_persistent_peers_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home_a = tmp_path / "a"
    config_b = _init(tmp_path / "b", capsys)
    config_seed = f"{'5' * 40}@127.0.0.1:9"
    config_a = dataclasses.replace(_init(home_a, capsys),
                                   peers=PeerManagerConfig(seeds=(config_seed,)))
    async with services() as (tg, _):
        b = await start(tg, config_b, tmp_path / "b")
        seen = Connects()
        # A fixed wall clock: ban times are exact, whatever the machine's load.
        a = await start(tg, config_a, home_a, seen, wall_clock=lambda: NOW)
        addr_b, id_b = str(b.node.address), b.node.node_id
        assert await _cli(capsys, home_a, "bans") == ["no bans"]
        assert await _cli(capsys, home_a, "persistent", "list") == ["no persistent peers"]

        await a.control.ban("6" * 40, duration=600.0)
        await a.control.ban("127.0.0.9", duration=7200.0)
        await _client_call(home_a, "ban", "2001:db8:1:2::5")  # the node's ban_duration
        bans = await _client_call(home_a, "bans")
        assert isinstance(bans, list)
        assert [(x["kind"], x["target"], x["reason"]) for x in bans] == [
            ("peer", "6" * 40, "operator"),
            ("ip", "127.0.0.9", "operator"),
            ("ip", "2001:db8:1:2::/64", "operator"),  # an IPv6 ban covers the /64
        ]
        assert bans[0]["until"] == NOW + 600 and bans[0]["remaining_seconds"] == 600
        assert bans[1]["until"] == NOW + 7200
        lines = await _cli(capsys, home_a, "bans")
        assert lines[0].split() == ["KIND", "TARGET", "REMAINING", "UNTIL", "REASON"]
        assert lines[1].split()[:2] == ["peer", "6" * 40]
        assert lines[1].split()[2] == "10m00s"
        await _client_call(home_a, "unban", "127.0.0.9")
        bans = await _client_call(home_a, "bans")
        assert isinstance(bans, list)
        assert [x["target"] for x in bans] == ["6" * 40, "2001:db8:1:2::/64"]

        operator_seed = f"{'7' * 40}@127.0.0.1:10"
        await _client_call(home_a, "add_seed", operator_seed)
        seeds = await _client_call(home_a, "seeds")
        assert isinstance(seeds, list)
        assert [(s["id"], s["addresses"], s["origin"]) for s in seeds] == [
            ("5" * 40, [config_seed], ["config"]),
            ("7" * 40, [operator_seed], ["operator"]),
        ]
        lines = await _cli(capsys, home_a, "seeds", "list")
        assert lines[1].split()[:3] == ["5" * 40, config_seed, "config"]

        # `persistent add` returns at once; the driver dials in the background.
        lines = await _cli(capsys, home_a, "persistent", "add", addr_b)
        assert lines[0] == f"{addr_b} is persistent (dialing it in the background)"
        with anyio.fail_after(10):
            while id_b not in seen.peers:
                await seen.changed.wait()
        listed = await _client_call(home_a, "persistent")
        assert listed == [{"id": id_b, "addresses": [addr_b], "origin": ["operator"],
                           "state": "connected"}]
        lines = await _cli(capsys, home_a, "persistent", "list")
        assert lines[1].split() == [id_b, addr_b, "operator", "connected"]
        # Removed, it is no longer listed (and still connected).
        await _client_call(home_a, "remove_persistent", id_b)
        assert await _client_call(home_a, "persistent") == []
