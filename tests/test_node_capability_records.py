"""Signed capability records between running nodes (asyncio and trio; loopback TCP and the
memory network): the hello and node-info updates carry them, peers verify them against the
authenticated id, forged / replayed / expired ones are counted, scored and ignored, live changes
reach connected peers, restarts keep them, and operators see and change them."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import anyio
import pytest

from discovery import RecordRejection, SignedRecord, sign_record
from overlay import cli
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import AdminConfig, DiscoveryConfig, MetricsConfig
from overlay.node._node import PING
from overlay.node._peer_records import RecordEntry
from overlay.node._records import CapabilityOrigin, RecordChanged
from overlay.testing import MemoryNetwork
from tests.support import (
    both_backends,
    both_transports,
    config_for,
    connected_pair,
    make_node,
    node_pair,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

anyio_backend = both_backends()
transport = both_transports()

BLOCKS = DiscoveryConfig(capabilities=("blocks=2",))


def advertised(node: Node, peer: Node) -> frozenset[str]:
    view = node.router.peer_table.peer(peer.node_id)
    return frozenset() if view is None else view.advertised


def own(node: Node) -> SignedRecord:
    record = node.capabilities.record
    assert record is not None
    return record


def craft(case: str, node: Node) -> bytes:
    """A record ``node`` presents as its own that its peers must refuse."""
    now = math.floor(time.time())
    seq = own(node).seq + 1000
    match case:
        case "other_key":  # a valid record, of another node
            return sign_record(NodeKey.generate(), network=node.config.network, seq=seq,
                               issued_at=now, expires_at=now + 600, capabilities={"x": 1}).data
        case "bad_signature":  # the last byte of the envelope is the signature's
            data = bytearray(own(node).data)
            data[-1] ^= 0x01
            return bytes(data)
        case "expired":
            return sign_record(node.key, network=node.config.network, seq=seq,
                               issued_at=now - 7200, expires_at=now - 3600).data
        case "wrong_network":
            return sign_record(node.key, network="elsewhere", seq=seq, issued_at=now,
                               expires_at=now + 600).data
        case "garbage":
            return b"\xff\x00not a record"
    raise AssertionError(case)


BAD = [
    ("other_key", RecordRejection.ID_MISMATCH, True),
    ("bad_signature", RecordRejection.BAD_SIGNATURE, True),
    ("expired", RecordRejection.EXPIRED, False),
    ("wrong_network", RecordRejection.WRONG_NETWORK, True),
    ("garbage", RecordRejection.MALFORMED, True),
]


async def test_the_hello_carries_the_configured_record(transport: str) -> None:
    async with connected_pair(transport, discovery=BLOCKS) as (a, b):
        assert a.info_seq == 0  # the first record is part of the NodeInfo as at start
        await wait_until(lambda: advertised(a, b) == {"blocks"})
        assert advertised(b, a) == {"blocks"}
        stored = a.discovery.records.get(b.node_id, a.wall_clock())
        assert stored is not None and stored.data == own(b).data
        assert a.discovery.peers.statistics().received == {RecordEntry.HANDSHAKE: 1}
        assert a.peering.manager.capability_record(b.node_id) == own(b).data
        peer = next(p for p in a.control.peers() if p["id"] == b.node_id)
        assert peer["capabilities"]["advertised"] == [
            {"name": "blocks", "version": 2, "attributes": {}}]
        assert peer["capabilities"]["record_seq"] == own(b).seq
        assert a.metrics_snapshot().capability_peers == {"blocks": (1, 0)}
        assert a.metrics_snapshot().record_seq == own(a).seq
        if transport == "memory":
            assert own(a).record.addresses == ()  # no IP address on the memory network
        else:
            assert own(a).record.addresses == (str(a.address).partition("@")[2],)


async def test_a_live_change_reaches_connected_peers(transport: str) -> None:
    async with connected_pair(transport, discovery=BLOCKS) as (a, b):
        events: list[RecordChanged] = []
        a.capabilities.subscribe(events.append)
        before = own(a).seq
        a.capabilities.set("archive", 1, {"depth": "full"})
        assert own(a).seq > before and a.capabilities.origin is CapabilityOrigin.OPERATOR
        await wait_until(lambda: advertised(b, a) == {"archive", "blocks"})
        assert a.capabilities.remove("blocks") and not a.capabilities.remove("blocks")
        await wait_until(lambda: advertised(b, a) == {"archive"})
        record = b.discovery.peers.record_of(a.node_id)
        assert record is not None and record.data == own(a).data
        assert record.record.capabilities["archive"].attributes == {"depth": "full"}
        a.capabilities.refresh()  # a periodic re-sign: same set, new seq
        await wait_until(lambda: b.discovery.peers.record_of(a.node_id) == own(a))
        assert [e.capabilities_changed for e in events] == [True, True, False]
        assert b.discovery.peers.statistics().rejected == {}
        assert list(a.capabilities) == ["archive"]


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_burst_of_changes_reaches_peers_within_the_update_pacing() -> None:
    """docs/discovery.md: a change reaches connected peers immediately, bounded by the
    node-info update pacing (8 back to back, then 2 per second, newest kept)."""
    async with connected_pair("memory", discovery=BLOCKS) as (a, b):
        start = anyio.current_time()
        for version in range(1, 21):
            a.capabilities.set("blocks", version)
        await wait_until(lambda: b.discovery.peers.record_of(a.node_id) == own(a))
        assert anyio.current_time() - start <= 0.5 + 0.01


async def test_an_invalid_change_changes_nothing(transport: str) -> None:
    async with connected_pair(transport, discovery=BLOCKS) as (a, _):
        before = own(a)
        with pytest.raises(Exception, match="capability name"):
            a.capabilities.set("Bad")
        with pytest.raises(Exception, match="attribute"):
            a.capabilities.set("blocks", 1, {"k": "v" * 100})
        with pytest.raises(Exception, match="32"):
            a.capabilities.replace({f"cap{i}": i for i in range(33)})
        assert own(a) == before and dict(a.capabilities) == {"blocks": before.record
                                                              .capabilities["blocks"]}


@pytest.mark.parametrize(("case", "reason", "penalised"), BAD)
async def test_a_bad_record_in_the_hello_is_ignored(
    transport: str, case: str, reason: RecordRejection, penalised: bool
) -> None:
    async with node_pair(transport, discovery=BLOCKS) as (a, b):
        b.update_local_info(capability_record=craft(case, b))
        await b.dial(a.address)
        await wait_until(lambda: b.node_id in a.connected_peers())
        assert a.discovery.peers.statistics().rejected == {(RecordEntry.HANDSHAKE, reason): 1}
        view = a.router.peer_table.peer(b.node_id)
        assert view is not None and view.advertised == frozenset()
        assert view.score is not None and (view.score < 0) == penalised
        assert b.node_id not in a.discovery.records
        assert await a.channel(PING).request(b.node_id, b"open?", timeout=5) == b"open?"
        assert b.node_id in a.connected_peers() and a.node_id in b.connected_peers()


@pytest.mark.parametrize(("case", "reason", "penalised"), BAD)
async def test_a_bad_record_in_an_update_is_ignored(
    transport: str, case: str, reason: RecordRejection, penalised: bool
) -> None:
    async with connected_pair(transport, discovery=BLOCKS) as (a, b):
        await wait_until(lambda: advertised(a, b) == {"blocks"})
        b.update_local_info(capability_record=craft(case, b))
        await wait_until(lambda: bool(a.discovery.peers.statistics().rejected))
        assert a.discovery.peers.statistics().rejected == {(RecordEntry.UPDATE, reason): 1}
        assert advertised(a, b) == {"blocks"}  # what it advertised before still holds
        view = a.router.peer_table.peer(b.node_id)
        assert view is not None and view.score is not None
        assert (view.score < 0) == penalised
        assert b.node_id in a.connected_peers()


async def test_a_replayed_record_is_refused_in_updates_and_hellos(transport: str) -> None:
    async with node_pair(transport, discovery=BLOCKS) as (a, b):
        await b.dial(a.address)
        old = own(b)
        b.capabilities.set("archive")
        await wait_until(lambda: advertised(a, b) == {"archive", "blocks"})
        b.update_local_info(capability_record=old.data)  # replay: an older seq
        await wait_until(lambda: bool(a.discovery.peers.statistics().rejected))
        assert a.discovery.peers.statistics().rejected == {
            (RecordEntry.UPDATE, RecordRejection.STALE_SEQ): 1}
        assert advertised(a, b) == {"archive", "blocks"}
        await b.disconnect(a.node_id)
        await wait_until(lambda: b.node_id not in a.connected_peers())
        await b.dial(a.address)  # the hello still carries the old record
        await wait_until(lambda: b.node_id in a.connected_peers())
        assert a.discovery.peers.statistics().rejected == {
            (RecordEntry.UPDATE, RecordRejection.STALE_SEQ): 1,
            (RecordEntry.HANDSHAKE, RecordRejection.STALE_SEQ): 1,
        }
        assert advertised(a, b) == {"archive", "blocks"}  # the address book's newer record


async def test_confirmed_capabilities_follow_requests_served(transport: str) -> None:
    async with connected_pair(transport, discovery=BLOCKS) as (a, b):
        await wait_until(lambda: advertised(a, b) == {"blocks"})
        a.discovery.confirm(b.node_id, "blocks")
        a.discovery.confirm(b.node_id, "archive")  # served, but not advertised
        view = a.router.peer_table.peer(b.node_id)
        assert view is not None and view.confirmed == {"blocks"}
        assert a.discovery.confirmed(b.node_id) == {"blocks"}
        b.capabilities.set("archive")
        await wait_until(lambda: "archive" in advertised(a, b))
        assert a.discovery.confirmed(b.node_id) == {"archive", "blocks"}
        assert a.metrics_snapshot().capability_peers == {"archive": (1, 1), "blocks": (1, 1)}
        a.discovery.refute(b.node_id, "blocks")
        view = a.router.peer_table.peer(b.node_id)
        assert view is not None and view.confirmed == {"archive"}
        assert view.score is not None and view.score < 0
        assert a.discovery.peers.is_suspect(b.node_id, "blocks")
        with pytest.raises(Exception, match="capability name"):
            a.discovery.confirm(b.node_id, "Not A Name")


async def test_a_restarted_node_keeps_records_and_its_capabilities(
    transport: str, tmp_path: Path
) -> None:
    network = MemoryNetwork() if transport == "memory" else None
    config_a = config_for(transport, admin=AdminConfig(enabled=False), discovery=BLOCKS)
    config_b = config_for(transport, discovery=DiscoveryConfig(capabilities=("archive=3",)))
    async with make_node(config_b, network) as b:
        async with make_node(config_a, network, home=tmp_path) as a:
            await a.dial(b.address)
            await wait_until(lambda: advertised(a, b) == {"archive"})
            a.capabilities.set("relay", 2)
            last_seq = own(a).seq
        assert (tmp_path / "data" / "peers.sqlite").exists()
        async with make_node(config_a, network, home=tmp_path) as again:
            kept = again.discovery.records.get(b.node_id, again.wall_clock())
            assert kept is not None and kept.data == own(b).data  # before any connection
            assert again.discovery.peers.statistics().restored == 1
            assert dict(again.capabilities) == {"blocks": own(again).record.capabilities[
                "blocks"], "relay": own(again).record.capabilities["relay"]}
            assert again.capabilities.origin is CapabilityOrigin.OPERATOR
            assert own(again).seq > last_seq
        edited = config_for(transport, admin=AdminConfig(enabled=False),
                            discovery=DiscoveryConfig(capabilities=("light",)))
        async with make_node(edited, network, home=tmp_path) as third:  # config changed last
            assert list(third.capabilities) == ["light"]
            assert third.capabilities.origin is CapabilityOrigin.CONFIG


async def test_metrics_count_records_by_entry_point_and_reason(anyio_backend: str) -> None:
    from tests.test_metrics import count, scrape

    metrics = MetricsConfig(enabled=True, listen="127.0.0.1:0")
    async with make_node(config_for("tcp", metrics=metrics, discovery=BLOCKS)) as a, \
            make_node(config_for("tcp", discovery=BLOCKS)) as b:
        b.update_local_info(capability_record=craft("bad_signature", b))
        await b.dial(a.address)
        await wait_until(lambda: b.node_id in a.connected_peers())
        b.capabilities.set("archive")
        await wait_until(lambda: "archive" in advertised(a, b))
        samples = await scrape(a.control)
        assert count(samples, "overlay_records_received_total", entry="handshake") == 1
        assert count(samples, "overlay_records_received_total", entry="update") == 1
        assert count(samples, "overlay_records_rejected_total", entry="handshake",
                     reason="bad_signature") == 1
        assert count(samples, "overlay_record_seq") == own(a).seq
        assert count(samples, "overlay_capability_peers", capability="archive",
                     kind="advertised") == 1


def _run_cli(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as exc:  # argparse usage errors exit 2
        return int(exc.code or 0)


async def test_operator_commands_change_a_running_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def run(*args: str, home: Path) -> int:
        return await anyio.to_thread.run_sync(_run_cli, [*args, "--home", str(home)])

    home_a, home_b = tmp_path / "a", tmp_path / "b"
    async with Node(config_for("tcp", discovery=BLOCKS), home=home_a) as a, \
            Node(config_for("tcp"), home=home_b) as b:
        await b.dial(a.address)
        capsys.readouterr()
        assert await run("capabilities", "set", "archive=1", "light", home=home_a) == 0
        assert "advertising archive=1 light=0" in capsys.readouterr().out
        await wait_until(lambda: advertised(b, a) == {"archive", "blocks", "light"})
        assert await run("capabilities", "remove", "light", home=home_a) == 0
        await wait_until(lambda: advertised(b, a) == {"archive", "blocks"})
        assert await run("capabilities", "remove", "light", home=home_a) == 1
        assert "not advertised" in capsys.readouterr().err
        assert await run("capabilities", "set", "Bad", home=home_a) == 2
        capsys.readouterr()
        assert await run("capabilities", "list", "--json", home=home_a) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["seq"] == own(a).seq and shown["origin"] == "operator"
        assert [c["name"] for c in shown["capabilities"]] == ["archive", "blocks"]
        assert await run("capabilities", home=home_a) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].startswith(f"record seq {own(a).seq}, expires ")
        assert [line.split() for line in table[1:]] == [
            ["NAME", "VERSION", "ATTRIBUTES"], ["archive", "1", "-"], ["blocks", "2", "-"]]
        assert await run("peers", "--json", home=home_b) == 0
        peers = json.loads(capsys.readouterr().out)
        caps = next(p for p in peers if p["id"] == a.node_id)["capabilities"]
        assert [c["name"] for c in caps["advertised"]] == ["archive", "blocks"]
        assert caps["record_seq"] == own(a).seq and caps["confirmed"] == []
        assert await run("status", "--json", home=home_a) == 0
        assert json.loads(capsys.readouterr().out)["record"]["seq"] == own(a).seq
    saved = json.loads((home_a / "data" / "capabilities.json").read_text())
    assert saved["origin"] == "operator" and sorted(saved["capabilities"]) == [
        "archive", "blocks"]
