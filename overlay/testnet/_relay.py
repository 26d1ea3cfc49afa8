"""A loopback TCP relay between the nodes of a TCP testnet: partitions, cut links, latency
and loss on real sockets.

Theory of operation
-------------------
Every node ``i`` has its own loopback host ``127.A.B.1`` (:func:`node_host`). The node listens
on a port of that host (its *backend*); the relay listens on another port of the same host (its
*front*), and the node advertises the front (``external_addresses``), so every connection to
node ``j`` goes through the relay. A node dials from its own host (``[connection]
dial_from_listen_host``), so the relay knows the dialer ``i`` from the source address, and it
connects to ``j``'s backend *from that same source host*: node ``j`` sees the connection come
from ``127.A.B.1`` of ``i``, and its per-IP and netgroup limits act as on a real network.

Per (dialer, target) pair the relay applies the current :class:`LinkState`: a pair that is cut
(partition, disconnected node) refuses new connections and breaks the open ones; latency delays
every chunk by that many seconds one way; loss delays a chunk by a 200 ms "retransmission" with
that probability (TCP never loses bytes; later chunks never overtake an earlier one).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from overlay.transport import half_close

__all__ = ["LinkState", "Relay", "node_host"]

RETRANSMIT_DELAY = 0.2


def node_host(index: int) -> str:
    """Node ``index``'s loopback address ``127.A.B.1``: the first 254 nodes each in their own
    /16 (``A`` = 1 + index mod 254), later ones share them (``B`` = index div 254)."""
    return f"127.{1 + index % 254}.{index // 254}.1"


@dataclass(slots=True)
class LinkState:
    """What the relay does to traffic between nodes (mutable; read on every chunk)."""

    group_of: dict[int, int] | None = None
    """Partition: node index to group (nodes absent are in group -1); None: no partition."""
    isolated: set[int] = field(default_factory=set)
    """Nodes whose every link is cut."""
    latency: dict[int, float] = field(default_factory=dict)
    """Extra one-way latency on every link of a node (the larger of both ends applies)."""
    loss: dict[int, float] = field(default_factory=dict)
    """Retransmission probability on every link of a node (the larger of both ends)."""

    def cut(self, a: int, b: int) -> bool:
        if a in self.isolated or b in self.isolated:
            return True
        if self.group_of is None:
            return False
        return self.group_of.get(a, -1) != self.group_of.get(b, -1)

    def delay(self, a: int, b: int, rng: random.Random) -> float:
        delay = max(self.latency.get(a, 0.0), self.latency.get(b, 0.0))
        loss = max(self.loss.get(a, 0.0), self.loss.get(b, 0.0))
        if loss and rng.random() < loss:
            delay += RETRANSMIT_DELAY
        return delay

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        self.group_of = {n: g for g, members in enumerate(groups) for n in members}

    def heal(self) -> None:
        self.group_of = None


@dataclass(slots=True, eq=False)
class _Relayed:
    a: int
    b: int
    scope: anyio.CancelScope


class Relay:
    """Fronts for ``count`` nodes (see the module docstring). Run with
    ``await tg.start(relay.run)``; it returns the front ports."""

    def __init__(self, count: int, *, seed: int = 1) -> None:
        self.count = count
        self.links = LinkState()
        self.front_ports: list[int] = [0] * count
        self.backend_ports: list[int | None] = [None] * count
        self._by_host = {node_host(i): i for i in range(count)}
        self._open: set[_Relayed] = set()
        self._rng = random.Random(seed)
        self.relayed = 0
        self.refused = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[list[int]] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        async with anyio.create_task_group() as tg:
            listeners = []
            try:
                for i in range(self.count):
                    listener = await anyio.create_tcp_listener(local_host=node_host(i))
                    listeners.append(listener)
                    port = listener.extra(SocketAttribute.local_port)
                    self.front_ports[i] = int(port)
            except BaseException:
                for listener in listeners:
                    await listener.aclose()
                raise
            for i, listener in enumerate(listeners):
                tg.start_soon(self._serve, i, listener)
            task_status.started(list(self.front_ports))

    async def _serve(self, target: int, listener: anyio.abc.Listener[anyio.abc.SocketStream]
                     ) -> None:
        async with listener:
            await listener.serve(lambda stream: self._relay(stream, target))

    def refresh(self) -> None:
        """Break every open connection the current link state cuts."""
        for item in list(self._open):
            if self.links.cut(item.a, item.b):
                item.scope.cancel()

    def break_all(self, node: int) -> None:
        """Break every open connection of ``node`` (its process died)."""
        for item in list(self._open):
            if node in (item.a, item.b):
                item.scope.cancel()

    async def _relay(self, inbound: anyio.abc.SocketStream, target: int) -> None:
        outbound: anyio.abc.SocketStream | None = None
        try:
            host = str(inbound.extra(SocketAttribute.remote_address)[0])
            source = self._by_host.get(host, -1)
            backend = self.backend_ports[target]
            if backend is None or self.links.cut(source, target):
                self.refused += 1
                return
            try:
                outbound = await anyio.connect_tcp(
                    node_host(target), backend, local_host=host if source >= 0 else None
                )
            except OSError:
                self.refused += 1
                return
            self.relayed += 1
            item = _Relayed(source, target, anyio.CancelScope())
            self._open.add(item)
            if self.links.cut(source, target):  # cut while we were connecting
                item.scope.cancel()
            try:
                with item.scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, inbound, outbound, source, target,
                                      tg.cancel_scope)
                        tg.start_soon(self._pump, outbound, inbound, source, target,
                                      tg.cancel_scope)
            finally:
                self._open.discard(item)
        finally:
            with anyio.CancelScope(shield=True):
                await _abort(inbound)
                if outbound is not None:
                    await _abort(outbound)

    async def _pump(self, src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, a: int,
                    b: int, scope: anyio.CancelScope) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](math.inf)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._deliver, receive, dst, scope)
            last = 0.0
            try:
                async with send:
                    while True:
                        data = await src.receive()
                        due = max(last, anyio.current_time() + self.links.delay(a, b, self._rng))
                        last = due
                        send.send_nowait((due, data))
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                pass

    async def _deliver(self, receive: anyio.abc.ObjectReceiveStream[tuple[float, bytes]],
                       dst: anyio.abc.SocketStream, scope: anyio.CancelScope) -> None:
        try:
            async with receive:
                async for due, data in receive:
                    wait = due - anyio.current_time()
                    if wait > 0:
                        await anyio.sleep(wait)
                    await dst.send(data)
                await half_close(dst)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()


async def _abort(stream: anyio.abc.SocketStream) -> None:
    try:
        await stream.aclose()
    except OSError:
        pass
