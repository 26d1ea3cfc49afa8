"""The exception tree: every error says who is at fault.

::

    OverlayError                         root of everything this library raises
    ├── LocalProtocolError               the caller misused the API (fix your code)
    │   ├── ConfigError                  bad configuration; names the key
    │   ├── InvalidAddressError          an address string that does not parse
    │   ├── ChannelError                 unknown/duplicate channel, wrong destination kind
    │   │   └── ChannelClosed            the channel was closed on this node while in use
    │   ├── MessageTooLarge              a message larger than its channel allows
    │   └── WouldBlock                   an ``*_nowait`` call would have to wait
    ├── RemoteProtocolError              the peer misbehaved (its fault, not yours)
    │   ├── FrameError                   malformed or oversized frame
    │   ├── HandshakeError               Noise handshake failed
    │   │   └── AuthenticationError      the peer proved another identity / bad signature
    │   ├── IncompatiblePeerError        other network, unsupported version, no common channel
    │   └── DecodeError                  a message that does not decode with the channel codec
    ├── OverlayTimeoutError              a deadline passed (also a builtin ``TimeoutError``)
    │   ├── HandshakeTimeout
    │   ├── SendTimeout                  a send waited too long for queue space
    │   └── RequestTimeout               no response before the deadline
    ├── NetworkError                     the network failed us (also an ``OSError``-like family)
    │   ├── DialError                    could not connect
    │   ├── ConnectionClosed             the connection closed; pending work on it fails
    │   └── NoRoute                      a destination selected nobody (``.reason``: why)
    │       └── PeerNotConnected         a peer destination that is not connected
    ├── StorageError                     local storage failed us (disk full, I/O error, locked
    │   │                                database): neither the caller's code nor the peer
    │   └── PeerStoreError               reading or writing the peer database failed
    ├── RequestError                     the responder answered with a typed error (see codes)
    └── NodeClosed                       the node shut down; pending requests fail with this

Set-up failures carry their reason, decided once where the failure is detected (the transport
boundary maps backend exceptions there): ``HandshakeError.reason`` and ``HandshakeTimeout.reason``
are :class:`HandshakeFailureReason` members, ``DialError.reason`` a :class:`ConnectFailure`;
nothing above the transport inspects ``__cause__``.

``RequestError.code`` is one of :class:`ErrorCode`; the codes are documented in ``docs/errors.md``
and travel on the wire as the ``ErrorCode`` enum of ``proto/overlay.proto``.
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthenticationError",
    "ChannelClosed",
    "ChannelError",
    "ConfigError",
    "ConnectFailure",
    "ConnectionClosed",
    "DecodeError",
    "DialError",
    "ErrorCode",
    "FrameError",
    "HandshakeError",
    "HandshakeFailureReason",
    "HandshakeTimeout",
    "IncompatiblePeerError",
    "InvalidAddressError",
    "LocalProtocolError",
    "MessageTooLarge",
    "NetworkError",
    "NoRoute",
    "NoRouteReason",
    "NodeClosed",
    "OverlayError",
    "OverlayTimeoutError",
    "PeerNotConnected",
    "PeerStoreError",
    "RemoteProtocolError",
    "RequestError",
    "RequestTimeout",
    "SendTimeout",
    "StorageError",
    "WouldBlock",
]


class HandshakeFailureReason(enum.StrEnum):
    """Why a connection set-up (Noise handshake, then hello) failed. The values are metric
    labels and the keys shown by ``overlay status`` (see ``overlay.transport._failures``)."""

    TIMEOUT = "timeout"
    AUTHENTICATION = "authentication"
    HANDSHAKE = "handshake"
    PROTOCOL = "protocol"
    CONNECTION = "connection"
    WRONG_NETWORK = "wrong_network"
    INCOMPATIBLE_VERSION = "incompatible_version"
    NO_COMMON_CHANNEL = "no_common_channel"
    TOO_MANY_PEERS = "too_many_peers"
    BANNED = "banned"
    DUPLICATE = "duplicate"
    SELF = "self"
    SHUTDOWN = "shutdown"
    REFUSED = "refused"
    INTERNAL = "internal"


class ConnectFailure(enum.StrEnum):
    """Why a connection could not be opened (``DialError.reason``)."""

    REFUSED = "refused"
    """The remote end refused the connection (nothing listens there, or its backlog is full)."""
    UNREACHABLE = "unreachable"
    """Any other failure to connect (no route, name resolution, partition, no transport)."""
    TIMEOUT = "timeout"
    """Connecting did not finish in time."""


class OverlayError(Exception):
    """Root of every exception raised by overlay."""


class LocalProtocolError(OverlayError):
    """The caller used the API wrongly; retrying the same call fails the same way."""


class ConfigError(LocalProtocolError, ValueError):
    """A configuration value is invalid. ``key`` names the offending key (dotted path)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key {key!r}: {message}")
        self.key = key


class InvalidAddressError(LocalProtocolError, ValueError):
    """An address string could not be parsed."""


class ChannelError(LocalProtocolError):
    """A channel was misused: unknown id, duplicate id, or an unsupported destination."""


class ChannelClosed(ChannelError):
    """The channel was closed on this node (``node.close_channel``) while an operation used it:
    its pending requests, waiting sends and receivers fail with this."""


class MessageTooLarge(LocalProtocolError):
    """A message to send is larger than its channel's ``max_message_size``."""


class WouldBlock(LocalProtocolError):
    """A ``*_nowait`` operation could not complete without waiting."""


class RemoteProtocolError(OverlayError):
    """The remote peer violated the protocol. The connection (or message) is dropped."""


class FrameError(RemoteProtocolError):
    """A malformed, truncated or oversized frame."""


class HandshakeError(RemoteProtocolError):
    """The secure handshake failed (bad message, failed decryption, bad payload), or the
    connection was lost during it: ``reason`` says which (``HANDSHAKE`` or ``CONNECTION``)."""

    reason: HandshakeFailureReason = HandshakeFailureReason.HANDSHAKE

    def __init__(self, message: str = "", *, reason: HandshakeFailureReason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AuthenticationError(HandshakeError):
    """The peer did not prove the identity we expected, or its identity proof is invalid."""

    reason = HandshakeFailureReason.AUTHENTICATION


class IncompatiblePeerError(RemoteProtocolError):
    """The peer is authenticated but cannot talk to us. ``reason`` is a short machine code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class DecodeError(RemoteProtocolError):
    """A message payload could not be decoded by its channel's codec."""


class OverlayTimeoutError(OverlayError, TimeoutError):
    """A deadline passed."""


class HandshakeTimeout(OverlayTimeoutError):
    """The handshake (Noise or NodeInfo exchange) did not finish in time."""

    reason = HandshakeFailureReason.TIMEOUT


class SendTimeout(OverlayTimeoutError):
    """A send could not get queue space before its deadline (the peer is slow)."""


class RequestTimeout(OverlayTimeoutError):
    """No response arrived before the request's deadline."""


class NetworkError(OverlayError):
    """The network failed: refused, reset, unreachable, closed."""


class DialError(NetworkError):
    """Dialing a peer failed: the connection could not be opened (``reason`` says why)."""

    def __init__(self, message: str = "", reason: ConnectFailure = ConnectFailure.UNREACHABLE
                 ) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionClosed(NetworkError):
    """The connection closed while an operation depended on it."""


class NoRouteReason(enum.Enum):
    """Why a destination reached nobody."""

    NO_PEERS_CONNECTED = "no_peers_connected"
    """The node has no connected peer at all (e.g. ``BROADCAST`` before the first dial)."""
    NO_PEER_MATCHES = "no_peer_matches"
    """Peers are connected, but none is one the destination would pick."""
    NOT_CONNECTED = "not_connected"
    """The one peer named (a bare node id) is not connected."""


class NoRoute(NetworkError):
    """A destination selected nobody: nothing was sent. ``reason`` is a :class:`NoRouteReason`.

    Neither the caller's fault (the same call succeeds once a suitable peer connects) nor the
    peer's: the node simply has no route to the destination right now."""

    def __init__(self, reason: NoRouteReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PeerNotConnected(NoRoute):
    """The destination peer is not connected (``reason`` is always ``NOT_CONNECTED``)."""

    def __init__(self, message: str) -> None:
        super().__init__(NoRouteReason.NOT_CONNECTED, message)


class StorageError(OverlayError):
    """Local storage failed: disk full, an I/O error, a database locked for too long.

    Not the caller's fault (retrying later may succeed, unlike a :class:`LocalProtocolError`)
    and not the peer's. A file that cannot be opened as the right kind of database at start-up
    is a :class:`ConfigError` instead: the configuration points at the wrong file.
    """


class PeerStoreError(StorageError):
    """Reading or writing the peer database (``PeerStore``) failed; the peering driver logs it
    and retries the write later."""


class ErrorCode(enum.IntEnum):
    """Typed error codes a responder may answer with (wire values, stable)."""

    UNKNOWN = 0
    """Unspecified failure."""
    BAD_REQUEST = 1
    """The request was understood but invalid."""
    NOT_FOUND = 2
    """The requested thing does not exist."""
    UNAVAILABLE = 3
    """The responder cannot serve this now (try another peer)."""
    OVERLOADED = 4
    """Too many concurrent requests from this peer on this channel."""
    NO_HANDLER = 5
    """The channel exists but has no request handler registered."""
    INTERNAL = 6
    """The handler raised an unexpected exception."""
    CANCELLED = 7
    """The responder cancelled the request (e.g. it is shutting down)."""
    DECODE = 8
    """The request payload did not decode."""
    TOO_LARGE = 9
    """The response was larger than the channel allows."""


class RequestError(OverlayError):
    """The responder answered with an error. ``code`` says what kind."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message


class NodeClosed(OverlayError):
    """The node is closed (or closing); pending and new operations fail with this."""
