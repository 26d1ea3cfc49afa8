"""Typed channels: the reactor-facing API.

``node.channel(spec)`` returns a :class:`Channel` typed by the spec's message and response
types, so mypy rejects sending the wrong message type::

    spec = ChannelSpec(id=0x20, name="kv", codec=ProtobufCodec(Get),
                       response_codec=ProtobufCodec(Value))
    kv = node.channel(spec)                      # Channel[Get, Value]
    await kv.send(peer_id, Get(key="a"))         # fire-and-forget
    value = await kv.request(peer_id, Get(key="a"), timeout=2)
    kv.handle_requests(serve_get)                # async def serve_get(env: Envelope[Get]) -> Value
    async for env in kv: ...                     # inbound fire-and-forget messages
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from overlay.connection._outcome import AttemptOutcome
from overlay.errors import ChannelClosed, ConfigError, NodeClosed
from overlay.identity import NodeId
from overlay.router._codec import Codec
from overlay.router._destination import To

__all__ = [
    "Channel",
    "ChannelSpec",
    "ChannelStatistics",
    "DeliveryReport",
    "Envelope",
    "RequestHandler",
]

M = TypeVar("M")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ChannelSpec(Generic[M, R]):
    """Declares a channel: its id, codecs and limits. Both peers must use the same id and codecs.

    ``M`` is the type of fire-and-forget messages and requests, ``R`` the type of responses.
    """

    id: int
    """Channel id on the wire, 1..65535 (0 is reserved for connection control)."""
    name: str
    """Name used in logs and metrics."""
    codec: Codec[M]
    """Encodes messages and requests (only for peers: LOCAL delivery never serialises)."""
    response_codec: Codec[R]
    """Encodes responses."""
    priority: int = 1
    """Higher priorities are sent first; a bulk message on a lower-priority channel delays a
    higher-priority one by at most one chunk."""
    send_queue_size: int = 16
    """Messages that may wait per peer before ``send()`` blocks (backpressure)."""
    recv_queue_size: int = 64
    """Inbound messages buffered for the reactor before peers' readers block."""
    max_message_size: int = 4 * 1024 * 1024
    """Largest encoded message or response, in bytes."""
    max_concurrent_requests: int = 32
    """Inbound requests served at once per peer (and for LOCAL); more get ``OVERLOADED``."""
    send_timeout: float = 10.0
    """Default seconds a ``send()`` waits for queue space (per peer) when the caller sets none."""
    request_timeout: float = 30.0
    """Default request deadline when neither the caller's cancel scope nor ``timeout`` sets one."""

    def __post_init__(self) -> None:
        if not 0 < self.id <= 0xFFFF:
            raise ConfigError("channel.id", f"must be in 1..65535, got {self.id}")
        if not self.name:
            raise ConfigError("channel.name", "must not be empty")
        for key in ("send_queue_size", "recv_queue_size", "max_message_size",
                    "max_concurrent_requests"):
            if getattr(self, key) < 1:
                raise ConfigError(f"channel.{key}", "must be at least 1")
        for key in ("send_timeout", "request_timeout"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"channel.{key}", "must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class Envelope(Generic[M]):
    """An inbound message with its sender (the local node id for LOCAL messages)."""

    sender: NodeId
    message: M
    channel_id: int


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What happened to one ``send()``: who got it queued, and who did not and why.

    A send that reaches nobody never returns a report: it raises
    :class:`~overlay.errors.NoRoute`. So ``delivered`` or ``failed`` is never empty for both.
    """

    delivered: tuple[NodeId, ...] = ()
    failed: Mapping[NodeId, AttemptOutcome] = field(default_factory=dict)
    """Why each of the others did not get it: ``TIMEOUT`` (a slow peer's queue stayed full),
    ``WOULD_BLOCK`` (``send_nowait`` found it full), ``NOT_CONNECTED``, ``CLOSED`` (the
    connection closed during the send)."""

    @property
    def ok(self) -> bool:
        """True when every target got the message queued."""
        return not self.failed


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of one channel (all peers together)."""

    name: str
    channel_id: int
    inbox_depth: int
    inbox_capacity: int
    messages_delivered: int
    messages_dropped: int
    requests_served: int
    requests_failed: int
    slow_peer_events: int


RequestHandler = Callable[[Envelope[M]], Awaitable[R] | R]
"""Serves one request; return the response, or raise ``RequestError(code, message)``.

An ``async`` function runs on one of the connection's request workers (it may wait; the peer's
CANCEL cancels it). A plain function runs on the connection's read path as the request is
decoded, with no task switch (the fast path: it must not block, and cannot be cancelled)."""


class _Backend(Protocol):
    """What a Channel needs from the router (implemented by ``overlay.router._router.Router``)."""

    async def send(
        self, spec: ChannelSpec[Any, Any], to: To, message: Any, timeout: float | None
    ) -> DeliveryReport: ...

    def send_nowait(self, spec: ChannelSpec[Any, Any], to: To, message: Any) -> DeliveryReport: ...

    async def request(
        self, spec: ChannelSpec[Any, Any], to: To, message: Any, timeout: float | None
    ) -> Any: ...

    def set_handler(
        self, spec: ChannelSpec[Any, Any], handler: RequestHandler[Any, Any] | None
    ) -> None: ...

    async def receive(self, spec: ChannelSpec[Any, Any]) -> Envelope[Any]: ...

    def receive_nowait(self, spec: ChannelSpec[Any, Any]) -> Envelope[Any]: ...

    def channel_statistics(self, spec: ChannelSpec[Any, Any]) -> ChannelStatistics: ...


class Channel(Generic[M, R]):
    """A typed handle on one channel of a node. Create it with ``node.channel(spec)``."""

    __slots__ = ("_backend", "spec")

    def __init__(self, spec: ChannelSpec[M, R], backend: _Backend) -> None:
        self.spec = spec
        self._backend = backend

    async def send(self, to: To, message: M, *, timeout: float | None = None) -> DeliveryReport:
        """Queue ``message`` for ``to`` (a peer id, ``LOCAL``, ``BROADCAST``, ...).

        Waits while the peer's queue is full, at most ``timeout`` (default: the spec's
        ``send_timeout``) per peer. A single peer that stays full raises
        :class:`~overlay.errors.SendTimeout`; for fan-out destinations slow peers are reported
        in the returned :class:`DeliveryReport` and never delay the others. A destination that
        selects nobody (``BROADCAST`` with no peer connected, say) raises
        :class:`~overlay.errors.NoRoute`.
        """
        return await self._backend.send(self.spec, to, message, timeout)

    def send_nowait(self, to: To, message: M) -> DeliveryReport:
        """Queue without waiting; a full single destination raises ``WouldBlock``."""
        return self._backend.send_nowait(self.spec, to, message)

    async def request(self, to: To, message: M, *, timeout: float | None = None) -> R:
        """Send a request and wait for its response.

        The deadline is ``timeout`` if given, else the caller's cancel scope, else the spec's
        ``request_timeout``. Cancelling the caller cancels the request on the wire. Raises
        :class:`~overlay.errors.RequestError` if the responder answered with an error, and
        :class:`~overlay.errors.NoRoute` if the destination selects nobody.
        """
        result: R = await self._backend.request(self.spec, to, message, timeout)
        return result

    def handle_requests(self, handler: RequestHandler[M, R] | None) -> None:
        """Install (or with ``None`` remove) the function that serves inbound requests."""
        self._backend.set_handler(self.spec, handler)

    async def receive(self) -> Envelope[M]:
        """Wait for the next inbound fire-and-forget message (``ChannelClosed`` if the channel is
        closed meanwhile; ``async for`` over the channel then simply ends)."""
        env: Envelope[M] = await self._backend.receive(self.spec)
        return env

    def receive_nowait(self) -> Envelope[M]:
        env: Envelope[M] = self._backend.receive_nowait(self.spec)
        return env

    def __aiter__(self) -> AsyncIterator[Envelope[M]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Envelope[M]]:
        while True:
            try:
                env = await self.receive()
            except (NodeClosed, ChannelClosed):
                return
            yield env

    def statistics(self) -> ChannelStatistics:
        return self._backend.channel_statistics(self.spec)

    def __repr__(self) -> str:
        return f"Channel(id={self.spec.id}, name={self.spec.name!r})"
