"""Running one ``Lookup`` over the network: the anyio half of a DHT lookup.

Theory of operation
-------------------
``walk`` owns a task group for one lookup. It feeds the pure :class:`Lookup` core in a single
task; each ``Query`` the core emits becomes a child task that calls the :class:`DhtRpc` under
``fail_after(query_timeout)`` and puts exactly one outcome (answer, failure or timeout) on a
memory stream. The loop takes outcomes one at a time, or wakes at the core's next deadline, and
hands answers to the ``WalkHooks`` (the service verifies every record before the core sees an
id). A timed-out query goes to ``on_timer`` (the core retries it per its policy); any other
failure to ``on_failure`` (final).

The walk ends when the core says ``LookupDone``, or when the message budget is spent and no
query it paid for is still out (then the core is cancelled). Leaving the walk for any reason
(the end, an error, cancellation from outside) cancels the task group: no query outlives it,
and ``on_done`` always gets the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from discovery._dht_lookup import Lookup
from discovery._dht_lookup_types import (
    LookupDone,
    LookupEvent,
    LookupResult,
    Misbehaved,
    ProviderFound,
    Query,
)
from discovery._keys import node_id_bytes
from discovery._record import SignedRecord
from discovery._service_types import DhtRpc
from discovery._wire import DhtRequest, DhtResponse
from overlay.errors import OverlayError

__all__ = ["WalkHooks", "WalkOutcome", "walk"]


class WalkHooks(Protocol):
    """What the service does with a walk's inputs and the core's verdicts."""

    def on_answer(
        self, lookup: Lookup[SignedRecord], peer: bytes, response: DhtResponse, now: float
    ) -> list[LookupEvent[SignedRecord]]:
        """Verify ``response`` and feed it to ``lookup``; return the core's events."""
        ...

    def on_query_failed(self, peer: bytes) -> None: ...

    def on_misbehaved(self, peer: bytes, event: Misbehaved) -> None: ...

    def on_provider(self, found: ProviderFound[SignedRecord]) -> None: ...


@dataclass(frozen=True, slots=True)
class WalkOutcome:
    result: LookupResult
    elapsed: float
    """Monotonic seconds from start to end."""
    first_provider_after: float | None
    budget_exhausted: bool
    sent: int
    """Queries actually sent (the core's ``messages`` also counts the ones the budget
    withheld)."""


@dataclass(frozen=True, slots=True)
class _Answered:
    peer: bytes
    response: DhtResponse


@dataclass(frozen=True, slots=True)
class _Failed:
    peer: bytes
    timed_out: bool


_Outcome = _Answered | _Failed


async def walk(
    lookup: Lookup[SignedRecord],
    request: DhtRequest,
    book: dict[bytes, SignedRecord],
    *,
    rpc: DhtRpc,
    hooks: WalkHooks,
    on_done: Callable[[WalkOutcome], None],
    max_messages: int | None = None,
) -> WalkOutcome:
    """Run ``lookup`` to its end (see the module docstring). ``book`` maps every id the core
    may query to its verified record (the hooks add the contacts they accept)."""
    timeout = lookup.config.query_timeout
    started = anyio.current_time()
    first: float | None = None
    sent = 0
    in_flight = 0  # query tasks started whose outcome has not been fed in yet
    exhausted = False
    result: LookupResult | None = None
    send, receive = anyio.create_memory_object_stream[_Outcome](math.inf)
    try:
        async with send, receive, anyio.create_task_group() as tg:
            events = lookup.start(started)
            while True:
                for event in events:
                    match event:
                        case Query(peer=peer):
                            if max_messages is not None and sent >= max_messages:
                                exhausted = True  # never sent: the core will time it out
                                continue
                            sent += 1
                            in_flight += 1
                            tg.start_soon(_query, rpc, book[peer], request, timeout, send.clone())
                        case ProviderFound():
                            if first is None:
                                first = anyio.current_time() - started
                            hooks.on_provider(event)
                        case Misbehaved(peer=peer):
                            hooks.on_misbehaved(peer, event)
                        case LookupDone(result=done):
                            result = done
                if result is not None:
                    tg.cancel_scope.cancel()  # queries to farther nodes the core abandoned
                    break
                if exhausted and not in_flight:
                    events = lookup.cancel()
                    continue
                events, fed = await _next_events(lookup, receive, hooks)
                in_flight -= fed
    finally:
        if result is None:  # cancelled from outside, or an error
            lookup.cancel()
            result = lookup.result
        assert result is not None
        outcome = WalkOutcome(result, anyio.current_time() - started, first, exhausted, sent)
        on_done(outcome)
    return outcome


async def _next_events(
    lookup: Lookup[SignedRecord],
    receive: MemoryObjectReceiveStream[_Outcome],
    hooks: WalkHooks,
) -> tuple[list[LookupEvent[SignedRecord]], int]:
    """Wait for one query outcome or the core's next deadline; the core's events and how many
    outcomes were consumed (0 or 1)."""
    deadline = lookup.next_deadline()
    outcome: _Outcome | None = None
    with anyio.move_on_at(math.inf if deadline is None else deadline):
        outcome = await receive.receive()
    now = anyio.current_time()
    match outcome:
        case None:
            return lookup.on_timer(now), 0
        case _Failed(peer=peer, timed_out=True):
            hooks.on_query_failed(peer)
            return lookup.on_timer(now), 1
        case _Failed(peer=peer):
            hooks.on_query_failed(peer)
            return lookup.on_failure(peer, now), 1
        case _Answered(peer=peer, response=response):
            return hooks.on_answer(lookup, peer, response, now), 1


async def _query(
    rpc: DhtRpc,
    signed: SignedRecord,
    request: DhtRequest,
    timeout: float,
    send: MemoryObjectSendStream[_Outcome],
) -> None:
    peer = node_id_bytes(signed.node_id)
    outcome: _Outcome
    with send:
        try:
            with anyio.fail_after(timeout):
                response = await rpc.request(
                    signed.node_id, signed.record.addresses, request, timeout=timeout
                )
        except TimeoutError:
            outcome = _Failed(peer, timed_out=True)
        except OverlayError:
            outcome = _Failed(peer, timed_out=False)
        else:
            outcome = _Answered(peer, response)
        send.send_nowait(outcome)
