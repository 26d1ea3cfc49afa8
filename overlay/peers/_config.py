"""Configuration of the peer manager, the address book and scoring.

The defaults follow Bitcoin Core where the two networks are alike and are scaled down where an
overlay is smaller; each field's docstring says why it has its value. All durations are seconds.
Invalid values raise :class:`~overlay.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from overlay.address import NodeAddress
from overlay.errors import ConfigError, InvalidAddressError
from overlay.identity import NodeId, parse_node_id
from overlay.wire._netgroup import IpNetworks, parse_networks

__all__ = ["PeerManagerConfig"]


@dataclass(frozen=True, slots=True)
class PeerManagerConfig:
    """Limits, timers, scoring thresholds and address-book sizes of one node's peer manager."""

    # -- connection limits -----------------------------------------------------------------
    max_connections: int = 64
    """Total connections (inbound + outbound), excluding unconditional peers and short feeler
    and upgrade connections. Inbound capacity is ``max_connections - max_outbound``."""
    max_outbound: int = 16
    """Outbound connections the manager keeps open by itself (persistent peers count)."""
    max_inbound_per_ip: int = 4
    """Inbound connections from one IPv4 address or one IPv6 /64."""
    max_inbound_per_netgroup: int = 8
    """Inbound connections from one IPv4 /16 or one IPv6 /32."""
    upgrade_slots: int = 2
    """Extra outbound dials allowed above ``max_outbound`` to try a better candidate; when one
    succeeds the worst outbound peer is evicted. 0 disables upgrades."""
    max_concurrent_dials: int = 8
    """Dials in flight at once (regular, persistent, operator, feeler and upgrade together)."""
    dial_timeout: float = 5.0
    """Connect + handshake deadline the driver applies to each dial. The manager itself gives up
    on an unreported dial one second after this."""
    max_outbound_per_netgroup: int = 1
    """Automatic outbound connections per netgroup (Bitcoin: 1). This is the main defence
    against eclipse attacks: an attacker holding k netgroups gets at most k outbound slots."""
    exempt_networks: tuple[str, ...] = ()
    """CIDR networks (e.g. ``127.0.0.0/8``, ``::1/128`` for a local testnet) exempt from the
    per-IP and per-netgroup limits and from outbound diversity. Bans still apply."""

    # -- dialing ------------------------------------------------------------------------------
    backoff_base: float = 1.0
    """First redial delay after a failed dial; doubles with each consecutive failure."""
    backoff_cap: float = 600.0
    """Longest redial delay for an ordinary peer (10 minutes)."""
    persistent_backoff_cap: float = 30.0
    """Longest redial delay for a persistent peer (they are redialed forever)."""
    disconnect_cooldown: float = 10.0
    """No redial of a peer this soon after it disconnected (any reason)."""
    feeler_interval: float = 120.0
    """Mean time between feeler connections (exponentially distributed, as in Bitcoin). A
    feeler tests an address (a tried-table collision first, else a random "new" address) and
    disconnects at once. Feelers only run while the outbound slots are full."""
    upgrade_interval: float = 60.0
    """How often the manager considers an upgrade dial."""
    upgrade_margin: float = 10.0
    """A candidate must rank this much above the worst outbound peer to be worth an upgrade."""
    refresh_interval: float = 60.0
    """Minimum time between two ``RefreshAddresses`` actions (asked for when the address book
    has no usable candidate while outbound slots are free)."""
    persist_interval: float = 1.0
    """Routine changes are batched into one ``Persist`` action at most this often. Operator
    actions and bans are persisted at the next poll."""

    # -- peers from configuration -------------------------------------------------------------
    persistent_peers: tuple[str, ...] = ()
    """Addresses (``ID@HOST:PORT`` / ``memory:ID``) dialed forever, never evicted, with the
    shorter ``persistent_backoff_cap``. They are never banned automatically."""
    unconditional_peer_ids: tuple[str, ...] = ()
    """Node ids that bypass every connection limit (counts, per-IP, netgroup) and eviction.
    They are never banned automatically."""
    private_peer_ids: tuple[str, ...] = ()
    """Node ids whose addresses are never gossiped to other peers."""
    seeds: tuple[str, ...] = ()
    """Bootstrap addresses, added to the address book with source ``seed``."""

    # -- scoring and bans ---------------------------------------------------------------------
    score_half_life: float = 1800.0
    """A score decays towards 0 with this half-life (30 minutes): misbehaviour is forgiven and
    good behaviour must be kept up."""
    max_score: float = 25.0
    """Upper bound of the score. Kept low so that banked good behaviour cannot absorb a
    protocol violation (-100) without at least a disconnect."""
    min_score: float = -200.0
    """Lower bound of the score (so that decay restores a banned peer in bounded time)."""
    disconnect_score: float = -50.0
    """At or below this score a peer is disconnected and not redialed or accepted until its
    score decays above it."""
    ban_score: float = -100.0
    """At or below this score a peer is banned for ``ban_duration``."""
    ban_duration: float = 86400.0
    """Length of an automatic ban (24 hours, as Bitcoin's discouragement)."""
    ip_ban_threshold: int = 3
    """This many peer bans from one IP (IPv6: /64) within ``ip_ban_window`` ban the IP."""
    ip_ban_window: float = 86400.0
    """Window over which peer bans on one IP are counted."""
    score_events_kept: int = 20
    """Recent score events remembered per peer (for operators; not persisted)."""

    # -- address book (see overlay.peers._addrbook for the reasoning) --------------------------
    new_bucket_count: int = 256
    """Buckets of the "new" table (addresses heard of, never connected)."""
    tried_bucket_count: int = 64
    """Buckets of the "tried" table (addresses we connected to)."""
    bucket_size: int = 64
    """Slots per bucket, in both tables."""
    new_buckets_per_source_group: int = 32
    """Distinct "new" buckets the addresses from one source netgroup can land in (1/8)."""
    tried_buckets_per_group: int = 8
    """Distinct "tried" buckets the addresses of one netgroup can land in (1/8)."""
    max_addresses_per_source: int = 500
    """Address-book entries attributed to one gossiping peer."""
    max_tried_collisions: int = 10
    """Pending test-before-evict collisions (Bitcoin: 10)."""

    # -- inbound eviction ---------------------------------------------------------------------
    protect_netgroups: int = 4
    """Inbound peers protected by netgroup diversity (one from each of this many netgroups,
    chosen by a keyed hash the attacker cannot predict)."""
    protect_low_latency: int = 8
    """Inbound peers protected for the lowest measured latency."""
    protect_recently_useful: int = 4
    """Inbound peers protected for having been useful most recently."""
    protect_longest_connected: float = 0.5
    """Fraction of the remaining inbound candidates protected for the longest uptime."""

    # -- memory bounds ------------------------------------------------------------------------
    max_peer_records: int = 25_000
    """Peer records kept (address book capacity + connections + bans fits by default). Above
    this the least recently seen disposable records are forgotten."""
    max_addresses_per_peer: int = 4
    """Addresses remembered per peer."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f.name, f"must be a number, got {value!r}")
                if f.type == "int" and not isinstance(value, int):
                    raise ConfigError(f.name, f"must be an integer, got {value!r}")
                if not math.isfinite(value):
                    raise ConfigError(f.name, "must be finite")
            elif f.type == "tuple[str, ...]":
                if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f.name, "must be a tuple of strings")
        for name in (
            "max_connections",
            "max_concurrent_dials",
            "max_inbound_per_ip",
            "max_inbound_per_netgroup",
            "max_outbound_per_netgroup",
            "new_bucket_count",
            "tried_bucket_count",
            "bucket_size",
            "new_buckets_per_source_group",
            "tried_buckets_per_group",
            "max_addresses_per_source",
            "max_peer_records",
            "max_addresses_per_peer",
            "ip_ban_threshold",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        for name in (
            "max_outbound",
            "upgrade_slots",
            "max_tried_collisions",
            "score_events_kept",
            "protect_netgroups",
            "protect_low_latency",
            "protect_recently_useful",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must not be negative")
        for name in (
            "dial_timeout",
            "backoff_base",
            "backoff_cap",
            "persistent_backoff_cap",
            "feeler_interval",
            "upgrade_interval",
            "refresh_interval",
            "persist_interval",
            "score_half_life",
            "ban_duration",
            "ip_ban_window",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        if self.disconnect_cooldown < 0:
            raise ConfigError("disconnect_cooldown", "must not be negative")
        if self.upgrade_margin < 0:
            raise ConfigError("upgrade_margin", "must not be negative")
        if self.max_outbound > self.max_connections:
            raise ConfigError("max_outbound", "must not exceed max_connections")
        if self.backoff_cap < self.backoff_base:
            raise ConfigError("backoff_cap", "must be at least backoff_base")
        if self.persistent_backoff_cap < self.backoff_base:
            raise ConfigError("persistent_backoff_cap", "must be at least backoff_base")
        if not 0.0 <= self.protect_longest_connected <= 1.0:
            raise ConfigError("protect_longest_connected", "must be within [0, 1]")
        if self.new_buckets_per_source_group > self.new_bucket_count:
            raise ConfigError("new_buckets_per_source_group", "must not exceed new_bucket_count")
        if self.tried_buckets_per_group > self.tried_bucket_count:
            raise ConfigError("tried_buckets_per_group", "must not exceed tried_bucket_count")
        if not self.min_score <= self.ban_score < self.disconnect_score < 0 < self.max_score:
            raise ConfigError(
                "ban_score",
                "need min_score <= ban_score < disconnect_score < 0 < max_score",
            )
        for name in ("persistent_peers", "seeds"):
            for text in getattr(self, name):
                try:
                    NodeAddress.parse(text)
                except InvalidAddressError as exc:
                    raise ConfigError(name, str(exc)) from exc
        for name in ("unconditional_peer_ids", "private_peer_ids"):
            for text in getattr(self, name):
                try:
                    parse_node_id(text)
                except InvalidAddressError as exc:
                    raise ConfigError(name, str(exc)) from exc
        try:
            parse_networks(self.exempt_networks)
        except ValueError as exc:
            raise ConfigError("exempt_networks", str(exc)) from exc

    @property
    def max_inbound(self) -> int:
        """Inbound capacity: ``max_connections - max_outbound``."""
        return self.max_connections - self.max_outbound

    def persistent_addresses(self) -> tuple[NodeAddress, ...]:
        return tuple(NodeAddress.parse(text) for text in self.persistent_peers)

    def seed_addresses(self) -> tuple[NodeAddress, ...]:
        return tuple(NodeAddress.parse(text) for text in self.seeds)

    def unconditional_ids(self) -> frozenset[NodeId]:
        return frozenset(parse_node_id(text) for text in self.unconditional_peer_ids)

    def private_ids(self) -> frozenset[NodeId]:
        return frozenset(parse_node_id(text) for text in self.private_peer_ids)

    def exempt(self) -> IpNetworks:
        return parse_networks(self.exempt_networks)
