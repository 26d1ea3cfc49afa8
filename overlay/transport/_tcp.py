"""TCP transport: ``anyio.create_tcp_listener`` / ``anyio.connect_tcp`` + the Noise handshake.

Theory of operation
-------------------
On asyncio (plain or uvloop) connections run on :mod:`overlay.transport._asyncio`'s
``BufferedProtocol`` streams (sockets are still bound by ``anyio.create_tcp_listener``); on trio
on anyio's (trio's) socket streams. Both are anyio ``SocketStream`` objects.

All listen/accept/handshake/dial logic lives in :class:`overlay.transport.Transport`; this module
only binds sockets and opens connections:

* each :class:`~overlay.address.ListenAddress` is bound with ``anyio.create_tcp_listener``
  (an empty host binds every interface; port 0 picks a free port and the real port is
  reported); every bound socket becomes one :class:`RawListener`;
* ``TCP_NODELAY`` is set on both ends of every connection (anyio already sets it on accepted and,
  on trio, on connected sockets; we set it explicitly so it never depends on the backend);
* outbound connections leave from ``local_host`` when it is set (a source address to bind;
  otherwise the system picks one);
* ``remote_host`` is the peer's IP as the socket sees it (IPv4-mapped IPv6 addresses are
  unmapped, so per-IP limits see one form), ``remote_address`` is ``HOST:PORT`` (``[v6]:PORT``).

Connect failures raise :class:`~overlay.errors.DialError` whose ``reason`` is decided here, once:
``REFUSED`` (every address refused), ``TIMEOUT``, or ``UNREACHABLE`` (anything else: no route,
name resolution); the ``OSError`` stays as ``__cause__`` for logs only.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Sequence
from typing import ClassVar

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from overlay.address import ListenAddress, NodeAddress
from overlay.errors import ConfigError, ConnectFailure, DialError
from overlay.transport import AcceptGate, RawConnection, RawListener, Transport, TransportConfig
from overlay.transport._asyncio import AsyncioTcpListener, asyncio_running, connect_tcp
from overlay.transport._secure import SecureIdentity

__all__ = ["TcpTransport"]


@functools.lru_cache(maxsize=1024)  # once per peer host, not per connection
def _unmap(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host


def _refused(exc: OSError) -> bool:
    """Whether every attempt of ``anyio.connect_tcp`` was refused (it raises one ``OSError``
    for all the addresses it tried, the attempts' errors as its ``__cause__`` or in an
    exception group)."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(cause, ConnectionRefusedError):
        return True
    if isinstance(cause, BaseExceptionGroup):
        return all(isinstance(e, ConnectionRefusedError) for e in cause.exceptions)
    return False


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _prepare(stream: anyio.abc.SocketStream) -> RawConnection:
    """Set TCP_NODELAY and describe the remote end of a connected socket stream."""
    sock = stream.extra(SocketAttribute.raw_socket)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # the peer already reset the connection; the handshake will notice
        pass
    try:
        remote = stream.extra(SocketAttribute.remote_address)
    except (OSError, anyio.TypedAttributeLookupError):  # reset before we looked (on trio,
        remote = ("", 0)  # anyio then leaves the attribute out); the handshake will notice
    if isinstance(remote, tuple):
        host, port = _unmap(str(remote[0])), int(remote[1])
    else:  # pragma: no cover - UNIX sockets are never used by this transport
        host, port = str(remote), 0
    return RawConnection(stream, remote_host=host, remote_address=_format(host, port))


class _TcpListener(RawListener):
    def __init__(
        self, listener: anyio.abc.SocketListener | AsyncioTcpListener, address: NodeAddress
    ) -> None:
        self._listener = listener
        self.address = address

    async def accept(self) -> RawConnection:
        return _prepare(await self._listener.accept())

    async def aclose(self) -> None:
        await self._listener.aclose()


class TcpTransport(Transport):
    """Listens on and dials TCP addresses (``ID@HOST:PORT``); IPv4 and IPv6."""

    protocol: ClassVar[str] = "tcp"

    def __init__(
        self,
        identity: SecureIdentity,
        listen: ListenAddress | Sequence[ListenAddress] = (),
        config: TransportConfig | None = None,
        *,
        accept_gate: AcceptGate | None = None,
        local_host: str | None = None,
    ) -> None:
        super().__init__(identity, config, accept_gate=accept_gate)
        self.local_host = local_host
        """Source address of outbound connections (None: the system picks one)."""
        listens = (listen,) if isinstance(listen, ListenAddress) else tuple(listen)
        for item in listens:
            if not isinstance(item, ListenAddress) or item.protocol != "tcp":
                raise ConfigError("listen", f"TcpTransport needs tcp:// listen addresses: {item}")
        self._listen_config: tuple[ListenAddress, ...] = listens

    async def _listen(self) -> list[RawListener]:
        bound: list[RawListener] = []
        on_asyncio = asyncio_running()
        try:
            for item in self._listen_config:
                multi = await anyio.create_tcp_listener(
                    local_host=item.host or None, local_port=item.port
                )
                for sock_listener in multi.listeners:
                    assert isinstance(sock_listener, anyio.abc.SocketListener)
                    local = sock_listener.extra(SocketAttribute.local_address)
                    assert isinstance(local, tuple)
                    address = NodeAddress(
                        self.identity.node_id, "tcp", _unmap(str(local[0])), int(local[1])
                    )
                    bound.append(_TcpListener(
                        AsyncioTcpListener(sock_listener) if on_asyncio else sock_listener,
                        address,
                    ))
        except BaseException:
            with anyio.CancelScope(shield=True):
                for listener in bound:
                    await listener.aclose()
            raise
        return bound

    async def _raw_connect(self, address: NodeAddress) -> RawConnection:
        try:
            stream: anyio.abc.SocketStream
            if asyncio_running():
                stream = await connect_tcp(address.host, address.port, local_host=self.local_host)
            else:
                stream = await anyio.connect_tcp(
                    address.host, address.port, local_host=self.local_host
                )
        except OSError as exc:  # the transport boundary: the reason is decided here, once
            reason = (
                ConnectFailure.REFUSED if _refused(exc)
                else ConnectFailure.TIMEOUT if isinstance(exc, TimeoutError)
                else ConnectFailure.UNREACHABLE
            )
            raise DialError(f"cannot connect to {address}: {exc}", reason) from exc
        return _prepare(stream)
