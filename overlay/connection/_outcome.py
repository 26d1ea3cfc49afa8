"""How one attempt to reach a peer ended: the outcome the router reports per peer (to the
observer, in :class:`~overlay.router._channel.DeliveryReport`) and destinations act on.

One enum for sends and requests alike, matched with ``match`` / ``assert_never`` wherever it is
acted on (the peer manager's scoring, metrics labels use ``outcome.value``).
"""

from __future__ import annotations

import enum
from typing import assert_never

from overlay.errors import ErrorCode

__all__ = ["AttemptOutcome", "outcome_of_error_code"]


class AttemptOutcome(enum.Enum):
    """How one attempt to one peer ended."""

    OK = "ok"
    """Queued (a send) or answered with a valid response (a request)."""
    TIMEOUT = "timeout"
    """The deadline passed: no queue space (a send to a slow peer) or no response in time."""
    WOULD_BLOCK = "would_block"
    """A ``send_nowait`` found the peer's queue full."""
    CANCELLED = "cancelled"
    """We gave up before the deadline (the caller was cancelled, a losing hedge): never the
    peer's fault."""
    REFUSED = "refused"
    """The peer declined to serve: ``OVERLOADED``, ``UNAVAILABLE``, ``NO_HANDLER`` or
    ``CANCELLED`` (another peer may serve it)."""
    ERROR = "error"
    """The peer answered with another error code, or with a response that does not decode."""
    NOT_CONNECTED = "not_connected"
    """The peer was not connected when the attempt started."""
    CLOSED = "closed"
    """The connection closed during the attempt."""


def outcome_of_error_code(code: ErrorCode) -> AttemptOutcome:
    """The outcome of a request the responder answered with ``code``."""
    match code:
        case (ErrorCode.OVERLOADED | ErrorCode.UNAVAILABLE | ErrorCode.NO_HANDLER
              | ErrorCode.CANCELLED):
            return AttemptOutcome.REFUSED
        case (ErrorCode.UNKNOWN | ErrorCode.BAD_REQUEST | ErrorCode.NOT_FOUND
              | ErrorCode.INTERNAL | ErrorCode.DECODE | ErrorCode.TOO_LARGE):
            return AttemptOutcome.ERROR
        case unreachable:
            assert_never(unreachable)
