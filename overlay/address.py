"""Peer addresses: ``ID@HOST:PORT`` for TCP and ``memory:ID`` for the in-memory network.

Grammar (also accepted with a ``tcp://`` prefix; IPv6 hosts in brackets)::

    tcp-address    = [ "tcp://" ] node-id "@" host ":" port
    memory-address = "memory:" node-id
    listen-address = "tcp://" host ":" port | "memory:" [ name ]    (no node id: it is ours)

A :class:`NodeAddress` always carries the node id the dialer expects to reach; dialing it fails
with :class:`~overlay.errors.AuthenticationError` if the remote proves another id.

A host outside brackets is an IPv4 address or a DNS name (``256.1.1.1`` is refused, not looked
up). A ``NodeAddress`` never parses with an unspecified host (``0.0.0.0``, ``[::]``): that is
what a listener binds, not where a node can be reached.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from overlay.errors import InvalidAddressError
from overlay.identity import NodeId, parse_node_id

__all__ = ["ListenAddress", "NodeAddress", "Protocol", "is_unspecified"]

Protocol = Literal["tcp", "memory"]

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")


def _check_host(host: str, original: str) -> None:
    """A host that is not in brackets must be an IPv4 address or a DNS name: ``256.1.1.1`` or
    ``1.2.3`` is a typo, not a name to look up."""
    if all(c.isdigit() or c == "." for c in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidAddressError(
                f"invalid address {original!r}: {host!r} is not an IPv4 address "
                "(four numbers 0-255 separated by dots)"
            ) from None
    elif not _HOSTNAME.fullmatch(host):
        raise InvalidAddressError(
            f"invalid address {original!r}: {host!r} is neither an IP address nor a host name"
        )


def is_unspecified(host: str) -> bool:
    """True for ``0.0.0.0``, ``::`` and ``::ffff:0.0.0.0``: the wildcard a socket binds, which
    names no host and can never be dialed or advertised."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_unspecified


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _strip_tcp(raw: str, original: str, supported: str) -> str:
    """``raw`` without its ``tcp://`` prefix; any other ``SCHEME://`` is refused by name."""
    match = _SCHEME.match(raw)
    if match is None:
        return raw
    if match.group(1).lower() != "tcp":
        raise InvalidAddressError(
            f"unsupported scheme {match.group(1)!r} in {original!r}: supported are {supported}"
        )
    return raw[match.end() :]


def _parse_host_port(text: str, original: str) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise InvalidAddressError(f"invalid address {original!r}: use [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise InvalidAddressError(f"invalid IPv6 host in {original!r}") from exc
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise InvalidAddressError(f"invalid address {original!r}: expected HOST:PORT")
        if ":" in host:
            raise InvalidAddressError(f"invalid address {original!r}: wrap IPv6 in [brackets]")
        _check_host(host, original)
    if not port_text.isdigit():
        raise InvalidAddressError(f"invalid port in {original!r}: {port_text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise InvalidAddressError(f"port out of range in {original!r}: {port}")
    return host, port


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where to reach a node, and which node id we expect to find there."""

    node_id: NodeId
    protocol: Protocol
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        """Parse ``ID@HOST:PORT`` / ``tcp://ID@HOST:PORT`` / ``memory:ID``.

        Parsed addresses are cached by their text (a hello's listen addresses are parsed on
        every connection; the records are immutable); invalid ones are not cached."""
        if not isinstance(text, str):
            raise InvalidAddressError(f"address must be a string, got {type(text).__name__}")
        if cls is NodeAddress:
            return _parse_node_address(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> NodeAddress:
        raw = text.strip()
        if raw.startswith("memory:"):
            return cls(parse_node_id(raw[len("memory:") :]), "memory")
        body = _strip_tcp(raw, text, "ID@HOST:PORT, tcp://ID@HOST:PORT and memory:ID")
        node_part, at, host_port = body.partition("@")
        if not at:
            raise InvalidAddressError(
                f"invalid address {text!r}: expected ID@HOST:PORT or memory:ID"
            )
        node_id = parse_node_id(node_part)
        host, port = _parse_host_port(host_port, text)
        if port == 0:
            raise InvalidAddressError(f"invalid address {text!r}: port 0 cannot be dialed")
        if is_unspecified(host):
            raise InvalidAddressError(
                f"invalid address {text!r}: {host} is the unspecified address (what a node "
                "listening on every interface binds); it names no host: use a real address"
            )
        return cls(node_id, "tcp", host, port)

    @property
    def unspecified(self) -> bool:
        """True when the host is ``0.0.0.0`` or ``::`` (only a listener's address can be)."""
        return self.protocol == "tcp" and is_unspecified(self.host)

    def __str__(self) -> str:
        if self.protocol == "memory":
            return f"memory:{self.node_id}"
        return f"{self.node_id}@{_format_host(self.host)}:{self.port}"


@lru_cache(maxsize=4096)
def _parse_node_address(text: str) -> NodeAddress:
    return NodeAddress._parse(text)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a node listens: ``tcp://HOST:PORT`` (port 0 picks a free port) or ``memory:``."""

    protocol: Protocol
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        raw = text.strip()
        if raw.startswith("memory:") or raw == "memory":
            return cls("memory")
        body = _strip_tcp(raw, text, "tcp://HOST:PORT and memory:")
        if "@" in body:
            raise InvalidAddressError(f"listen address {text!r} must not contain a node id")
        host, port = _parse_host_port(body, text)
        return cls("tcp", host, port)

    def with_node(self, node_id: NodeId) -> NodeAddress:
        return NodeAddress(node_id, self.protocol, self.host, self.port)

    def __str__(self) -> str:
        if self.protocol == "memory":
            return "memory:"
        return f"tcp://{_format_host(self.host)}:{self.port}"
