"""Capability records survive a restart: the peer store keeps each peer's signed record
(opaque bytes to the core), and the peer manager hands it back after reopening."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from discovery import sign_record, verify_record
from overlay.address import NodeAddress
from overlay.errors import LocalProtocolError
from overlay.identity import NodeId, NodeKey
from overlay.peers import (
    SCHEMA_VERSION,
    PeerManager,
    PeerManagerConfig,
    PeerStore,
    Persist,
    StoreChanges,
    StoredPeer,
)
from overlay.peers._manager import MAX_CAPABILITY_RECORD_BYTES

T0 = 1_700_000_000.0
NET = "overlay-test"
SELF = NodeId("ff" * 20)

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE peers (
    node_id TEXT PRIMARY KEY, addresses TEXT NOT NULL, source TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, failures INTEGER NOT NULL,
    score REAL NOT NULL, score_time REAL NOT NULL, flags TEXT NOT NULL, ban_until REAL,
    ban_reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE addresses (
    address TEXT PRIMARY KEY, source TEXT NOT NULL, source_group TEXT NOT NULL,
    added REAL NOT NULL, last_seen REAL NOT NULL, last_try REAL NOT NULL,
    last_success REAL NOT NULL, attempts INTEGER NOT NULL, tried INTEGER NOT NULL
);
CREATE TABLE ip_bans (ip TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT NOT NULL DEFAULT '');
"""
"""The peer database's tables as release 1 wrote them (before capability records)."""


def stored(node: str, record: bytes | None) -> StoredPeer:
    return StoredPeer(
        node, (f"{node}@10.0.0.1:7000",), "seed", T0, T0, 0, 0.0, T0, (), None, "", record
    )


def manager(state_path: Path, now: float) -> tuple[PeerManager, PeerStore]:
    store = PeerStore(state_path)
    state = store.load()
    m = PeerManager(
        PeerManagerConfig(),
        SELF,
        now=now,
        rng=random.Random(1),
        secret=state.secret,
        store_state=state,
    )
    return m, store


def flush(m: PeerManager, store: PeerStore, now: float) -> float:
    for _ in range(3):
        now += 60
        for action in m.poll(now):
            if isinstance(action, Persist):
                store.apply(action.changes)
    return now


def test_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "peers.db"
    a, b = f"{1:040x}", f"{2:040x}"
    with PeerStore(path) as store:
        store.apply(StoreChanges(peers_upsert=(stored(a, b"\x00record\xff"), stored(b, None))))
    with PeerStore(path) as store:
        peers = {p.node_id: p for p in store.load().peers}
        assert peers[a].capability_record == b"\x00record\xff"
        assert peers[b].capability_record is None
        store.apply(StoreChanges(peers_upsert=(stored(a, None),)))
    with PeerStore(path) as store:
        assert all(p.capability_record is None for p in store.load().peers)


def test_version_1_database_is_migrated(tmp_path: Path) -> None:
    """A file written before records existed opens, keeps its peers, and gains the column."""
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (1)")
    db.execute(
        "INSERT INTO peers VALUES (?, ?, 'seed', 1.0, 2.0, 0, 0.0, 1.0, '', NULL, '')",
        (f"{7:040x}", f'["{7:040x}@10.0.0.7:7000"]'),
    )
    db.commit()
    db.close()
    with PeerStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        (peer,) = store.load().peers
        assert peer.node_id == f"{7:040x}" and peer.capability_record is None
        store.apply(StoreChanges(peers_upsert=(stored(peer.node_id, b"rec"),)))
    with PeerStore(path) as store:
        assert store.load().peers[0].capability_record == b"rec"


def test_manager_restart_keeps_records(tmp_path: Path) -> None:
    path = tmp_path / "peers.db"
    key = NodeKey.from_seed(b"\x05" * 32)
    record = sign_record(
        key,
        network=NET,
        seq=9,
        issued_at=int(T0),
        expires_at=int(T0) + 86400,
        addresses=["10.0.0.5:7000"],
        capabilities={"kv": 1},
    ).data
    m, store = manager(path, T0)
    m.add_address(NodeAddress.parse(f"{key.node_id}@10.0.0.5:7000"), source="seed", now=T0)
    other = NodeId(f"{3:040x}")
    m.add_address(NodeAddress.parse(f"{other}@10.0.0.3:7000"), source="seed", now=T0)
    assert m.set_capability_record(key.node_id, record, T0)
    assert m.set_capability_record(other, b"doomed", T0)
    assert m.set_capability_record(other, None, T0)  # cleared again
    assert not m.set_capability_record(NodeId("ab" * 20), record, T0)  # unknown peer
    with pytest.raises(LocalProtocolError):
        m.set_capability_record(key.node_id, b"x" * (MAX_CAPABILITY_RECORD_BYTES + 1), T0)
    now = flush(m, store, T0)
    store.close()

    restored, store = manager(path, now)
    try:
        assert restored.capability_record(key.node_id) == record
        assert restored.capability_record(other) is None
        assert restored.capability_record(NodeId("ab" * 20)) is None
        assert restored.capability_records() == {key.node_id: record}
        # What discovery does on start-up: re-verify what the address book can serve.
        parsed = verify_record(record, network=NET, now=now, expected_id=key.node_id)
        assert parsed.has("kv")
    finally:
        store.close()
