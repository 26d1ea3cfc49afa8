"""Peer management: the pure peer-manager core, the anti-eclipse address book, scoring and the
SQLite peer store.

The manager (:class:`PeerManager`) is sans-IO: feed it facts with the current wall-clock time,
execute the actions ``poll`` returns (the closed union :data:`Action` of :class:`DialPeer`,
:class:`DisconnectPeer`, :class:`Persist`, :class:`RefreshAddresses`: dispatch with ``match``
and ``assert_never``), and sleep until ``next_deadline``. It is a facade over concept objects
that own their state; its module docstring (``overlay.peers._manager``) is the theory of
operation. The store
(:class:`PeerStore`) is synchronous; run it in a worker thread.
"""

from overlay.peers._addrbook import AddrEntry, AddressBook
from overlay.peers._config import PeerManagerConfig
from overlay.peers._manager import PeerManager
from overlay.peers._scoring import SCORE_DELTAS
from overlay.peers._state import (
    LoadedState,
    StoreChanges,
    StoredAddress,
    StoredIpBan,
    StoredPeer,
)
from overlay.peers._store import SCHEMA_VERSION, PeerStore, PeerStoreError
from overlay.peers._types import (
    SOURCE_CONFIG,
    SOURCE_OPERATOR,
    SOURCE_SEED,
    Action,
    BanEntry,
    BanKind,
    Decision,
    DialPeer,
    DialPreference,
    DialReason,
    Direction,
    DisconnectCause,
    DisconnectPeer,
    OperatorPeer,
    PeerFlag,
    PeerManagerCounters,
    PeerManagerStatistics,
    PeerSnapshot,
    PeerState,
    Persist,
    ProtectionHook,
    RefreshAddresses,
    ScoreEvent,
    ScoreRecord,
    Source,
)
from overlay.wire._netgroup import ip_key, netgroup

__all__ = [
    "Action",
    "AddrEntry",
    "AddressBook",
    "BanEntry",
    "BanKind",
    "Decision",
    "DialPeer",
    "DialPreference",
    "DialReason",
    "Direction",
    "DisconnectCause",
    "DisconnectPeer",
    "LoadedState",
    "OperatorPeer",
    "PeerFlag",
    "PeerManager",
    "PeerManagerConfig",
    "PeerManagerCounters",
    "PeerManagerStatistics",
    "PeerSnapshot",
    "PeerState",
    "PeerStore",
    "PeerStoreError",
    "Persist",
    "ProtectionHook",
    "RefreshAddresses",
    "SCHEMA_VERSION",
    "SCORE_DELTAS",
    "SOURCE_CONFIG",
    "SOURCE_OPERATOR",
    "SOURCE_SEED",
    "ScoreEvent",
    "ScoreRecord",
    "Source",
    "StoreChanges",
    "StoredAddress",
    "StoredIpBan",
    "StoredPeer",
    "ip_key",
    "netgroup",
]
