"""The peering driver: runs the pure peer manager against a live node.

Theory of operation
-------------------
The :class:`~overlay.peers.PeerManager` decides; this driver acts and reports back:

* ``poll(now)`` returns actions: ``DialPeer`` (run ``node.dial`` in a task, then report
  ``dial_succeeded`` / ``dial_failed``), ``DisconnectPeer`` (close with a polite ``evicted`` or an
  ``operator`` reason), ``Persist`` (apply the batch to the SQLite store in a worker thread; on
  failure hand it back with ``persist_failed``) and ``RefreshAddresses`` (discovery will answer;
  logged for now). The driver then sleeps until ``next_deadline()`` or until a fact wakes it.
* Facts come from the node: the cheap pre-handshake gate (``check_inbound``), admission after the
  hello (``accept_inbound``), connections and disconnections, and scoring events from the router
  (slow peers, invalid messages, protocol violations, rate limits, request outcomes, latency).
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from pathlib import Path

import anyio
import anyio.abc

from overlay._nodeinfo import DisconnectReason
from overlay._observer import Observer
from overlay.address import NodeAddress
from overlay.errors import InvalidAddressError, OverlayError
from overlay.identity import NodeId
from overlay.node import Node
from overlay.peers import (
    DialPeer,
    DisconnectPeer,
    PeerManager,
    PeerStore,
    Persist,
    RefreshAddresses,
    ScoreEvent,
)

__all__ = ["Peering", "wall_clock"]

wall_clock = time.time
"""The peer manager's clock: wall time, because its times outlive the process."""

log = logging.getLogger("overlay.peering")

_REASONS = {
    "banned": DisconnectReason.BANNED,
    "ip_banned": DisconnectReason.BANNED,
    "evicted": DisconnectReason.EVICTED,
    "upgrade": DisconnectReason.EVICTED,
    "feeler": DisconnectReason.OPERATOR,
    "operator": DisconnectReason.OPERATOR,
    "self": DisconnectReason.SELF,
    "duplicate": DisconnectReason.DUPLICATE,
    "low_score": DisconnectReason.BANNED,
}


class Peering(Observer):
    """Connects a :class:`PeerManager` (and optionally a :class:`PeerStore`) to a node."""

    def __init__(self, node: Node, *, store_path: Path | None = None,
                 rng: random.Random | None = None) -> None:
        self.node = node
        self.store: PeerStore | None = None
        state = None
        if store_path is not None:
            self.store = PeerStore(store_path)
            state = self.store.load()
        secret = state.secret if state is not None else secrets.token_bytes(32)
        if self.store is not None and state is not None and not state.secret:
            secret = secrets.token_bytes(32)
        self.manager = PeerManager(
            node.config.peers,
            node.node_id,
            now=wall_clock(),
            rng=rng or random.Random(),
            secret=secret,
            store_state=state,
        )
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        node.gate = self._gate
        node.admission = self._admit

    def _now(self) -> float:
        # The manager's times are persisted (bans, scores, last seen), so it runs on wall time.
        return wall_clock()

    def wake(self) -> None:
        self._wake.set()

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
        for action in self.manager.poll(self._now()):
            if isinstance(action, Persist):
                await self._persist(action)
        await anyio.to_thread.run_sync(self.store.close)

    async def _execute(self, action: object) -> None:
        if isinstance(action, DialPeer):
            assert self._tg is not None
            self._tg.start_soon(self._dial, action)
        elif isinstance(action, DisconnectPeer):
            conn = self.node.router.get_peer(action.node_id)
            if conn is not None:
                code = _REASONS.get(action.reason, DisconnectReason.EVICTED if action.evict
                                    else DisconnectReason.OPERATOR)
                conn.close(code, action.reason)
        elif isinstance(action, Persist):
            await self._persist(action)
        elif isinstance(action, RefreshAddresses):
            log.debug("address book has no usable candidate (%s)", action.reason)

    async def _persist(self, action: Persist) -> None:
        if self.store is None:
            return
        store = self.store
        try:
            await anyio.to_thread.run_sync(store.apply, action.changes)
        except Exception:  # task root for store writes: keep the changes, retry later
            log.exception("writing the peer store failed; will retry")
            self.manager.persist_failed(action.changes)

    async def _dial(self, action: DialPeer) -> None:
        address = action.address
        try:
            with anyio.fail_after(action.timeout):
                await self.node.dial(address)
        except (OverlayError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.manager.dial_failed(address.node_id, address, self._now(), str(reason))
        else:
            self.manager.dial_succeeded(address.node_id, address, self._now())
        self.wake()

    # ------------------------------------------------------------------------ node hooks

    def _gate(self, remote_host: str) -> bool:
        return self.manager.check_inbound(remote_host, self._now()).accepted

    def _admit(self, node_id: NodeId, remote_host: str, outbound: bool) -> tuple[int, str] | None:
        if outbound:
            return None
        decision = self.manager.accept_inbound(node_id, remote_host, self._now())
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

    def on_slow_peer(self, peer: NodeId, channel: str) -> None:
        self.manager.report(peer, ScoreEvent.SLOW_PEER, self._now())

    def on_invalid_message(self, peer: NodeId, channel: str, reason: str) -> None:
        self.manager.report(peer, ScoreEvent.INVALID_MESSAGE, self._now())
        self.wake()

    def on_protocol_violation(self, peer: NodeId, reason: str) -> None:
        self.manager.report(peer, ScoreEvent.PROTOCOL_VIOLATION, self._now())
        self.wake()

    def on_rate_limited(self, peer: NodeId, channel_id: int) -> None:
        self.manager.report(peer, ScoreEvent.RATE_LIMIT_EXCEEDED, self._now())

    def on_request_done(self, peer: NodeId, channel: str, seconds: float, outcome: str) -> None:
        if outcome == "ok":
            self.manager.report(peer, ScoreEvent.USEFUL_RESPONSE, self._now())
        elif outcome == "timeout":
            self.manager.report(peer, ScoreEvent.TIMEOUT, self._now())

    def on_latency(self, peer: NodeId, rtt: float) -> None:
        self.manager.record_latency(peer, rtt)
