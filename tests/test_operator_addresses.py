"""Which addresses a running node stores and advertises: an operator's dial of a connected peer
stores nothing, obviously bad addresses are refused up front, a node listening on 0.0.0.0
advertises concrete addresses, and nobody stores an unspecified one. Nodes run on loopback."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import anyio
import pytest

from overlay import cli
from overlay.address import NodeAddress
from overlay.errors import AuthenticationError, InvalidAddressError
from overlay.identity import NodeId
from overlay.node._advertise import advertised_addresses
from overlay.node._config import load_config
from overlay.peers import PeerManager, PeerManagerConfig
from tests.test_operator_service import _client_call, _init, services, start

both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

T0 = 1_700_000_000.0


def _stored(manager: PeerManager, peer: NodeId) -> tuple[set[str], set[str]]:
    """The addresses of ``peer`` in its record and in the address book."""
    snap = manager.peer(peer, T0)
    record = {str(a) for a in snap.addresses} if snap is not None else set()
    book = {str(e.address) for e in manager.address_book.entries()
            if e.address.node_id == peer}
    return record, book


@both_backends
@pytest.mark.anyio
async def test_dialing_a_connected_peer_stores_nothing_and_says_via_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_a = _init(tmp_path / "a", capsys)
    config_b = _init(tmp_path / "b", capsys)
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a")
        b = await start(tg, config_b, tmp_path / "b")
        addr_b = b.node.address
        id_b = addr_b.node_id
        await a.control.dial(str(addr_b), persistent=False)
        manager = a.control.peering.manager
        before = _stored(manager, id_b)
        assert str(addr_b) in before[0] and str(addr_b) in before[1]
        wrong = [
            f"{id_b}@127.0.0.1:{addr_b.port + 1}",  # a wrong port
            f"{id_b}@127.0.0.1:26660",  # the metrics port
            f"{id_b}@localhost:{addr_b.port}",
            f"memory:{id_b}",
            f"{id_b}@127.0.0.2:{addr_b.port}",
        ]
        for text in wrong:  # more than max_addresses_per_peer (4) of them
            result = await _client_call(tmp_path / "a", "dial", text)
            assert result == {"connected": id_b, "already_connected": True,
                              "via": f"127.0.0.1:{addr_b.port}", "direction": "outbound",
                              "persistent": False}
        assert _stored(manager, id_b) == before  # the real address is still there
        # --persistent on a connected peer keeps the address it was reached at.
        await a.control.dial(wrong[0], persistent=True)
        persistent = manager.persistent_peers(T0)
        assert [p.addresses[0] for p in persistent] == [addr_b]
        assert _stored(manager, id_b) == before
        # The CLI says so.
        argv = ["dial", wrong[1], "--home", str(tmp_path / "a")]
        assert await anyio.to_thread.run_sync(cli.main, argv) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert first == (f"already connected to {id_b} via 127.0.0.1:{addr_b.port} "
                         f"(outbound); {wrong[1]} was not dialed nor stored")


@both_backends
@pytest.mark.anyio
async def test_a_failed_dial_stores_nothing_and_a_successful_one_stores_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_a = _init(tmp_path / "a", capsys)
    config_b = _init(tmp_path / "b", capsys)
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a")
        b = await start(tg, config_b, tmp_path / "b")
        addr_b = b.node.address
        manager = a.control.peering.manager
        wrong = NodeAddress(addr_b.node_id, "tcp", "127.0.0.1", a.node.address.port)
        with pytest.raises(AuthenticationError, match="peer proved"):
            await a.control.dial(str(wrong), persistent=False)  # node a answers there
        assert _stored(manager, addr_b.node_id) == (set(), set())
        await a.control.dial(str(addr_b), persistent=False)
        assert _stored(manager, addr_b.node_id) == ({str(addr_b)}, {str(addr_b)})


def test_obviously_bad_addresses_are_refused_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = "a" * 40
    for text, message in [
        (f"{peer}@256.1.1.1:26656", "'256.1.1.1' is not an IPv4 address"),
        (f"{peer}@10.1.1:26656", "'10.1.1' is not an IPv4 address"),
        (f"{peer}@0.0.0.0:26656", "0.0.0.0 is the unspecified address"),
        (f"{peer}@[::]:26656", ":: is the unspecified address"),
        (f"{peer}@bad host:26656", "neither an IP address nor a host name"),
    ]:
        with pytest.raises(InvalidAddressError, match=message):
            NodeAddress.parse(text)
        # Refused by the CLI before it looks for a node.
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["dial", text, "--home", str(tmp_path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert NodeAddress.parse(f"{peer}@1.2.3.4:1").host == "1.2.3.4"
    assert NodeAddress.parse(f"{peer}@node-1.example.org:1").host == "node-1.example.org"


@both_backends
@pytest.mark.anyio
async def test_a_node_listening_on_every_interface_advertises_concrete_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overlay.node")
    config_a = _init(tmp_path / "a", capsys)
    assert cli.main(["init", "--home", str(tmp_path / "b"), "--listen", "tcp://0.0.0.0:0",
                     "--network", "op"]) == 0
    config_b = load_config(tmp_path / "b" / "config.toml")
    async with services() as (tg, _):
        a = await start(tg, config_a, tmp_path / "a")
        b = await start(tg, config_b, tmp_path / "b")
        node_b = b.node
        port = node_b.listen_addresses[0].port
        assert node_b.listen_addresses[0].host == "0.0.0.0"
        advertised = node_b.advertised_addresses
        assert advertised[-1] == NodeAddress(node_b.node_id, "tcp", "127.0.0.1", port)
        assert not any(x.unspecified for x in advertised)
        assert b.control.status()["advertised_addresses"] == [str(x) for x in advertised]
        said = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"node {node_b.node_id} advertises")]
        assert said and "0.0.0.0 names no host" in said[0]
        # A peer hears only concrete addresses, and stores only those.
        loopback = NodeAddress(node_b.node_id, "tcp", "127.0.0.1", port)
        await a.control.dial(str(loopback), persistent=False)
        entry = next(p for p in a.control.peers() if p["id"] == node_b.node_id)
        assert entry["listen_addrs"] == [str(x) for x in advertised]
        record, book = _stored(a.control.peering.manager, node_b.node_id)
        assert str(loopback) in record and not any("0.0.0.0" in x for x in record | book)


def test_unspecified_addresses_are_never_advertised_stored_or_gossiped() -> None:
    me, peer = NodeId("f" * 40), NodeId("1" * 40)
    listen = [NodeAddress(me, "tcp", "0.0.0.0", 7), NodeAddress(me, "tcp", "::", 8),
              NodeAddress(me, "tcp", "127.0.0.5", 9)]
    hosts = [str(x).partition("@")[2] for x in
             advertised_addresses(listen, (), v4_hosts=["192.0.2.4"], v6_hosts=["2001:db8::4"])]
    assert hosts == ["192.0.2.4:7", "127.0.0.1:7", "[2001:db8::4]:8", "[::1]:8", "127.0.0.5:9"]
    external = (f"{me}@198.51.100.7:7",)
    assert [str(x) for x in advertised_addresses(listen, external)] == list(external)
    # A peer (an older node) that advertises 0.0.0.0 in its hello: not stored, not gossiped.
    manager = PeerManager(PeerManagerConfig(), me, now=T0, rng=random.Random(1),
                          secret=b"s" * 32)
    wildcard = NodeAddress(peer, "tcp", "0.0.0.0", 7)
    manager.connected(peer, outbound=False, address=wildcard, remote_ip="127.0.0.1", now=T0)
    assert not manager.add_address(wildcard, source=NodeId("2" * 40), now=T0)
    assert not manager.add_address(NodeAddress(peer, "tcp", "::", 7), source="seed", now=T0)
    assert _stored(manager, peer) == (set(), set())
    assert manager.gossip_addresses(T0) == []
    assert not manager.dial_now(wildcard, persistent=True, now=T0).accepted
