"""The node's transports: built from :class:`~overlay.transport.TransportSetup` by builders.

The default is TCP on the configured ``tcp://`` listen addresses. Other transports are passed
in (``Node(config, transports=[...])``): a builder gets the node's identity, limits and accept
gate; a ready :class:`~overlay.transport.Transport` is used as it is (it must carry the node's
key, and keeps its own accept gate).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from overlay.address import is_unspecified
from overlay.errors import ConfigError, LocalProtocolError
from overlay.node._config import NodeConfig
from overlay.transport import AcceptGate, Transport, TransportBuilder, TransportConfig
from overlay.transport._secure import SecureIdentity
from overlay.transport._setup import TransportSetup
from overlay.transport._tcp import TcpTransport

__all__ = ["build_transports", "dial_source", "tcp_transport", "transport_config"]


def transport_config(config: NodeConfig) -> TransportConfig:
    """The transport limits a node's configuration sets."""
    return config.connection.transport_config(config.peers.exempt_networks)


def dial_source(config: NodeConfig) -> str | None:
    """The source host of outbound TCP connections: with ``[connection]
    dial_from_listen_host``, the host of the first ``tcp://`` listen address naming one; else
    None (the system picks)."""
    if not config.connection.dial_from_listen_host:
        return None
    for address in config.listen_addresses():
        if address.protocol == "tcp" and address.host and not is_unspecified(address.host):
            return address.host
    return None


def tcp_transport(setup: TransportSetup, *, local_host: str | None = None) -> Transport:
    """The default builder: TCP on the setup's ``tcp://`` listen addresses, dialing from
    ``local_host`` when given."""
    return TcpTransport(
        setup.identity,
        [a for a in setup.listen if a.protocol == "tcp"],
        setup.config,
        accept_gate=setup.accept_gate,
        local_host=local_host,
    )


def build_transports(
    config: NodeConfig,
    identity: SecureIdentity,
    gate: AcceptGate,
    given: Sequence[Transport | TransportBuilder] | None,
) -> list[Transport]:
    """The node's transports: ``given`` (builders called with the node's setup), or TCP."""
    listen = tuple(config.listen_addresses())
    if given is None:
        other = [a for a in listen if a.protocol != "tcp"]
        if other:
            raise ConfigError(
                "listen", f"{other[0]} needs a {other[0].protocol} transport: pass it with "
                "Node(config, transports=[...]) (in tests: overlay.testing's "
                "MemoryNetwork.node_transport())"
            )
        given = [functools.partial(tcp_transport, local_host=dial_source(config))]
    setup = TransportSetup(identity=identity, config=transport_config(config),
                           accept_gate=gate, listen=listen)
    transports: list[Transport] = []
    for item in given:
        transport = item if isinstance(item, Transport) else item(setup)
        if transport.identity.node_id != identity.node_id:
            raise LocalProtocolError(
                f"a {type(transport).__name__} for node {transport.identity.node_id} was given "
                f"to node {identity.node_id}"
            )
        transports.append(transport)
    protocols = [t.protocol for t in transports]
    if len(set(protocols)) != len(protocols):
        raise LocalProtocolError(f"one transport per protocol, got {protocols}")
    return transports
