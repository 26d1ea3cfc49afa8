"""A *raw peer*: authenticates for real (transport dial + Noise), runs the hello exchange of
``overlay.wire._nodeinfo`` by hand, and then writes whatever bytes it likes on the secure
stream. It parses what the node sends back with its own
:class:`~overlay.connection._core.ConnectionCore`.

Tests use it to send a node frames no well-behaved node would send (bad input), or frames
in an order a node's own writer would not produce, and to open a connection under another
node's identity (as a restarted node would)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from overlay.connection import _core as core_mod
from overlay.connection._core import ChannelParams, ConnectionCore, CoreConfig
from overlay.identity import NodeId, NodeKey
from overlay.node import Node
from overlay.testing import MemoryNetwork
from overlay.transport import Transport
from overlay.transport._hello import receive_hello, send_hello
from overlay.transport._secure import SecureIdentity, SecureStream
from overlay.transport._tcp import TcpTransport
from overlay.wire._nodeinfo import (
    PROTOCOL_VERSION,
    NodeInfo,
    decode_hello_reply,
    encode_node_info,
)
from tests.support import wait_until

__all__ = ["RawPeer", "raw_peer", "secure_dial"]


@dataclass(eq=False)
class RawPeer:
    """An authenticated peer that speaks frames by hand."""

    stream: SecureStream
    core: ConnectionCore
    remote: NodeInfo
    node_id: NodeId
    """Our own id (the one the node sees)."""
    events: list[core_mod.Event] = field(default_factory=list)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def flush(self) -> None:
        while data := self.core.data_to_send(anyio.current_time()):
            await self.stream.send(data)

    async def read_once(self) -> bool:
        """Read and parse one chunk; False at end of stream."""
        try:
            data = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        self.core.receive_data(data, anyio.current_time())
        self.events.extend(self.core.events())
        return True

    async def read_until_closed(self) -> list[core_mod.Event]:
        with anyio.fail_after(5):
            while await self.read_once():
                pass
        return self.events

    async def wait_event(self, match: Callable[[core_mod.Event], bool]) -> core_mod.Event:
        with anyio.fail_after(5):
            while True:
                for event in self.events:
                    if match(event):
                        self.events.remove(event)
                        return event
                if not await self.read_once():
                    raise AssertionError(f"stream closed; events: {self.events}")

    async def request(self, channel_id: int, payload: bytes) -> core_mod.Event:
        """Send a well-formed request; return the ResponseReceived/ErrorReceived event."""
        rid = self.core.send_request(channel_id, payload)
        await self.flush()

        def answer(event: core_mod.Event) -> bool:
            return (
                isinstance(event, core_mod.ResponseReceived | core_mod.ErrorReceived)
                and event.request_id == rid
            )

        return await self.wait_event(answer)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def secure_dial(
    node: Node, net: MemoryNetwork, identity: SecureIdentity | None = None
) -> SecureStream:
    """Dial ``node`` over the node's own transport kind (the Noise handshake, no hello)."""
    identity = identity or SecureIdentity(NodeKey.generate())
    dialer: Transport = (
        net.transport(identity) if node.address.protocol == "memory" else TcpTransport(identity)
    )
    return await dialer.dial(node.address, timeout=5)


async def raw_peer(
    node: Node,
    net: MemoryNetwork,
    *,
    channels: Sequence[ChannelParams],
    network: str = "overlay-local",
    announced: tuple[int, ...] | None = None,
    protocol_version: int = PROTOCOL_VERSION,
    identity: SecureIdentity | None = None,
) -> RawPeer:
    """Connect to ``node`` as ``identity`` (default: a new key) and run the hello exchange as
    the initiator (see ``ConnectionSetup``), announcing the channels ``announced`` (default:
    those of ``channels``, the channels our own core parses). Returns once the node
    registered the connection."""
    identity = identity or SecureIdentity(NodeKey.generate())
    previous = node.router.get_peer(identity.node_id)
    stream = await secure_dial(node, net, identity)
    assert stream.node_id == node.node_id
    if announced is None:
        announced = tuple(params.channel_id for params in channels)
    info = NodeInfo(network=network, channels=announced, protocol_version=protocol_version)
    buffer = bytearray()
    try:
        await send_hello(stream, encode_node_info(info))
        remote = decode_hello_reply(await receive_hello(stream, buffer))
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    core = ConnectionCore(CoreConfig(ping_interval=0, idle_timeout=0), list(channels),
                          now=anyio.current_time())
    peer = RawPeer(stream, core, remote, identity.node_id)
    if buffer:
        core.receive_data(bytes(buffer), anyio.current_time())
    await wait_until(lambda: node.router.get_peer(peer.node_id) not in (None, previous))
    return peer
