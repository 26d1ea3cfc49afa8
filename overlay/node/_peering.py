"""The peering driver: runs the pure peer manager against a live node.

Theory of operation
-------------------
The :class:`~overlay.peers.PeerManager` decides; this driver acts and reports back:

* ``poll(now)`` returns actions: ``DialPeer`` (run ``node.dial`` in a task, then report
  ``dial_succeeded`` / ``dial_failed``), ``DisconnectPeer`` (close with a polite ``evicted`` or an
  ``operator`` reason), ``Persist`` (apply the batch to the SQLite store in a worker thread; on a
  :class:`~overlay.errors.PeerStoreError` hand it back with ``persist_failed``) and
  ``RefreshAddresses`` (discovery will answer; logged for now). The driver then sleeps until
  ``next_deadline()`` or until a fact wakes it.
* Facts come from the node: the cheap pre-handshake gate (``check_inbound``), admission after the
  hello (``accept_inbound``), connections and disconnections, and scoring events from the router
  (slow peers, invalid messages, protocol violations, rate limits, request outcomes, latency).

Metrics (when the node exports them): the driver counts what it does - every dial it or the
operator starts (:meth:`Peering.dial`), every failure by
:func:`~overlay.transport._failures.dial_failure_reason`, every
connection it closes for the manager by reason - and exports what the manager decides on its
own (bans, automatic or not, and evictions) by diffing ``PeerManager.counters()`` (O(1)) after
each poll and after each fact that may ban or evict (:meth:`Peering.sync_metrics`).
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, assert_never

import anyio
import anyio.abc

from overlay.address import NodeAddress
from overlay.connection._observer import Observer
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import (
    InvalidAddressError,
    OverlayError,
    PeerStoreError,
)
from overlay.identity import NodeId
from overlay.peers import (
    Action,
    DialPeer,
    DisconnectCause,
    DisconnectPeer,
    PeerManager,
    PeerManagerConfig,
    PeerManagerCounters,
    PeerStore,
    Persist,
    RefreshAddresses,
    ScoreEvent,
)
from overlay.router._router import Router
from overlay.transport._failures import (
    DialFailureReason,
    HandshakeFailureReason,
    dial_failure_reason,
)
from overlay.wire._nodeinfo import DisconnectReason

if TYPE_CHECKING:
    from overlay.operator._metrics import NodeMetrics

__all__ = ["DialOutcome", "Dialer", "Peering"]

log = logging.getLogger("overlay.peering")

def _disconnect_code(cause: DisconnectCause) -> DisconnectReason:
    """The ``DisconnectReason`` told to a peer the manager asked to disconnect."""
    match cause:
        case DisconnectCause.BANNED | DisconnectCause.IP_BANNED | DisconnectCause.LOW_SCORE:
            return DisconnectReason.BANNED
        case DisconnectCause.EVICTED | DisconnectCause.UPGRADE:
            return DisconnectReason.EVICTED
        case DisconnectCause.FEELER | DisconnectCause.OPERATOR:
            return DisconnectReason.OPERATOR
        case _:
            assert_never(cause)


@dataclass(frozen=True, slots=True)
class DialOutcome:
    """What :meth:`Node.dial_outcome <overlay.Node.dial_outcome>` did."""

    node_id: NodeId
    """The peer (authenticated)."""
    new: bool
    """True when a connection to the dialed address was opened and authenticated; False when
    the peer was already connected and nothing was dialed."""


Dialer = Callable[[NodeAddress], Awaitable[DialOutcome]]
"""How the driver dials: the node's ``dial_outcome``."""


class Peering(Observer):
    """Connects a :class:`PeerManager` (and optionally a :class:`PeerStore` and the node's
    :class:`~overlay.operator._metrics.NodeMetrics`) to a node."""

    def __init__(
        self,
        config: PeerManagerConfig,
        node_id: NodeId,
        *,
        router: Router,
        dial: Dialer,
        store_path: Path | None = None,
        rng: random.Random | None = None,
        metrics: NodeMetrics | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.wall_clock = wall_clock
        """The peer manager's clock (the node's ``wall_clock``): unix seconds, because its
        times (bans, scores, last seen) outlive the process."""
        self.router = router
        self._dial_outcome = dial
        self.metrics = metrics
        self.store: PeerStore | None = None
        state = None
        if store_path is not None:
            self.store = PeerStore(store_path)
            try:
                state = self.store.load()
            except BaseException:
                self.store.close()
                raise
        secret = state.secret if state is not None else secrets.token_bytes(32)
        if self.store is not None and state is not None and not state.secret:
            secret = secrets.token_bytes(32)
        self.manager = PeerManager(
            config,
            node_id,
            now=wall_clock(),
            rng=rng or random.Random(),
            secret=secret,
            store_state=state,
        )
        self._counted: PeerManagerCounters = self.manager.counters()
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        router.peer_table.set_score_source(self.score_of)

    def _now(self) -> float:
        return self.wall_clock()

    def wake(self) -> None:
        self._wake.set()

    def close_store(self) -> None:
        """Close the store when :meth:`run` never ran (a failed start); ``run`` closes it
        itself on exit."""
        if self.store is not None:
            self.store.close()

    def remove_seed(self, node_id: NodeId) -> bool:
        """Clear the ``seed`` flag the operator set on ``node_id`` (``add_seed``; stored at the
        next poll) and stop dialing it as a fallback seed, unless the configuration names it
        too. The address stays in the address book. False when the operator set no such flag.
        """
        if not self.manager.remove_seed(node_id, self.wall_clock()):
            return False
        self.wake()
        return True

    def sync_metrics(self) -> bool:
        """Export the bans and evictions the manager decided since the last call; True when
        there were any (the caller should :meth:`wake` the loop to act on them)."""
        counters = self.manager.counters()
        before, self._counted = self._counted, counters
        if counters.bans == before.bans and counters.ip_bans == before.ip_bans and (
            counters.evictions == before.evictions
        ):
            return False
        metrics = self.metrics
        if metrics is None:
            return True
        for _ in range(counters.bans - before.bans):
            metrics.peer_banned("peer")
        for _ in range(counters.ip_bans - before.ip_bans):
            metrics.peer_banned("ip")
        for _ in range(counters.evictions - before.evictions):
            metrics.peer_evicted()
        return True

    # ------------------------------------------------------------------------------- loop

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                while True:
                    now = self._now()
                    for action in self.manager.poll(now):
                        await self._execute(action)
                    self.sync_metrics()
                    deadline = self.manager.next_deadline()
                    self._wake = anyio.Event()
                    delay = 1.0 if deadline is None else max(0.0, deadline - self._now())
                    with anyio.move_on_after(min(delay, 1.0)):
                        await self._wake.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush()

    async def _flush(self) -> None:
        """Persist what is still dirty (on shutdown)."""
        if self.store is None:
            return
        # Not poll(): it holds back changes younger than persist_interval.
        action = self.manager.flush(self._now())
        if action is not None:
            await self._persist(action)
        await anyio.to_thread.run_sync(self.store.close)

    async def _execute(self, action: Action) -> None:
        match action:
            case DialPeer():
                assert self._tg is not None
                self._tg.start_soon(self._dial, action)
            case DisconnectPeer():
                conn = self.router.get_peer(action.node_id)
                if conn is not None and conn.is_open:
                    feeler = action.reason is DisconnectCause.FEELER
                    level = logging.DEBUG if feeler else logging.INFO
                    log.log(level, "disconnecting %s: %s", action.node_id, action.reason,
                            extra={"peer": action.node_id})
                    conn.close(_disconnect_code(action.reason), action.reason)
                    if self.metrics is not None:
                        self.metrics.peer_disconnected(action.reason)
            case Persist():
                await self._persist(action)
            case RefreshAddresses():
                log.debug("address book has no usable candidate (%s)", action.reason)
            case _:
                assert_never(action)

    async def _persist(self, action: Persist) -> None:
        if self.store is None:
            return
        store = self.store
        try:
            await anyio.to_thread.run_sync(store.apply, action.changes)
        except PeerStoreError as exc:  # keep the changes; the next Persist retries them
            log.warning("%s; will retry", exc)
            self.manager.persist_failed(action.changes)

    async def _dial(self, action: DialPeer) -> None:
        # Task root: the outcome is reported to the manager, so nothing is left to raise.
        try:
            await self.dial(action.address, timeout=action.timeout)
        except (OverlayError, TimeoutError):
            pass  # counted and reported by dial()
        except Exception:  # task root: a bug in dialing must not take the node down
            log.exception("dialing %s failed unexpectedly", action.address,
                          extra={"peer": action.address.node_id})
            self._dial_failed(action.address, HandshakeFailureReason.INTERNAL)

    async def dial(self, address: NodeAddress, *, timeout: float | None = None) -> NodeId:
        """Dial ``address`` for the manager (a ``DialPeer``, or an operator dial the manager
        was told about with ``dial_now(execute=False)``): count it, report the outcome to the
        manager and re-raise a failure (:class:`OverlayError`, or :class:`TimeoutError` when
        ``timeout`` passes)."""
        if self.metrics is not None:
            self.metrics.dial_attempted()
        try:
            if timeout is None:
                outcome = await self._dial_outcome(address)
            else:
                with anyio.fail_after(timeout):
                    outcome = await self._dial_outcome(address)
        except (OverlayError, TimeoutError) as exc:
            reason = dial_failure_reason(exc)
            log.debug("dial %s failed (%s): %s", address, reason, exc,
                      extra={"peer": address.node_id})
            self._dial_failed(address, reason)
            raise
        if outcome.new:  # only an address a connection authenticated is stored
            self.manager.dial_succeeded(outcome.node_id, address, self._now())
        self.wake()
        return outcome.node_id

    def _dial_failed(self, address: NodeAddress, reason: DialFailureReason) -> None:
        if self.metrics is not None:
            self.metrics.dial_failed(reason)
        self.manager.dial_failed(address.node_id, address, self._now(), reason)
        self.wake()

    # ------------------------------------------------------------------------ node hooks

    def check_inbound(self, remote_host: str) -> bool:
        """The cheap pre-handshake gate: False refuses ``remote_host`` (banned, over limits)."""
        return self.manager.check_inbound(remote_host, self._now()).accepted

    def admit(
        self, node_id: NodeId, remote_host: str, outbound: bool
    ) -> tuple[DisconnectReason, str] | None:
        """Admission after the hello: None admits, else ``(DisconnectReason, message)``."""
        if outbound:
            return None
        decision = self.manager.accept_inbound(node_id, remote_host, self._now())
        if decision.evict is not None and self.sync_metrics():
            self.wake()  # the victim's DisconnectPeer is waiting in poll()
        if decision.accepted:
            return None
        code = {
            "banned": DisconnectReason.BANNED,
            "ip_banned": DisconnectReason.BANNED,
            "duplicate": DisconnectReason.DUPLICATE,
            "self": DisconnectReason.SELF,
        }.get(decision.reason, DisconnectReason.TOO_MANY_PEERS)
        return (code, decision.reason)

    # ---------------------------------------------------------------------- observer facts

    def on_peer_connected(
        self, peer: NodeId, *, outbound: bool, remote_host: str, listen_addrs: tuple[str, ...]
    ) -> None:
        address: NodeAddress | None = None
        for text in listen_addrs:
            try:
                candidate = NodeAddress.parse(text)
            except InvalidAddressError:
                continue
            if candidate.node_id == peer:
                address = candidate
                break
        self.manager.connected(peer, outbound=outbound, address=address,
                               remote_ip=remote_host, now=self._now())
        self.wake()

    def on_peer_disconnected(self, peer: NodeId, reason: str) -> None:
        self.manager.disconnected(peer, self._now(), reason=reason)
        self.wake()

    def _penalize(self, peer: NodeId, event: ScoreEvent, *, wake: bool) -> None:
        """Report a negative score event; it may ban the peer (exported at once)."""
        self.manager.report(peer, event, self._now())
        if self.sync_metrics() or wake:
            self.wake()

    def on_slow_peer(self, peer: NodeId, channel: str) -> None:
        self._penalize(peer, ScoreEvent.SLOW_PEER, wake=False)

    def on_invalid_message(self, peer: NodeId, channel: str, reason: str) -> None:
        self._penalize(peer, ScoreEvent.INVALID_MESSAGE, wake=True)

    def on_protocol_violation(self, peer: NodeId, reason: str) -> None:
        self._penalize(peer, ScoreEvent.PROTOCOL_VIOLATION, wake=True)

    def on_rate_limited(self, peer: NodeId, channel_id: int) -> None:
        self._penalize(peer, ScoreEvent.RATE_LIMIT_EXCEEDED, wake=False)

    def on_request_done(
        self, peer: NodeId, channel: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        match outcome:
            case AttemptOutcome.OK:
                self.manager.report(peer, ScoreEvent.USEFUL_RESPONSE, self._now())
            case AttemptOutcome.TIMEOUT:
                self._penalize(peer, ScoreEvent.TIMEOUT, wake=False)
            case (AttemptOutcome.WOULD_BLOCK | AttemptOutcome.CANCELLED | AttemptOutcome.REFUSED
                  | AttemptOutcome.ERROR | AttemptOutcome.NOT_CONNECTED | AttemptOutcome.CLOSED):
                pass  # refusals and errors are answers; the rest is nobody's fault
            case unreachable:
                assert_never(unreachable)

    def score_of(self, peer: NodeId) -> float | None:
        """The peer manager's current score of ``peer`` (for the router's peer views)."""
        snapshot = self.manager.peer(peer, self._now())
        return None if snapshot is None else snapshot.score

    def on_latency(self, peer: NodeId, rtt: float) -> None:
        self.manager.record_latency(peer, rtt)
