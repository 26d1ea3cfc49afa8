"""What the admin API may ask of a running node.

The admin HTTP server (:mod:`overlay.operator._admin`) is written against :class:`Control` only; the
service assembly (:mod:`overlay.node._service`) implements it on top of the node and its peer
manager.

Error contract of every ``Control`` method (the server maps them to HTTP statuses):

* :class:`~overlay.errors.InvalidAddressError` or any other
  :class:`~overlay.errors.LocalProtocolError` (bad input) → ``400 {"error": "..."}``;
* :class:`UnknownPeerError` (a node id or IP the node does not know) → ``404``;
* :class:`ConflictError` (well formed, but the node's state forbids it: a banned peer to dial,
  a seed or persistent peer that ``config.toml`` defines) → ``409``;
* any other :class:`~overlay.errors.OverlayError` (``DialError``, timeouts, ...) → ``502`` with
  the message.

Every returned value must be JSON-serialisable (``json.dumps`` with no custom encoder): plain
dicts, lists, strings, numbers, booleans and ``None``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from discovery import valid_capability_name
from overlay.errors import InvalidAddressError, LocalProtocolError
from overlay.identity import parse_node_id

__all__ = [
    "BadRequestError",
    "ConflictError",
    "Control",
    "MAX_BAN_SECONDS",
    "MIN_BAN_SECONDS",
    "PeerBannedError",
    "UnknownCapabilityError",
    "UnknownPeerError",
    "parse_ban_target",
    "parse_capability",
]


MIN_BAN_SECONDS = 1.0
"""The shortest ban an operator may ask for (``overlay ban --for``, ``POST /ban``)."""
MAX_BAN_SECONDS = 10 * 365 * 86400.0
"""The longest ban (10 years, 3650 days): longer requests are capped, and the reply says so."""


class UnknownPeerError(LocalProtocolError):
    """The node id (or IP) named by the operator is not known to the node."""


class UnknownCapabilityError(LocalProtocolError):
    """The capability named by the operator is not advertised by the node (HTTP 404)."""


class BadRequestError(LocalProtocolError):
    """A request body that is not what the route expects (HTTP 400): not JSON, not an object,
    unknown or missing fields, wrong types."""


class ConflictError(LocalProtocolError):
    """The request is well formed but the node's state forbids it (HTTP 409), e.g. removing a
    seed that ``config.toml`` defines (edit the file instead)."""


class PeerBannedError(ConflictError):
    """The node id or the IP of an address to dial is banned (HTTP 409); unban it first."""


class Control(Protocol):
    """What the admin API can ask of a running node (implemented by overlay.node._service)."""

    def status(self) -> dict[str, Any]:
        """Node id, network, listen addrs, uptime, peer counts by direction, version, ..."""
        ...

    def peers(self) -> list[dict[str, Any]]:
        """One JSON-able dict per known/connected peer."""
        ...

    async def dial(self, address: str, *, persistent: bool) -> dict[str, Any]:
        """Dial ``address`` (``ID@HOST:PORT`` / ``memory:ID``) now; ``persistent`` marks it
        persistent (and persists that). A connected peer is not dialed again: the answer has
        ``"already_connected": true`` and ``"via"``, the live connection's address (the typed
        address is not stored: only an address a connection authenticated is)."""
        ...

    async def providers(self, capability: str) -> dict[str, Any]:
        """Run a DHT lookup for the providers of ``capability``: what it found (``providers``:
        id, addresses, version, attributes, ``after`` seconds) and what it cost (``rounds``,
        ``messages``, ``responses``, ``timeouts``, ``misbehaved``, ``outcome``, ``elapsed``,
        ``first_provider_after``). ``LocalProtocolError`` when the DHT is disabled or the name
        is not a capability name."""
        ...

    async def disconnect(self, node_id: str) -> dict[str, Any]:
        """Close the connection to ``node_id``; :class:`UnknownPeerError` if not connected."""
        ...

    async def ban(self, target: str, *, duration: float | None) -> dict[str, Any]:
        """Ban a node id or an IP for ``duration`` seconds (None = the configured default)."""
        ...

    async def unban(self, target: str) -> dict[str, Any]:
        """Lift the ban of a node id or an IP; :class:`UnknownPeerError` if it is not banned."""
        ...

    async def add_seed(self, address: str) -> dict[str, Any]:
        """Add a seed address (and persist it)."""
        ...

    async def remove_seed(self, address: str) -> dict[str, Any]:
        """Remove a seed added at run time (``address``: ``ID@HOST:PORT``, ``memory:ID`` or a
        node id); :class:`UnknownPeerError` if it is not a seed, :class:`ConflictError` if the
        configuration defines it."""
        ...

    def bans(self) -> dict[str, Any]:
        """``{"bans": [...]}``: every active ban, ending soonest first; each ``{"kind": "peer" |
        "ip", "target": node id | IPv4 | IPv6 /64, "until": wall-clock seconds,
        "remaining_seconds": float, "reason": str}``."""
        ...

    def seeds(self) -> dict[str, Any]:
        """``{"seeds": [...]}``: each ``{"id", "addresses": [str], "origin": ["config"
        and/or "operator"], "state"}``."""
        ...

    def persistent(self) -> dict[str, Any]:
        """``{"persistent": [...]}``: like :meth:`seeds`, the dial address first."""
        ...

    async def add_persistent(self, address: str) -> dict[str, Any]:
        """Mark the peer at ``address`` persistent (stored) and dial it in the background;
        refusals as for :meth:`dial`."""
        ...

    async def remove_persistent(self, node_id: str) -> dict[str, Any]:
        """Clear the persistent flag set by ``dial --persistent``; :class:`UnknownPeerError` if
        the peer is not persistent, :class:`ConflictError` if ``persistent_peers`` lists it."""
        ...

    def capabilities(self) -> dict[str, Any]:
        """The node's signed record: ``{"seq", "issued_at", "expires_at", "addresses",
        "origin": "config" | "operator", "capabilities": [{"name", "version",
        "attributes"}]}``."""
        ...

    async def set_capabilities(self, items: list[str]) -> dict[str, Any]:
        """Advertise each ``NAME`` / ``NAME=VERSION`` (one new record; persisted); the answer
        is :meth:`capabilities` after the change."""
        ...

    async def remove_capability(self, name: str) -> dict[str, Any]:
        """Stop advertising ``name`` (persisted); :class:`UnknownCapabilityError` if it was
        not advertised."""
        ...


def parse_capability(text: str) -> tuple[str, int]:
    """``NAME`` or ``NAME=VERSION`` -> ``(name, version)`` (version 0 when omitted);
    :class:`LocalProtocolError` when the name or the version (a uint32) is malformed."""
    name, sep, version = text.strip().partition("=")
    if not valid_capability_name(name):
        raise LocalProtocolError(
            f"{name!r} is not a capability name (a lower-case letter, then a-z 0-9 _ . -; 1-32)"
        )
    if not sep:
        return name, 0
    if not (version.isascii() and version.isdigit() and int(version) < 2**32):
        raise LocalProtocolError(f"version {version!r} of {name!r} is not a uint32")
    return name, int(version)


def parse_ban_target(text: str) -> str:
    """Normalise a ban target: a node id (lower-cased) or an IP address (canonical form; an
    IPv4-mapped IPv6 address becomes the IPv4 address it carries)."""
    raw = text.strip()
    try:
        return str(parse_node_id(raw))
    except InvalidAddressError:
        pass
    try:
        address = ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        raise InvalidAddressError(
            f"invalid target {text!r}: expected a node id (40 hex characters) or an IP address"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # ::ffff:127.0.0.4 is 127.0.0.4, and banned as such
    return str(address)
