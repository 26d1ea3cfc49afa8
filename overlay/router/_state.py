"""A channel's state in the router, and the small helpers both the sending and the serving side
use (split from ``_router.py``; see its docstring for the theory of operation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from overlay.connection._core import ChannelParams
from overlay.errors import ChannelClosed, LocalProtocolError, NodeClosed
from overlay.router._channel import ChannelSpec, Envelope, RequestHandler

__all__ = ["ChannelState", "channel_params", "check_timeout", "closed_error", "put_nowait"]


@dataclass(slots=True, eq=False)
class ChannelState:
    """A channel open on this node: its inbox, its handler, its counters."""

    spec: ChannelSpec[Any, Any]
    inbox_send: MemoryObjectSendStream[Envelope[Any]]
    inbox_recv: MemoryObjectReceiveStream[Envelope[Any]]
    handler: RequestHandler[Any, Any] | None = None
    inline: bool = False
    """The handler is a plain function: served on the connection's read path."""
    local_inflight: int = 0
    delivered: int = 0
    dropped: int = 0
    served: int = 0
    failed: int = 0
    slow: int = 0
    closed: bool = False


def channel_params(spec: ChannelSpec[Any, Any]) -> ChannelParams:
    """What a connection needs to know about a channel."""
    return ChannelParams(
        channel_id=spec.id,
        priority=spec.priority,
        send_queue_size=spec.send_queue_size,
        max_message_size=spec.max_message_size,
        max_concurrent_inbound=spec.max_concurrent_requests,
    )


def closed_error(spec: ChannelSpec[Any, Any]) -> Callable[[], ChannelClosed]:
    return lambda: ChannelClosed(f"channel {spec.name!r} ({spec.id}) was closed on this node")


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout >= 0:  # also refuses NaN
        raise LocalProtocolError(f"timeout must be a number of seconds >= 0, not {timeout!r}")


def put_nowait(state: ChannelState, env: Envelope[Any]) -> bool:
    """Put ``env`` into the channel's inbox if there is room; False when it is full."""
    try:
        state.inbox_send.send_nowait(env)
    except anyio.WouldBlock:
        return False
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        raise NodeClosed("the node is closed") from None
    return True
