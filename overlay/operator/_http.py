"""A tiny HTTP/1.1 server (h11 on anyio) for the admin API and the Prometheus endpoint.

Theory of operation
-------------------
:func:`serve_http` accepts connections on an anyio listener and runs one task per connection.
Each task drives an ``h11.Connection``: it reads one complete request (headers plus a body of at
most ``max_body`` bytes) under ``read_timeout``, hands it to the application ``handler`` (an async
callable ``Request -> Response``), writes the response under ``write_timeout`` and, when both
sides allow it, starts the next keep-alive cycle.

Invariants:

* Nothing a client sends can crash the server or another connection. Malformed HTTP is answered
  ``400`` (or h11's more precise hint: ``414``, ``431``...), an oversized body ``413``, a stalled
  request ``408``; then the connection is closed. A handler that raises is answered ``500`` and
  logged; the server keeps serving.
* Memory per connection is bounded: headers by ``max_header_bytes`` (h11 enforces it), bodies by
  ``max_body`` (checked against ``Content-Length`` before reading, and while reading chunks).
* At most ``max_connections`` connections are served at once; a connection beyond that gets
  ``503`` at once and is closed, so a flood of idle clients cannot starve the rest for longer
  than ``read_timeout``.
* Before closing after an error response, the server shuts its write side and drains (briefly,
  boundedly) what the client is still sending, so that the client reads the response instead of a
  TCP reset.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute

from overlay.connection._observer import NullObserver, Observer, TaskRoot
from overlay.errors import ConfigError
from overlay.transport import half_close

__all__ = [
    "Handler",
    "HttpServerConfig",
    "Request",
    "Response",
    "format_url",
    "open_http_listener",
    "serve_http",
]

log = logging.getLogger("overlay.http")

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
_DRAIN_LIMIT = 1 << 20
"""Bytes read (and discarded) at most while lingering before a close."""
_DRAIN_SECONDS = 1.0
"""Seconds spent at most lingering before a close."""


@dataclass(frozen=True, slots=True)
class HttpServerConfig:
    """Limits of :func:`serve_http`."""

    max_body: int = 64 * 1024
    """Largest request body accepted, in bytes; larger ones are answered 413."""
    max_header_bytes: int = 16 * 1024
    """Largest request line plus headers, in bytes; larger ones are answered 431."""
    read_timeout: float = 10.0
    """Seconds allowed to receive one whole request (also the keep-alive idle timeout)."""
    write_timeout: float = 10.0
    """Seconds allowed to send one whole response."""
    max_connections: int = 32
    """Connections served at once; further ones are answered 503 and closed."""

    def __post_init__(self) -> None:
        for key in ("max_body", "max_header_bytes", "max_connections"):
            if getattr(self, key) < 1:
                raise ConfigError(key, "must be at least 1")
        for key in ("read_timeout", "write_timeout"):
            value = getattr(self, key)
            if not value > 0:
                raise ConfigError(key, f"must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Request:
    """One complete HTTP request."""

    method: str
    """Upper-case method, e.g. ``GET``."""
    path: str
    """The target without its query string, e.g. ``/status``."""
    query: str
    """The query string (after ``?``), possibly empty."""
    headers: Mapping[str, str]
    """Header values by lower-case name (repeated headers joined with ``, ``)."""
    body: bytes
    """The request body (at most ``max_body`` bytes)."""


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler answers."""

    status: int
    """HTTP status code."""
    body: bytes = b""
    """The response body."""
    content_type: str = "application/json"
    """Value of the ``Content-Type`` header."""
    headers: tuple[tuple[str, str], ...] = field(default=())
    """Extra headers."""


Handler = Callable[[Request], Awaitable[Response]]


def _text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8")


class _Reject(Exception):
    """Internal: answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection:
    """One HTTP connection: a loop of read request → handle → write response."""

    def __init__(
        self, stream: anyio.abc.ByteStream, handler: Handler, config: HttpServerConfig,
        observer: Observer | None = None,
    ) -> None:
        self._stream = stream
        self._handler = handler
        self._config = config
        self._observer = observer if observer is not None else NullObserver()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self._got_bytes = False

    async def run(self) -> None:
        try:
            while await self._cycle():
                self._h11.start_next_cycle()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        except TimeoutError:
            log.debug("http: timed out writing a response")

    async def _cycle(self) -> bool:
        """Serve one request; True when the connection may carry another one."""
        self._got_bytes = False
        try:
            with anyio.fail_after(self._config.read_timeout):
                request = await self._read_request()
        except TimeoutError:
            if self._got_bytes and self._can_respond():
                await self.reject(_text(408, "request timed out"))
            return False
        except _Reject as exc:
            if self._can_respond():
                await self.reject(_text(exc.status, str(exc)))
            return False
        except h11.RemoteProtocolError as exc:
            if self._can_respond():
                status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
                await self.reject(_text(status, f"bad request: {exc}"))
            return False
        if request is None:
            return False
        try:
            response = await self._handler(request)
        except Exception:  # root of the request: answer 500, keep serving
            log.exception("http: handler failed for %s %s", request.method, request.path)
            self._observer.on_task_failed(TaskRoot.HTTP_REQUEST)
            response = _text(500, "internal error")
        await self._send_response(response, head=request.method == "HEAD")
        return (
            self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE
        )

    def _can_respond(self) -> bool:
        return self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def _receive(self) -> None:
        try:
            data = await self._stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            data = b""
        if data:
            self._got_bytes = True
        self._h11.receive_data(data)

    async def _read_request(self) -> Request | None:
        start: h11.Request | None = None
        body = bytearray()
        max_body = self._config.max_body
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Request):
                start = event
                if event.http_version not in (b"1.0", b"1.1"):
                    raise _Reject(505, "only HTTP/1.0 and HTTP/1.1 are supported")
                length = _content_length(event)
                if length is not None and length > max_body:
                    raise _Reject(413, f"request body larger than {max_body} bytes")
                if self._h11.they_are_waiting_for_100_continue:
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise _Reject(413, f"request body larger than {max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert start is not None
                return _make_request(start, bytes(body))
            else:  # ConnectionClosed or PAUSED: nothing more to serve
                return None

    async def _send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            with anyio.fail_after(self._config.write_timeout):
                await self._stream.send(data)

    async def _send_response(
        self, response: Response, *, head: bool = False, close: bool = False
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        reason = _REASONS.get(response.status, b"")
        await self._send(
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        )
        if response.body and not head:
            await self._send(h11.Data(data=response.body))
        await self._send(h11.EndOfMessage())

    async def reject(self, response: Response) -> None:
        """Send ``response`` with ``Connection: close`` and linger before the close."""
        try:
            await self._send_response(response, close=True)
        except (h11.LocalProtocolError, TimeoutError):
            return
        await self._linger()

    async def _linger(self) -> None:
        """Half-close, then discard what the client still sends (bounded), so that it gets to
        read our response instead of a reset."""
        if isinstance(self._stream, anyio.abc.SocketStream):
            if not await half_close(self._stream):
                return
        drained = 0
        with anyio.move_on_after(_DRAIN_SECONDS):
            while drained < _DRAIN_LIMIT:
                try:
                    drained += len(await self._stream.receive(65536))
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)  # h11 already validated it as digits
    return None


def _make_request(event: h11.Request, body: bytes) -> Request:
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("ascii", "replace")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = event.target.decode("ascii", "replace")
    path, _, query = target.partition("?")
    return Request(
        method=event.method.decode("ascii", "replace").upper(),
        path=path,
        query=query,
        headers=headers,
        body=body,
    )


async def serve_http(
    handler: Handler, listener: anyio.abc.Listener[anyio.abc.SocketStream],
    config: HttpServerConfig | None = None, *, observer: Observer | None = None,
) -> None:
    """Serve ``handler`` on ``listener`` until cancelled. The caller owns (and closes) the
    listener. ``observer`` is told of a handler or connection that raised (a bug: logged, the
    client gets ``500``, the server goes on)."""
    cfg = config or HttpServerConfig()
    told = observer if observer is not None else NullObserver()
    active = 0

    async def on_connection(stream: anyio.abc.SocketStream) -> None:
        nonlocal active
        async with stream:
            if active >= cfg.max_connections:
                conn = _Connection(stream, handler, cfg, told)
                with anyio.move_on_after(_DRAIN_SECONDS):
                    try:
                        await conn.reject(_text(503, "too many connections"))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                return
            active += 1
            try:
                await _Connection(stream, handler, cfg, told).run()
            except Exception:  # root of the connection task: log, never crash the server
                log.exception("http: connection failed")
                told.on_task_failed(TaskRoot.HTTP_CONNECTION)
            finally:
                active -= 1

    await listener.serve(on_connection)


def _split_host_port(listen: str, key: str) -> tuple[str, int]:
    text = listen.strip()
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    elif text.startswith("http://"):
        text = text[len("http://"):]
    host, sep, port_text = text.rpartition(":")
    if text.startswith("["):
        host = host.strip("[]") if host.endswith("]") else ""
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {listen!r}")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _socket_path(path: Path) -> Path:
    """The absolute socket path, its directory created."""
    absolute = path.expanduser().absolute()
    absolute.parent.mkdir(parents=True, exist_ok=True)
    return absolute


def format_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` with IPv6 hosts bracketed."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def open_http_listener(
    listen: str, *, unix_socket: Path | None = None, loopback_only: bool = False,
    key: str = "listen",
) -> tuple[anyio.abc.Listener[anyio.abc.SocketStream], str]:
    """Bind ``listen`` (``HOST:PORT``, port 0 allowed) or ``unix_socket`` (mode 0600).

    Returns the listener and its URL: ``http://HOST:PORT`` (with the real port) or
    ``unix:/abs/path``. Bad addresses and bind failures raise :class:`ConfigError` naming
    ``key``.
    """
    listener: anyio.abc.Listener[anyio.abc.SocketStream]
    if unix_socket is not None:
        try:
            path = _socket_path(unix_socket)
            listener = await anyio.create_unix_listener(path, mode=0o600)
        except OSError as exc:
            raise ConfigError(key, f"cannot listen on unix socket {unix_socket}: {exc}") from exc
        return listener, f"unix:{path}"
    host, port = _split_host_port(listen, key)
    if loopback_only and not _is_loopback(host):
        raise ConfigError(key, f"must be a loopback address, got {host!r}")
    try:
        tcp = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConfigError(key, f"cannot listen on {listen!r}: {exc}") from exc
    bound = tcp.listeners[0].extra(SocketAttribute.local_address)
    bound_host, bound_port = str(bound[0]), int(bound[1])
    return tcp, format_url(bound_host, bound_port)
