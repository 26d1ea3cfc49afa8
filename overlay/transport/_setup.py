"""How a node builds its transports: a :data:`TransportBuilder` gets the node's
:class:`TransportSetup` (its identity, limits, accept gate and listen addresses) and returns a
:class:`~overlay.transport.Transport` for it.

``Node(config, transports=[...])`` takes builders, so a transport is chosen by passing it in
(TCP by default; ``overlay.testing.MemoryNetwork.node_transport()`` for in-process tests), never
by a flag of the production constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from overlay.address import ListenAddress
from overlay.transport._base import AcceptGate, Transport, TransportConfig
from overlay.transport._secure import SecureIdentity

__all__ = ["TransportBuilder", "TransportSetup"]


@dataclass(frozen=True, slots=True)
class TransportSetup:
    """What a node hands to each of its transport builders."""

    identity: SecureIdentity
    """The node's static key (the Noise handshake authenticates it)."""
    config: TransportConfig
    """Handshake deadline and pending-handshake limits, from the node's configuration."""
    accept_gate: AcceptGate
    """The node's cheap pre-handshake check of a remote host (bans, per-IP limits)."""
    listen: tuple[ListenAddress, ...]
    """The node's configured listen addresses (a transport binds those of its protocol)."""


TransportBuilder = Callable[[TransportSetup], Transport]
"""Builds one transport for a node from its :class:`TransportSetup`."""
