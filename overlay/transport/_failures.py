"""Why a connection set-up failed: the one translation from exceptions to a typed reason.

A connection set-up is the Noise handshake (run by the transport) followed by the hello
exchange (run by the node). Either may fail in either direction; every failure is counted by
:class:`Direction` and :class:`HandshakeFailureReason` in the transport's statistics (inbound
Noise only), the node's ``handshake_failures`` (``overlay status``), the
``overlay_handshake_failures_total`` counter and ``Observer.on_handshake_failed``.

:func:`handshake_failure_reason` is the only place where exceptions become reasons. The
transport boundary decides the reason once, when it raises: a backend stream error during the
set-up becomes a :class:`~overlay.errors.HandshakeError` with ``reason`` ``CONNECTION``
(:func:`stream_failure`), a connect failure a :class:`~overlay.errors.DialError` whose ``reason``
is a :class:`~overlay.errors.ConnectFailure`; so the mapping reads the error's own ``reason``
and never walks ``__cause__``. :func:`dial_failure_reason` extends it to dials (the dial-failure
metric and the peer manager's ``dial_failed``).

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
    ConnectFailure,
    DialError,
    HandshakeError,
    HandshakeFailureReason,
    IncompatiblePeerError,
    LocalProtocolError,
    NetworkError,
    NodeClosed,
    RemoteProtocolError,
)

__all__ = [
    "DialAbandoned",
    "DialFailureReason",
    "Direction",
    "HandshakeFailureReason",
    "dial_failure_reason",
    "handshake_failure_reason",
    "stream_failure",
]


class Direction(enum.StrEnum):
    """Who opened the connection."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class DialAbandoned(enum.StrEnum):
    """A dial that failed on our side, before or instead of reaching the network."""

    NODE_CLOSED = "node_closed"
    """The node was shutting down."""
    LOCAL = "local"
    """The dial itself was a mistake (e.g. dialing ourselves)."""


DialFailureReason = ConnectFailure | HandshakeFailureReason | DialAbandoned
"""Why a dial failed: the label of the dial-failure metric and the reason the peer manager is
told (see :func:`dial_failure_reason`)."""


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

STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
"""What a backend stream raises when the connection ends or breaks (the transport boundary
turns these into :func:`stream_failure`)."""


def stream_failure(exc: BaseException, during: str) -> HandshakeError:
    """The one translation of a stream error met during the set-up (``during`` says which
    phase) into a :class:`HandshakeError` whose ``reason`` is ``CONNECTION``."""
    if isinstance(exc, anyio.EndOfStream):
        text = f"peer closed the connection during {during}"
    else:
        text = f"connection lost during {during}: {exc!r}"
    return HandshakeError(text, reason=HandshakeFailureReason.CONNECTION)


def handshake_failure_reason(exc: BaseException) -> HandshakeFailureReason:
    """The reason a connection set-up failed with ``exc`` (total: any exception maps). The
    reason of overlay's set-up errors is their own ``reason``, set where they were raised."""
    match exc:
        case IncompatiblePeerError():
            return _REFUSALS.get(exc.reason, HandshakeFailureReason.REFUSED)
        case HandshakeError():  # AuthenticationError included
            return exc.reason
        case TimeoutError():  # HandshakeTimeout, or a caller's own deadline
            return HandshakeFailureReason.TIMEOUT
        case RemoteProtocolError():
            return HandshakeFailureReason.PROTOCOL
        case NetworkError() | anyio.EndOfStream() | anyio.BrokenResourceError() \
                | anyio.ClosedResourceError() | OSError():
            return HandshakeFailureReason.CONNECTION
        case _:
            return HandshakeFailureReason.INTERNAL


def dial_failure_reason(exc: BaseException) -> DialFailureReason:
    """Why a dial failed with ``exc``: ``DialError.reason`` when the connection could not be
    opened (``refused``, ``unreachable``, ``timeout``), :class:`DialAbandoned` when the dial
    failed on our side, else the set-up failure reason (:func:`handshake_failure_reason`)."""
    match exc:
        case DialError():
            return exc.reason
        case NodeClosed():
            return DialAbandoned.NODE_CLOSED
        case LocalProtocolError():
            return DialAbandoned.LOCAL
        case _:
            return handshake_failure_reason(exc)
