"""Our requests on one connection: the callers' waiters and their deadlines.

Theory of operation
-------------------
:meth:`PeerConnection.request <overlay.connection._driver.PeerConnection.request>` queues a
request in the connection core, then registers its :class:`Waiter` here (:meth:`Requests.add`).
A deadline is an entry in the node's timer heap with the waiter as its owner (no cancel scope per
request). What ends a request:

* the read path: its response (:meth:`Requests.resolve`) or error (:meth:`Requests.fail`);
* its deadline (:meth:`Waiter.on_timer`): :class:`RequestExpired`;
* the caller giving up (cancelled while in :meth:`Requests.wait`);
* its channel removed, or the connection going down (:meth:`Requests.fail`,
  :meth:`Requests.fail_all`).

Whichever comes first wins: a waiter leaves the table exactly once, and only the path that
removed it sets its event. The deadline and the caller giving up also *withdraw* the request
from the wire (the connection's ``abandon`` callback: a CANCEL, or the unsent request dropped,
and its in-flight slot freed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from overlay.connection._timers import TimerService
from overlay.errors import OverlayError
from overlay.transport._asyncio import OneShotEvent

__all__ = ["RequestExpired", "Requests", "Waiter"]


class RequestExpired(OverlayError):
    """The deadline given to ``PeerConnection.request`` passed (internal: the router turns it
    into :class:`~overlay.errors.RequestTimeout` with the channel and peer in the message)."""


class Waiter:
    """One outbound request waiting for its answer (the timer owner of its deadline)."""

    __slots__ = ("_requests", "error", "event", "payload", "request_id", "timer_at")

    def __init__(self, requests: Requests, request_id: int, event: OneShotEvent) -> None:
        self._requests = requests
        self.request_id = request_id
        self.event = event
        self.payload: bytes = b""
        self.error: OverlayError | None = None
        self.timer_at = math.inf

    def on_timer(self, now: float) -> None:
        if self._requests.withdraw(self.request_id):
            self.error = RequestExpired("the request deadline passed")
            self.event.set()


class Requests:
    """The waiters of one connection's outbound requests, by request id."""

    __slots__ = ("_abandon", "_new_event", "_timers", "_waiters")

    def __init__(
        self,
        new_event: Callable[[], OneShotEvent],
        timers: TimerService,
        abandon: Callable[[int], None],
    ) -> None:
        """``abandon(request_id)``: withdraw a request from the wire (the caller stopped
        waiting for it)."""
        self._new_event = new_event
        self._timers = timers
        self._abandon = abandon
        self._waiters: dict[int, Waiter] = {}

    def __len__(self) -> int:
        """Requests whose caller still waits for the answer."""
        return len(self._waiters)

    def add(self, request_id: int, deadline: float | None) -> Waiter:
        waiter = Waiter(self, request_id, self._new_event())
        self._waiters[request_id] = waiter
        if deadline is not None:
            self._timers.schedule(waiter, deadline)
        return waiter

    async def wait(self, waiter: Waiter) -> bytes:
        """Wait for the answer: its payload, or raise its error. A cancelled caller
        withdraws the request."""
        finished = False
        try:
            await waiter.event.wait()
            finished = True
        finally:
            if waiter.timer_at != math.inf:
                self._timers.cancel(waiter)
            if not finished:
                self.withdraw(waiter.request_id)
        if waiter.error is not None:
            raise waiter.error
        return waiter.payload

    def withdraw(self, request_id: int) -> bool:
        """Stop waiting for ``request_id`` and take it back from the wire; False when it was
        no longer pending."""
        if self._waiters.pop(request_id, None) is None:
            return False
        self._abandon(request_id)
        return True

    def resolve(self, request_id: int, payload: bytes) -> None:
        """The response arrived (nothing if its caller left)."""
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            waiter.payload = payload
            waiter.event.set()

    def fail(self, request_id: int, error: OverlayError) -> None:
        """The request failed with ``error`` (nothing if its caller left)."""
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            waiter.error = error
            waiter.event.set()

    def fail_all(self, error: Callable[[], OverlayError]) -> None:
        """The connection went down: every waiting caller fails with a fresh ``error()``."""
        waiters = self._waiters
        self._waiters = {}
        for waiter in waiters.values():
            waiter.error = error()
            waiter.event.set()
