"""The SQLite peer store: round trips, schema versions, robustness, kill -9 mid-write, and
failed writes (a StorageError, retried by the peering driver)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import overlay.errors
import overlay.peers
from overlay.address import NodeAddress
from overlay.errors import (
    ConfigError,
    LocalProtocolError,
    OverlayError,
    PeerStoreError,
    StorageError,
)
from overlay.identity import NodeId
from overlay.node import Node
from overlay.node._config import NodeConfig
from overlay.node._peering import Peering
from overlay.peers import (
    SCHEMA_VERSION,
    PeerManager,
    PeerManagerConfig,
    PeerStore,
    Persist,
    ScoreEvent,
    StoreChanges,
    StoredAddress,
    StoredIpBan,
    StoredPeer,
    _store,
)
from overlay.peers._store import (
    decode_address_row,
    decode_ip_ban_row,
    decode_peer_row,
    encode_address_row,
    encode_peer_row,
)
from tests.support import wait_until

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)


def peer(i: int, **kw: object) -> StoredPeer:
    fields: dict[str, object] = {
        "node_id": f"{i:040x}",
        "addresses": (f"{i:040x}@10.0.0.{i % 250}:7000",),
        "source": "seed",
        "first_seen": T0,
        "last_seen": T0 + i,
        "failures": i % 3,
        "score": -1.5 * i,
        "score_time": T0,
        "flags": ("persistent",) if i % 2 else (),
        "ban_until": T0 + 99 if i % 5 == 0 else None,
        "ban_reason": "x" if i % 5 == 0 else "",
    }
    fields.update(kw)
    return StoredPeer(**fields)  # type: ignore[arg-type]


def address(i: int, tried: bool = False) -> StoredAddress:
    return StoredAddress(
        f"{i:040x}@10.0.0.{i % 250}:7000", "seed", "local:seed", T0, T0 + 1, 0.0, 0.0, 0, tried
    )


def test_round_trip_and_secret(tmp_path: Path) -> None:
    path = tmp_path / "peers.db"
    with PeerStore(path) as store:
        secret = store.secret
        assert len(secret) == 32
        state = store.load()
        assert state.secret == secret and state.peers == () and state.skipped_rows == 0
        store.apply(
            StoreChanges(
                peers_upsert=tuple(peer(i) for i in range(1, 11)),
                addresses_upsert=(address(1), address(2, tried=True)),
                ip_bans_upsert=(StoredIpBan("192.0.2.1", T0 + 10, "abuse"),),
            )
        )
        store.apply(
            StoreChanges(
                peers_delete=(f"{3:040x}",),
                peers_upsert=(peer(4, score=7.0),),
                addresses_delete=(address(1).address,),
                ip_bans_delete=("192.0.2.1",),
                ip_bans_upsert=(StoredIpBan("2001:db8::/64", T0 + 20, ""),),
            )
        )
        store.apply(StoreChanges())  # empty batch: no-op
        assert store.integrity_check() == "ok"
        assert store.schema_version() == SCHEMA_VERSION
    with PeerStore(path) as store:
        assert store.secret == secret  # stable across restarts
        state = store.load()
    peers = {p.node_id: p for p in state.peers}
    assert len(peers) == 9 and f"{3:040x}" not in peers
    assert peers[f"{4:040x}"].score == 7.0
    assert peers[f"{5:040x}"] == peer(5)
    assert peers[f"{1:040x}"].flags == ("persistent",)
    assert state.addresses == (address(2, tried=True),)
    assert state.ip_bans == (StoredIpBan("2001:db8::/64", T0 + 20, ""),)


def test_wal_mode(tmp_path: Path) -> None:
    with PeerStore(tmp_path / "p.db"):
        pass
    db = sqlite3.connect(tmp_path / "p.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    PeerStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="newer"):
        PeerStore(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_older_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with PeerStore(path) as store:
        store.apply(StoreChanges(peers_upsert=(peer(1),)))

    def add_column(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE peers ADD COLUMN note TEXT NOT NULL DEFAULT ''")

    with PeerStore(path, extra_migrations=[add_column]) as store:
        assert store.schema_version() == SCHEMA_VERSION + 1
        assert store.load().peers == (peer(1),)  # data kept through the migration
    db = sqlite3.connect(path)
    assert "note" in [row[1] for row in db.execute("PRAGMA table_info(peers)")]
    db.close()


def test_unusable_files_are_config_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match="peer_store"):
        PeerStore(junk)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE something (x)")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="something else"):
        PeerStore(other)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ConfigError):
        PeerStore(tmp_path / "dir.db")


def test_closed_store_is_a_local_error(tmp_path: Path) -> None:
    store = PeerStore(tmp_path / "p.db")
    store.close()
    store.close()
    with pytest.raises(LocalProtocolError):
        store.load()
    with pytest.raises(LocalProtocolError):
        store.apply(StoreChanges(peers_upsert=(peer(1),)))


def test_malformed_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with PeerStore(path) as store:
        store.apply(StoreChanges(peers_upsert=(peer(1), peer(2))))
    db = sqlite3.connect(path)
    db.execute("UPDATE peers SET addresses = '{not json' WHERE node_id = ?", (f"{1:040x}",))
    db.execute("INSERT INTO ip_bans VALUES ('x', 'not a number', '')")
    db.commit()
    db.close()
    with PeerStore(path) as store:
        state = store.load()
    assert state.skipped_rows == 2
    assert [p.node_id for p in state.peers] == [f"{2:040x}"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.mark.anyio
async def test_usable_from_worker_threads(tmp_path: Path) -> None:
    store = PeerStore(tmp_path / "p.db")
    try:
        async with anyio.create_task_group() as tg:
            for i in range(1, 21):
                changes = StoreChanges(peers_upsert=(peer(i),))
                tg.start_soon(anyio.to_thread.run_sync, store.apply, changes)
        state = await anyio.to_thread.run_sync(store.load)
        assert len(state.peers) == 20
    finally:
        await anyio.to_thread.run_sync(store.close)


def test_manager_store_manager_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = PeerStore(path)
    state = store.load()
    m = PeerManager(
        PeerManagerConfig(),
        SELF,
        now=T0,
        rng=random.Random(1),
        secret=state.secret,
        store_state=state,
    )
    for i in range(1, 50):
        m.add_address(NodeAddress.parse(f"{i:040x}@10.{i}.0.1:7000"), source="seed", now=T0)
    now = T0
    for _ in range(5):
        now += 2
        for action in m.poll(now):
            if isinstance(action, Persist):
                store.apply(action.changes)
    target = NodeId(f"{1:040x}")
    m.report(target, ScoreEvent.PROTOCOL_VIOLATION, now)
    for action in m.poll(now):
        if isinstance(action, Persist):
            store.apply(action.changes)
    store.close()
    with PeerStore(path) as again:
        state = again.load()
    restored = PeerManager(
        PeerManagerConfig(),
        SELF,
        now=now,
        rng=random.Random(2),
        secret=state.secret,
        store_state=state,
    )
    assert len(restored.address_book) == len(m.address_book)
    snap = restored.peer(target, now)
    assert snap is not None and snap.ban_until is not None


peer_rows = st.lists(
    st.one_of(
        st.none(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=30),
        st.binary(max_size=8),
        st.booleans(),
        st.just('["a", "b"]'),
        st.just("[1]"),
        st.just("[" * 2000),
    ),
    min_size=0,
    max_size=12,
)


@given(peer_rows)
def test_row_decoders_never_raise(row: list[object]) -> None:
    for decoder in (decode_peer_row, decode_address_row, decode_ip_ban_row):
        result = decoder(row)
        assert result is None or type(result).__name__.startswith("Stored")


def test_row_decoders_accept_what_the_store_writes() -> None:
    p = peer(5)
    row = encode_peer_row(p)
    assert decode_peer_row(row) == p
    a = address(3, tried=True)
    assert decode_address_row(encode_address_row(a)) == a
    assert decode_ip_ban_row(("1.2.3.4", 5.0, "r")) == StoredIpBan("1.2.3.4", 5.0, "r")
    assert decode_peer_row((*row[:9], float("inf"), "", None)) is None
    assert decode_peer_row((*row[:11], "not bytes")) is None


_WRITER = textwrap.dedent(
    """
    import sys
    from overlay.peers import PeerStore, StoreChanges, StoredIpBan, StoredPeer

    BATCH = 40
    store = PeerStore(sys.argv[1])
    batch = int(sys.argv[2])
    while True:
        peers = tuple(
            StoredPeer(f"{batch:08x}{j:032x}", (f"{batch:08x}{j:032x}@10.0.0.1:7000",) * 4,
                       "seed", 1.0, float(batch), j, -1.0, 1.0, ("persistent",), None, "")
            for j in range(BATCH)
        )
        marker = StoredIpBan("marker", float(batch), "last complete batch")
        store.apply(StoreChanges(peers_upsert=peers, ip_bans_upsert=(marker,)))
        print(batch, flush=True)
        batch += 1
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_minus_nine_mid_write_leaves_a_consistent_prefix(tmp_path: Path) -> None:
    path = tmp_path / "peers.db"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    next_batch = 0
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(next_batch)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for _ in range(15 + 10 * round_):  # let it commit a few batches, then kill it
                line = proc.stdout.readline()
                assert line, "writer died"
            os.kill(proc.pid, signal.SIGKILL)  # mid-transaction, most likely
        finally:
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        with PeerStore(path) as store:
            assert store.integrity_check() == "ok"
            state = store.load()
        assert state.skipped_rows == 0
        marker = [b for b in state.ip_bans if b.ip == "marker"]
        assert len(marker) == 1
        last = int(marker[0].until)
        batches: dict[int, int] = {}
        for p in state.peers:
            batches[int(p.node_id[:8], 16)] = batches.get(int(p.node_id[:8], 16), 0) + 1
        # Exactly the batches up to the marker, each complete: a prefix of the writes.
        assert sorted(batches) == list(range(last + 1))
        assert set(batches.values()) == {40}
        assert last >= next_batch + 14
        next_batch = last + 1


# ------------------------------------------------------------------------- failed writes


def test_peer_store_error_is_one_class_in_the_storage_family() -> None:
    assert overlay.peers.PeerStoreError is PeerStoreError
    assert _store.PeerStoreError is PeerStoreError
    assert issubclass(PeerStoreError, StorageError)
    assert issubclass(StorageError, OverlayError)
    assert not issubclass(StorageError, LocalProtocolError)  # not the caller's fault
    assert "PeerStoreError" in overlay.errors.__all__
    assert "StorageError" in overlay.errors.__all__
    docs = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    assert "StorageError" in docs and "PeerStoreError" in docs
    assert "PeerStoreError" in (overlay.errors.__doc__ or "")


def _stored(node_id: str) -> StoredPeer:
    return StoredPeer(node_id, (), "operator", 1.0, 1.0, 0, 0.0, 1.0, (), None)


def test_a_failed_write_raises_peer_store_error(tmp_path: Path) -> None:
    path = tmp_path / "peers.sqlite"
    with PeerStore(path) as store:
        with sqlite3.connect(path) as other:
            other.execute("DROP TABLE peers")
        with pytest.raises(PeerStoreError, match="writing"):
            store.apply(StoreChanges(peers_upsert=(_stored("1" * 40),)))


@pytest.mark.anyio
async def test_the_driver_keeps_a_batch_that_failed_to_persist(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails is logged, not raised; the changes stay pending and a later write
    stores them (the peer manager runs on a fake wall clock, advanced by hand)."""
    path = tmp_path / "peers.sqlite"
    clock = [1_000_000.0]
    victim = NodeId("2" * 40)
    async with Node(NodeConfig(listen=("tcp://127.0.0.1:0",))) as node:
        peering = Peering(node.config.peers, node.node_id, router=node.router,
                          dial=node.dial_outcome, store_path=path,
                          wall_clock=lambda: clock[0])
        with sqlite3.connect(path) as other:  # the next write fails
            other.execute("ALTER TABLE peers RENAME TO peers_away")
        peering.manager.ban_peer(victim, clock[0] + 600.0, "operator", clock[0])
        async with anyio.create_task_group() as tg:
            await tg.start(peering.run)
            await wait_until(lambda: "will retry" in caplog.text)
            with sqlite3.connect(path) as other:  # the store can write again
                other.execute("ALTER TABLE peers_away RENAME TO peers")
            clock[0] += 5.0  # past persist_interval: the kept batch is due again
            peering.wake()

            def stored() -> bool:
                with PeerStore(path) as reader:
                    return any(p.node_id == victim for p in reader.load().peers)

            await wait_until(stored)
            tg.cancel_scope.cancel()
