"""The running nodes of a testnet, behind one interface for the three modes.

:class:`Cluster` is what the runner drives: start and stop nodes, kill, pause, cut links,
partition, set latency and loss, and take a :class:`NodeSample` of each node. :class:`LocalCluster`
runs :class:`~overlay.node.Node` objects in this process, over the memory network (``inproc``)
or loopback TCP through the :class:`~overlay.testnet._relay.Relay` (``tcp``); the ``procs``
mode's cluster is in :mod:`overlay.testnet._procs`.

In one process a *kill* cuts the node's links first (its peers see connections reset, as when
a process dies) and then cancels the node; a restart runs a new node with the same key, home
address and configuration.

Every node in one process reads the same wall clock, :meth:`LocalCluster.wall_clock`: the
unix time when the cluster was made plus the event loop's clock since then. On trio's
``MockClock`` a testnet therefore runs on virtual time throughout: its records, peer manager
and DHT bucket refreshes see the 60 s of a 60-virtual-second run, not the real minutes the run
took (a node reading ``time.time()`` would refresh every bucket in a run that takes longer than
the refresh interval in real time, which a real run of that length never does).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from overlay.identity import NodeId
from overlay.node._node import Node
from overlay.testing import LinkConditions, MemoryNetwork
from overlay.testnet._app import Recorder, RequestRecord, TestnetApp
from overlay.testnet._plan import NodePlan
from overlay.testnet._relay import Relay

__all__ = ["Cluster", "LocalCluster", "NodeSample"]


@dataclass(frozen=True, slots=True)
class NodeSample:
    """One node at one moment."""

    up: bool
    peers: frozenset[int] = frozenset()
    messages: int = 0
    """Messages sent and received, all channels, since the node (process) started."""
    bytes: int = 0
    """Wire bytes sent and received since the node (process) started."""


class Cluster(abc.ABC):
    """The nodes of one run (see the module docstring)."""

    def __init__(self, plans: Sequence[NodePlan]) -> None:
        self.plans = list(plans)
        self.index_of = {p.node_id: p.spec.index for p in plans}

    @abc.abstractmethod
    async def start(self, i: int) -> None:
        """Start node ``i`` (returns once it listens)."""

    @abc.abstractmethod
    async def stop(self, i: int, *, kill: bool) -> None:
        """Stop node ``i``: abruptly (``kill``) or with a clean shutdown."""

    async def pause(self, i: int) -> None:
        raise NotImplementedError  # the manifest parser allows pause in procs mode only

    async def resume(self, i: int) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    def is_up(self, i: int) -> bool: ...

    @abc.abstractmethod
    def isolate(self, nodes: Sequence[int], on: bool) -> None:
        """Cut (or restore) every link of ``nodes``."""

    @abc.abstractmethod
    def partition(self, groups: Sequence[Sequence[int]] | None) -> None:
        """Split into ``groups`` (the nodes in none form one more), or heal with None."""

    @abc.abstractmethod
    def set_links(self, nodes: Sequence[int], latency: float, loss: float) -> None:
        """Latency and loss on every link of ``nodes`` (every node when empty)."""

    @abc.abstractmethod
    def sample(self) -> list[NodeSample]: ...

    @abc.abstractmethod
    def drain_requests(self) -> list[RequestRecord]: ...

    def every(self, nodes: Sequence[int]) -> Sequence[int]:
        return nodes or range(len(self.plans))


class LocalCluster(Cluster):
    """Nodes in this process: ``inproc`` (memory network) or ``tcp`` (relay)."""

    def __init__(self, plans: Sequence[NodePlan], tg: anyio.abc.TaskGroup, *,
                 memory: MemoryNetwork | None = None, relay: Relay | None = None) -> None:
        super().__init__(plans)
        assert (memory is None) != (relay is None)
        self._tg = tg
        self.memory = memory
        self.relay = relay
        self._nodes: list[Node | None] = [None] * len(plans)
        self._scopes: list[anyio.CancelScope | None] = [None] * len(plans)
        self._stopped: list[anyio.Event | None] = [None] * len(plans)
        self._recorders = [Recorder(clock=anyio.current_time) for _ in plans]
        self._retired: list[tuple[int, int]] = [(0, 0)] * len(plans)
        self._isolated: set[int] = set()
        self._groups: list[list[int]] | None = None
        self._epoch = time.time() - anyio.current_time()

    def wall_clock(self) -> float:
        """Unix seconds for the nodes: fixed at the cluster's creation, then advancing with the
        event loop's clock (virtual on trio's ``MockClock``; see the module docstring)."""
        return self._epoch + anyio.current_time()

    async def start(self, i: int) -> None:
        if self._nodes[i] is None:
            await self._tg.start(self._run, i)

    async def _run(self, i: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        plan = self.plans[i]
        transports = None
        if self.memory is not None:
            transports = [self.memory.node_transport(host=plan.host, port=plan.port)]
        stopped = self._stopped[i] = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._scopes[i] = scope
                async with Node(plan.config(), key=plan.key, transports=transports,
                                wall_clock=self.wall_clock) as node:
                    TestnetApp(node, plan.app, self._recorders[i]).install()
                    if self.relay is not None:
                        self.relay.backend_ports[i] = node.address.port
                    self._nodes[i] = node
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            node_ = self._nodes[i]
            if node_ is not None:
                messages, octets = _traffic(node_)
                old_m, old_b = self._retired[i]
                self._retired[i] = (old_m + messages, old_b + octets)
            self._nodes[i] = None
            self._scopes[i] = None
            stopped.set()

    async def stop(self, i: int, *, kill: bool) -> None:
        scope, stopped = self._scopes[i], self._stopped[i]
        if scope is None or stopped is None:
            return
        if kill:
            self._cut(i, True)
        scope.cancel()
        await stopped.wait()
        if kill:
            self._cut(i, i in self._isolated)

    def is_up(self, i: int) -> bool:
        return self._nodes[i] is not None

    def _cut(self, i: int, on: bool) -> None:
        if self.relay is not None:
            if on:
                self.relay.links.isolated.add(i)
                self.relay.refresh()
            else:
                self.relay.links.isolated.discard(i)
        else:
            self._apply_memory_partition(extra={i} if on else set())

    def isolate(self, nodes: Sequence[int], on: bool) -> None:
        if on:
            self._isolated.update(nodes)
        else:
            self._isolated.difference_update(nodes)
        if self.relay is not None:
            self.relay.links.isolated = set(self._isolated)
            self.relay.refresh()
        else:
            self._apply_memory_partition()

    def partition(self, groups: Sequence[Sequence[int]] | None) -> None:
        self._groups = [list(g) for g in groups] if groups is not None else None
        if self.relay is not None:
            if groups is None:
                self.relay.links.heal()
            else:
                self.relay.links.partition(groups)
                self.relay.refresh()
        else:
            self._apply_memory_partition()

    def _apply_memory_partition(self, extra: set[int] | frozenset[int] = frozenset()) -> None:
        """The memory network has one partition at a time: combine the groups and the
        isolated nodes (each alone) into it."""
        assert self.memory is not None
        alone = self._isolated | extra
        if self._groups is None and not alone:
            self.memory.heal()
            return
        ids = [NodeId(p.node_id) for p in self.plans]
        groups = [[ids[n] for n in g if n not in alone] for g in (self._groups or [])]
        groups += [[ids[n]] for n in sorted(alone)]
        self.memory.partition(*groups)

    def set_links(self, nodes: Sequence[int], latency: float, loss: float) -> None:
        targets = self.every(nodes)
        if self.relay is not None:
            for n in targets:
                for table, value in ((self.relay.links.latency, latency),
                                     (self.relay.links.loss, loss)):
                    if value:
                        table[n] = value
                    else:
                        table.pop(n, None)
            return
        assert self.memory is not None
        ids = [NodeId(p.node_id) for p in self.plans]
        conditions = (LinkConditions(latency=latency, loss=loss) if latency or loss else None)
        chosen = set(targets)
        for a in chosen:
            for b in range(len(ids)):
                if b != a and (b not in chosen or b > a):
                    self.memory.set_link(ids[a], ids[b], conditions)

    def sample(self) -> list[NodeSample]:
        out = []
        for i, node in enumerate(self._nodes):
            old_m, old_b = self._retired[i]
            if node is None:
                out.append(NodeSample(up=False, messages=old_m, bytes=old_b))
                continue
            messages, octets = _traffic(node)
            peers = frozenset(self.index_of[p] for p in node.connected_peers()
                              if p in self.index_of)
            out.append(NodeSample(up=True, peers=peers, messages=old_m + messages,
                                  bytes=old_b + octets))
        return out

    def totals(self) -> dict[str, Any]:
        """DHT lookup counters and messages per channel, summed over the running nodes."""
        lookups = rounds = queries = 0
        channels: dict[str, int] = {}
        for node in self._nodes:
            if node is None:
                continue
            snapshot = node.metrics_snapshot()
            dht = snapshot.dht
            lookups += dht.lookups_succeeded + dht.lookups_failed
            rounds += dht.lookup_rounds
            queries += dht.lookup_messages
            for name, c in snapshot.channels.items():
                channels[name] = channels.get(name, 0) + c.messages_sent + c.messages_received
        return {"lookups": lookups, "rounds": rounds, "messages": queries,
                "channel_messages": dict(sorted(channels.items()))}

    def drain_requests(self) -> list[RequestRecord]:
        out: list[RequestRecord] = []
        for recorder in self._recorders:
            out.extend(recorder.drain())
        return out

    async def aclose(self) -> None:
        for i in range(len(self.plans)):
            scope = self._scopes[i]
            if scope is not None:
                scope.cancel()
        for event in self._stopped:
            if event is not None:
                await event.wait()


def _traffic(node: Node) -> tuple[int, int]:
    snapshot = node.metrics_snapshot()
    messages = sum(c.messages_sent + c.messages_received for c in snapshot.channels.values())
    return messages, snapshot.wire_bytes_sent + snapshot.wire_bytes_received
