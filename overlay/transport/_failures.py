"""Why a connection set-up failed: the one translation from exceptions to a typed reason.

A connection set-up is the Noise handshake (run by the transport) followed by the hello
exchange (run by the node). Either may fail in either direction; every failure is counted by
:class:`Direction` and :class:`HandshakeFailureReason` in the transport's statistics (inbound
Noise only), the node's ``handshake_failures`` (``overlay status``), the
``overlay_handshake_failures_total`` counter and ``Observer.on_handshake_failed``.

:func:`handshake_failure_reason` is the only place where exceptions (overlay's own, anyio's
stream errors, ``OSError``) become reasons; every layer that catches a set-up failure calls it
and passes the enum on, so no layer compares exception names or reason strings.

Reasons (the enum's values are the metric labels and the keys shown by ``overlay status``):

* ``timeout``: the Noise handshake or the hello did not finish within ``handshake_timeout``;
* ``authentication``: a bad identity signature, or another node id than the one dialed;
* ``handshake``: the Noise handshake failed on bad input (garbage, a short or over-long
  message, a non-empty message 1, a low-order X25519 key, failed decryption, a malformed
  identity payload);
* ``protocol``: another protocol violation during set-up (e.g. an oversized or undecodable
  hello);
* ``connection``: the connection was closed or reset during the set-up;
* a refusal by either side after the hello (``wrong_network``, ``incompatible_version``,
  ``no_common_channel``, ``too_many_peers``, ``banned``, ``duplicate``, ``self``,
  ``shutdown``; ``refused`` for any other refusal code);
* ``internal``: an unexpected exception (a bug; logged with its traceback where it is caught).
"""

from __future__ import annotations

import enum

import anyio

from overlay.errors import (
    AuthenticationError,
    HandshakeError,
    IncompatiblePeerError,
    NetworkError,
    RemoteProtocolError,
)

__all__ = ["Direction", "HandshakeFailureReason", "handshake_failure_reason"]


class Direction(enum.StrEnum):
    """Who opened the connection."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class HandshakeFailureReason(enum.StrEnum):
    """Why a connection set-up failed (see the module docstring)."""

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


_REFUSALS: dict[str, HandshakeFailureReason] = {
    reason.value: reason
    for reason in (
        HandshakeFailureReason.WRONG_NETWORK,
        HandshakeFailureReason.INCOMPATIBLE_VERSION,
        HandshakeFailureReason.NO_COMMON_CHANNEL,
        HandshakeFailureReason.TOO_MANY_PEERS,
        HandshakeFailureReason.BANNED,
        HandshakeFailureReason.DUPLICATE,
        HandshakeFailureReason.SELF,
        HandshakeFailureReason.SHUTDOWN,
    )
}

_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


def _connection_lost(exc: BaseException) -> bool:
    """The exception is, or was caused by, a stream error (EOF, reset, closed)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _STREAM_ERRORS) and not isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__
    return False


def handshake_failure_reason(exc: BaseException) -> HandshakeFailureReason:
    """The reason a connection set-up failed with ``exc`` (total: any exception maps)."""
    if isinstance(exc, IncompatiblePeerError):
        return _REFUSALS.get(exc.reason, HandshakeFailureReason.REFUSED)
    if isinstance(exc, AuthenticationError):
        return HandshakeFailureReason.AUTHENTICATION
    if isinstance(exc, TimeoutError):  # HandshakeTimeout included
        return HandshakeFailureReason.TIMEOUT
    if _connection_lost(exc):  # HandshakeError("connection lost ...") from a stream error
        return HandshakeFailureReason.CONNECTION
    if isinstance(exc, HandshakeError):
        return HandshakeFailureReason.HANDSHAKE
    if isinstance(exc, RemoteProtocolError):
        return HandshakeFailureReason.PROTOCOL
    if isinstance(exc, NetworkError):
        return HandshakeFailureReason.CONNECTION
    return HandshakeFailureReason.INTERNAL
