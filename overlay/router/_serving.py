"""Serving requests: a peer's inbound requests and LOCAL ones, on the channel's handler.

Theory of operation
-------------------
An inbound request is handed by the connection's reader to :meth:`Responder.on_request`, which
queues it on one of the connection's request workers (the reader never waits for a handler).
The worker skips it if the peer cancelled it meanwhile; otherwise it decodes the payload, runs
the handler inside a cancel scope registered with the connection (so the peer's CANCEL, or the
connection closing, cancels just that handler), encodes the answer and queues it (waiting for
queue space if need be). Every outcome is reported to the observer (``on_request_served``). A
handler's own error becomes an error response (``RequestError``: its code; anything else:
``INTERNAL``, logged); a handler bug never takes the connection down. LOCAL requests call the
handler directly with the very objects, under the channel's concurrency limit.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from overlay.connection._driver import PeerConnection
from overlay.connection._observer import Observer, TaskRoot
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import DecodeError, ErrorCode, LocalProtocolError, RequestError
from overlay.identity import NodeId
from overlay.router._channel import Envelope
from overlay.router._state import ChannelState

__all__ = ["Responder"]

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
            result = await handler(Envelope(self._local_id, message, state.spec.id))
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
        """A peer's request arrived (the connection's reader calls this, so it must not
        block): queue it for one of the connection's request workers."""
        state = self._channels.get(channel_id)
        if state is None:
            conn.submit(conn.respond_error, channel_id, request_id, ErrorCode.NO_HANDLER,
                        "unknown channel")
            return
        conn.submit(self._serve_remote, conn, state, request_id, payload)

    async def _serve_remote(
        self, conn: PeerConnection, state: ChannelState, request_id: int, payload: bytes
    ) -> None:
        spec = state.spec
        if not conn.is_inbound_active(spec.id, request_id):
            return  # the peer cancelled it while it waited for a worker: do not run it
        key = (spec.id, request_id)
        clock = conn.clock
        started = clock()
        outcome = AttemptOutcome.CANCELLED
        with anyio.CancelScope() as scope:
            conn.register_handler(key, scope)
            try:
                outcome = await self._serve_one(conn, state, request_id, payload)
            finally:
                conn.unregister_handler(key)
        self._observer.on_request_served(
            conn.node_id, spec.name, clock() - started, outcome
        )

    async def _serve_one(
        self, conn: PeerConnection, state: ChannelState, request_id: int, payload: bytes
    ) -> AttemptOutcome:
        spec = state.spec
        if state.handler is None:
            await conn.respond_error(spec.id, request_id, ErrorCode.NO_HANDLER,
                                     f"no handler on {spec.name!r}")
            return AttemptOutcome.ERROR
        try:
            message = spec.codec.decode(payload)
        except DecodeError as exc:
            self._observer.on_invalid_message(conn.node_id, spec.name, str(exc))
            await conn.respond_error(spec.id, request_id, ErrorCode.DECODE, str(exc)[:200])
            return AttemptOutcome.ERROR
        try:
            result = await state.handler(Envelope(conn.node_id, message, spec.id))
            data = spec.response_codec.encode(result)
        except RequestError as exc:
            state.failed += 1
            await conn.respond_error(spec.id, request_id, exc.code, exc.message)
            return AttemptOutcome.ERROR
        except LocalProtocolError as exc:
            state.failed += 1
            log.error("handler of %s returned an unencodable response: %s", spec.name, exc)
            await conn.respond_error(spec.id, request_id, ErrorCode.INTERNAL, "bad response")
            return AttemptOutcome.ERROR
        except Exception:  # task root: a handler bug must not take the connection down
            state.failed += 1
            log.exception("handler of %s failed on a request from %s", spec.name, conn.node_id)
            self._observer.on_task_failed(TaskRoot.REQUEST_HANDLER)
            await conn.respond_error(spec.id, request_id, ErrorCode.INTERNAL, "internal error")
            return AttemptOutcome.ERROR
        if len(data) > spec.max_message_size:
            state.failed += 1
            await conn.respond_error(spec.id, request_id, ErrorCode.TOO_LARGE,
                                     f"response of {len(data)} bytes exceeds the limit")
            return AttemptOutcome.ERROR
        await conn.respond(spec.id, request_id, data)
        state.served += 1
        return AttemptOutcome.OK
