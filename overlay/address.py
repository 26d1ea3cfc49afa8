"""Peer addresses: ``ID@HOST:PORT`` for TCP and ``memory:ID`` for the in-memory network.

Grammar (also accepted with a ``tcp://`` prefix; IPv6 hosts in brackets)::

    tcp-address    = [ "tcp://" ] node-id "@" host ":" port
    memory-address = "memory:" node-id
    listen-address = "tcp://" host ":" port | "memory:" [ name ]    (no node id: it is ours)

A :class:`NodeAddress` always carries the node id the dialer expects to reach; dialing it fails
with :class:`~overlay.errors.AuthenticationError` if the remote proves another id.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from overlay.errors import InvalidAddressError
from overlay.identity import NodeId, parse_node_id

__all__ = ["ListenAddress", "NodeAddress", "Protocol"]

Protocol = Literal["tcp", "memory"]


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
        """Parse ``ID@HOST:PORT`` / ``tcp://ID@HOST:PORT`` / ``memory:ID``."""
        if not isinstance(text, str):
            raise InvalidAddressError(f"address must be a string, got {type(text).__name__}")
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
        return cls(node_id, "tcp", host, port)

    def __str__(self) -> str:
        if self.protocol == "memory":
            return f"memory:{self.node_id}"
        return f"{self.node_id}@{_format_host(self.host)}:{self.port}"


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
