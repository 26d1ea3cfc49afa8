"""Network groups: which hosts an attacker can cheaply own many of.

Theory of operation
-------------------
Addresses inside one network group are assumed to be cheap for a single operator to obtain, so
every limit that protects us from one operator counts per group rather than per address:

* IPv4: the group is the /16 (``v4:203.0``) and the per-IP key is the address itself.
* IPv6: the group is the /32 (the size of a typical RIR allocation to one provider,
  ``v6:2001:db8::/32``) and the per-IP key is the /64 (one customer subnet: a host holds a whole
  /64 and can rotate addresses within it at will).
* IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are treated as the IPv4 address they carry, so
  a dual-stack listener cannot be used to double the per-IP allowance.
* A host that is not an IP literal (``localhost``, a DNS name, a memory-network label) is its own
  group and its own per-IP key (``host:localhost``); in-memory addresses, which have no host, are
  grouped by node id (``memory:<id>``): the in-memory transport reports a synthetic remote IP for
  its connections, which is what inbound limits use.

Every function here is total: any string (even garbage from the network) maps to some group, so
callers never need error handling. Nothing here keeps state beyond ``parse_ip``'s bounded
cache of its (immutable) answers.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from overlay.address import NodeAddress

__all__ = [
    "IpNetworks",
    "address_ip_key",
    "address_netgroup",
    "in_networks",
    "ip_key",
    "netgroup",
    "parse_ip",
    "parse_networks",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetworks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

_MAX_HOST_LEN = 255


@functools.lru_cache(maxsize=4096)
def parse_ip(host: str) -> IpAddress | None:
    """The IP address ``host`` spells (brackets and ``%zone`` stripped), else None.

    IPv4-mapped IPv6 addresses are returned as IPv4. Results are cached (a connection set-up
    looks at the same few hosts a dozen times: admission, per-IP and netgroup counts).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    if not text or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_label(host: str) -> str:
    return "host:" + host.strip().lower()[:_MAX_HOST_LEN]


def netgroup(host: str) -> str:
    """The network group of ``host`` (an IP literal or a name); see the module docstring."""
    address = parse_ip(host)
    if address is None:
        return _host_label(host)
    if isinstance(address, ipaddress.IPv4Address):
        a, b = address.packed[:2]
        return f"v4:{a}.{b}"
    network = ipaddress.IPv6Network((address.packed[:4] + bytes(12), 32))
    return f"v6:{network}"


def ip_key(host: str) -> str:
    """The per-IP key of ``host``: the IPv4 address, the IPv6 /64, or the name itself."""
    address = parse_ip(host)
    if address is None:
        return _host_label(host)
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    network = ipaddress.IPv6Network((address.packed[:8] + bytes(8), 64))
    return str(network)


def address_netgroup(address: NodeAddress) -> str:
    """The network group of a dialable address (memory addresses: one group per node)."""
    if address.protocol == "memory" or not address.host:
        return f"memory:{address.node_id}"
    return netgroup(address.host)


def address_ip_key(address: NodeAddress) -> str:
    """The per-IP key of a dialable address (memory addresses: one key per node)."""
    if address.protocol == "memory" or not address.host:
        return f"memory:{address.node_id}"
    return ip_key(address.host)


def parse_networks(texts: Iterable[str]) -> IpNetworks:
    """Parse CIDR strings (``127.0.0.0/8``, ``::1/128``); raise ValueError on a bad one."""
    return tuple(ipaddress.ip_network(text.strip(), strict=False) for text in texts)


def in_networks(host: str, networks: IpNetworks) -> bool:
    """True when ``host`` is an IP inside one of ``networks``."""
    if not networks:
        return False
    address = parse_ip(host)
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)
