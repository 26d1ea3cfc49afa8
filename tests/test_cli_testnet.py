"""The local testnet runs every node with its peer manager, and converges to a full mesh on
loopback because loopback is exempt from the per-IP / per-netgroup limits."""

from __future__ import annotations

import io

import pytest

from overlay.cli._testnet import LOOPBACK_NETWORKS, run_testnet
from overlay.cli._testnet import testnet_config as make_config  # not collected as a test
from overlay.peers import PeerManagerConfig
from tests.support import both_backends

anyio_backend = both_backends()


def test_testnet_config_exempts_loopback_and_fits_a_full_mesh() -> None:
    default = PeerManagerConfig()
    small = make_config(8).peers
    assert small.exempt_networks == LOOPBACK_NETWORKS == ("127.0.0.0/8", "::1/128")
    assert small.max_outbound == default.max_outbound
    assert small.max_connections == default.max_connections
    # Without the exemption 8 nodes on 127.0.0.1 would not fit the per-IP inbound limit.
    assert default.max_inbound_per_ip < 7
    big = make_config(40).peers
    assert big.max_outbound == 39  # node 0 dials all 39 others
    assert big.max_inbound >= 39  # node 39 is dialed by all 39 others
    assert make_config(3).admin.enabled is False


@pytest.mark.anyio
async def test_eight_node_testnet_converges_with_peer_managers() -> None:
    out = io.StringIO()
    report = await run_testnet(8, 0.3, concurrency=2, out=out)
    assert report.connections == 8 * 7
    assert dict(report.errors) == {}  # no refusal, eviction or ban by any peer manager
    assert report.requests_ok > 0
    assert report.gossip_received > 0
    assert report.ok
    assert "result:                 OK" in report.render()
    assert out.getvalue().count("node ") == 8


@pytest.mark.anyio
async def test_without_the_loopback_exemption_the_managers_refuse_the_mesh() -> None:
    # The testnet's nodes really run their peer managers: with the default limits, the last
    # node refuses inbound loopback connections beyond max_inbound_per_ip.
    report = await run_testnet(8, 0.05, concurrency=1, peers=PeerManagerConfig(), out=None)
    assert report.errors["inbound refused: per_ip_limit"] > 0
    assert report.connections < 8 * 7
    assert not report.ok
