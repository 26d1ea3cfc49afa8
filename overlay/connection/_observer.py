"""Hooks through which the router and connections report facts about peers.

The node implements :class:`Observer` to feed the peer manager's scores and the metrics; the
default :class:`NullObserver` ignores everything. Calls are synchronous and must not block.

:class:`TaskRoot` names the places where a bug (an unexpected exception) is caught so that one
peer, one handler or one timer cannot take the node down; each logs the traceback and reports
``on_task_failed`` (docs/errors.md, "Broad excepts").
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, cast

from overlay.connection._outcome import AttemptOutcome
from overlay.identity import NodeId
from overlay.transport._failures import Direction, HandshakeFailureReason
from overlay.wire._nodeinfo import NodeInfo

__all__ = ["MultiObserver", "NullObserver", "Observer", "TaskRoot"]


class TaskRoot(enum.Enum):
    """A task root that survived a bug (see :meth:`Observer.on_task_failed`)."""

    CONNECTION = "connection"
    """A registered connection's task (the connection is closed, the node goes on)."""
    TRANSIENT_CONNECTION = "transient_connection"
    """A transient (DHT-only) connection's task."""
    REQUEST_HANDLER = "request_handler"
    """A channel's request handler raised something other than ``RequestError`` (the peer
    gets an ``INTERNAL`` error response)."""
    PEER_INFO_LISTENER = "peer_info_listener"
    """A listener of peers' NodeInfo updates."""
    TIMER = "timer"
    """A timer callback of the node's timer heap (the other timers still fire)."""
    PEX_TASK = "pex_task"
    """One of the PEX driver's short tasks (a request, an answer, a dial)."""
    HTTP_REQUEST = "http_request"
    """An admin or metrics HTTP handler (the client gets ``500``)."""
    HTTP_CONNECTION = "http_connection"
    """An admin or metrics HTTP connection's task."""


class Observer:
    """Facts about peers, reported as they happen. Subclass and override what you need."""

    def on_slow_peer(self, peer: NodeId, channel: str) -> None:
        """A send to ``peer`` timed out waiting for queue space."""

    def on_invalid_message(self, peer: NodeId, channel: str, reason: str) -> None:
        """``peer`` sent a message that did not decode (it was dropped)."""

    def on_protocol_violation(self, peer: NodeId, reason: str) -> None:
        """``peer`` broke the wire protocol; its connection is being closed."""

    def on_rate_limited(self, peer: NodeId, channel_id: int) -> None:
        """``peer`` exceeded its concurrent-request limit on a channel."""

    def on_request_done(
        self, peer: NodeId, channel: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        """One attempt of an outbound request to ``peer`` ended, whatever the destination (a
        peer id, a custom :class:`~overlay.router._destination.Destination`, each attempt of a
        fail-over or hedge): ``OK``, ``TIMEOUT`` (its deadline passed), ``REFUSED``, ``ERROR``
        or ``CLOSED``. Attempts we cancelled early and peers that were not connected are not
        reported (no fault of the peer, no time spent on the wire)."""

    def on_request_served(
        self, peer: NodeId, channel: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        """An inbound request from ``peer`` was answered (``OK`` / ``ERROR``) or cancelled by the
        peer (``CANCELLED``)."""

    def on_latency(self, peer: NodeId, rtt: float) -> None:
        """A ping round trip to ``peer`` took ``rtt`` seconds."""


    def on_peer_connected(
        self, peer: NodeId, *, outbound: bool, remote_host: str, listen_addrs: tuple[str, ...]
    ) -> None:
        """A connection to ``peer`` passed the hello exchange and is now registered."""

    def on_peer_info_updated(self, peer: NodeId, info: NodeInfo) -> None:
        """A connected ``peer`` announced a new NodeInfo (a channel opened or closed, a new
        capability record, ...); ``info`` replaces the one from its hello or last update."""

    def on_peer_disconnected(self, peer: NodeId, reason: str) -> None:
        """The connection to ``peer`` ended (``reason`` is a short code)."""

    def on_handshake_failed(self, direction: Direction, reason: HandshakeFailureReason) -> None:
        """A connection failed before registration: in the Noise handshake (either direction,
        inbound ones reported by the transport) or in the hello exchange."""

    def on_task_failed(self, task: TaskRoot) -> None:
        """A bug was caught at ``task`` (its traceback is in the log): the task ended or
        answered with an error, the node goes on."""


_HOOKS: tuple[str, ...] = tuple(sorted(name for name in vars(Observer) if name.startswith("on_")))
"""Every hook of :class:`Observer`."""


class MultiObserver(Observer):
    """Forwards every fact to several observers, in order.

    The hot hooks (``on_request_done`` and ``on_request_served`` run once per request) cost one
    loop over the observers that actually override the hook: :meth:`set` binds, per hook, the
    methods of the observers whose class replaces :class:`Observer`'s no-op, so a node whose
    services ignore a fact pays nothing for them; when one observer overrides a hook, its bound
    method is installed as the hook itself (no loop at all)."""

    def __init__(self, *observers: Observer) -> None:
        self.set(*observers)

    def set(self, *observers: Observer) -> None:
        """Replace the observers (lets a node be built before the parts that observe it)."""
        self._observers = observers
        for name in _HOOKS:
            base = getattr(Observer, name)
            bound = tuple(_late(target, name) if isinstance(target, MultiObserver)
                          else getattr(target, name) for target in observers
                          if getattr(type(target), name, base) is not base
                          or name in vars(target))
            setattr(self, name, _dispatch(bound, base, self))


def _late(target: MultiObserver, name: str) -> Callable[..., None]:
    """``target.<name>`` looked up at each call: a nested multi-observer may be ``set`` again."""

    def call(*args: Any, **kwargs: Any) -> None:
        getattr(target, name)(*args, **kwargs)

    return call


def _dispatch(bound: tuple[Callable[..., None], ...], base: Callable[..., None],
              owner: Observer) -> Callable[..., None]:
    """One callable calling every method of ``bound`` in order (``base`` bound when none)."""
    if not bound:
        return cast("Callable[..., None]", base.__get__(owner))
    if len(bound) == 1:
        return bound[0]

    def fan_out(*args: Any, **kwargs: Any) -> None:
        for method in bound:
            method(*args, **kwargs)

    return fan_out


class NullObserver(Observer):
    """Ignores every fact."""
