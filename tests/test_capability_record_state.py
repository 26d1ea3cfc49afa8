"""The node's own record without a running node: which addresses a record carries, when it is
re-signed, how the persisted set and seq survive restarts (and when config.toml wins), and which
stored peer records are restored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from discovery import RecordStore, sign_record
from overlay.address import NodeAddress
from overlay.connection._observer import NullObserver
from overlay.errors import ConfigError, LocalProtocolError
from overlay.identity import NodeId, NodeKey
from overlay.node._peer_records import PeerRecords
from overlay.node._records import (
    CAPABILITIES_FILE,
    CapabilityOrigin,
    NodeCapabilities,
    record_addresses,
    refresh_delay,
)
from overlay.operator._control import parse_capability
from overlay.router._router import Router

T0 = 1_700_000_000.0
KEY = NodeKey.from_seed(bytes(range(32)))


def caps(state: Path | None, configured: tuple[str, ...] = ("blocks=2",), *,
         now: float = T0, ttl: float = 600.0) -> NodeCapabilities:
    return NodeCapabilities(KEY, network="n", ttl=ttl, configured=configured,
                            state_file=state, clock=lambda: now)


def started(node_caps: NodeCapabilities, published: list[bytes]) -> NodeCapabilities:
    node_caps.start(lambda: [NodeAddress.parse(f"{KEY.node_id}@127.0.0.1:7")], published.append)
    return node_caps


def test_records_carry_only_ip_literal_tcp_addresses() -> None:
    nid = KEY.node_id
    advertised = [NodeAddress.parse(text) for text in (
        f"memory:{nid}", f"{nid}@example.org:1", f"{nid}@127.0.0.1:2", f"{nid}@[::1]:3",
        f"{nid}@127.0.0.1:2",
    )]
    assert record_addresses(advertised) == ("127.0.0.1:2", "[::1]:3")
    many = [NodeAddress.parse(f"{nid}@10.0.0.{i}:1") for i in range(1, 12)]
    assert len(record_addresses(many)) == 8
    assert record_addresses([NodeAddress.parse(f"memory:{nid}")]) == ()


def test_a_record_is_re_signed_at_half_its_lifetime() -> None:
    published: list[bytes] = []
    node_caps = started(caps(None, ttl=600.0), published)
    record = node_caps.record
    assert record is not None and record.record.expires_at - record.record.issued_at == 600
    assert refresh_delay(record, T0) == 300.0
    assert refresh_delay(record, T0 + 299.5) == 0.5
    assert refresh_delay(record, T0 + 900) == 0.0
    assert published == [record.data]
    assert node_caps.refresh().seq > record.seq and len(published) == 2


def test_capability_syntax() -> None:
    assert parse_capability("blocks") == ("blocks", 0)
    assert parse_capability("blocks=7") == ("blocks", 7)
    for bad in ("Blocks", "blocks=x", f"blocks={2**32}", "", "=1", "blocks=-1"):
        with pytest.raises(LocalProtocolError):
            parse_capability(bad)


def test_an_operator_change_survives_a_restart_unless_config_changed(tmp_path: Path) -> None:
    state = tmp_path / CAPABILITIES_FILE
    first = caps(state)
    first.set("relay", 3)  # before the start: checked, persisted, signed at start
    assert json.loads(state.read_text())["origin"] == "operator"
    again = caps(state)
    assert dict(again) == dict(first) and again.origin is CapabilityOrigin.OPERATOR
    edited = caps(state, ("light",))  # config.toml changed since: it wins
    assert list(edited) == ["light"] and edited.origin is CapabilityOrigin.CONFIG
    with pytest.raises(LocalProtocolError):
        first.set("x", 1, {"Bad Key": "v"})
    assert list(first) == ["blocks", "relay"]


def test_seq_never_goes_backwards_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / CAPABILITIES_FILE
    first = started(caps(state, now=T0), [])
    assert first.record is not None
    behind = started(caps(state, now=T0 - 3600), [])  # the clock went back an hour
    assert behind.record is not None and behind.record.seq == first.record.seq + 1


def test_a_damaged_state_file_is_a_config_error(tmp_path: Path) -> None:
    state = tmp_path / CAPABILITIES_FILE
    for text in ("{", "[]", json.dumps({"format": 1}), json.dumps(
            {"format": 1, "origin": "operator", "config": [], "seq": -1, "capabilities": {}})):
        state.write_text(text)
        with pytest.raises(ConfigError, match="damaged"):
            caps(state)


def test_stored_peer_records_are_re_verified_at_start() -> None:
    now = int(T0)
    good_key, old_key, other = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    good = sign_record(good_key, network="n", seq=1, issued_at=now - 10, expires_at=now + 600)
    expired = sign_record(old_key, network="n", seq=1, issued_at=now - 900, expires_at=now - 1)
    foreign = sign_record(other, network="n", seq=1, issued_at=now, expires_at=now + 600)
    store = RecordStore()
    peers = PeerRecords(network="n", router=Router(KEY.node_id, NullObserver()), store=store,
                        clock=lambda: T0)
    wrong_id = NodeId(good_key.node_id[::-1])
    dropped = peers.restore({good_key.node_id: good.data, old_key.node_id: expired.data,
                             wrong_id: foreign.data})  # another node's record, stored under it
    assert sorted(dropped) == sorted([old_key.node_id, wrong_id])
    assert store.get(good_key.node_id, T0) == good and len(store) == 1
    stats = peers.statistics()
    assert (stats.restored, stats.dropped_at_restore) == (1, 2)
