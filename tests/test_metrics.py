"""NodeMetrics: values fed in, scraped over HTTP, parsed with prometheus_client's parser; and end
to end, the peering driver and the operator control counting dials, dial failures by reason,
evictions, disconnects by the peer manager or operator, and bans (automatic and operator), as
scraped from running nodes' /metrics endpoints."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus
from prometheus_client.parser import text_string_to_metric_families

from overlay.address import NodeAddress
from overlay.connection._observer import Observer
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import (
    AuthenticationError,
    ConfigError,
    ConnectFailure,
    DialError,
    HandshakeError,
    HandshakeTimeout,
    IncompatiblePeerError,
    LocalProtocolError,
    NodeClosed,
)
from overlay.identity import NodeId, NodeKey
from overlay.node import Node
from overlay.node._config import AdminConfig, DiscoveryConfig, MetricsConfig, NodeConfig
from overlay.node._control import NodeControl
from overlay.node._service import run_node
from overlay.operator._metrics import (
    MAX_LABEL_VALUES,
    ChannelSnapshot,
    MetricsObserver,
    MetricsSnapshot,
    NodeMetrics,
    serve_metrics,
)
from overlay.peers import PeerManagerConfig
from overlay.transport._failures import Direction, HandshakeFailureReason, dial_failure_reason

PEER = NodeId("3" * 40)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Sample values by (name, labels) and family types by family name."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def http_get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, _, port = url[len("http://"):].rpartition(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with anyio.fail_after(5):
            while True:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@asynccontextmanager
async def serving(metrics: NodeMetrics) -> AsyncIterator[str]:
    async def run(*, task_status: TaskStatus[str]) -> None:
        await serve_metrics(metrics, listen="127.0.0.1:0", task_status=task_status)

    async with anyio.create_task_group() as tg:
        url = await tg.start(run)
        yield url
        tg.cancel_scope.cancel()


SNAPSHOT = MetricsSnapshot(
    peers_inbound=3,
    peers_outbound=5,
    known_peers=120,
    dialing_peers=2,
    banned_peers=4,
    banned_ips=1,
    address_book_new=90,
    address_book_tried=30,
    wire_bytes_sent=10_000,
    wire_bytes_received=20_000,
    channels={
        "blocks": ChannelSnapshot(
            bytes_sent=1000, bytes_received=2000, messages_sent=10, messages_received=20,
            messages_dropped=1, queue_depth_sum=7, queue_depth_max=4,
            outbound_requests_in_flight=3, inbound_requests_in_flight=2,
        ),
        "gossip": ChannelSnapshot(bytes_sent=5, messages_sent=1),
    },
)


@pytest.mark.anyio
async def test_metrics_scraped_over_http_match_what_was_fed() -> None:
    metrics = NodeMetrics("overlay", snapshot=lambda: SNAPSHOT)
    metrics.set_node_info(node_id=PEER, network="testnet", version="0.1.0")
    for _ in range(3):
        metrics.dial_attempted()
    metrics.dial_failed("refused")
    metrics.dial_failed("refused")
    metrics.dial_failed("timeout")
    metrics.handshake_failed(Direction.OUTBOUND, HandshakeFailureReason.WRONG_NETWORK)
    metrics.peer_evicted()
    metrics.peer_banned("peer")
    metrics.peer_banned("ip")
    metrics.peer_banned("peer")
    metrics.request_observed("blocks", 0.003, "ok")
    metrics.request_observed("blocks", 0.2, "ok")
    metrics.request_observed("blocks", 5.0, "timeout")
    metrics.request_served("gossip", 0.01, "ok")
    metrics.slow_peer("blocks")
    metrics.invalid_message("gossip")
    metrics.invalid_message("gossip")

    async with serving(metrics) as url:
        status, headers, body = await http_get(url, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=")
        samples, types = parse(body.decode())

        assert value(samples, "overlay_connected_peers", direction="inbound") == 3
        assert value(samples, "overlay_connected_peers", direction="outbound") == 5
        assert value(samples, "overlay_known_peers") == 120
        assert value(samples, "overlay_dialing_peers") == 2
        assert value(samples, "overlay_banned_peers") == 4
        assert value(samples, "overlay_banned_ips") == 1
        assert value(samples, "overlay_address_book_entries", table="new") == 90
        assert value(samples, "overlay_address_book_entries", table="tried") == 30
        assert value(samples, "overlay_wire_sent_bytes_total") == 10_000
        assert value(samples, "overlay_wire_received_bytes_total") == 20_000
        assert value(samples, "overlay_sent_bytes_total", channel="blocks") == 1000
        assert value(samples, "overlay_received_bytes_total", channel="blocks") == 2000
        assert value(samples, "overlay_sent_messages_total", channel="blocks") == 10
        assert value(samples, "overlay_received_messages_total", channel="blocks") == 20
        assert value(samples, "overlay_dropped_messages_total", channel="blocks") == 1
        assert value(samples, "overlay_send_queue_messages", channel="blocks") == 7
        assert value(samples, "overlay_send_queue_max_messages", channel="blocks") == 4
        assert value(samples, "overlay_outbound_requests_in_flight", channel="blocks") == 3
        assert value(samples, "overlay_inbound_requests_in_flight", channel="blocks") == 2
        assert value(samples, "overlay_sent_bytes_total", channel="gossip") == 5
        assert value(samples, "overlay_received_bytes_total", channel="gossip") == 0

        assert value(samples, "overlay_dials_total") == 3
        assert value(samples, "overlay_dial_failures_total", reason="refused") == 2
        assert value(samples, "overlay_dial_failures_total", reason="timeout") == 1
        assert value(samples, "overlay_handshake_failures_total", direction="outbound",
                     reason="wrong_network") == 1
        assert value(samples, "overlay_peer_evictions_total") == 1
        assert value(samples, "overlay_bans_total", kind="peer") == 2
        assert value(samples, "overlay_bans_total", kind="ip") == 1
        assert value(samples, "overlay_requests_total", channel="blocks", outcome="ok") == 2
        assert value(samples, "overlay_requests_total", channel="blocks", outcome="timeout") == 1
        assert value(samples, "overlay_request_duration_seconds_count", channel="blocks") == 3
        assert value(samples, "overlay_request_duration_seconds_sum", channel="blocks") == (
            pytest.approx(5.203)
        )
        assert value(samples, "overlay_request_duration_seconds_bucket",
                     channel="blocks", le="0.005") == 1
        assert value(samples, "overlay_request_duration_seconds_bucket",
                     channel="blocks", le="0.25") == 2
        assert value(samples, "overlay_request_duration_seconds_bucket",
                     channel="blocks", le="+Inf") == 3
        assert value(samples, "overlay_served_request_duration_seconds_count",
                     channel="gossip") == 1
        assert value(samples, "overlay_served_requests_total", channel="gossip",
                     outcome="ok") == 1
        assert value(samples, "overlay_slow_peer_events_total", channel="blocks") == 1
        assert value(samples, "overlay_invalid_messages_total", channel="gossip") == 2
        assert value(samples, "overlay_node_info", node_id=PEER, network="testnet",
                     version="0.1.0") == 1

        # Naming conventions: counters end in _total, histograms in base units.
        assert types["overlay_dials"] == "counter"
        assert types["overlay_sent_bytes"] == "counter"
        assert types["overlay_request_duration_seconds"] == "histogram"
        assert types["overlay_connected_peers"] == "gauge"
        for (name, _), _v in samples.items():
            assert name.startswith("overlay_"), name

        # Scrape-time values are live: a new snapshot shows at the next scrape.
        metrics.set_snapshot_source(lambda: MetricsSnapshot(peers_inbound=9))
        metrics.dial_attempted()
        samples, _ = parse((await http_get(url, "/metrics"))[2].decode())
        assert value(samples, "overlay_connected_peers", direction="inbound") == 9
        assert value(samples, "overlay_dials_total") == 4

        assert (await http_get(url, "/"))[0] == 404
        assert (await http_get(url, "/metrics/x"))[0] == 404


@pytest.mark.anyio
async def test_snapshot_failure_is_500_and_endpoint_survives() -> None:
    calls = 0

    def snapshot() -> MetricsSnapshot:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("node bug")
        return SNAPSHOT

    metrics = NodeMetrics(snapshot=snapshot)
    async with serving(metrics) as url:
        assert (await http_get(url, "/metrics"))[0] == 500
        status, _, body = await http_get(url, "/metrics")
        assert status == 200
        samples, _ = parse(body.decode())
        assert value(samples, "overlay_known_peers") == 120


def test_registries_are_private_and_namespaced() -> None:
    a = NodeMetrics("node_a")
    b = NodeMetrics("node_b")
    a.dial_attempted()
    samples_a, _ = parse(a.render().decode())
    samples_b, _ = parse(b.render().decode())
    assert value(samples_a, "node_a_dials_total") == 1
    assert value(samples_b, "node_b_dials_total") == 0
    # Without a snapshot source, only the event-time instruments are exported.
    assert not any(name.startswith("node_a_connected_peers") for name, _ in samples_a)
    # Two nodes with the same namespace in one process do not clash.
    NodeMetrics("node_a").dial_attempted()
    for bad in ("", "1abc", "a-b", "a b"):
        with pytest.raises(ConfigError):
            NodeMetrics(bad)


def test_label_values_are_capped() -> None:
    metrics = NodeMetrics()
    for i in range(MAX_LABEL_VALUES + 10):
        metrics.dial_failed(f"reason{i}")
    samples, _ = parse(metrics.render().decode())
    reasons = {dict(labels)["reason"] for name, labels in samples
               if name == "overlay_dial_failures_total"}
    assert len(reasons) == MAX_LABEL_VALUES + 1
    assert value(samples, "overlay_dial_failures_total", reason="other") == 10
    assert value(samples, "overlay_dial_failures_total", reason="reason0") == 1


def test_bad_durations_do_not_corrupt_histograms() -> None:
    metrics = NodeMetrics()
    metrics.request_observed("c", float("nan"), "ok")
    metrics.request_observed("c", -1.0, "ok")
    samples, _ = parse(metrics.render().decode())
    assert value(samples, "overlay_requests_total", channel="c", outcome="ok") == 2
    assert value(samples, "overlay_request_duration_seconds_count", channel="c") == 1
    assert value(samples, "overlay_request_duration_seconds_sum", channel="c") == 0


def test_observer_forwards_to_metrics() -> None:
    metrics = NodeMetrics()
    observer = MetricsObserver(metrics)
    observer.on_slow_peer(PEER, "blocks")
    observer.on_invalid_message(PEER, "blocks", "decode")
    observer.on_request_done(PEER, "blocks", 0.5, AttemptOutcome.ERROR)
    observer.on_request_served(PEER, "blocks", 0.1, AttemptOutcome.OK)
    observer.on_latency(PEER, 0.01)  # not a metric: ignored
    observer.on_handshake_failed(Direction.INBOUND, HandshakeFailureReason.TIMEOUT)
    samples, _ = parse(metrics.render().decode())
    assert value(samples, "overlay_slow_peer_events_total", channel="blocks") == 1
    assert value(samples, "overlay_invalid_messages_total", channel="blocks") == 1
    assert value(samples, "overlay_requests_total", channel="blocks", outcome="error") == 1
    assert value(samples, "overlay_served_requests_total", channel="blocks", outcome="ok") == 1
    assert value(samples, "overlay_handshake_failures_total", direction="inbound",
                 reason="timeout") == 1


@pytest.mark.anyio
async def test_metrics_bind_errors_are_config_errors() -> None:
    for listen in ("nonsense", "127.0.0.1:70000", "192.0.2.1:9"):
        with pytest.raises(ConfigError) as info:
            await serve_metrics(NodeMetrics(), listen=listen)
        assert info.value.key == "metrics.listen"


# ------------------------------------------------ end to end: peering and operator events


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
        network="metrics-counts",
        listen=("tcp://127.0.0.1:0",),
        admin=AdminConfig(enabled=False),
        metrics=MetricsConfig(enabled=True, listen="127.0.0.1:0"),
        peers=peers,
        discovery=DiscoveryConfig(pex_enabled=False),  # its requests would move the scores
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


def count(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value, 0 when the counter has no such sample yet."""
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
    base = PeerManagerConfig(exempt_networks=("127.0.0.0/8", "::1/128"), backoff_base=60.0,
                             persistent_backoff_cap=60.0)
    # C has one inbound slot and protects nobody: a second inbound peer evicts the first.
    small = replace(base, max_connections=2, max_outbound=1, protect_netgroups=0,
                    protect_low_latency=0, protect_recently_useful=0,
                    protect_longest_connected=0.0)
    watch_a = DisconnectWatcher()
    for name in "abc":  # what `overlay init` writes
        NodeKey.generate().save(tmp_path / name / "node_key")
    async with anyio.create_task_group() as tg:
        node_a: Node = await tg.start(
            lambda task_status: run_node(config(base), tmp_path / "a", observers=(watch_a,),
                                         task_status=task_status)
        )
        node_b: Node = await tg.start(run_node, config(base), tmp_path / "b")
        node_c: Node = await tg.start(run_node, config(small), tmp_path / "c")
        a, b, c = node_a.control, node_b.control, node_c.control
        id_b, id_c = node_b.node_id, node_c.node_id
        addr_b, addr_c = node_b.address, node_c.address

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

    assert count(sa, "overlay_dials_total") == 4
    assert count(sa, "overlay_dial_failures_total", reason="refused") == 1
    assert count(sa, "overlay_dial_failures_total", reason="authentication") == 1
    assert sum(v for (name, _), v in sa.items() if name == "overlay_dial_failures_total") == 2
    assert count(sa, "overlay_bans_total", kind="peer") == 2  # automatic + operator
    assert count(sa, "overlay_bans_total", kind="ip") == 1
    assert count(sa, "overlay_peer_disconnects_total", reason="banned") == 1
    assert count(sa, "overlay_peer_evictions_total") == 0

    assert count(sc, "overlay_peer_evictions_total") == 1
    assert count(sc, "overlay_peer_disconnects_total", reason="evicted") == 1
    assert count(sc, "overlay_dials_total") == 0

    assert count(sb, "overlay_dials_total") == 1
    assert count(sb, "overlay_peer_disconnects_total", reason="operator") == 1
    assert count(sb, "overlay_bans_total", kind="peer") == 0


def test_dial_failure_reasons() -> None:
    """The reason is the one the transport boundary gave the error: no ``__cause__`` is read."""
    refused = DialError("cannot connect", ConnectFailure.REFUSED)
    timed_out = DialError("cannot connect", ConnectFailure.TIMEOUT)
    timed_out.__cause__ = ConnectionRefusedError(111, "ignored: the reason is the error's own")
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
    assert dial_failure_reason(IncompatiblePeerError("unknown_99", "?")) == "refused"
    lost = HandshakeError("lost", reason=HandshakeFailureReason.CONNECTION)
    assert dial_failure_reason(lost) == "connection"
