"""Network groups and per-IP keys (overlay.wire._netgroup)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.wire._netgroup import (
    address_ip_key,
    address_netgroup,
    in_networks,
    ip_key,
    netgroup,
    parse_ip,
    parse_networks,
)

NID = NodeId("ab" * 20)


@pytest.mark.parametrize(
    ("host", "group", "key"),
    [
        ("203.0.113.7", "v4:203.0", "203.0.113.7"),
        ("203.0.200.1", "v4:203.0", "203.0.200.1"),
        ("203.1.113.7", "v4:203.1", "203.1.113.7"),
        ("::ffff:203.0.113.7", "v4:203.0", "203.0.113.7"),
        ("[::ffff:203.0.113.7]", "v4:203.0", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "v6:2001:db8::/32", "2001:db8:1:2::/64"),
        ("2001:db8:ffff:2::1", "v6:2001:db8::/32", "2001:db8:ffff:2::/64"),
        ("[2001:db8:1:2::9]", "v6:2001:db8::/32", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "v6:fe80::/32", "fe80::/64"),
        ("LocalHost", "host:localhost", "host:localhost"),
        ("peer.example.org", "host:peer.example.org", "host:peer.example.org"),
    ],
)
def test_groups_and_keys(host: str, group: str, key: str) -> None:
    assert netgroup(host) == group
    assert ip_key(host) == key


def test_ipv6_hosts_in_one_slash64_share_a_key_but_not_across() -> None:
    assert ip_key("2001:db8:1:2::1") == ip_key("2001:db8:1:2:ffff::1")
    assert ip_key("2001:db8:1:2::1") != ip_key("2001:db8:1:3::1")


def test_address_helpers() -> None:
    tcp = NodeAddress(NID, "tcp", "198.51.100.4", 7000)
    mem = NodeAddress(NID, "memory")
    assert address_netgroup(tcp) == "v4:198.51"
    assert address_ip_key(tcp) == "198.51.100.4"
    assert address_netgroup(mem) == f"memory:{NID}"
    assert address_ip_key(mem) == f"memory:{NID}"


def test_parse_ip_rejects_names_and_garbage() -> None:
    assert parse_ip("example.org") is None
    assert parse_ip("") is None
    assert parse_ip("1.2.3.4.5") is None
    assert parse_ip("9" * 100) is None
    assert str(parse_ip(" 10.0.0.1 ")) == "10.0.0.1"


def test_exempt_networks() -> None:
    nets = parse_networks(["127.0.0.0/8", "::1/128"])
    assert in_networks("127.0.0.1", nets)
    assert in_networks("127.9.9.9", nets)
    assert in_networks("::1", nets)
    assert in_networks("::ffff:127.0.0.1", nets)
    assert not in_networks("10.0.0.1", nets)
    assert not in_networks("localhost", nets)
    assert not in_networks("127.0.0.1", ())
    with pytest.raises(ValueError):
        parse_networks(["not a network"])


@given(st.text(max_size=80))
def test_any_text_maps_to_a_group(text: str) -> None:
    # Hosts come from the network: every string must map to some group, never raise.
    assert isinstance(netgroup(text), str)
    assert isinstance(ip_key(text), str)
    assert len(netgroup(text)) <= 300


@given(st.ip_addresses())
def test_every_ip_has_a_group_of_its_family(address: object) -> None:
    text = str(address)
    group = netgroup(text)
    assert group.startswith(("v4:", "v6:"))
    assert ip_key(text) == ip_key(f"[{text}]") or ":" not in text
