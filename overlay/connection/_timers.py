"""One timer task for a whole node, instead of one sleeping task per connection.

Theory of operation
-------------------
Every connection has at most one pending deadline (its core's next ping, idle timeout or
rate-limit refill). A :class:`TimerService` keeps them in a binary heap of
``(deadline, seq, owner)`` and one task sleeps until the earliest. Rescheduling never searches
the heap: the owner's ``timer_at`` attribute holds its *current* deadline, and an entry whose
deadline differs from it is stale and skipped when it surfaces. Stale entries are bounded by
compacting the heap when it grows past twice its live size.

``on_timer`` runs inside the timer task, so it must be synchronous and quick (the connection
only feeds the core, closes, or wakes its own writer); a slow owner can never delay the others'
timers by more than that.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from overlay.connection._observer import NullObserver, Observer, TaskRoot

__all__ = ["TimerOwner", "TimerService"]

log = logging.getLogger("overlay.timers")

_MIN_COMPACT = 256


class TimerOwner(Protocol):
    timer_at: float
    """The owner's current deadline (``math.inf``: none). Written by :class:`TimerService`."""

    def on_timer(self, now: float) -> None:
        """The deadline passed. Synchronous; may call ``schedule`` again."""


class TimerService:
    """Deadlines of many owners, served by one task (run :meth:`run` in a task group)."""

    def __init__(self, observer: Observer | None = None) -> None:
        self._observer = observer if observer is not None else NullObserver()
        """Told of an owner whose ``on_timer`` raised (``TaskRoot.TIMER``)."""
        self._heap: list[tuple[float, int, TimerOwner]] = []
        self._seq = itertools.count()
        self._changed = anyio.Event()
        self._sleeping_until = math.inf
        self._compact_at = _MIN_COMPACT

    def __len__(self) -> int:
        """Heap entries, stale ones included (for tests and statistics)."""
        return len(self._heap)

    def schedule(self, owner: TimerOwner, deadline: float | None) -> None:
        """Make ``deadline`` the owner's only pending deadline (None or ``inf`` cancels)."""
        if deadline is None or deadline == math.inf:
            owner.timer_at = math.inf
            return
        if deadline != deadline:  # NaN would break the heap order for every owner
            raise ValueError("a timer deadline must not be NaN")
        if owner.timer_at == deadline:
            return
        owner.timer_at = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), owner))
        if deadline < self._sleeping_until:
            self._changed.set()
        if len(self._heap) > self._compact_at:
            self._compact()

    def cancel(self, owner: TimerOwner) -> None:
        owner.timer_at = math.inf

    def _compact(self) -> None:
        heap = self._heap  # in place: ``run`` holds a reference
        heap[:] = [entry for entry in heap if entry[2].timer_at == entry[0]]
        heapq.heapify(heap)
        self._compact_at = max(_MIN_COMPACT, 2 * len(heap))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Serve deadlines until cancelled."""
        heap = self._heap
        task_status.started()
        while True:
            while heap and heap[0][2].timer_at != heap[0][0]:
                heapq.heappop(heap)  # stale
            self._changed = anyio.Event()
            if not heap:
                self._sleeping_until = math.inf
                await self._changed.wait()
                continue
            deadline = heap[0][0]
            self._sleeping_until = deadline
            delay = deadline - anyio.current_time()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._changed.wait()
                    continue  # an earlier deadline arrived
            now = anyio.current_time()
            due: list[tuple[float, TimerOwner]] = []
            while heap and heap[0][0] <= now:
                when, _seq, owner = heapq.heappop(heap)
                if owner.timer_at == when:
                    due.append((when, owner))
            # Fire the batch collected above only: an owner that reschedules itself at or
            # before ``now`` waits for the next pass, after a checkpoint, so no owner can keep
            # this task (and the event loop) busy.
            for when, owner in due:
                if owner.timer_at != when:
                    continue  # rescheduled or cancelled by an earlier callback of this batch
                owner.timer_at = math.inf
                try:
                    owner.on_timer(now)
                except Exception:  # task root: one owner's bug must not stop the others
                    log.exception("timer callback of %r failed", owner)
                    self._observer.on_task_failed(TaskRoot.TIMER)
            await anyio.lowlevel.checkpoint()
