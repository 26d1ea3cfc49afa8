"""PeerStoreError lives in the error tree (a StorageError) and the peering driver retries a
failed write; DisconnectReason has one definition shared by the wire codecs and the hello."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import overlay.errors
import overlay.peers
import overlay.peers._store
import overlay.wire._messages
import overlay.wire._nodeinfo
from overlay.errors import LocalProtocolError, OverlayError, PeerStoreError, StorageError
from overlay.identity import NodeId
from overlay.node import Node
from overlay.node._config import NodeConfig
from overlay.node._peering import Peering, wall_clock
from overlay.peers import PeerStore, Persist, StoreChanges, StoredPeer


def test_peer_store_error_is_one_class_in_the_storage_family() -> None:
    assert overlay.peers.PeerStoreError is PeerStoreError
    assert overlay.peers._store.PeerStoreError is PeerStoreError
    assert issubclass(PeerStoreError, StorageError)
    assert issubclass(StorageError, OverlayError)
    assert not issubclass(StorageError, LocalProtocolError)  # not the caller's fault
    assert "PeerStoreError" in overlay.errors.__all__
    assert "StorageError" in overlay.errors.__all__
    docs = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    assert "StorageError" in docs and "PeerStoreError" in docs
    assert "PeerStoreError" in (overlay.errors.__doc__ or "")


def _peer(node_id: str) -> StoredPeer:
    return StoredPeer(node_id, (), "operator", 1.0, 1.0, 0, 0.0, 1.0, (), None)


def test_a_failed_write_raises_peer_store_error(tmp_path: Path) -> None:
    path = tmp_path / "peers.sqlite"
    with PeerStore(path) as store:
        with sqlite3.connect(path) as other:
            other.execute("DROP TABLE peers")
        with pytest.raises(PeerStoreError, match="writing"):
            store.apply(StoreChanges(peers_upsert=(_peer("1" * 40),)))


@pytest.mark.anyio
async def test_the_driver_keeps_a_batch_that_failed_to_persist(tmp_path: Path) -> None:
    path = tmp_path / "peers.sqlite"
    async with Node(NodeConfig(listen=("tcp://127.0.0.1:0",))) as node:
        peering = Peering(node, store_path=path)
        victim = NodeId("2" * 40)
        now = wall_clock()
        peering.manager.ban_peer(victim, now + 60.0, "operator", now)
        batches = [a for a in peering.manager.poll(now) if isinstance(a, Persist)]
        assert len(batches) == 1
        assert victim in {p.node_id for p in batches[0].changes.peers_upsert}
        with sqlite3.connect(path) as other:
            other.execute("DROP TABLE peers")
        await peering._persist(batches[0])  # logged, handed back to the manager; no exception
        again = [a for a in peering.manager.poll(now + 5.0) if isinstance(a, Persist)]
        assert again and victim in {p.node_id for p in again[0].changes.peers_upsert}
        assert peering.store is not None
        peering.store.close()


def test_disconnect_reason_has_one_definition() -> None:
    assert overlay.wire._nodeinfo.DisconnectReason is overlay.wire._messages.DisconnectReason
    reason = overlay.wire._messages.DisconnectReason
    assert reason.BANNED == 7
    assert reason.name(reason.EVICTED) == "evicted"
    assert reason.name(12345) == "unknown_12345"
    assert "class DisconnectReason" not in Path(overlay.wire._nodeinfo.__file__).read_text()
