"""Serving requests: a peer's inbound requests and LOCAL ones, on the channel's handler.

Theory of operation
-------------------
An inbound request is handed by the connection's read path to :meth:`Responder.on_request`,
which decodes it and calls the handler (the reader never waits for a handler). A plain
function's result is the answer: encoded and queued at once (the fast path; on a full queue the
answer waits on a request worker). An ``async`` handler's call only made its coroutine, which
goes to one of the connection's request workers: the worker drops it if the peer cancelled the
request meanwhile, otherwise awaits it inside a cancel scope registered with the connection (so
the peer's CANCEL, or the connection closing, cancels just that handler), then encodes and
queues the answer. Every outcome is reported to the observer (``on_request_served``). A
handler's own error becomes an error response (``RequestError``: its code; anything else:
``INTERNAL``, logged); a handler bug never takes the connection down. LOCAL requests call the
handler directly with the very objects, under the channel's concurrency limit.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from types import CoroutineType
from typing import Any

import anyio

from overlay.connection._driver import PeerConnection
from overlay.connection._observer import Observer, TaskRoot
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import DecodeError, ErrorCode, LocalProtocolError, RequestError, WouldBlock
from overlay.identity import NodeId
from overlay.router._channel import Envelope, RequestHandler
from overlay.router._state import ChannelState

__all__ = ["Responder", "plain_handler"]

log = logging.getLogger("overlay.router")


class Responder:
    """Runs the channels' request handlers for peers and for LOCAL callers."""

    def __init__(
        self, local_id: NodeId, channels: dict[int, ChannelState], observer: Observer
    ) -> None:
        self._local_id = local_id
        self._channels = channels  # the router's, shared (channels come and go)
        self._observer = observer

    async def serve_local(self, state: ChannelState, message: Any) -> Any:
        """Run the handler for a LOCAL request, with the very objects."""
        handler = state.handler
        if handler is None:
            raise RequestError(ErrorCode.NO_HANDLER, f"no handler on {state.spec.name!r}")
        if state.local_inflight >= state.spec.max_concurrent_requests:
            raise RequestError(ErrorCode.OVERLOADED, "too many concurrent LOCAL requests")
        state.local_inflight += 1
        try:
            result = handler(Envelope(self._local_id, message, state.spec.id))
            if _awaitable(result):
                result = await result
        except RequestError:
            state.failed += 1
            raise
        except Exception as exc:  # the handler boundary: map user errors to INTERNAL
            state.failed += 1
            log.exception("handler of %s failed on a LOCAL request", state.spec.name)
            self._observer.on_task_failed(TaskRoot.REQUEST_HANDLER)
            raise RequestError(ErrorCode.INTERNAL, f"handler raised {exc!r}") from exc
        finally:
            state.local_inflight -= 1
        state.served += 1
        return result

    def on_request(
        self, conn: PeerConnection, channel_id: int, request_id: int, payload: bytes
    ) -> None:
        """A peer's request arrived (the connection's read path calls this, so it must not
        block). A plain-function handler runs here and now, and its answer is queued at once
        (written with the other answers of the read batch); an ``async`` handler runs on one
        of the connection's request workers."""
        state = self._channels.get(channel_id)
        if state is None:
            self._reply_error(conn, channel_id, request_id, ErrorCode.NO_HANDLER,
                              "unknown channel")
            return
        spec = state.spec
        handler = state.handler
        if handler is None:
            self._reply_error(conn, channel_id, request_id, ErrorCode.NO_HANDLER,
                              f"no handler on {spec.name!r}")
            self._served(conn, spec.name, 0.0, AttemptOutcome.ERROR)
            return
        if not state.inline:
            conn.submit(self._serve_async, conn, state, request_id, payload)
            return
        decoded, message = self._decode(conn, state, request_id, payload)
        if not decoded:
            return
        clock = conn.clock
        started = clock()
        try:
            result = handler(Envelope(conn.node_id, message, channel_id))
        except Exception as exc:  # task root: a handler bug must not take the connection down
            outcome = self._failed(conn, state, request_id, exc)
        else:
            if _awaitable(result):  # a plain function returning an awaitable: a worker waits
                if not conn.submit(self._await_answer, conn, state, request_id, result,
                                   started):
                    _discard(result)
                return
            outcome = self._answer(conn, state, request_id, result)
        self._served(conn, spec.name, clock() - started, outcome)

    def _decode(
        self, conn: PeerConnection, state: ChannelState, request_id: int, payload: bytes
    ) -> tuple[bool, Any]:
        """(True, the request's message), or (False, None) once a payload that does not
        decode was answered ``DECODE`` and reported."""
        spec = state.spec
        try:
            return True, spec.codec.decode(payload)
        except DecodeError as exc:
            self._observer.on_invalid_message(conn.node_id, spec.name, str(exc))
            self._reply_error(conn, spec.id, request_id, ErrorCode.DECODE, str(exc)[:200])
            self._served(conn, spec.name, 0.0, AttemptOutcome.ERROR)
            return False, None

    def _served(
        self, conn: PeerConnection, name: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        self._observer.on_request_served(conn.node_id, name, seconds, outcome)

    def _reply_error(
        self, conn: PeerConnection, channel_id: int, request_id: int, code: ErrorCode,
        message: str,
    ) -> None:
        """Queue an error answer now, or on a request worker when the queue is full."""
        try:
            conn.respond_error_nowait(channel_id, request_id, code, message)
        except WouldBlock:
            conn.submit(conn.respond_error, channel_id, request_id, code, message)

    def _answer(
        self, conn: PeerConnection, state: ChannelState, request_id: int, result: Any
    ) -> AttemptOutcome:
        """Encode the handler's result and queue it (now, or on a worker when the queue is
        full); an unencodable or oversized result is answered with an error."""
        spec = state.spec
        try:
            data = spec.response_codec.encode(result)
        except LocalProtocolError as exc:
            state.failed += 1
            log.error("handler of %s returned an unencodable response: %s", spec.name, exc)
            self._reply_error(conn, spec.id, request_id, ErrorCode.INTERNAL, "bad response")
            return AttemptOutcome.ERROR
        except Exception as exc:  # a codec bug: as a handler bug
            return self._failed(conn, state, request_id, exc)
        if len(data) > spec.max_message_size:
            state.failed += 1
            self._reply_error(conn, spec.id, request_id, ErrorCode.TOO_LARGE,
                              f"response of {len(data)} bytes exceeds the limit")
            return AttemptOutcome.ERROR
        try:
            conn.respond_nowait(spec.id, request_id, data)
        except WouldBlock:
            conn.submit(conn.respond, spec.id, request_id, data)
        state.served += 1
        return AttemptOutcome.OK

    def _failed(
        self, conn: PeerConnection, state: ChannelState, request_id: int, exc: Exception
    ) -> AttemptOutcome:
        """The handler raised: its ``RequestError`` is the answer, anything else is a bug
        (logged, counted, answered ``INTERNAL``)."""
        spec = state.spec
        state.failed += 1
        if isinstance(exc, RequestError):
            self._reply_error(conn, spec.id, request_id, exc.code, exc.message)
            return AttemptOutcome.ERROR
        log.error("handler of %s failed on a request from %s", spec.name, conn.node_id,
                  exc_info=exc)
        self._observer.on_task_failed(TaskRoot.REQUEST_HANDLER)
        self._reply_error(conn, spec.id, request_id, ErrorCode.INTERNAL, "internal error")
        return AttemptOutcome.ERROR

    async def _serve_async(
        self, conn: PeerConnection, state: ChannelState, request_id: int, payload: bytes
    ) -> None:
        """On a request worker: serve a request with the channel's ``async`` handler (skipped
        if the peer cancelled it while it waited for the worker)."""
        spec = state.spec
        handler = state.handler
        if not conn.is_inbound_active(spec.id, request_id):
            return
        if handler is None:  # removed while the request waited for a worker
            self._reply_error(conn, spec.id, request_id, ErrorCode.NO_HANDLER,
                              f"no handler on {spec.name!r}")
            return
        started = conn.clock()
        decoded, message = self._decode(conn, state, request_id, payload)
        if decoded:
            await self._await_answer(
                conn, state, request_id, handler(Envelope(conn.node_id, message, spec.id)),
                started)

    async def _await_answer(
        self, conn: PeerConnection, state: ChannelState, request_id: int,
        pending: Awaitable[Any], started: float,
    ) -> None:
        """Await a handler's result inside a cancel scope registered with the connection (the
        peer's CANCEL, or the connection closing, cancels just this handler), then answer."""
        spec = state.spec
        if not conn.is_inbound_active(spec.id, request_id):
            _discard(pending)  # the peer cancelled it while it waited for a worker
            return
        key = (spec.id, request_id)
        outcome = AttemptOutcome.CANCELLED
        with anyio.CancelScope() as scope:
            conn.register_handler(key, scope)
            try:
                try:
                    result = await pending
                except Exception as exc:  # task root: a handler bug must not take it down
                    outcome = self._failed(conn, state, request_id, exc)
                else:
                    outcome = self._answer(conn, state, request_id, result)
            finally:
                conn.unregister_handler(key)
        self._served(conn, spec.name, conn.clock() - started, outcome)


def plain_handler(handler: RequestHandler[Any, Any]) -> bool:
    """Whether ``handler`` is a plain function (served on the read path), not an ``async``
    one (a function, method, partial or callable object defined with ``async def``)."""
    call = type(handler).__call__
    return not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call))


def _awaitable(result: object) -> bool:
    """Whether a handler returned something to await (it is an ``async`` function) rather than
    its answer."""
    return type(result) is CoroutineType or hasattr(type(result), "__await__")


def _discard(pending: Awaitable[Any]) -> None:
    """Drop a handler's coroutine that will never run (no "never awaited" warning)."""
    if isinstance(pending, CoroutineType):
        pending.close()
