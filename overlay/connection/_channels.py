"""The channels one connection carries, and the send-priority rings they queue in.

Theory of operation
-------------------
A :class:`ChannelTable` is owned by a :class:`~overlay.connection._core.ConnectionCore`. It maps
channel ids to their :class:`~overlay.connection._types._Channel` records (``by_id``, the same
dict the :class:`~overlay.connection._receive.Receiver` reads) and keeps one round-robin ring per
priority (``levels``, highest priority first; a channel is in its ring while it is ``active``,
that is while it has queued data). Both containers are created once and mutated in place, so the
core and the receiver may keep references to them.

Channels come and go while the connection is up (the node opens or closes one; see
docs/protocol.md §9.1):

* :meth:`ChannelTable.add` registers a channel; a new priority gets a new ring, inserted in order.
* :meth:`ChannelTable.remove` unregisters one and empties its queue, except for a message of
  which some frames already went out: frames of one channel never interleave, so that message
  stays at the head of the queue, in its ring, until ``data_to_send`` finishes it (the channel is
  *draining*). Adding the channel again while it drains reuses the record (with the new
  parameters), so its next messages queue behind the unfinished one.

The table only keeps this bookkeeping; the core decides what removing a channel means for the
requests on it. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from overlay.connection._types import ChannelParams, _Channel, _OutMsg
from overlay.errors import ChannelError

__all__ = ["ChannelTable"]


class ChannelTable:
    """The channels of one connection (see the module docstring)."""

    __slots__ = ("_by_priority", "_draining", "by_id", "levels")

    def __init__(self, channels: Sequence[ChannelParams]) -> None:
        self.by_id: dict[int, _Channel] = {}
        """Channel id → channel, for the channels carried now."""
        self.levels: list[list[_Channel]] = []
        """The round-robin rings of active channels, highest priority first."""
        self._by_priority: dict[int, list[_Channel]] = {}
        self._draining: dict[int, _Channel] = {}  # removed, still finishing a started message
        for params in channels:
            self.add(params)

    def _level_for(self, priority: int) -> list[_Channel]:
        level = self._by_priority.get(priority)
        if level is None:
            level = self._by_priority[priority] = []
            self.levels[:] = [self._by_priority[p] for p in sorted(self._by_priority, reverse=True)]
        return level

    def add(self, params: ChannelParams) -> _Channel:
        """Carry a channel; ChannelError if it is carried already."""
        cid = params.channel_id
        if cid in self.by_id:
            raise ChannelError(f"duplicate channel id {cid}")
        level = self._level_for(params.priority)
        ch = self._draining.pop(cid, None)
        if ch is not None and ch.queue:
            ch.params = params
            ch.queue_size = params.send_queue_size
            ch.max_size = params.max_message_size
            ch.max_inbound = params.max_concurrent_inbound
            if ch.level is not level:
                if ch.active:
                    ch.level.remove(ch)
                    level.append(ch)
                ch.level = level
        else:
            ch = _Channel(params, level)
        self.by_id[cid] = ch
        return ch

    def remove(self, channel_id: int) -> tuple[_Channel, list[_OutMsg]]:
        """Stop carrying a channel: returns it and the queued messages dropped from it (all but
        a partly sent head, which is finished first). ChannelError if it is not carried."""
        ch = self.by_id.pop(channel_id, None)
        if ch is None:
            raise ChannelError(f"channel {channel_id} is not part of this connection")
        queue = ch.queue
        head = queue[0] if queue and queue[0].offset else None
        dropped = [msg for msg in queue if msg is not head]
        for msg in dropped:
            msg.queued = False
        queue.clear()
        if head is not None:
            queue.append(head)  # still active, in its ring: data_to_send finishes it
            self._draining[channel_id] = ch
        elif ch.active:
            ch.active = False
            ch.level.remove(ch)
        return ch, dropped

    def clear_queues(self) -> None:
        """Drop every queued message of every channel (the connection is closing)."""
        for level in self.levels:
            for ch in level:
                ch.active = False
            level.clear()
        for ch in (*self.by_id.values(), *self._draining.values()):
            for msg in ch.queue:
                msg.queued = False
            ch.queue.clear()
        self._draining.clear()
