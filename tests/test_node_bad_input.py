"""Bad input from the network never crashes a node.

A *raw peer* (``tests/raw_peer.py``) authenticates for real, runs the hello exchange by hand and
then writes whatever bytes it likes on the secure stream. Every test then proves the node
still serves a second, healthy peer.

Outcomes: a protocol violation closes that one connection (the node says why in a Disconnect
frame, logs it and tells the observer); a message that merely cannot be used (unknown channel,
undecodable payload, late response) is dropped and counted, and the connection stays up.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.connection import _core as core_mod
from overlay.connection._core import ChannelParams
from overlay.connection._observer import Observer
from overlay.errors import DecodeError, ErrorCode, LocalProtocolError, RemoteProtocolError
from overlay.identity import NodeId
from overlay.node import Node
from overlay.node._config import ConnectionConfig
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork
from overlay.transport._failures import Direction
from overlay.transport._failures import HandshakeFailureReason as Reason
from overlay.wire._frames import FLAG_COMPRESSED, FLAG_MORE, HEADER, FrameKind, encode_frame
from overlay.wire._nodeinfo import (
    PROTOCOL_VERSION,
    DisconnectReason,
)
from tests.raw_peer import RawPeer, secure_dial
from tests.raw_peer import raw_peer as connect_raw_peer
from tests.support import (
    both_transports,
    config_for,
    every_loop,
    make_node,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

MAX_FRAME_PAYLOAD = ConnectionConfig().max_frame_payload
INBOUND = Direction.INBOUND


class JsonCodec:
    """JSON objects; anything else is a DecodeError."""

    def encode(self, message: dict[str, Any], /) -> bytes:
        if not isinstance(message, dict):
            raise LocalProtocolError("expected a dict")
        return json.dumps(message).encode()

    def decode(self, data: bytes, /) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError("not a JSON object")
        return value


ECHO = ChannelSpec(id=5, name="echo", codec=BytesCodec(), response_codec=BytesCodec(),
                   max_message_size=1024)
DOCS = ChannelSpec(id=6, name="docs", codec=JsonCodec(), response_codec=JsonCodec())
UNKNOWN_CHANNEL = 999

anyio_backend = every_loop()
transport = both_transports()


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.violations: list[tuple[NodeId, str]] = []
        self.invalid: list[tuple[NodeId, str]] = []

    def on_protocol_violation(self, peer: NodeId, reason: str) -> None:
        self.violations.append((peer, reason))

    def on_invalid_message(self, peer: NodeId, channel: str, reason: str) -> None:
        self.invalid.append((peer, channel))


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message + b"!"


async def _doc(env: Envelope[dict[str, Any]]) -> dict[str, Any]:
    return {"got": env.message}


# ------------------------------------------------------------------------------ raw peer


def _payload(event: core_mod.Event) -> bytes:
    assert isinstance(event, core_mod.ResponseReceived), event
    return event.payload


_PARSED = (
    ChannelParams(ECHO.id, max_message_size=ECHO.max_message_size),
    ChannelParams(DOCS.id),
    ChannelParams(UNKNOWN_CHANNEL),  # a channel the node does not have
)


async def raw_peer(
    node: Node, net: MemoryNetwork, *, protocol_version: int = PROTOCOL_VERSION
) -> RawPeer:
    """A raw peer (``tests/raw_peer.py``) announcing the echo and docs channels."""
    return await connect_raw_peer(node, net, channels=_PARSED, announced=(ECHO.id, DOCS.id),
                                  protocol_version=protocol_version)


@dataclass(slots=True)
class Setup:
    node: Node
    healthy: Node
    net: MemoryNetwork
    observer: RecordingObserver
    echo: Channel[bytes, bytes]
    docs: Channel[dict[str, Any], dict[str, Any]]
    healthy_echo: Channel[bytes, bytes]

    async def still_serving(self) -> None:
        """The node answers the healthy peer over its (pre-existing) connection."""
        assert self.node.node_id in self.healthy.connected_peers()
        reply = await self.healthy_echo.request(self.node.node_id, b"still there?", timeout=5)
        assert reply == b"still there?!"


@asynccontextmanager
async def setup(
    transport: str, connection: ConnectionConfig | None = None
) -> AsyncIterator[Setup]:
    net = MemoryNetwork()
    observer = RecordingObserver()
    async with (
        make_node(config_for(transport, connection=connection or ConnectionConfig()), net,
                  observer=observer) as node,
        make_node(config_for(transport), net) as healthy,
    ):
        echo, docs = node.channel(ECHO), node.channel(DOCS)
        echo.handle_requests(_echo)
        docs.handle_requests(_doc)
        healthy_echo = healthy.channel(ECHO)
        await healthy.dial(node.address)
        yield Setup(node, healthy, net, observer, echo, docs, healthy_echo)


# ------------------------------------------------------------------ protocol violations

_RNG = random.Random(1234)

VIOLATIONS: dict[str, bytes] = {
    "random_garbage": _RNG.randbytes(300),
    "oversized_frame_header": HEADER.pack(MAX_FRAME_PAYLOAD + 8 + 1, 1, 0, ECHO.id, 0),
    "huge_length": b"\xff\xff\xff\xff" + b"\x00" * 8,
    "length_below_header": HEADER.pack(7, 1, 0, ECHO.id, 0),
    "unknown_kind": encode_frame(9, 0, ECHO.id, 0, b"x"),
    "unknown_flags": encode_frame(FrameKind.MESSAGE, 0x80, ECHO.id, 0, b"x"),
    "compressed_not_negotiated": encode_frame(FrameKind.MESSAGE, FLAG_COMPRESSED, ECHO.id, 0,
                                              b"x"),
    "request_id_zero": encode_frame(FrameKind.REQUEST, 0, ECHO.id, 0, b"x"),
    "message_with_request_id": encode_frame(FrameKind.MESSAGE, 0, ECHO.id, 3, b"x"),
    "message_on_control_channel": encode_frame(FrameKind.MESSAGE, 0, 0, 0, b"x"),
    "control_on_data_channel": encode_frame(FrameKind.CONTROL, 0, ECHO.id, 0, b""),
    "undecodable_control": encode_frame(FrameKind.CONTROL, 0, 0, 0, b"\xff\xff\xff"),
    "message_over_channel_limit": (
        encode_frame(FrameKind.MESSAGE, FLAG_MORE, ECHO.id, 0, b"a" * 800)
        + encode_frame(FrameKind.MESSAGE, 0, ECHO.id, 0, b"a" * 800)
    ),
    "interleaved_chunks": (
        encode_frame(FrameKind.MESSAGE, FLAG_MORE, ECHO.id, 0, b"a" * 10)
        + encode_frame(FrameKind.REQUEST, 0, ECHO.id, 9, b"b")
    ),
    "cancel_with_payload": encode_frame(FrameKind.CANCEL, 0, ECHO.id, 4, b"x"),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
async def test_protocol_violation_closes_only_that_connection(
    transport: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overlay")
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        await peer.send(VIOLATIONS[case])
        events = await peer.read_until_closed()
        disconnects = [e for e in events if isinstance(e, core_mod.DisconnectReceived)]
        assert [d.reason for d in disconnects] == [DisconnectReason.PROTOCOL_VIOLATION]
        await wait_until(lambda: peer.node_id not in s.node.connected_peers())
        assert s.observer.violations == [(peer.node_id, "FrameError")]
        assert any("violated the protocol" in r.getMessage() for r in caplog.records)
        await s.still_serving()
        await peer.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_undecryptable_bytes_close_the_connection(transport: str) -> None:
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        # a well-framed Noise transport message whose ciphertext is garbage
        await peer.stream.transport_stream.send(b"\x00\x28" + bytes(40))
        await peer.read_until_closed()
        await wait_until(lambda: peer.node_id not in s.node.connected_peers())
        assert [v[0] for v in s.observer.violations] == [peer.node_id]
        await s.still_serving()
        await peer.aclose()


# ----------------------------------------------------------- dropped, connection stays up


async def test_message_on_unknown_channel_is_dropped(transport: str) -> None:
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        await peer.send(encode_frame(FrameKind.MESSAGE, 0, UNKNOWN_CHANNEL, 0, b"who?"))
        event = await peer.request(ECHO.id, b"same connection")
        assert isinstance(event, core_mod.ResponseReceived)
        assert event.payload == b"same connection!"
        conn = s.node.router.get_peer(peer.node_id)
        assert conn is not None and conn.is_open
        assert conn.core.statistics().unknown_channel_dropped == 1
        await s.still_serving()
        await peer.aclose()


async def test_request_on_unknown_channel_gets_no_handler(transport: str) -> None:
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        event = await peer.request(UNKNOWN_CHANNEL, b"who?")
        assert isinstance(event, core_mod.ErrorReceived)
        assert event.code is ErrorCode.NO_HANDLER
        assert _payload(await peer.request(ECHO.id, b"ok")) == b"ok!"
        conn = s.node.router.get_peer(peer.node_id)
        assert conn is not None
        assert conn.core.statistics().unknown_channel_dropped == 1
        await s.still_serving()
        await peer.aclose()


async def test_undecodable_message_is_dropped_and_reported(transport: str) -> None:
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        await peer.send(encode_frame(FrameKind.MESSAGE, 0, DOCS.id, 0, b"{not json"))
        await peer.send(encode_frame(FrameKind.MESSAGE, 0, DOCS.id, 0, b'{"fine": 1}'))
        with anyio.fail_after(5):
            env = await s.docs.receive()
        assert env.message == {"fine": 1} and env.sender == peer.node_id
        stats = s.docs.statistics()
        assert stats.messages_dropped == 1 and stats.messages_delivered == 1
        assert s.observer.invalid == [(peer.node_id, DOCS.name)]
        assert s.node.router.get_peer(peer.node_id) is not None
        await s.still_serving()
        await peer.aclose()


async def test_undecodable_request_gets_decode_error(transport: str) -> None:
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        event = await peer.request(DOCS.id, b"[1, 2")
        assert isinstance(event, core_mod.ErrorReceived)
        assert event.code is ErrorCode.DECODE
        good = await peer.request(DOCS.id, b'{"a": 1}')
        assert isinstance(good, core_mod.ResponseReceived)
        assert json.loads(good.payload) == {"got": {"a": 1}}
        await s.still_serving()
        await peer.aclose()


async def test_late_response_and_stray_cancel_are_ignored(transport: str) -> None:
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        await peer.send(encode_frame(FrameKind.RESPONSE, 0, ECHO.id, 77, b"late"))
        await peer.send(encode_frame(FrameKind.ERROR, 0, ECHO.id, 78, b"\xff\xff"))
        await peer.send(encode_frame(FrameKind.CANCEL, 0, ECHO.id, 79, b""))
        event = await peer.request(ECHO.id, b"alive")
        assert isinstance(event, core_mod.ResponseReceived)
        conn = s.node.router.get_peer(peer.node_id)
        assert conn is not None
        assert conn.core.statistics().channel(ECHO.id).messages_dropped == 2
        await s.still_serving()
        await peer.aclose()


async def test_undecodable_response_fails_only_that_request(transport: str) -> None:
    async with setup(transport) as s:
        peer = await raw_peer(s.node, s.net)
        outcome: list[BaseException | dict[str, Any]] = []

        async def ask() -> None:
            try:
                outcome.append(await s.docs.request(peer.node_id, {"q": 1}, timeout=5))
            except RemoteProtocolError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            event = await peer.wait_event(lambda e: isinstance(e, core_mod.RequestReceived))
            assert isinstance(event, core_mod.RequestReceived)
            assert json.loads(event.payload) == {"q": 1}
            peer.core.send_response(DOCS.id, event.request_id, b"\x00not json")
            await peer.flush()
        assert len(outcome) == 1 and isinstance(outcome[0], DecodeError)
        assert s.observer.invalid == [(peer.node_id, DOCS.name)]
        assert _payload(await peer.request(ECHO.id, b"up")) == b"up!"
        await s.still_serving()
        await peer.aclose()


# --------------------------------------------------------------------- the hello exchange


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("oversized_hello", b"\x00\x01\x00\x01" + b"\x00" * 16),
        ("malformed_node_info", b"\x00\x00\x00\x04\xff\xff\xff\xff"),
        ("bad_channel_id", b"\x00\x00\x00\x06\x1a\x04\x80\x80\x04\x00"),
    ],
)
async def test_bad_hello_is_refused(transport: str, case: str, data: bytes) -> None:
    async with setup(transport) as s:
        stream = await secure_dial(s.node, s.net)
        await stream.send(data)
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:
                    await stream.receive()
        await wait_until(lambda: s.node.handshake_failures[INBOUND].get(Reason.PROTOCOL, 0) == 1)
        assert s.node.connected_peers() == [s.healthy.node_id]
        await s.still_serving()
        await stream.aclose()


async def _silent_peer_after_noise(transport: str) -> float:
    """A peer completes Noise and never sends its hello: the node drops it at its
    ``handshake_timeout`` (0.2 s), counts it, and keeps serving. Returns the seconds until
    the drop."""
    async with setup(transport, ConnectionConfig(handshake_timeout=0.2)) as s:
        stream = await secure_dial(s.node, s.net)
        started = anyio.current_time()
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
        elapsed = anyio.current_time() - started
        await wait_until(lambda: s.node.handshake_failures[INBOUND].get(Reason.TIMEOUT, 0) == 1)
        await s.still_serving()
        await stream.aclose()
    return elapsed


async def test_silent_peer_after_noise_is_dropped_at_handshake_timeout(transport: str) -> None:
    await _silent_peer_after_noise(transport)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_silent_peer_is_dropped_no_earlier_than_the_handshake_timeout() -> None:
    """Virtual time (trio's mock clock only): the drop comes at the timeout, measured exactly."""
    assert await _silent_peer_after_noise("memory") >= 0.15


async def test_incompatible_version_is_refused(transport: str) -> None:
    async with setup(transport) as s:
        from overlay.errors import IncompatiblePeerError

        with pytest.raises(IncompatiblePeerError) as info:
            await raw_peer(s.node, s.net, protocol_version=PROTOCOL_VERSION + 1000)
        assert info.value.reason == "incompatible_version"
        await wait_until(
            lambda: s.node.handshake_failures[INBOUND].get(Reason.INCOMPATIBLE_VERSION, 0) == 1
        )
        await s.still_serving()


# ------------------------------------------------------------------------------- fuzzing

_frames = st.builds(
    encode_frame,
    st.integers(0, 7),
    st.sampled_from([0, FLAG_MORE, FLAG_COMPRESSED, 0x04]),
    st.sampled_from([0, ECHO.id, DOCS.id, UNKNOWN_CHANNEL]),
    st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
    st.binary(max_size=64),
)
_chunks = st.lists(st.one_of(_frames, st.binary(min_size=1, max_size=40)), min_size=1,
                   max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=_chunks)
def test_fuzzed_input_never_hurts_the_node(chunks: list[bytes]) -> None:
    """Whatever follows the hello, the node either drops it or closes that connection, never
    fails internally, and keeps serving other peers."""

    async def run() -> None:
        async with setup("memory") as s:
            peer = await raw_peer(s.node, s.net)
            for chunk in chunks:
                try:
                    await peer.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break  # the node already hung up on us
            await anyio.wait_all_tasks_blocked()
            assert Reason.INTERNAL not in s.node.handshake_failures[INBOUND]
            await s.still_serving()
            await peer.aclose()

    anyio.run(run, backend="trio")  # precise wait_all_tasks_blocked
