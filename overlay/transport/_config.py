"""The transport's configuration: one frozen dataclass shared by every transport (data only).

Every transport (:class:`~overlay.transport.Transport` and its TCP and memory subclasses) is
built from one :class:`TransportConfig`; the node derives it from its ``[connection]`` table
(:meth:`overlay.node.ConnectionConfig.transport_config`), so each setting has exactly one
default: the one written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from overlay.errors import ConfigError
from overlay.transport._pending import PendingLimits
from overlay.wire._netgroup import parse_networks

__all__ = ["TransportConfig"]

_LIMITS = PendingLimits()  # the pending-handshake limits have their defaults there


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Knobs shared by every transport (validated on construction)."""

    handshake_timeout: float = 5.0
    """Seconds an inbound handshake may take; also caps the handshake phase of a dial."""
    max_pending_handshakes: int = _LIMITS.max_total
    """Inbound handshakes allowed in progress at once; connections over it are closed at once
    (or evict another pending handshake: see ``overlay.transport._base``)."""
    max_pending_handshakes_per_ip: int = _LIMITS.max_per_ip
    """Inbound handshakes allowed in progress at once from one IP (an IPv6 /64)."""
    max_pending_handshakes_per_netgroup: int = _LIMITS.max_per_netgroup
    """Inbound handshakes allowed in progress at once from one netgroup (IPv4 /16, IPv6 /32)."""
    exempt_networks: tuple[str, ...] = ()
    """CIDR networks exempt from the per-IP and per-netgroup limits (still bound by
    ``max_pending_handshakes`` and evictable)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.handshake_timeout, int | float) and self.handshake_timeout > 0):
            raise ConfigError("handshake_timeout", "must be a positive number of seconds")
        if not math.isfinite(self.handshake_timeout):
            raise ConfigError("handshake_timeout", "must be finite")
        if isinstance(self.max_pending_handshakes, bool) or not isinstance(
            self.max_pending_handshakes, int
        ):
            raise ConfigError("max_pending_handshakes", "must be an integer")
        if self.max_pending_handshakes < 1:
            raise ConfigError("max_pending_handshakes", "must be >= 1")
        self.pending_limits()  # validates the per-IP and per-netgroup limits
        try:
            parse_networks(self.exempt_networks)
        except ValueError as exc:
            raise ConfigError("exempt_networks", str(exc)) from exc

    def pending_limits(self) -> PendingLimits:
        """The limits of the transport's :class:`~overlay.transport._pending.PendingTable`."""
        return PendingLimits(
            max_total=self.max_pending_handshakes,
            max_per_ip=self.max_pending_handshakes_per_ip,
            max_per_netgroup=self.max_pending_handshakes_per_netgroup,
        )
