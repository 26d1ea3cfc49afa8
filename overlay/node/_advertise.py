"""Which addresses a node advertises to its peers (the ``listen_addrs`` of its hello).

Theory of operation
-------------------
A listener bound to the unspecified address (``0.0.0.0`` or ``::``) accepts on every
interface, but ``0.0.0.0`` names no host: a peer that stored ``ID@0.0.0.0:PORT`` would dial
itself. So a node never advertises an unspecified address:

* ``external_addresses`` set in the configuration: exactly those are advertised (they must name
  this node's id, checked by :func:`check_external_addresses`);
* otherwise every listen address is advertised as bound, except that an unspecified host is
  replaced by the concrete addresses of this machine: the addresses its host name resolves to
  (``getaddrinfo(gethostname())``, link-local ones left out) and the loopback address of the
  family (``127.0.0.1`` / ``::1``), in that order.

Peers refuse unspecified addresses anyway (``NodeAddress.parse`` rejects them and the peer
manager never stores one), so an older node's bad advertisement is dropped on arrival.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

import anyio

from overlay.address import NodeAddress
from overlay.errors import ConfigError, InvalidAddressError
from overlay.identity import NodeId

__all__ = ["advertised_addresses", "check_external_addresses", "host_addresses"]


def check_external_addresses(external: Sequence[str], node_id: NodeId) -> None:
    """Raise :class:`ConfigError` when an ``external_addresses`` entry names another node id
    (peers would dial it and fail to authenticate us) or does not parse."""
    for i, text in enumerate(external):
        try:
            address = NodeAddress.parse(text)
        except InvalidAddressError as exc:
            raise ConfigError(f"external_addresses[{i}]", str(exc)) from None
        if address.node_id != node_id:
            raise ConfigError(
                f"external_addresses[{i}]",
                f"{text!r} names node {address.node_id}, but this node's id is {node_id} "
                f"(`overlay id`): advertise {node_id}@{_host_port(address)}",
            )


def _host_port(address: NodeAddress) -> str:
    return str(address).partition("@")[2] or str(address)


async def host_addresses() -> tuple[list[str], list[str]]:
    """The IPv4 and IPv6 addresses this machine's host name resolves to (no loopback, no
    link-local, no unspecified); empty lists when it does not resolve."""
    try:
        infos = await anyio.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return [], []
    v4: list[str] = []
    v6: list[str] = []
    for family, *_, sockaddr in infos:
        text = str(sockaddr[0]).partition("%")[0]
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.is_unspecified or ip.is_loopback or ip.is_link_local:
            continue
        target = v4 if family == socket.AF_INET else v6
        if str(ip) not in target:
            target.append(str(ip))
    return v4, v6


def advertised_addresses(
    listen: Iterable[NodeAddress],
    external: Sequence[str],
    *,
    v4_hosts: Sequence[str] = (),
    v6_hosts: Sequence[str] = (),
) -> list[NodeAddress]:
    """What to advertise (see the module docstring): ``external`` when given, else ``listen``
    with each unspecified host replaced by ``v4_hosts`` + ``127.0.0.1`` (``0.0.0.0``) or
    ``v6_hosts`` + ``::1`` (``::``)."""
    if external:
        return [NodeAddress.parse(text) for text in external]
    out: list[NodeAddress] = []
    for address in listen:
        if not address.unspecified:
            hosts: Sequence[str] = (address.host,)
        elif ipaddress.ip_address(address.host).version == 4:
            hosts = (*v4_hosts, "127.0.0.1")
        else:
            hosts = (*v6_hosts, "::1")
        for host in hosts:
            concrete = NodeAddress(address.node_id, address.protocol, host, address.port)
            if concrete not in out:
                out.append(concrete)
    return out
