"""Request workers of a connection: a few long-lived tasks instead of a task per request.

A :class:`~overlay.connection._driver.PeerConnection` hands every inbound request (and every
answer that may have to wait for queue space) to its :class:`Workers`, which run in the
connection's task group and are cancelled with it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from overlay.errors import OverlayError
from overlay.transport._asyncio import OneShotEvent

__all__ = ["KEEP_IDLE_WORKERS", "Workers"]

log = logging.getLogger("overlay.peer")

KEEP_IDLE_WORKERS = 1
"""Request workers a connection keeps parked when it has no work (the rest exit)."""


class Workers:
    """Runs submitted coroutine functions on a few long-lived tasks, not a task per job.

    Invariant: while jobs are queued, exactly one worker is *waking* (started or woken, not yet
    running) or every worker is busy. A running worker takes jobs one by one and, before
    starting one with more still queued, wakes a colleague — so a job that blocks never holds
    up the ones behind it, while a burst of quick jobs (256 pipelined echo requests) is served
    by one task in one scheduling step instead of 256 task spawns. The caller bounds how many
    jobs can exist (the connection core caps concurrent inbound requests per channel), which
    bounds the workers too.
    """

    __slots__ = ("_idle", "_new_event", "_queue", "_tg", "_waking", "workers")

    def __init__(
        self, tg: anyio.abc.TaskGroup, new_event: Callable[[], OneShotEvent] = anyio.Event
    ) -> None:
        """``new_event``: makes the event a parked worker waits on (default ``anyio.Event``;
        the connection passes its loop's cheaper one-shot events)."""
        self._tg = tg
        self._new_event = new_event
        self._queue: deque[tuple[Callable[..., Coroutine[Any, Any, Any]], tuple[Any, ...]]] = (
            deque()
        )
        self._idle: list[OneShotEvent] = []
        self._waking = False
        self.workers = 0

    def submit(self, func: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]) -> None:
        self._queue.append((func, args))
        self._wake_one()

    def _wake_one(self) -> None:
        if self._waking or not self._queue:
            return
        self._waking = True
        if self._idle:
            self._idle.pop().set()
        else:
            self.workers += 1
            self._tg.start_soon(self._run)

    async def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                self._waking = False
                while queue:
                    func, args = queue.popleft()
                    if queue:
                        self._wake_one()
                    try:
                        await func(*args)
                    except OverlayError as exc:  # the connection went away under the job
                        log.debug("request job ended: %s", exc)
                if len(self._idle) >= KEEP_IDLE_WORKERS:
                    return
                event = self._new_event()
                self._idle.append(event)
                await event.wait()
        finally:
            self.workers -= 1
