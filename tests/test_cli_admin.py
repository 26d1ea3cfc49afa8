"""The operator CLI commands end to end: ``overlay.cli.main`` against a running admin server.

The server runs in the test's event loop; the (blocking) CLI runs in a worker thread.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from overlay import cli
from overlay.cli._admin import format_peers, parse_duration
from overlay.cli._admin_client import AdminClient, AdminError
from overlay.errors import DialError
from overlay.operator._admin import (
    ConflictError,
    load_or_create_token,
    serve_admin,
    write_admin_info,
)
from overlay.operator._control import MAX_BAN_SECONDS, UnknownPeerError

ID_A = "a" * 40
ID_B = "b" * 40
ADDR_A = f"{ID_A}@127.0.0.1:26656"


@dataclass
class FakeControl:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    dial_error: DialError | None = None

    def status(self) -> dict[str, Any]:
        return {"node_id": ID_A, "network": "testnet", "peers": {"inbound": 1, "outbound": 2},
                "listen": ["tcp://127.0.0.1:1"], "uptime": 12.5,
                "channels": [{"id": 1, "name": "blocks"}], "empty": {}}

    def peers(self) -> list[dict[str, Any]]:
        return [
            {"id": ID_A, "state": "connected", "direction": "outbound",
             "addresses": [ADDR_A], "score": 2.25, "latency": 0.0125, "uptime_seconds": 3725.4,
             "flags": ["persistent"], "channels": {"blocks": {"bytes_sent": 10}}},
            {"id": ID_B, "state": "banned", "direction": None, "addresses": [],
             "score": -100.0, "latency": None, "uptime": None, "flags": []},
        ]

    async def dial(self, address: str, *, persistent: bool) -> dict[str, Any]:
        self.calls.append(("dial", (address, persistent)))
        if self.dial_error is not None:
            raise self.dial_error
        return {"node_id": address[:40], "state": "connected"}

    async def providers(self, capability: str) -> dict[str, Any]:
        self.calls.append(("providers", capability))
        return {"capability": capability, "providers": [{"id": ID_A, "addresses": [],
                "version": 1, "after": 0.01}], "rounds": 2, "messages": 9,
                "outcome": "exhausted", "elapsed": 0.02, "first_provider_after": 0.01}

    async def disconnect(self, node_id: str) -> dict[str, Any]:
        self.calls.append(("disconnect", node_id))
        if node_id != ID_A:
            raise UnknownPeerError(f"peer {node_id} is not connected")
        return {"id": node_id}

    async def ban(self, target: str, *, duration: float | None) -> dict[str, Any]:
        self.calls.append(("ban", (target, duration)))
        return {"target": target, "until": 123.0}

    async def unban(self, target: str) -> dict[str, Any]:
        self.calls.append(("unban", target))
        if target != "10.0.0.1":
            raise UnknownPeerError(f"{target} is not banned")
        return {"target": target}

    async def add_seed(self, address: str) -> dict[str, Any]:
        self.calls.append(("add_seed", address))
        return {"address": address, "seeds": 1}

    async def remove_seed(self, address: str) -> dict[str, Any]:
        self.calls.append(("remove_seed", address))
        if ID_B in address:
            raise UnknownPeerError(f"{address} is not a seed")
        return {"seed_removed": address[:40]}

    async def remove_persistent(self, node_id: str) -> dict[str, Any]:
        self.calls.append(("remove_persistent", node_id))
        if node_id == ID_B:
            raise ConflictError(f"{node_id} is persistent because config.toml lists it")
        return {"persistent_removed": node_id}

    def bans(self) -> dict[str, Any]:
        return {"bans": [
            {"kind": "peer", "target": ID_B, "until": 1_700_003_600.0,
             "remaining_seconds": 3600.0, "reason": "operator"},
            {"kind": "ip", "target": "2001:db8:1:2::/64", "until": 1_700_086_400.0,
             "remaining_seconds": 86400.0, "reason": "repeated peer bans"},
        ]}

    def seeds(self) -> dict[str, Any]:
        return {"seeds": [{"id": ID_A, "addresses": [ADDR_A], "origin": ["config", "operator"],
                           "state": "connected"}]}

    def persistent(self) -> dict[str, Any]:
        return {"persistent": []}

    async def add_persistent(self, address: str) -> dict[str, Any]:
        self.calls.append(("add_persistent", address))
        return {"connected": address[:40], "already_connected": True,
                "via": "127.0.0.1:40000", "direction": "inbound", "persistent": True}

    def capabilities(self) -> dict[str, Any]:
        return {"seq": 1, "origin": "config", "capabilities": []}

    async def set_capabilities(self, items: list[str]) -> dict[str, Any]:
        self.calls.append(("set_capabilities", items))
        return {"seq": 2, "origin": "operator", "capabilities": []}

    async def remove_capability(self, name: str) -> dict[str, Any]:
        self.calls.append(("remove_capability", name))
        return {"seq": 3, "origin": "operator", "capabilities": []}


@dataclass
class Node:
    home: Path
    control: FakeControl

    async def run(self, *argv: str) -> int:
        args = [*argv, "--home", str(self.home)]
        return await anyio.to_thread.run_sync(partial(cli.main, args))


@asynccontextmanager
async def node(tmp_path: Path, *, unix: bool = False) -> AsyncIterator[Node]:
    home = tmp_path / "home"
    home.mkdir()
    token = load_or_create_token(home / "admin_token")
    control = FakeControl()

    async def serve(*, task_status: TaskStatus[str]) -> None:
        await serve_admin(control, listen="127.0.0.1:0",
                          unix_socket=home / "admin.sock" if unix else None,
                          token=token, task_status=task_status)

    async with anyio.create_task_group() as tg:
        url = await tg.start(serve)
        write_admin_info(home, url)
        yield Node(home, control)
        tg.cancel_scope.cancel()


def run_sync(argv: Sequence[str]) -> int:
    return cli.main(list(argv))


@pytest.mark.anyio
async def test_status_and_peers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node(tmp_path) as n:
        assert await n.run("status") == 0
        out = capsys.readouterr().out
        fields = {k: v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
        assert fields["node_id"] == ID_A
        assert fields["peers.inbound"] == "1"
        assert fields["listen"] == "tcp://127.0.0.1:1"
        assert fields["channels[0].name"] == "blocks"

        assert await n.run("status", "--json") == 0
        assert json.loads(capsys.readouterr().out)["network"] == "testnet"

        assert await n.run("peers") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["ID", "STATE", "DIR", "ADDRESS", "SCORE", "RTT", "UPTIME",
                                    "FLAGS"]
        assert lines[1].split() == [ID_A, "connected", "outbound", ADDR_A, "2.2", "12.5ms",
                                    "1h02m", "persistent"]
        assert lines[2].split() == [ID_B, "banned", "-", "-", "-100.0", "-", "-", "-"]

        assert await n.run("peers", "--json") == 0
        peers = json.loads(capsys.readouterr().out)
        assert peers[0]["channels"] == {"blocks": {"bytes_sent": 10}}
        assert len(peers) == 2


@pytest.mark.anyio
async def test_actions_reach_the_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node(tmp_path) as n:
        assert await n.run("dial", ADDR_A, "--persistent") == 0
        assert f"dialed persistent peer {ADDR_A}" in capsys.readouterr().out
        assert await n.run("dial", f"memory:{ID_B}") == 0
        assert await n.run("disconnect", ID_A.upper()) == 0
        assert await n.run("ban", ID_B, "--for", "2h") == 0
        assert "banned " + ID_B + " for 2h00m" in capsys.readouterr().out
        assert await n.run("ban", "10.0.0.1") == 0
        assert await n.run("unban", "10.0.0.1") == 0
        assert await n.run("seeds", "add", ADDR_A) == 0
        out = capsys.readouterr().out
        assert f"added seed {ADDR_A}" in out and "seeds:" in out
        assert await n.run("seeds", "remove", ADDR_A) == 0
        assert await n.run("seeds", "remove", ID_A.upper()) == 0
        assert f"removed seed {ID_A}" in capsys.readouterr().out
        assert await n.run("persistent", "remove", ID_A) == 0
        assert f"{ID_A} is no longer persistent" in capsys.readouterr().out
        assert n.control.calls[7:] == [
            ("remove_seed", ADDR_A),
            ("remove_seed", ID_A),
            ("remove_persistent", ID_A),
        ]
        assert n.control.calls[:7] == [
            ("dial", (ADDR_A, True)),
            ("dial", (f"memory:{ID_B}", False)),
            ("disconnect", ID_A),
            ("ban", (ID_B, 7200.0)),
            ("ban", ("10.0.0.1", None)),
            ("unban", "10.0.0.1"),
            ("add_seed", ADDR_A),
        ]


@pytest.mark.anyio
async def test_lists_of_what_the_operator_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with node(tmp_path) as n:
        assert await n.run("bans") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["KIND", "TARGET", "REMAINING", "UNTIL", "REASON"]
        assert lines[1].split() == ["peer", ID_B, "1h00m", "2023-11-14", "23:13:20Z",
                                    "operator"]
        assert lines[2].split()[:3] == ["ip", "2001:db8:1:2::/64", "1d00h"]
        assert lines[2].endswith("repeated peer bans")
        assert await n.run("bans", "--json") == 0
        assert len(json.loads(capsys.readouterr().out)) == 2
        assert await n.run("seeds", "list") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].split() == [ID_A, ADDR_A, "config,operator", "connected"]
        assert await n.run("persistent", "list") == 0
        assert capsys.readouterr().out.strip() == "no persistent peers"
        assert await n.run("persistent", "add", ADDR_A) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert first == (f"already connected to {ID_A} via 127.0.0.1:40000 (inbound); "
                         f"{ADDR_A} was not dialed nor stored; it is persistent now")
        assert n.control.calls == [("add_persistent", ADDR_A)]


@pytest.mark.anyio
async def test_node_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node(tmp_path) as n:
        assert await n.run("disconnect", ID_B) == 1
        assert f"peer {ID_B} is not connected" in capsys.readouterr().err
        assert await n.run("unban", "192.168.0.1") == 1
        assert "not banned" in capsys.readouterr().err
        n.control.dial_error = DialError("connection refused by 127.0.0.1:26656")
        assert await n.run("dial", ADDR_A) == 1
        assert "connection refused by" in capsys.readouterr().err
        assert await n.run("seeds", "remove", ID_B) == 1
        assert f"error: {ID_B} is not a seed" in capsys.readouterr().err
        assert await n.run("persistent", "remove", ID_B) == 1
        assert "config.toml lists it" in capsys.readouterr().err
        # A wrong token.
        (n.home / "admin_token").write_text("0" * 64)
        assert await n.run("status") == 1
        assert "token" in capsys.readouterr().err


@pytest.mark.anyio
async def test_unix_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with node(tmp_path, unix=True) as n:
        info = json.loads((n.home / "admin.json").read_text())
        assert info == {"unix_socket": str(n.home / "admin.sock")}
        assert await n.run("ban", ID_A, "--for", "90") == 0
        assert await n.run("peers") == 0
        assert ID_A in capsys.readouterr().out
        assert n.control.calls == [("ban", (ID_A, 90.0))]


def test_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path)
    for argv in (
        ["dial", "not-an-address"],
        ["dial"],
        ["disconnect", "xyz"],
        ["ban", "nobody"],
        ["ban", ID_A, "--for", "10 minutes"],
        ["ban", ID_A, "--for", "0s"],
        ["unban", "1.2.3"],
        ["seeds"],
        ["seeds", "add", "memory:short"],
        ["seeds", "remove", "nothex"],
        ["persistent"],
        ["persistent", "remove", f"{ID_A}@127.0.0.1:1"],
        ["peers", "--yaml"],
    ):
        with pytest.raises(SystemExit) as info:
            run_sync([*argv, "--home", home])
        assert info.value.code == 2, argv
        assert capsys.readouterr().err  # argparse explains


def test_node_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_sync(["status", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "node not running?" in err and "admin.json" in err and str(tmp_path) in err

    # admin.json left behind by a node that is gone: connection refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_admin_info(tmp_path, f"http://127.0.0.1:{port}")
    load_or_create_token(tmp_path / "admin_token")
    assert run_sync(["peers", "--home", str(tmp_path)]) == 1
    assert f"cannot reach the node at http://127.0.0.1:{port}" in capsys.readouterr().err

    write_admin_info(tmp_path, f"unix:{tmp_path / 'gone.sock'}")
    assert run_sync(["seeds", "add", ADDR_A, "--home", str(tmp_path)]) == 1
    assert "cannot reach the node at unix:" in capsys.readouterr().err

    (tmp_path / "admin.json").write_text("{broken")
    assert run_sync(["status", "--home", str(tmp_path)]) == 1
    assert "cannot read" in capsys.readouterr().err

    write_admin_info(tmp_path, f"http://127.0.0.1:{port}")
    (tmp_path / "admin_token").unlink()
    assert run_sync(["status", "--home", str(tmp_path)]) == 1
    assert "admin token" in capsys.readouterr().err


def test_token_file_recorded_in_admin_json_is_used(tmp_path: Path) -> None:
    token_path = tmp_path / "secrets" / "tok"
    token_path.parent.mkdir()
    token_path.write_text("s3cret\n")
    write_admin_info(tmp_path, "http://127.0.0.1:1", token_file=token_path)
    client = AdminClient.from_home(tmp_path)
    assert client.address == "http://127.0.0.1:1"
    with pytest.raises(AdminError):
        AdminClient(token="t", url="ftp://x:1")
    with pytest.raises(AdminError):
        AdminClient(token="t")


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("30s") == 30
    assert parse_duration("10m") == 600
    assert parse_duration("2h") == 7200
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("1w") == 604800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("1") == 1
    assert parse_duration("99999999999999999999") == 1e20  # the node caps it (see below)
    for bad in ("", "-5", "0", "5x", "h", "1h 30m", "nan", "10mm"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
    for text, message in [
        ("inf", "invalid duration 'inf': must be finite"),  # was "must be positive"
        (f"1{'0' * 400}s", f"invalid duration '1{'0' * 400}s': must be finite"),
        ("0.0001", "invalid duration '0.0001': a ban lasts at least 1s"),  # was "banned for 0s"
        ("0.5s", "invalid duration '0.5s': a ban lasts at least 1s"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            parse_duration(text)
        assert str(info.value) == message


@pytest.mark.anyio
async def test_ban_shows_what_is_banned_and_caps_the_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with node(tmp_path) as n:
        assert await n.run("ban", "::ffff:127.0.0.4", "--for", "1s") == 0
        assert "banned 127.0.0.4 for 1s" in capsys.readouterr().out  # not ::ffff:7f00:4
        assert await n.run("ban", "[::FFFF:10.1.2.3]") == 0
        assert await n.run("ban", "10.0.0.1", "--for", "99999999999999999999") == 0
        captured = capsys.readouterr()
        assert "banned 10.0.0.1 for 3650d00h" in captured.out
        assert "note: bans last at most 10 years" in captured.err
        assert n.control.calls == [
            ("ban", ("127.0.0.4", 1.0)),
            ("ban", ("10.1.2.3", None)),
            ("ban", ("10.0.0.1", MAX_BAN_SECONDS)),
        ]


def test_format_peers_tolerates_sparse_dicts() -> None:
    assert format_peers([]) == "no peers"
    table = format_peers([{"node_id": ID_A, "remote_address": "127.0.0.1:5", "uptime": 61},
                          {"score": "high", "addresses": "x", "flags": 3}])
    lines = table.splitlines()
    assert lines[1].split() == [ID_A, "-", "-", "127.0.0.1:5", "-", "-", "1m01s", "-"]
    assert lines[2].split() == ["?", "-", "-", "-", "-", "-", "-", "-"]
    table = format_peers([
        {"id": ID_A, "addresses": [{"node_id": ID_A, "protocol": "tcp", "host": "::1",
                                    "port": 7}]},
        {"id": ID_B, "addresses": [{"node_id": ID_B, "protocol": "memory", "host": "",
                                    "port": 0}]},
    ])
    assert table.splitlines()[1].split()[3] == f"{ID_A}@[::1]:7"
    assert table.splitlines()[2].split()[3] == f"memory:{ID_B}"


@pytest.mark.anyio
async def test_providers_runs_a_lookup_and_prints_its_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with node(tmp_path) as n:
        assert await n.run("providers", "archive") == 0
        out = capsys.readouterr().out
        assert "1 provider(s) of archive: 2 rounds, 9 messages" in out
        assert ID_A in out
        assert await n.run("providers", "archive", "--json") == 0
        assert json.loads(capsys.readouterr().out)["messages"] == 9
        assert ("providers", "archive") in n.control.calls
    with pytest.raises(SystemExit):
        run_sync(["providers", "Not A Cap", "--home", str(tmp_path)])
