"""Delivering peers' messages into the channels' inboxes.

A message a connection's reader hands over is decoded with the channel's codec (undecodable:
dropped, counted, reported as an invalid message) and put into the channel's bounded inbox as
an :class:`~overlay.router._channel.Envelope`. :meth:`Inboxes.deliver_nowait` is the reader's
synchronous path; when the inbox is full it does nothing and the reader calls
:meth:`Inboxes.deliver`, which waits for room: backpressure reaches the peer.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from overlay.connection._driver import PeerConnection
from overlay.connection._observer import Observer
from overlay.errors import DecodeError
from overlay.router._channel import Envelope
from overlay.router._state import ChannelState

__all__ = ["Inboxes"]

log = logging.getLogger("overlay.router")


class Inboxes:
    """The router's delivery of peers' messages (its ``channels`` table is the router's)."""

    def __init__(self, channels: dict[int, ChannelState], observer: Observer) -> None:
        self._channels = channels
        self._observer = observer

    def deliver_nowait(self, conn: PeerConnection, channel_id: int, payload: bytes) -> bool:
        """Decode and deliver a peer's message to the channel's inbox without waiting; False
        (nothing done) when the inbox is full: the reader then waits in :meth:`deliver`."""
        state = self._channels.get(channel_id)
        if state is None:
            return True
        env = self._envelope(conn, state, payload)
        if env is None:
            return True
        try:
            state.inbox_send.send_nowait(env)
        except anyio.WouldBlock:  # deliver decodes it again: rare (the inbox is full)
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return True
        state.delivered += 1
        return True

    async def deliver(self, conn: PeerConnection, channel_id: int, payload: bytes) -> None:
        state = self._channels.get(channel_id)
        if state is None:
            return
        env = self._envelope(conn, state, payload)
        if env is None:
            return
        try:
            state.inbox_send.send_nowait(env)
        except anyio.WouldBlock:
            await state.inbox_send.send(env)  # backpressure: this peer's reader waits
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        state.delivered += 1

    def _envelope(
        self, conn: PeerConnection, state: ChannelState, payload: bytes
    ) -> Envelope[Any] | None:
        """The decoded message in its envelope; None (counted, reported) when it does not
        decode."""
        try:
            message = state.spec.codec.decode(payload)
        except DecodeError as exc:
            state.dropped += 1
            log.info("dropped undecodable message from %s on %s: %s",
                     conn.node_id, state.spec.name, exc)
            self._observer.on_invalid_message(conn.node_id, state.spec.name, str(exc))
            return None
        return Envelope(conn.node_id, message, state.spec.id)
