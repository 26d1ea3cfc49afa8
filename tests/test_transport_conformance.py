"""The transport conformance suite, run for TCP (IPv4 and IPv6 loopback) and the memory network,
on both anyio backends; one test per check so failures name the check."""

from __future__ import annotations

import pytest

from overlay.address import ListenAddress
from overlay.testing import CHECKS, MemoryNetwork, TransportFactory, check_transport_conformance
from overlay.transport import AcceptGate, Transport, TransportConfig
from overlay.transport._secure import SecureIdentity
from overlay.transport._tcp import TcpTransport
from tests.support import every_loop, ipv6_available

anyio_backend = every_loop()


def _tcp_factory(host: str) -> TransportFactory:
    def make(
        identity: SecureIdentity, config: TransportConfig, *, accept_gate: AcceptGate | None
    ) -> Transport:
        return TcpTransport(
            identity, ListenAddress("tcp", host, 0), config, accept_gate=accept_gate
        )

    return make


@pytest.mark.anyio
@pytest.mark.parametrize("check", list(CHECKS))
async def test_tcp_ipv4(check: str) -> None:
    await check_transport_conformance(_tcp_factory("127.0.0.1"), checks=[check])


@pytest.mark.anyio
@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("check", ["identities", "data_integrity", "wrong_id", "gate"])
async def test_tcp_ipv6(check: str) -> None:
    await check_transport_conformance(_tcp_factory("::1"), checks=[check])


@pytest.mark.anyio
@pytest.mark.parametrize("check", list(CHECKS))
async def test_memory(check: str) -> None:
    network = MemoryNetwork()
    await check_transport_conformance(
        network.transport, checks=[check], misdirect=network.misdirect
    )
    assert network.statistics().listeners == 0


@pytest.mark.anyio
async def test_unknown_check_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown conformance checks"):
        await check_transport_conformance(_tcp_factory("127.0.0.1"), checks=["nope"])
