"""Node-info updates on one connection: pacing what we announce, checking what we are told.

Theory of operation
-------------------
A node's NodeInfo (its channels, its capability record, ...) can change while connections are
open. The node announces each change with a CONTROL ``NodeInfoUpdate`` carrying its whole
current NodeInfo and an ``info_seq`` that increases strictly with every change (one counter per
node, shared by all its connections; the hello counts as 0). :class:`InfoSync` is the part of
the connection core that handles those updates, in both directions. It is pure: it takes
``now`` and never reads a clock.

Sending. ``queue(seq, frame)`` keeps *one* pending update: a newer one replaces an older one that
has not gone out yet (each update is the whole NodeInfo, so nothing is lost by coalescing).
``take(now)`` hands the pending frame to the control queue when the send bucket
(:data:`INFO_UPDATE_RATE` per second, bursts of :data:`INFO_UPDATE_BURST`) has a token;
otherwise ``ready_at()`` is when it will, and the core's timer includes it. So an application
that opens a hundred channels in a loop costs each peer a handful of updates, and we never
exceed the rate the peer enforces.

Receiving. ``receive(update, now)`` enforces, in this order:

1. the rate: every update (replays included) takes a token from a bucket of the same rate and
   twice the burst (:data:`INFO_UPDATE_RECEIVE_BURST`: slack for updates bunched up by the
   network); an empty bucket is a protocol violation (an update flood);
2. the sequence: ``info_seq`` at or below the last one applied is a replay and is ignored
   (counted in ``ignored``);
3. the content: the NodeInfo must decode (``FrameError`` otherwise) and must not change what a
   connection fixes at the hello, the network and the protocol version
   (:func:`~overlay.wire._nodeinfo.check_info_update`; a violation otherwise).

An accepted update becomes the peer's current NodeInfo and is reported as
:class:`PeerInfoReceived`. Any violation raises :class:`~overlay.errors.RemoteProtocolError` out
of ``receive_data``: the driver closes that connection (only that one) with
``PROTOCOL_VIOLATION``.
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.connection._ratelimit import TokenBucket
from overlay.errors import RemoteProtocolError
from overlay.wire._messages import InfoUpdate
from overlay.wire._nodeinfo import NodeInfo, check_info_update, decode_node_info

__all__ = [
    "INFO_UPDATE_BURST",
    "INFO_UPDATE_RATE",
    "INFO_UPDATE_RECEIVE_BURST",
    "InfoSync",
    "PeerInfoReceived",
]

INFO_UPDATE_RATE = 2.0
"""Node-info updates per second a node sends to one peer, sustained (protocol constant)."""
INFO_UPDATE_BURST = 8
"""Node-info updates a node may send to one peer back to back (protocol constant)."""
INFO_UPDATE_RECEIVE_BURST = 2 * INFO_UPDATE_BURST
"""What a receiver tolerates back to back: twice the sender's burst, for network jitter."""


@dataclass(frozen=True, slots=True)
class PeerInfoReceived:
    """The peer announced a new NodeInfo (already checked); it replaces the previous one."""

    info_seq: int
    info: NodeInfo


class InfoSync:
    """Node-info updates of one connection, both directions (see the module docstring)."""

    __slots__ = (
        "_pending",
        "_pending_seq",
        "_recv_bucket",
        "_send_bucket",
        "ignored",
        "peer_info",
        "peer_seq",
        "received",
        "sent",
        "sent_seq",
    )

    def __init__(self, now: float, peer_info: NodeInfo | None = None) -> None:
        self._send_bucket = TokenBucket(INFO_UPDATE_RATE, INFO_UPDATE_BURST, now)
        self._recv_bucket = TokenBucket(INFO_UPDATE_RATE, INFO_UPDATE_RECEIVE_BURST, now)
        self._pending: bytes | None = None
        self._pending_seq = 0
        self.peer_info = peer_info
        """The peer's current NodeInfo (from the hello, then each applied update); ``None``
        only for a core built without one (tests): the first update then sets it."""
        self.peer_seq = 0
        """``info_seq`` of the peer's last applied update (0: the hello)."""
        self.sent_seq = 0
        """``info_seq`` of our last update handed to the control queue (0: none yet)."""
        self.received = 0
        """Updates from the peer that were applied."""
        self.ignored = 0
        """Updates from the peer that were replays (``info_seq`` not above the last)."""
        self.sent = 0
        """Updates we handed to the control queue."""

    # ---------------------------------------------------------------------------- sending

    def queue(self, info_seq: int, frame: bytes) -> None:
        """Make ``frame`` (a whole CONTROL frame announcing NodeInfo ``info_seq``) the pending
        update, unless a newer one is already pending or sent."""
        if info_seq <= max(self._pending_seq, self.sent_seq):
            return
        self._pending = frame
        self._pending_seq = info_seq

    def take(self, now: float) -> bytes | None:
        """The pending frame, if the send rate allows it now (it is then no longer pending)."""
        frame = self._pending
        if frame is None or not self._send_bucket.can_consume(1, now):
            return None
        self._send_bucket.consume(1, now)
        self._pending = None
        self.sent_seq = self._pending_seq
        self.sent += 1
        return frame

    def ready_at(self) -> float | None:
        """When ``take`` will hand out the pending frame (``None``: nothing is pending)."""
        if self._pending is None:
            return None
        return self._send_bucket.ready_at(1)

    def drop_pending(self) -> None:
        """Forget the pending update (the connection is closing)."""
        self._pending = None

    # -------------------------------------------------------------------------- receiving

    def receive(self, update: InfoUpdate, now: float) -> PeerInfoReceived | None:
        """Check an update from the peer; the event to report, or ``None`` for a replay.
        Raises RemoteProtocolError (a flood, a malformed or a network-changing NodeInfo)."""
        bucket = self._recv_bucket
        if not bucket.can_consume(1, now):
            raise RemoteProtocolError(
                f"node-info update flood: more than {INFO_UPDATE_RECEIVE_BURST} updates at "
                f"once or {INFO_UPDATE_RATE:g} per second"
            )
        bucket.consume(1, now)
        if update.info_seq <= self.peer_seq:
            self.ignored += 1
            return None
        info = decode_node_info(update.node_info)  # FrameError when malformed
        if self.peer_info is not None:
            problem = check_info_update(self.peer_info, info)
            if problem is not None:
                raise RemoteProtocolError(problem)
        self.peer_info = info
        self.peer_seq = update.info_seq
        self.received += 1
        return PeerInfoReceived(update.info_seq, info)
