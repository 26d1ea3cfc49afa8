"""SQLite persistence of peers, address-book entries, IP bans and the address-book secret.

Theory of operation
-------------------
One SQLite file in WAL mode (``journal_mode=WAL``, ``synchronous=NORMAL``). Each ``apply`` is
one ``BEGIN IMMEDIATE ... COMMIT`` transaction, so a batch is either entirely on disk or not at
all: killing the process at any instant (even ``kill -9`` mid-write) leaves the database
consistent, holding a prefix of the applied batches. ``synchronous=NORMAL`` in WAL mode never
corrupts the database; only a power loss / OS crash may lose the last few batches, which is
acceptable for a peer cache.

The API is synchronous and thread-safe (one connection guarded by a lock, opened with
``check_same_thread=False``): the async driver calls it via ``anyio.to_thread.run_sync``.
SQLite failures while reading or writing (disk full, I/O error, locked past ``busy_timeout``)
raise :class:`~overlay.errors.PeerStoreError`, a :class:`~overlay.errors.StorageError`; a file
that cannot be opened as a peer database raises :class:`~overlay.errors.ConfigError`.

Schema versioning: table ``schema_version`` holds one integer. Opening a database written by
a newer release raises :class:`~overlay.errors.ConfigError` (never touching it); an older one
is migrated step by step, each step in its own transaction (``_MIGRATIONS[v]`` upgrades
version ``v`` to ``v + 1``). Version 0 is the empty file.

The address-book secret (32 random bytes) is created with the database and never changes, so
bucket placement (recomputed on load) is stable across restarts. Because the file holds it, the
store creates its directory with mode 0700 and the database with mode 0600 (SQLite gives the
``-wal`` and ``-shm`` files the database's mode); existing files readable by group or others are
tightened to 0600 when the store opens, with a warning. Rows that do not decode (a
hand-edited or damaged file) are skipped and counted in ``LoadedState.skipped_rows``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from overlay.errors import ConfigError, LocalProtocolError, PeerStoreError
from overlay.peers._state import (
    LoadedState,
    StoreChanges,
    StoredAddress,
    StoredIpBan,
    StoredPeer,
)

__all__ = [
    "PeerStore",
    "PeerStoreError",  # defined in overlay.errors; re-exported here and by overlay.peers
    "SCHEMA_VERSION",
    "decode_address_row",
    "decode_ip_ban_row",
    "decode_peer_row",
    "encode_address_row",
    "encode_peer_row",
]

_log = logging.getLogger(__name__)

_SECRET_BYTES = 32


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` and re-raise on any exception (a
    cancellation included), so a batch is on disk entirely or not at all."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    db.execute(
        """CREATE TABLE peers (
            node_id TEXT PRIMARY KEY,
            addresses TEXT NOT NULL,
            source TEXT NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            failures INTEGER NOT NULL,
            score REAL NOT NULL,
            score_time REAL NOT NULL,
            flags TEXT NOT NULL,
            ban_until REAL,
            ban_reason TEXT NOT NULL DEFAULT ''
        )"""
    )
    db.execute(
        """CREATE TABLE addresses (
            address TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            source_group TEXT NOT NULL,
            added REAL NOT NULL,
            last_seen REAL NOT NULL,
            last_try REAL NOT NULL,
            last_success REAL NOT NULL,
            attempts INTEGER NOT NULL,
            tried INTEGER NOT NULL
        )"""
    )
    db.execute(
        "CREATE TABLE ip_bans (ip TEXT PRIMARY KEY, until REAL NOT NULL, "
        "reason TEXT NOT NULL DEFAULT '')"
    )


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Version 2: each peer may carry its signed capability record (opaque bytes)."""
    db.execute("ALTER TABLE peers ADD COLUMN capability_record BLOB")


_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1, _migrate_1_to_2]
"""``_MIGRATIONS[v]`` upgrades schema version ``v`` to ``v + 1``."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this release writes."""


# -- row decoding (total: a bad row gives None, never an exception) --------------------------


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def decode_peer_row(row: Sequence[object]) -> StoredPeer | None:
    """A ``peers`` row as a :class:`StoredPeer`, or None when it is malformed."""
    if len(row) != 12:
        return None
    record = row[11]
    if record is not None and not isinstance(record, bytes):
        return None
    node_id, addresses, source, flags, reason = (_text(row[i]) for i in (0, 1, 2, 8, 10))
    first, last, score, score_time = (_num(row[i]) for i in (3, 4, 6, 7))
    failures = _int(row[5])
    ban_until = None if row[9] is None else _num(row[9])
    if (
        node_id is None
        or addresses is None
        or source is None
        or flags is None
        or reason is None
        or first is None
        or last is None
        or score is None
        or score_time is None
        or failures is None
        or (row[9] is not None and ban_until is None)
    ):
        return None
    try:
        decoded = json.loads(addresses)
    except (ValueError, RecursionError):
        return None
    if not isinstance(decoded, list) or not all(isinstance(a, str) for a in decoded):
        return None
    return StoredPeer(
        node_id=node_id,
        addresses=tuple(decoded),
        source=source,
        first_seen=first,
        last_seen=last,
        failures=failures,
        score=score,
        score_time=score_time,
        flags=tuple(f for f in flags.split(",") if f),
        ban_until=ban_until,
        ban_reason=reason,
        capability_record=record,
    )


def decode_address_row(row: Sequence[object]) -> StoredAddress | None:
    """An ``addresses`` row as a :class:`StoredAddress`, or None when it is malformed."""
    if len(row) != 9:
        return None
    address, source, group = (_text(row[i]) for i in (0, 1, 2))
    added, last_seen, last_try, last_success = (_num(row[i]) for i in (3, 4, 5, 6))
    attempts, tried = _int(row[7]), _int(row[8])
    if (
        address is None
        or source is None
        or group is None
        or added is None
        or last_seen is None
        or last_try is None
        or last_success is None
        or attempts is None
        or tried is None
    ):
        return None
    return StoredAddress(
        address=address,
        source=source,
        source_group=group,
        added=added,
        last_seen=last_seen,
        last_try=last_try,
        last_success=last_success,
        attempts=max(0, attempts),
        tried=bool(tried),
    )


def decode_ip_ban_row(row: Sequence[object]) -> StoredIpBan | None:
    """An ``ip_bans`` row as a :class:`StoredIpBan`, or None when it is malformed."""
    if len(row) != 3:
        return None
    ip, until, reason = _text(row[0]), _num(row[1]), _text(row[2])
    if ip is None or until is None or reason is None:
        return None
    return StoredIpBan(ip, until, reason)


def encode_peer_row(p: StoredPeer) -> tuple[Any, ...]:
    """The ``peers`` row of ``p`` (what :func:`decode_peer_row` reads back)."""
    return (
        p.node_id,
        json.dumps(list(p.addresses)),
        p.source,
        p.first_seen,
        p.last_seen,
        p.failures,
        p.score,
        p.score_time,
        ",".join(p.flags),
        p.ban_until,
        p.ban_reason,
        p.capability_record,
    )


def encode_address_row(a: StoredAddress) -> tuple[Any, ...]:
    """The ``addresses`` row of ``a`` (what :func:`decode_address_row` reads back)."""
    return (
        a.address,
        a.source,
        a.source_group,
        a.added,
        a.last_seen,
        a.last_try,
        a.last_success,
        a.attempts,
        int(a.tried),
    )


_SIDE_FILES = ("-wal", "-shm", "-journal")


def _private_files(path: Path) -> None:
    """Create the database file with mode 0600 if missing; tighten it and its side files."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for target in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            _log.warning("peer store file %s had mode %o; setting 0600", target, mode)
            try:
                target.chmod(0o600)
            except OSError as exc:
                _log.warning("cannot chmod %s: %s", target, exc)


class PeerStore:
    """The peer database at ``path`` (created if missing). Close it when done."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 10.0,
        extra_migrations: Sequence[Callable[[sqlite3.Connection], None]] = (),
    ) -> None:
        """``extra_migrations`` are schema steps after this release's own (step ``i`` upgrades
        version ``SCHEMA_VERSION + i`` to the next): how tests exercise an upgrade."""
        self._path = Path(path)
        self._migrations = (*_MIGRATIONS, *extra_migrations)
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private_files(self._path)
            self._db = sqlite3.connect(
                self._path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError("peer_store", f"cannot open {self._path}: {exc}") from exc
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError("peer_store", f"{self._path}: cannot enable WAL ({mode})")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._secret = self._ensure_secret()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(
                "peer_store", f"{self._path} is not a usable peer database: {exc}"
            ) from exc
        except BaseException:
            self._db.close()
            raise

    # -- public API --------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def secret(self) -> bytes:
        """The address-book secret (created with the database)."""
        return self._secret

    def load(self) -> LoadedState:
        """Everything stored, read in one transaction."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN")
                try:
                    peers = self._db.execute(
                        "SELECT node_id, addresses, source, first_seen, last_seen, failures, "
                        "score, score_time, flags, ban_until, ban_reason, capability_record "
                        "FROM peers"
                    ).fetchall()
                    addresses = self._db.execute(
                        "SELECT address, source, source_group, added, last_seen, last_try, "
                        "last_success, attempts, tried FROM addresses"
                    ).fetchall()
                    bans = self._db.execute("SELECT ip, until, reason FROM ip_bans").fetchall()
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise PeerStoreError(f"reading {self._path} failed: {exc}") from exc
        decoded_peers = [decode_peer_row(r) for r in peers]
        decoded_addresses = [decode_address_row(r) for r in addresses]
        decoded_bans = [decode_ip_ban_row(r) for r in bans]
        skipped = sum(
            1
            for rows in (decoded_peers, decoded_addresses, decoded_bans)
            for r in rows
            if r is None
        )
        if skipped:
            _log.warning("peer store %s: skipped %d malformed rows", self._path, skipped)
        return LoadedState(
            secret=self._secret,
            peers=tuple(p for p in decoded_peers if p is not None),
            addresses=tuple(a for a in decoded_addresses if a is not None),
            ip_bans=tuple(b for b in decoded_bans if b is not None),
            skipped_rows=skipped,
        )

    def apply(self, changes: StoreChanges) -> None:
        """Write one batch in a single transaction (all or nothing)."""
        if not changes:
            return
        with self._lock:
            self._check_open()
            try:
                with _transaction(self._db):
                    self._write(changes)
            except sqlite3.Error as exc:
                raise PeerStoreError(f"writing {self._path} failed: {exc}") from exc

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``ok`` when healthy)."""
        with self._lock:
            self._check_open()
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    def schema_version(self) -> int:
        with self._lock:
            self._check_open()
            return self._read_version()

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> PeerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the peer store is closed")

    def _read_version(self) -> int:
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if exists is None:
            return 0
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        if row is None or _int(row[0]) is None:
            raise ConfigError("peer_store", f"{self._path}: damaged schema_version table")
        version: int = row[0]
        return version

    def _migrate(self) -> None:
        version = self._read_version()
        latest = len(self._migrations)
        if version > latest:
            raise ConfigError(
                "peer_store",
                f"{self._path} has schema version {version}, newer than the {latest} "
                "this release supports; upgrade overlay or point peer_store at another file",
            )
        if (
            version == 0
            and self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table'").fetchone()
        ):
            raise ConfigError("peer_store", f"{self._path} is a database of something else")
        while version < latest:
            with _transaction(self._db):
                self._migrations[version](self._db)
                if version == 0:
                    self._db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    self._db.execute("INSERT INTO schema_version (version) VALUES (1)")
                else:
                    self._db.execute("UPDATE schema_version SET version = ?", (version + 1,))
            _log.info("peer store %s migrated to schema version %d", self._path, version + 1)
            version += 1

    def _ensure_secret(self) -> bytes:
        with _transaction(self._db):
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)",
                (os.urandom(_SECRET_BYTES),),
            )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
        if row is None or not isinstance(row[0], bytes) or len(row[0]) < 16:
            raise ConfigError("peer_store", f"{self._path}: damaged address-book secret")
        secret: bytes = row[0]
        return secret

    def _write(self, c: StoreChanges) -> None:
        db = self._db
        if c.peers_delete:
            db.executemany("DELETE FROM peers WHERE node_id = ?", [(i,) for i in c.peers_delete])
        if c.peers_upsert:
            db.executemany(
                "INSERT OR REPLACE INTO peers (node_id, addresses, source, first_seen, last_seen, "
                "failures, score, score_time, flags, ban_until, ban_reason, capability_record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [encode_peer_row(p) for p in c.peers_upsert],
            )
        if c.addresses_delete:
            db.executemany(
                "DELETE FROM addresses WHERE address = ?", [(a,) for a in c.addresses_delete]
            )
        if c.addresses_upsert:
            db.executemany(
                "INSERT OR REPLACE INTO addresses (address, source, source_group, added, "
                "last_seen, last_try, last_success, attempts, tried) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [encode_address_row(a) for a in c.addresses_upsert],
            )
        if c.ip_bans_delete:
            db.executemany("DELETE FROM ip_bans WHERE ip = ?", [(i,) for i in c.ip_bans_delete])
        if c.ip_bans_upsert:
            db.executemany(
                "INSERT OR REPLACE INTO ip_bans (ip, until, reason) VALUES (?, ?, ?)",
                [(b.ip, b.until, b.reason) for b in c.ip_bans_upsert],
            )
