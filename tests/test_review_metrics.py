"""End to end: the peering driver and the operator control count dials, dial failures by
reason, evictions, disconnects by the peer manager or operator, and bans (automatic and
operator), as scraped from the nodes' live /metrics endpoints."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overlay.address import NodeAddress
from overlay.cli._testnet import LOOPBACK_NETWORKS
from overlay.connection._observer import Observer
from overlay.errors import (
    AuthenticationError,
    DialError,
    HandshakeTimeout,
    IncompatiblePeerError,
    LocalProtocolError,
    NodeClosed,
)
from overlay.identity import NodeId, NodeKey
from overlay.node._config import AdminConfig, MetricsConfig, NodeConfig
from overlay.node._peering import dial_failure_reason
from overlay.node._service import NodeControl, run_node
from overlay.peers import PeerManagerConfig

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class DisconnectWatcher(Observer):
    """One event per peer, set when its connection ends."""

    def __init__(self) -> None:
        self._gone: dict[NodeId, anyio.Event] = {}

    def gone(self, peer: NodeId) -> anyio.Event:
        return self._gone.setdefault(peer, anyio.Event())

    def on_peer_disconnected(self, peer: NodeId, reason: str) -> None:
        self.gone(peer).set()


def config(peers: PeerManagerConfig) -> NodeConfig:
    return NodeConfig(
        network="review-metrics",
        listen=("tcp://127.0.0.1:0",),
        admin=AdminConfig(enabled=False),
        metrics=MetricsConfig(enabled=True, listen="127.0.0.1:0"),
        peers=peers,
    )


async def scrape(control: NodeControl) -> Samples:
    assert control.metrics_url is not None
    url = f"{control.metrics_url}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    samples: Samples = {}
    for family in text_string_to_metric_families(await anyio.to_thread.run_sync(get)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.anyio
async def test_dials_failures_evictions_disconnects_and_bans_are_counted(
    tmp_path: Path,
) -> None:
    # No automatic redial of a failed address within the test (backoff_base), loopback exempt.
    base = PeerManagerConfig(exempt_networks=LOOPBACK_NETWORKS, backoff_base=60.0,
                             persistent_backoff_cap=60.0)
    # C has one inbound slot and protects nobody: a second inbound peer evicts the first.
    small = replace(base, max_connections=2, max_outbound=1, protect_netgroups=0,
                    protect_low_latency=0, protect_recently_useful=0,
                    protect_longest_connected=0.0)
    watch_a = DisconnectWatcher()
    for name in "abc":  # what `overlay init` writes
        NodeKey.generate().save(tmp_path / name / "node_key")
    async with anyio.create_task_group() as tg:
        a: NodeControl = await tg.start(
            lambda task_status: run_node(config(base), tmp_path / "a", observers=(watch_a,),
                                         task_status=task_status)
        )
        b: NodeControl = await tg.start(run_node, config(base), tmp_path / "b")
        c: NodeControl = await tg.start(run_node, config(small), tmp_path / "c")
        id_b, id_c = b.node.node_id, c.node.node_id
        addr_b, addr_c = b.node.address, c.node.address

        with anyio.fail_after(10):
            # 1. A successful operator dial.
            assert (await a.dial(str(addr_b), persistent=False))["connected"] == id_b
            # 2. Nothing listens there: refused.
            dead = NodeAddress(NodeId("ab" * 20), "tcp", "127.0.0.1", closed_port())
            with pytest.raises(DialError):
                await a.dial(str(dead), persistent=False)
            # 3. B answers at its address, but we expect another identity: authentication.
            with pytest.raises(AuthenticationError):
                await a.dial(f"{id_c}@{addr_b.host}:{addr_b.port}", persistent=False)

            # 4. A takes C's only inbound slot; B's arrival makes C's manager evict A.
            await a.dial(str(addr_c), persistent=False)
            await b.dial(str(addr_c), persistent=False)
            await watch_a.gone(id_c).wait()

            # 5. An automatic ban: the router reports a protocol violation by B (-100).
            a.peering.on_protocol_violation(id_b, "bad frame")
            await watch_a.gone(id_b).wait()

            # 6. Operator bans (a peer and an IP) and an operator disconnect.
            await a.ban(id_c, duration=None)
            await a.ban("127.0.0.2", duration=60.0)
            await b.disconnect(id_c)

            sa, sb, sc = await scrape(a), await scrape(b), await scrape(c)
        tg.cancel_scope.cancel()

    assert value(sa, "overlay_dials_total") == 4
    assert value(sa, "overlay_dial_failures_total", reason="refused") == 1
    assert value(sa, "overlay_dial_failures_total", reason="authentication") == 1
    assert sum(v for (name, _), v in sa.items() if name == "overlay_dial_failures_total") == 2
    assert value(sa, "overlay_bans_total", kind="peer") == 2  # automatic + operator
    assert value(sa, "overlay_bans_total", kind="ip") == 1
    assert value(sa, "overlay_peer_disconnects_total", reason="banned") == 1
    assert value(sa, "overlay_peer_evictions_total") == 0

    assert value(sc, "overlay_peer_evictions_total") == 1
    assert value(sc, "overlay_peer_disconnects_total", reason="evicted") == 1
    assert value(sc, "overlay_dials_total") == 0

    assert value(sb, "overlay_dials_total") == 1
    assert value(sb, "overlay_peer_disconnects_total", reason="operator") == 1
    assert value(sb, "overlay_bans_total", kind="peer") == 0


def test_dial_failure_reasons() -> None:
    refused = DialError("cannot connect")
    refused.__cause__ = OSError("All connection attempts failed")
    refused.__cause__.__cause__ = ConnectionRefusedError(111, "refused")
    timed_out = DialError("cannot connect")
    timed_out.__cause__ = TimeoutError()
    assert dial_failure_reason(refused) == "refused"
    assert dial_failure_reason(timed_out) == "timeout"
    assert dial_failure_reason(DialError("no listener")) == "unreachable"
    assert dial_failure_reason(HandshakeTimeout("slow")) == "timeout"
    assert dial_failure_reason(TimeoutError()) == "timeout"
    assert dial_failure_reason(AuthenticationError("other id")) == "authentication"
    assert dial_failure_reason(IncompatiblePeerError("too_many_peers", "full")) == (
        "too_many_peers"
    )
    assert dial_failure_reason(NodeClosed("closed")) == "node_closed"
    assert dial_failure_reason(LocalProtocolError("ourselves")) == "local"
    assert dial_failure_reason(RuntimeError("bug")) == "internal"
