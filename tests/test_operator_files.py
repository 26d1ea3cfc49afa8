"""Files a node keeps on disk are private: the peer store holds the address book's secret key."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from overlay import cli
from overlay.node import Node
from overlay.node._config import load_config
from overlay.node._service import LOCK_FILE, run_node
from overlay.peers import PeerStore, StoreChanges


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_store_directory_is_0700_and_database_files_0600(tmp_path: Path) -> None:
    data = tmp_path / "home" / "data"
    store = PeerStore(data / "peers.sqlite")
    try:
        store.apply(StoreChanges())
        names = sorted(p.name for p in data.iterdir())
        assert names == ["peers.sqlite", "peers.sqlite-shm", "peers.sqlite-wal"]
        assert _mode(data) == 0o700
        for name in names:
            assert _mode(data / name) == 0o600, name
    finally:
        store.close()


@pytest.mark.usefixtures("loose_umask")
def test_existing_loose_files_are_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "peers.sqlite"
    names = ("peers.sqlite", "peers.sqlite-wal", "peers.sqlite-shm")
    first = PeerStore(path)  # keeps the -wal and -shm files while open
    try:
        for name in names:
            os.chmod(tmp_path / name, 0o644)  # e.g. written by an older release
        caplog.set_level(logging.WARNING)
        PeerStore(path).close()
        for name in names:
            assert _mode(tmp_path / name) == 0o600, name
        warned = [r.getMessage() for r in caplog.records if "setting 0600" in r.getMessage()]
        assert len(warned) == 3
    finally:
        first.close()


@pytest.mark.anyio
@pytest.mark.usefixtures("loose_umask")
async def test_a_running_node_keeps_its_data_directory_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "a"
    assert cli.main(["init", "--home", str(home), "--listen", "tcp://127.0.0.1:0"]) == 0
    capsys.readouterr()
    (home / "data").mkdir(mode=0o755)  # made by hand, too open
    os.chmod(home / "data", 0o755)
    config = load_config(home / "config.toml")
    async with anyio.create_task_group() as tg:
        control: Node = await tg.start(run_node, config, home)
        assert control.listen_addresses
        assert _mode(home / "data") == 0o700
        assert _mode(home / "data" / "peers.sqlite") == 0o600
        lock = home / "data" / LOCK_FILE
        assert _mode(lock) == 0o600
        assert lock.read_text().strip() == str(os.getpid())
        tg.cancel_scope.cancel()
    assert lock.read_text() == ""  # released: no stale pid
