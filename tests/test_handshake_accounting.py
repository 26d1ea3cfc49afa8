"""Every failed connection set-up is counted by direction and reason in all three places: the
node's ``handshake_failures`` (``overlay status``), ``overlay_handshake_failures_total`` (the
live /metrics endpoint) and ``Observer.on_handshake_failed``. Inbound Noise failures come from
raw loopback sockets speaking garbage, a short message 1, a low-order key, or nothing."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import anyio
import anyio.abc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overlay.address import NodeAddress
from overlay.connection._observer import Observer
from overlay.errors import (
    AuthenticationError,
    ConnectionClosed,
    FrameError,
    HandshakeError,
    HandshakeTimeout,
    IncompatiblePeerError,
)
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import AdminConfig, ConnectionConfig, MetricsConfig, NodeConfig
from overlay.node._service import run_node
from overlay.transport._failures import (
    Direction,
    HandshakeFailureReason,
    handshake_failure_reason,
    stream_failure,
)
from tests.support import both_backends, wait_until

anyio_backend = both_backends()
pytestmark = pytest.mark.anyio

Reason = HandshakeFailureReason
INBOUND, OUTBOUND = Direction.INBOUND, Direction.OUTBOUND
TIMEOUT = 0.25
"""The attacked node's handshake timeout (real seconds: the one case that waits for it)."""


class Recorder(Observer):
    def __init__(self) -> None:
        self.failures: list[tuple[Direction, HandshakeFailureReason]] = []

    def on_handshake_failed(self, direction: Direction, reason: HandshakeFailureReason) -> None:
        self.failures.append((direction, reason))


async def scrape(node: Node, direction: Direction, reason: Reason) -> float:
    assert node.metrics_url is not None
    url = f"{node.metrics_url}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    labels = {"direction": direction.value, "reason": reason.value}
    for family in text_string_to_metric_families(await anyio.to_thread.run_sync(get)):
        for sample in family.samples:
            if sample.name == "overlay_handshake_failures_total" and sample.labels == labels:
                return sample.value
    return 0.0


def config() -> NodeConfig:
    return NodeConfig(
        network="accounting",
        listen=("tcp://127.0.0.1:0",),
        connection=ConnectionConfig(handshake_timeout=TIMEOUT),
        admin=AdminConfig(enabled=False),
        metrics=MetricsConfig(enabled=True, listen="127.0.0.1:0"),
    )


async def expect_closed(stream: anyio.abc.ByteStream) -> None:
    with anyio.fail_after(5):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def assert_counted_once(
    node: Node, recorder: Recorder, direction: Direction, reason: Reason
) -> None:
    control = node.control
    await wait_until(lambda: node.handshake_failures[direction].get(reason, 0) == 1)
    assert recorder.failures == [(direction, reason)]
    assert control.status()["handshake_failures"] == {
        "inbound": {reason.value: 1} if direction is INBOUND else {},
        "outbound": {reason.value: 1} if direction is OUTBOUND else {},
    }
    assert await scrape(node, direction, reason) == 1


# A message 1 is a 2-byte length and exactly 32 bytes (an X25519 key, empty payload).
CASES = {
    "garbage": (b"\x00\x40" + bytes(range(64)), Reason.HANDSHAKE),  # message 1 with a payload
    "short_message_1": (b"\x00\x10" + b"\x07" * 16, Reason.HANDSHAKE),
    "low_order_key": (b"\x00\x20" + bytes(32), Reason.HANDSHAKE),  # the all-zero point
    "http_then_eof": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Reason.CONNECTION),
    "silence": (b"", Reason.TIMEOUT),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_inbound_noise_failure_is_counted_everywhere(tmp_path: Path, case: str) -> None:
    data, reason = CASES[case]
    recorder = Recorder()
    NodeKey.generate().save(tmp_path / "home" / "node_key")  # what `overlay init` writes
    async with anyio.create_task_group() as tg:
        control: Node = await tg.start(
            lambda task_status: run_node(config(), tmp_path / "home", observers=(recorder,),
                                         task_status=task_status)
        )
        address = control.address
        async with await anyio.connect_tcp(address.host, address.port) as raw:
            if data:
                await raw.send(data)
            if reason is Reason.CONNECTION:
                await raw.send_eof()
            await expect_closed(raw)
        await assert_counted_once(control, recorder, INBOUND, reason)
        (transport,) = control.transports
        assert dict(transport.statistics().handshake_failures) == {reason: 1}
        tg.cancel_scope.cancel()


async def test_outbound_noise_failure_is_counted_everywhere(tmp_path: Path) -> None:
    """A listener that answers message 1 with garbage: the dialer counts it as outbound."""

    async def garbage_listener(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"\x00\x60" + b"\x01" * 96)  # a message 2 that cannot decrypt
            await expect_closed(stream)

    recorder = Recorder()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    NodeKey.generate().save(tmp_path / "home" / "node_key")  # what `overlay init` writes
    async with listener, anyio.create_task_group() as tg:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, garbage_listener)
        control: Node = await tg.start(
            lambda task_status: run_node(config(), tmp_path / "home", observers=(recorder,),
                                         task_status=task_status)
        )
        target = NodeAddress.parse(f"{'ab' * 20}@127.0.0.1:{port}")
        with pytest.raises(HandshakeError):
            await control.dial(target, timeout=5)
        await assert_counted_once(control, recorder, OUTBOUND, Reason.HANDSHAKE)
        tg.cancel_scope.cancel()


def test_exceptions_map_to_one_reason_each() -> None:
    def lost(exc: BaseException) -> HandshakeError:
        """What the transport boundary raises for a stream error during the set-up."""
        return stream_failure(exc, "the handshake")

    unmarked = HandshakeError("lost?")
    unmarked.__cause__ = anyio.EndOfStream()  # the cause is never read: the reason is the error's
    assert handshake_failure_reason(unmarked) is Reason.HANDSHAKE

    cases: list[tuple[BaseException, Reason]] = [
        (HandshakeTimeout("slow"), Reason.TIMEOUT),
        (TimeoutError(), Reason.TIMEOUT),
        (AuthenticationError("expected another id"), Reason.AUTHENTICATION),
        (HandshakeError("handshake message too short for an ephemeral key"), Reason.HANDSHAKE),
        (lost(anyio.EndOfStream()), Reason.CONNECTION),
        (lost(ConnectionResetError()), Reason.CONNECTION),
        (anyio.BrokenResourceError(), Reason.CONNECTION),
        (ConnectionClosed("gone"), Reason.CONNECTION),
        (FrameError("hello too large"), Reason.PROTOCOL),
        (IncompatiblePeerError("wrong_network", "net-b"), Reason.WRONG_NETWORK),
        (IncompatiblePeerError("too_many_peers", "full"), Reason.TOO_MANY_PEERS),
        (IncompatiblePeerError("unknown_99", "?"), Reason.REFUSED),
        (RuntimeError("bug"), Reason.INTERNAL),
    ]
    for exc, reason in cases:
        assert handshake_failure_reason(exc) is reason, exc
