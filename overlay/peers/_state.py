"""Persisted shapes: what the manager hands the store and gets back on startup.

These are plain values (strings and numbers) so the store needs no knowledge of the manager and
the manager never sees SQL. Addresses travel as their string form (``NodeAddress.__str__``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LoadedState", "StoreChanges", "StoredAddress", "StoredIpBan", "StoredPeer"]


@dataclass(frozen=True, slots=True)
class StoredPeer:
    """One peer record."""

    node_id: str
    """40 hex characters."""
    addresses: tuple[str, ...]
    """Known addresses, string form."""
    source: str
    """Who first told us about it."""
    first_seen: float
    last_seen: float
    failures: int
    """Consecutive failed dials."""
    score: float
    score_time: float
    """When ``score`` was last updated (decay continues from there after a restart)."""
    flags: tuple[str, ...]
    """Operator-set flags (``PeerFlag`` values); flags from configuration are not stored."""
    ban_until: float | None
    ban_reason: str = ""
    capability_record: bytes | None = None
    """The peer's signed capability record, opaque here (discovery verifies it on load)."""


@dataclass(frozen=True, slots=True)
class StoredAddress:
    """One address-book entry (its bucket placement is recomputed from the secret)."""

    address: str
    source: str
    """The gossiping node id, or ``operator``/``seed``/``config``."""
    source_group: str
    """The netgroup the entry is attributed to for bucket placement."""
    added: float
    last_seen: float
    last_try: float
    """0.0 when never tried."""
    last_success: float
    """0.0 when never connected."""
    attempts: int
    """Failed attempts since the last success."""
    tried: bool
    """In the "tried" table (else "new")."""


@dataclass(frozen=True, slots=True)
class StoredIpBan:
    """A ban of one IPv4 address or IPv6 /64 (the per-IP key)."""

    ip: str
    until: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StoreChanges:
    """One batch of writes, applied in a single transaction."""

    peers_upsert: tuple[StoredPeer, ...] = ()
    peers_delete: tuple[str, ...] = ()
    addresses_upsert: tuple[StoredAddress, ...] = ()
    addresses_delete: tuple[str, ...] = ()
    ip_bans_upsert: tuple[StoredIpBan, ...] = ()
    ip_bans_delete: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.peers_upsert
            or self.peers_delete
            or self.addresses_upsert
            or self.addresses_delete
            or self.ip_bans_upsert
            or self.ip_bans_delete
        )


@dataclass(frozen=True, slots=True)
class LoadedState:
    """Everything read back from the store at startup."""

    secret: bytes
    """The address-book hash key (32 random bytes, created with the database)."""
    peers: tuple[StoredPeer, ...] = ()
    addresses: tuple[StoredAddress, ...] = ()
    ip_bans: tuple[StoredIpBan, ...] = ()
    skipped_rows: int = field(default=0)
    """Rows that did not decode (logged and ignored)."""
