"""Operator-facing behaviour of ``overlay start`` (``run_node``) with two real nodes on loopback:
connection ages, channel names, orderly shutdown, refused dials, seed and persistent-flag
removal, the home lock, and the ``peer`` field of log records."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus

from overlay import cli
from overlay.cli._admin_client import AdminClient, AdminError
from overlay.connection._observer import Observer
from overlay.errors import InvalidAddressError, LocalProtocolError
from overlay.identity import NodeId
from overlay.node import Node
from overlay.node._config import NodeConfig, load_config
from overlay.node._service import HomeLockedError, run_node
from overlay.operator._control import (
    MAX_BAN_SECONDS,
    ConflictError,
    PeerBannedError,
    UnknownPeerError,
)
from overlay.peers import PeerManagerConfig

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


class Disconnects(Observer):
    """Records the reason of every disconnection."""

    def __init__(self) -> None:
        self.reasons: dict[NodeId, str] = {}
        self.changed = anyio.Event()

    def on_peer_disconnected(self, peer: NodeId, reason: str) -> None:
        self.reasons[peer] = reason
        self.changed.set()
        self.changed = anyio.Event()


def _init(home: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> NodeConfig:
    assert cli.main(["init", "--home", str(home), "--listen", "tcp://127.0.0.1:0",
                     "--network", "op", *extra]) == 0
    capsys.readouterr()
    return load_config(home / "config.toml")


class Running:
    """A node run by ``run_node`` that a test can stop on its own."""

    def __init__(self, node: Node, scope: anyio.CancelScope, done: anyio.Event):
        self.node = node
        self.control = node.control
        self.scope = scope
        self.done = done

    async def stop(self) -> None:
        self.scope.cancel()
        with anyio.fail_after(10):
            await self.done.wait()


@asynccontextmanager
async def services() -> AsyncIterator[
    tuple[anyio.abc.TaskGroup, list[Running]]
]:
    running: list[Running] = []
    async with anyio.create_task_group() as tg:
        yield tg, running
        tg.cancel_scope.cancel()


async def start(tg: anyio.abc.TaskGroup, config: NodeConfig, home: Path,
                *observers: Observer, wall_clock: Callable[[], float] = time.time) -> Running:
    scope = anyio.CancelScope()
    done = anyio.Event()

    async def run(*, task_status: TaskStatus[Node]) -> None:
        try:
            with scope:
                await run_node(config, home, observers=observers, task_status=task_status,
                               wall_clock=wall_clock)
        finally:
            done.set()

    node: Node = await tg.start(run)
    return Running(node, scope, done)


async def _client_call(home: Path, method: str, *args: object) -> object:
    def call() -> object:
        client = AdminClient.from_home(home)
        return getattr(client, method)(*args)

    return await anyio.to_thread.run_sync(call)


@pytest.mark.anyio
async def test_uptime_is_the_connection_age_and_channels_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_a = _init(tmp_path / "a", capsys)
    config_b = _init(tmp_path / "b", capsys)
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a")
        b = await start(tg, config_b, tmp_path / "b")
        peer = await a.control.dial(str(b.node.address), persistent=False)
        entry = next(p for p in a.control.peers() if p["id"] == peer["connected"])
        # Measured on the clock the connection was stamped with: seconds, not ~56 years.
        assert 0.0 <= entry["uptime_seconds"] < 60.0
        channels = entry["connection"]["channels"]
        assert sorted(c["name"] for c in channels) == [
            "overlay.dht", "overlay.pex", "overlay.ping"]
        assert sorted(c["channel_id"] for c in channels) == [1, 2, 3]
        # What the CLI prints goes through the same code.
        peers = await _client_call(tmp_path / "a", "peers")
        assert isinstance(peers, list)
        assert peers[0]["uptime_seconds"] < 60.0
        # The transports' inbound counters reach the metrics snapshot.
        snap = b.node.metrics_snapshot()
        assert (snap.inbound_accepted, snap.pending_handshakes) == (1, 0)
        assert snap.inbound_refused == {"gate": 0, "per_ip": 0, "per_netgroup": 0, "overload": 0}
        assert snap.pending_evictions == 0


@pytest.mark.anyio
async def test_stopping_a_node_tells_its_peers_shutdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_a = _init(tmp_path / "a", capsys)
    config_b = _init(tmp_path / "b", capsys)
    seen_by_b = Disconnects()
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a")
        b = await start(tg, config_b, tmp_path / "b", seen_by_b)
        id_a = a.node.node_id
        await a.control.dial(str(b.node.address), persistent=True)
        await a.stop()  # what SIGINT / SIGTERM do: cancel run_node
        with anyio.fail_after(5):
            while id_a not in seen_by_b.reasons:
                await seen_by_b.changed.wait()
        assert seen_by_b.reasons[id_a] == "shutdown"
        assert not (tmp_path / "a" / "admin.json").exists()
    # The store was flushed and closed: the persistent flag survived.
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a")
        snap = a.control.peering.manager.peer(b.node.node_id, 0.0)
        assert snap is not None and "persistent" in {f.value for f in snap.flags}


@pytest.mark.anyio
async def test_dialing_a_banned_peer_is_a_409_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_a = _init(tmp_path / "a", capsys)
    config_b = _init(tmp_path / "b", capsys)
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a")
        b = await start(tg, config_b, tmp_path / "b")
        addr_b = str(b.node.address)
        id_b = b.node.node_id
        await a.control.ban(id_b, duration=600)
        with pytest.raises(PeerBannedError, match="is banned"):
            await a.control.dial(addr_b, persistent=False)
        with pytest.raises(AdminError) as info:
            await _client_call(tmp_path / "a", "dial", addr_b)
        assert info.value.status == 409
        assert f"node {id_b} is banned" in str(info.value)
        assert f"overlay unban {id_b}" in str(info.value)
        await a.control.unban(id_b)
        await a.control.ban("127.0.0.1", duration=600)
        with pytest.raises(AdminError) as info:
            await _client_call(tmp_path / "a", "dial", addr_b)
        assert info.value.status == 409
        assert "its IP 127.0.0.1 is banned" in str(info.value)


@pytest.mark.anyio
async def test_operator_input_is_normalised_and_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _init(tmp_path / "a", capsys)
    async with services() as (tg, _):
        a = await start(tg, config, tmp_path / "a")
        # An IPv4-mapped IPv6 address is the IPv4 address it carries: shown and banned so.
        banned = await a.control.ban("::ffff:127.0.0.4", duration=60)
        assert banned["banned"] == "127.0.0.4" and banned["kind"] == "ip"
        assert (await a.control.unban("127.0.0.4"))["unbanned"] == "127.0.0.4"
        # Below 1 s, or not finite: refused; beyond 10 years: capped, and the answer says so.
        for seconds in (0.0001, 0.0, float("inf"), float("nan")):
            with pytest.raises(LocalProtocolError, match="ban duration must be a finite"):
                await a.control.ban("127.0.0.5", duration=seconds)
        capped = await a.control.ban("127.0.0.5", duration=1e20)
        assert capped["seconds"] == MAX_BAN_SECONDS == 10 * 365 * 86400 and capped["capped"]
        assert (await a.control.ban("127.0.0.6", duration=5))["capped"] is False
        # The node's own id is refused as a seed, as `dial` refuses it.
        own = str(a.node.address)
        with pytest.raises(InvalidAddressError, match="this node's own id"):
            await a.control.add_seed(own)
        with pytest.raises(AdminError) as info:
            await _client_call(tmp_path / "a", "add_seed", own)
        assert info.value.status == 400 and "this node's own id" in str(info.value)
        # So is a seed whose IP is banned (it used to be reported as added, and dropped).
        with pytest.raises(ConflictError, match="is banned"):
            await a.control.add_seed(f"{'5' * 40}@127.0.0.5:9")


@pytest.mark.anyio
async def test_seeds_and_the_persistent_flag_can_be_removed_and_it_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_a = _init(tmp_path / "a", capsys)
    config_b = _init(tmp_path / "b", capsys)
    home_a = tmp_path / "a"
    async with services() as (tg, _):
        b = await start(tg, config_b, tmp_path / "b")
        addr_b = str(b.node.address)
        id_b = b.node.node_id
        seed = f"{'5' * 40}@127.0.0.1:9"
        a = await start(tg, config_a, home_a)
        await _client_call(home_a, "add_seed", seed)
        await a.control.dial(addr_b, persistent=True)

        assert await _client_call(home_a, "remove_seed", seed) == {"seed_removed": "5" * 40}
        assert await _client_call(home_a, "remove_persistent", id_b) == {
            "persistent_removed": id_b
        }
        flags = {p["id"]: p["flags"] for p in a.control.peers()}
        assert flags["5" * 40] == [] and flags[id_b] == []
        assert a.node.router.get_peer(id_b) is not None  # still connected
        with pytest.raises(AdminError) as info:
            await _client_call(home_a, "remove_seed", seed)
        assert info.value.status == 404 and "is not a seed" in str(info.value)
        with pytest.raises(AdminError) as info:
            await _client_call(home_a, "remove_persistent", id_b)
        assert info.value.status == 404 and "is not persistent" in str(info.value)
        await a.stop()

        # Stored: after a restart neither flag is back.
        a = await start(tg, config_a, home_a)
        flags = {p["id"]: p["flags"] for p in a.control.peers()}
        assert flags.get("5" * 40, []) == [] and flags.get(id_b, []) == []
        await a.stop()

        # Seeds and persistent peers from config.toml are edited there: 409.
        peers = PeerManagerConfig(seeds=(seed,), persistent_peers=(addr_b,))
        a = await start(tg, dataclasses.replace(config_a, peers=peers), home_a)
        with pytest.raises(ConflictError, match=r"config.toml lists it \(\[peers\] seeds\)"):
            await a.control.remove_seed("5" * 40)
        with pytest.raises(AdminError) as info:
            await _client_call(home_a, "remove_persistent", id_b)
        assert info.value.status == 409 and "persistent_peers" in str(info.value)
        with pytest.raises(UnknownPeerError):
            await a.control.remove_seed(f"{'6' * 40}@127.0.0.1:1")


@pytest.mark.anyio
async def test_two_nodes_cannot_run_on_one_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "a"
    config = _init(home, capsys)
    async with services() as (tg, _):
        a = await start(tg, config, home)
        with pytest.raises(HomeLockedError) as info, anyio.fail_after(10):
            await run_node(config, home)
        message = str(info.value)
        assert str(home) in message and f"pid {os.getpid()}" in message
        # `overlay start` says so in one line (and exits 1) instead of a traceback.
        result = await anyio.run_process(
            [sys.executable, "-m", "overlay.cli", "start", "--home", str(home)], check=False
        )
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert err.splitlines() == [f"error: {message}"]
        assert a.node.listen_addresses  # the first node is unharmed
        await a.stop()
        # Released when the node stops.
        a = await start(tg, config, home)
        await a.stop()


@pytest.mark.anyio
async def test_peering_and_admin_records_about_a_peer_carry_its_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    config_a = _init(tmp_path / "a", capsys)
    config_b = _init(tmp_path / "b", capsys)
    caplog.set_level(logging.DEBUG)
    seen_by_a = Disconnects()
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a", seen_by_a)
        b = await start(tg, config_b, tmp_path / "b")
        id_b = b.node.node_id
        await _client_call(tmp_path / "a", "dial", str(b.node.address))
        await _client_call(tmp_path / "a", "ban", "127.0.0.9")
        await a.control.ban(id_b, duration=60)  # the driver disconnects it
        with anyio.fail_after(5):
            while id_b not in seen_by_a.reasons:
                await seen_by_a.changed.wait()
    by_logger: dict[str, list[logging.LogRecord]] = {}
    for record in caplog.records:
        by_logger.setdefault(record.name, []).append(record)
    admin = [r for r in by_logger["overlay.admin"] if r.getMessage().startswith("admin: ")]
    dial = next(r for r in admin if r.getMessage().startswith("admin: dial"))
    assert getattr(dial, "peer", None) == id_b
    ip_ban = next(r for r in admin if "127.0.0.9" in r.getMessage())
    assert getattr(ip_ban, "ip", None) == "127.0.0.9" and not hasattr(ip_ban, "peer")
    evict = next(r for r in by_logger["overlay.peering"]
                 if r.getMessage() == f"disconnecting {id_b}: banned")
    assert getattr(evict, "peer", None) == id_b
