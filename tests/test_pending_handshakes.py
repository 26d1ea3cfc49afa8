"""Pending inbound handshakes are limited per IP and per netgroup, and when every slot is taken a
newcomer from an under-represented netgroup evicts the oldest pending handshake of the most
represented one: idle sockets from one address cannot lock out dialers from elsewhere.

The table (``overlay.transport._pending``) is tested pure, with a float clock; the transport on
loopback
TCP, with an attacker bound to 127.0.0.2 and real nodes dialing from other loopback addresses
(every 127.0.0.0/8 address is local on Linux; 127.0.x.y share the netgroup ``v4:127.0``,
127.1.x.y are ``v4:127.1``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

from overlay.address import ListenAddress, NodeAddress
from overlay.errors import ConfigError
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import ConnectionConfig, NodeConfig
from overlay.peers import PeerManagerConfig
from overlay.transport import Transport, TransportConfig, TransportStatistics
from overlay.transport._pending import PendingLimits, PendingOutcome, PendingTable
from overlay.transport._secure import SecureIdentity
from overlay.transport._tcp import TcpTransport
from tests.support import both_backends, wait_until

anyio_backend = both_backends()

ADMITTED = PendingOutcome.ADMITTED

LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
"""Every node of a loopback test is on 127.0.0.1: exempt from per-IP / netgroup limits."""


# ------------------------------------------------------------------------------ the table


def fill(table: PendingTable, ip: str, group: str, count: int, now: float = 0.0) -> list[int]:
    tickets = []
    for i in range(count):
        decision = table.admit(ip, group, now + i)
        assert decision.outcome is ADMITTED and decision.evicted is None
        assert decision.ticket is not None
        tickets.append(decision.ticket)
    return tickets


def test_per_ip_limit_refuses_and_release_frees_a_slot() -> None:
    table = PendingTable(PendingLimits(max_total=10, max_per_ip=2, max_per_netgroup=5))
    first, _ = fill(table, "1.2.3.4", "v4:1.2", 2)
    refused = table.admit("1.2.3.4", "v4:1.2", 5.0)
    assert refused.outcome is PendingOutcome.REFUSED_PER_IP
    assert refused.ticket is None and not refused.admitted
    assert table.admit("1.2.3.5", "v4:1.2", 5.0).admitted  # same netgroup, another IP
    assert table.release(first)
    assert not table.release(first)  # idempotent
    assert table.admit("1.2.3.4", "v4:1.2", 6.0).admitted
    assert table.ip_count("1.2.3.4") == 2 and len(table) == 3


def test_per_netgroup_limit_refuses() -> None:
    table = PendingTable(PendingLimits(max_total=10, max_per_ip=2, max_per_netgroup=3))
    fill(table, "1.2.0.1", "v4:1.2", 2)
    fill(table, "1.2.0.2", "v4:1.2", 1)
    assert table.admit("1.2.0.3", "v4:1.2", 9.0).outcome is PendingOutcome.REFUSED_PER_NETGROUP
    assert table.admit("5.6.0.1", "v4:5.6", 9.0).admitted
    assert table.netgroup_count("v4:1.2") == 3


def test_full_table_evicts_the_oldest_of_the_most_represented_netgroup() -> None:
    table = PendingTable(PendingLimits(max_total=6, max_per_ip=6, max_per_netgroup=6))
    big = fill(table, "1.2.0.1", "v4:1.2", 4, now=0.0)
    small = fill(table, "5.6.0.1", "v4:5.6", 2, now=10.0)
    decision = table.admit("9.9.0.1", "v4:9.9", 20.0)
    assert decision.outcome is ADMITTED
    assert decision.evicted == big[0]  # the oldest of the group with 4
    assert not table.release(big[0])  # already gone
    assert len(table) == 6 and table.netgroup_count("v4:1.2") == 3
    # 5.6 (2 entries) against 1.2 (3 entries): not under-represented enough, refused.
    assert table.admit("5.6.0.2", "v4:5.6", 21.0).outcome is PendingOutcome.REFUSED_FULL
    # 9.9 holds 1 against 3: evicts again, the next oldest of 1.2.
    assert table.admit("9.9.0.2", "v4:9.9", 22.0).evicted == big[1]
    assert len(table) == 6
    assert table.release(small[0])  # the smaller netgroup was never touched


def test_even_spread_refuses_instead_of_evicting_in_turn() -> None:
    table = PendingTable(PendingLimits(max_total=4, max_per_ip=4, max_per_netgroup=4))
    for n in range(4):
        fill(table, f"{n}.0.0.1", f"v4:{n}.0", 1, now=float(n))
    assert table.admit("7.0.0.1", "v4:7.0", 9.0).outcome is PendingOutcome.REFUSED_FULL
    # a member of the most represented group never evicts its own group
    table2 = PendingTable(PendingLimits(max_total=2, max_per_ip=3, max_per_netgroup=3))
    fill(table2, "1.0.0.1", "v4:1.0", 2)
    assert table2.admit("1.0.0.2", "v4:1.0", 9.0).outcome is PendingOutcome.REFUSED_FULL


def test_ties_between_netgroups_evict_the_oldest_entry() -> None:
    table = PendingTable(PendingLimits(max_total=4, max_per_ip=4, max_per_netgroup=4))
    late = fill(table, "2.0.0.1", "v4:2.0", 2, now=100.0)
    early = fill(table, "1.0.0.1", "v4:1.0", 2, now=0.0)
    decision = table.admit("3.0.0.1", "v4:3.0", 200.0)
    assert decision.evicted == early[0] and late[0] not in (decision.evicted,)


def test_exempt_hosts_skip_the_per_ip_and_netgroup_limits_but_stay_evictable() -> None:
    table = PendingTable(PendingLimits(max_total=8, max_per_ip=1, max_per_netgroup=1))
    tickets = []
    for i in range(8):
        decision = table.admit("127.0.0.2", "v4:127.0", float(i), exempt=True)
        assert decision.admitted and decision.ticket is not None
        tickets.append(decision.ticket)
    assert table.admit("127.0.0.2", "v4:127.0", 9.0, exempt=True).outcome is (
        PendingOutcome.REFUSED_FULL
    )
    newcomer = table.admit("127.1.0.3", "v4:127.1", 10.0)
    assert newcomer.admitted and newcomer.evicted == tickets[0]


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_pending_handshakes_per_ip"):
        PendingLimits(max_per_ip=0)
    with pytest.raises(ConfigError, match="max_pending_handshakes_per_netgroup"):
        PendingLimits(max_per_netgroup=True)
    with pytest.raises(ConfigError, match="max_pending_handshakes_per_ip"):
        ConnectionConfig(max_pending_handshakes_per_ip=0)
    with pytest.raises(ConfigError, match="exempt_networks"):
        TransportConfig(exempt_networks=("not-a-net",))


# ------------------------------------------------------------- loopback TCP, a real flood

IDLE = 200
ATTACKER = "127.0.0.2"


@contextlib.asynccontextmanager
async def idle_sockets(address: NodeAddress, count: int) -> AsyncIterator[None]:
    """``count`` connections from ATTACKER that never say a word."""
    streams: list[anyio.abc.SocketStream] = []
    try:
        for _ in range(count):
            streams.append(
                await anyio.connect_tcp(address.host, address.port, local_host=ATTACKER)
            )
        yield
    finally:
        for stream in streams:
            await anyio.aclose_forcefully(stream)


def handled(stats: TransportStatistics) -> int:
    """Inbound connections the accept loop has dealt with (pending, refused or evicted)."""
    return (stats.pending_handshakes + stats.rejected_per_ip + stats.rejected_per_netgroup
            + stats.rejected_overload + stats.rejected_by_gate + stats.evicted_handshakes)


def dialer_from(host: str) -> Node:
    """A real node whose TCP dials leave from ``host``."""
    key = NodeKey.generate()
    transport = TcpTransport(
        SecureIdentity(key), ListenAddress.parse(f"tcp://{host}:0"), local_host=host
    )
    return Node(NodeConfig(), key=key, transports=[transport])


def attacked_config(exempt: tuple[str, ...] = ()) -> NodeConfig:
    # A long handshake timeout: the idle sockets keep their slots for the whole test.
    return NodeConfig(
        listen=("tcp://127.0.0.1:0",),
        connection=ConnectionConfig(handshake_timeout=60.0),
        peers=PeerManagerConfig(exempt_networks=exempt),
    )


def tcp_transport(node: Node) -> Transport:
    (transport,) = node.transports
    return transport


@pytest.mark.anyio
async def test_idle_sockets_from_one_ip_do_not_stop_a_dial_from_another() -> None:
    async with Node(attacked_config()) as node:
        transport = tcp_transport(node)
        async with idle_sockets(node.address, IDLE):
            stats = await transport.wait_statistics(lambda s: handled(s) >= IDLE)
            per_ip = ConnectionConfig().max_pending_handshakes_per_ip
            assert stats.pending_handshakes == per_ip
            assert stats.rejected_per_ip == IDLE - per_ip
            # Same netgroup (v4:127.0) as the attacker, another IP: still room for it.
            async with dialer_from("127.0.0.3") as honest:
                with anyio.fail_after(10):
                    assert await honest.dial(node.address) == node.node_id
                await wait_until(lambda: honest.node_id in node.connected_peers())
            assert transport.statistics().evicted_handshakes == 0


@pytest.mark.anyio
async def test_with_loopback_exempt_a_newcomer_from_another_netgroup_evicts() -> None:
    """Exempt networks skip the per-IP limit, so the attacker fills every slot; a dialer from
    another netgroup still gets in by evicting the attacker's oldest pending handshake."""
    async with Node(attacked_config(LOOPBACK_NETWORKS)) as node:
        transport = tcp_transport(node)
        total = ConnectionConfig().max_pending_handshakes
        async with idle_sockets(node.address, IDLE):
            stats = await transport.wait_statistics(lambda s: handled(s) >= IDLE)
            assert stats.pending_handshakes == total
            assert stats.rejected_overload == IDLE - total and stats.rejected_per_ip == 0
            async with dialer_from("127.1.0.3") as honest:
                with anyio.fail_after(10):
                    assert await honest.dial(node.address) == node.node_id
                await wait_until(lambda: honest.node_id in node.connected_peers())
            stats = transport.statistics()
            assert stats.evicted_handshakes == 1
            assert stats.pending_handshakes == total - 1
            assert stats.total_handshake_failures == 0  # an eviction is not a failure
