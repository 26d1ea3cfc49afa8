"""The main run: N nodes on a discrete-event scheduler, driving the real pure cores.

What each node runs (theory of operation)
-----------------------------------------
* **Start** (staggered over the first 5 s): dial ``bootstrap_peers`` random nodes (its seeds);
  providers publish each capability they hold through the DHT (a FIND_NODE lookup for the
  provider key, then a store on the nodes it returned, one RTT later); every node schedules
  its first PEX round; seekers schedule their first policy tick.
* **Connections** are a simplified connection set: a dial completes one RTT later when the
  remote is online and below ``max_connections`` (else it fails); both sides then hold the
  other's record in their ``RecordStore`` (the handshake carries it). A connected peer's
  advertised capabilities count as confirmed.
* **PEX** (``discovery.PexAsker`` / ``PexResponder``): each round the asker picks a connected
  peer and names its deficits; the responder's answer (computed when the request is sent) is
  rate limited and selected by the real core; the records land in the asker's store one RTT
  later with the responder as their source.
* **Policy** (``routing.PolicyEngine``), seekers only: every ``heartbeat`` (and at once when
  discovery or PEX brings records of a short capability) a snapshot of connections and stored
  candidates goes in; ``Dial`` opens a connection, ``Prune`` closes one, ``Discover`` does
  what a node's does (``World._discover``): PEX asks to up to 3 connected peers for the
  capability, then, when they brought fewer than 8 new providers, a provider lookup (2
  disjoint paths) ending at 8 new ones, whose providers enter the store when it ends.
* **Churn**: nodes leave at random times (``churn_per_hour``), dropping their connections and
  answering nothing, and return after an exponential downtime to start again.

A lookup is computed when it starts, against the network state at that instant (see
``overlay.sim._net``); its result is delivered at ``start + elapsed``.

**Bootstrap from seeds** (``seed_nodes > 0``; otherwise the tables start full and nodes dial
random nodes), as ``overlay.node._dht`` and seed mode do it: routing tables start empty; the
seeds (no capabilities, no targets) start first; every other node dials ``bootstrap_peers`` of
them (again after 1-3 s while it has no connection, when a seed was full), asks the seed by
PEX as soon as it connects, and the seed hangs up ``SEED_STAY`` later;
the outbound fill dials records from the node's own store. One second after peers connect
(``SETTLE_DELAY``) a node adds them to its table as verified contacts and, if it added any
and its table is new or thin (fewer than ``k``), runs a bootstrap lookup for its own id, at
most every ``BOOTSTRAP_INTERVAL``; it publishes its capabilities once its table has contacts.
Lookups teach the tables as a node's (``SimNetwork.run_lookup(learn=True)``).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from discovery import (
    Budget,
    CapabilityInfo,
    CapabilityRecord,
    DiscoveryConfig,
    LookupConfig,
    LookupMode,
    PexAsker,
    PexConfig,
    PexRequest,
    PexResponder,
    PexVerdict,
    ProviderStore,
    RecordStore,
    RecordStoreConfig,
    SignedRecord,
    node_id_from_bytes,
    provider_key,
    record_netgroup,
)
from overlay.identity import NodeId
from overlay.sim._config import SimConfig
from overlay.sim._counters import Counters
from overlay.sim._net import LookupRun, SimNetwork, honest_responder
from routing import (
    Candidate,
    ConnectedPeer,
    ConnectionLimits,
    Dial,
    Discover,
    PolicyEngine,
    PolicySnapshot,
    Prune,
)

__all__ = ["NETWORK", "T0", "World"]

T0 = 1_700_000_000.0
NETWORK = "sim"
_START_SPREAD = 5.0
SETTLE_DELAY = 1.0
"""Seconds after a connection before the node's DHT absorbs its peers (``overlay.node._dht``)."""
BOOTSTRAP_INTERVAL = 10.0
"""Seconds between bootstrap lookups while the table is thin (``overlay.node._dht``)."""
_DISCOVER_WANT = 8
"""New providers one ``Discover`` looks for (``overlay.node._node._DISCOVER_WANT``)."""
_BUDGET = Budget().max_messages
"""Requests one ``Discover`` may send (PEX asks plus DHT queries: ``discovery.Budget``)."""
_PEX_FANOUT = DiscoveryConfig(NETWORK).pex_fanout
_PEX_MAX_RECORDS = DiscoveryConfig(NETWORK).pex_max_records
SEED_STAY = 1.5
"""Seconds a seed keeps a connection: the PEX exchange, then ``answer_grace`` (seed mode)."""

# event kinds
(_START, _CONNECT, _PEX, _PEX_ANSWER, _TICK, _DISCOVERED, _STORE, _LEAVE, _MAINTAIN,
 _HANG_UP, _REDIAL, _DISCOVER_DHT) = range(12)


@dataclass(slots=True)
class _Node:
    idx: int
    node_id: NodeId
    record: SignedRecord
    caps: frozenset[str]
    store: RecordStore
    asker: PexAsker
    responder: PexResponder
    engine: PolicyEngine | None = None
    online: bool = False
    started_at: float = 0.0
    conns: dict[int, bool] = field(default_factory=dict)  # peer -> outbound
    since: dict[int, float] = field(default_factory=dict)
    dialing: set[int] = field(default_factory=set)
    next_tick: float = float("inf")
    met_at: dict[str, float] = field(default_factory=dict)
    messages: int = 0
    epoch: int = 0
    fill_budget: int = 0
    # the bootstrap from seeds (seed_nodes > 0):
    absorbed: set[int] = field(default_factory=set)
    bootstrapped: bool = False
    last_bootstrap: float = float("-inf")
    maintain_at: float = float("inf")
    pex_at: float = float("inf")
    published: bool = False
    pex_on: bool = False


class World:
    """Everything of one main run (see the module docstring)."""

    def __init__(self, config: SimConfig, net: SimNetwork, rng: random.Random) -> None:
        self.config = config
        self.net = net
        self.rng = random.Random(rng.getrandbits(64))
        self.dht_rng = random.Random(rng.getrandbits(64))
        n = len(net)
        self.now = T0
        self.counters = Counters()
        self.lookup_config = LookupConfig(
            k=config.k, alpha=config.alpha, query_timeout=config.query_timeout
        )
        self.limits = ConnectionLimits(
            max_connections=config.max_connections, max_outbound=config.max_outbound,
            min_outbound=(3 * config.max_outbound + 9) // 10,
        )
        self.seeds = range(min(config.seed_nodes, n))
        members = range(len(self.seeds), n)  # nodes that may hold capabilities and seek
        holders: dict[str, list[int]] = {}
        caps_of: list[set[str]] = [set() for _ in range(n)]
        for name, share in config.capabilities:
            count = max(1, round(share * len(members)))
            chosen = sorted(self.rng.sample(members, count))
            holders[name] = chosen
            for i in chosen:
                caps_of[i].add(name)
        self.holders = holders
        seekers = max(1, round(config.seekers * len(members)))
        self.seekers = sorted(self.rng.sample(members, seekers))
        pex = PexConfig()
        groups: dict[NodeId, str] = {}
        self.nodes: list[_Node] = []
        expires = int(T0 + 10 * config.duration + 86_400)
        for i in range(n):
            node_id = node_id_from_bytes(net.ids[i])
            record = CapabilityRecord(
                node_id=node_id, public_key=b"", seq=1, network=NETWORK,
                addresses=(f"{1 + (i * 7919) % 223}.{(i // 223) % 256}.{i % 256}.1:26656",),
                capabilities={c: CapabilityInfo(1) for c in sorted(caps_of[i])},
                issued_at=int(T0), expires_at=expires,
            )
            groups[node_id] = record_netgroup(record)
            node_rng = random.Random(self.rng.getrandbits(64))
            self.nodes.append(_Node(
                idx=i, node_id=node_id, record=SignedRecord(b"", record),
                caps=frozenset(caps_of[i]),
                store=RecordStore(RecordStoreConfig(max_records=256, max_per_source=64)),
                asker=PexAsker(pex, rng=node_rng),
                responder=PexResponder(pex, rng=node_rng, netgroup=lambda r: groups[r.node_id]),
            ))
        self.by_id = {node.node_id: node.idx for node in self.nodes}
        for i in self.seekers:
            self.nodes[i].engine = PolicyEngine(self.nodes[i].node_id)
        self.provider_stores: dict[int, ProviderStore[int]] = {}
        self.responder = honest_responder(
            net, self.provider_stores, lambda i: self.nodes[i].online, lambda: self.now
        )
        self._heap: list[tuple[float, int, int, int, int, object]] = []
        self._seq = 0
        self.provider_lookups: list[tuple[int, int]] = []  # (rounds, messages) of Discover
        # for the picture, in seconds since the start:
        self.met_log: list[tuple[float, str]] = []  # a seeker first met a target
        self.lookup_latency: list[tuple[float, float]] = []  # (start, ms) of Discover lookups
        self.leave_log: list[float] = []  # a node left (churn)
        for i in range(n):
            at = T0 if i in self.seeds else T0 + self.rng.uniform(0, _START_SPREAD)
            self._push(at, _START, i)
        leaves = round(config.churn_per_hour * n * config.duration / 3600)
        for i in self.rng.sample(range(n), min(n, leaves)):
            self._push(T0 + self.rng.uniform(_START_SPREAD, config.duration), _LEAVE, i)

    # -- scheduler -------------------------------------------------------------------------------

    def _push(self, at: float, kind: int, a: int, b: int = -1, payload: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, a, b, payload))

    def run(self) -> None:
        end = T0 + self.config.duration
        heap = self._heap
        nodes = self.nodes
        while heap and heap[0][0] <= end:
            at, _, kind, a, b, payload = heapq.heappop(heap)
            self.now = at
            self.counters.events += 1
            node = nodes[a]
            if kind == _START:
                self._start(node)
            elif not node.online:
                continue
            elif kind == _CONNECT:
                self._connected(node, b, payload)
            elif kind == _PEX:
                if payload == node.epoch and at == node.pex_at:
                    node.pex_at = float("inf")
                    self._pex(node)
            elif kind == _PEX_ANSWER:
                self._pex_answer(node, b, payload)
            elif kind == _TICK:
                if at == node.next_tick:
                    self._tick(node)
            elif kind == _DISCOVERED:
                self._discovered(node, payload)
            elif kind == _DISCOVER_DHT:
                self._discover_dht(node, payload)
            elif kind == _STORE:
                self._store(node, payload)
            elif kind == _LEAVE:
                self._leave(node)
            elif kind == _MAINTAIN:
                if at == node.maintain_at:
                    self._maintain(node)
            elif kind == _REDIAL:
                if payload == node.epoch and not node.conns:
                    self._dial(node, b)
            elif kind == _HANG_UP:
                if payload == node.epoch and b in node.conns:
                    self._disconnect(node, nodes[b])
                    self._fill(node)

    # -- handlers --------------------------------------------------------------------------------

    def _start(self, node: _Node) -> None:
        if node.online:
            return
        node.online = True
        node.epoch += 1
        node.started_at = self.now
        node.fill_budget = 3 * self.config.bootstrap_peers
        n = len(self.nodes)
        if self.seeds:
            node.fill_budget *= 4  # the fill dials known records, some of them full
            node.published = node.bootstrapped = node.pex_on = False
            node.absorbed.clear()
            if node.idx not in self.seeds:
                picks = self.rng.sample(self.seeds, min(len(self.seeds),
                                                        self.config.bootstrap_peers))
                for j in picks:
                    self._dial(node, j)
        else:
            for j in self.rng.sample(range(n), min(n - 1, self.config.bootstrap_peers + 1)):
                if j != node.idx and len(node.dialing) < self.config.bootstrap_peers:
                    self._dial(node, j)
            for cap in sorted(node.caps):
                self._publish(node, cap)
            self._start_pex(node, self.now + self.rng.uniform(0.5, 1.5))
        if node.engine is not None:
            self._schedule_tick(node, self.now)  # the node's driver ticks as it starts

    def _start_pex(self, node: _Node, at: float) -> None:
        node.pex_on = True
        self._schedule_pex(node, at)

    def _schedule_pex(self, node: _Node, at: float) -> None:
        if at < node.pex_at:
            node.pex_at = at
            self._push(at, _PEX, node.idx, payload=node.epoch)

    def _fill(self, node: _Node) -> None:
        """The peer manager's outbound fill, simplified: keep ``bootstrap_peers`` outbound
        connections (dials in flight included) by dialing random nodes (with seeds: nodes
        whose records the node holds), a bounded number of times per start."""
        if not node.online or node.fill_budget <= 0:
            return
        outbound = sum(1 for j, out in node.conns.items() if out and j not in self.seeds)
        missing = self.config.bootstrap_peers - outbound - len(node.dialing)
        if missing <= 0:
            return
        if not self.seeds:
            node.fill_budget -= 1
            self._dial(node, self.rng.randrange(len(self.nodes)))
            return
        if node.idx in self.seeds:
            return
        known = [j for r in node.store.records(self.now)
                 if (j := self.by_id[r.node_id]) not in node.conns and j not in node.dialing
                 and j not in self.seeds]
        for j in self.rng.sample(known, min(missing, len(known), node.fill_budget)):
            node.fill_budget -= 1
            self._dial(node, j)

    def _dial(self, node: _Node, j: int) -> None:
        if j in node.conns or j in node.dialing or j == node.idx:
            return
        node.dialing.add(j)
        node.messages += 1
        self.counters.dials += 1
        self._push(self.now + self.net.rtt(node.idx, j), _CONNECT, node.idx, j, node.epoch)

    def _connected(self, node: _Node, j: int, epoch: object) -> None:
        node.dialing.discard(j)
        other = self.nodes[j]
        if (
            epoch != node.epoch
            or not other.online
            or len(other.conns) >= self.config.max_connections
            or len(node.conns) >= self.config.max_connections
        ):
            self.counters.dial_failures += 1
            self._fill(node)
            if j in self.seeds and epoch == node.epoch:  # the peer manager's dial backoff
                self._push(self.now + self.rng.uniform(1.0, 3.0), _REDIAL, node.idx, j,
                           node.epoch)
            return
        node.conns[j] = True
        other.conns[node.idx] = False
        node.since[j] = other.since[node.idx] = self.now
        node.store.offer(other.record, self.now, other.node_id)
        other.store.offer(node.record, self.now, node.node_id)
        self._check_met(node)
        self._check_met(other)
        self._kick(node)  # the node's driver ticks when a peer connects or disconnects
        self._kick(other)
        if self.seeds:
            for x in (node, other):
                self._schedule_maintain(x, self.now + SETTLE_DELAY)
            if j in self.seeds:  # the seed answers PEX at once, then hangs up
                self._push(self.now + SEED_STAY, _HANG_UP, node.idx, j, node.epoch)
                if node.pex_on:
                    self._schedule_pex(node, self.now + 0.01)
            if not node.pex_on:
                self._start_pex(node, self.now + 0.01)

    # -- the bootstrap from seeds (overlay.node._dht) ----------------------------------------

    def _schedule_maintain(self, node: _Node, at: float) -> None:
        if at < node.maintain_at:
            node.maintain_at = at
            self._push(at, _MAINTAIN, node.idx)

    def _maintain(self, node: _Node) -> None:
        node.maintain_at = float("inf")
        table = self.net.tables[node.idx]
        added = 0
        for j in node.conns:
            if j not in node.absorbed:
                node.absorbed.add(j)
                table.add(self.net.ids[j], None, verified=True, now=self.now)
                added += 1
        thin = len(table) < self.config.k
        if added and (not node.bootstrapped or thin) and (
            self.now - node.last_bootstrap >= BOOTSTRAP_INTERVAL
        ):
            node.last_bootstrap = self.now
            node.bootstrapped = True
            self.counters.bootstrap_lookups += 1
            self._lookup(node, self.net.ids[node.idx], LookupMode.FIND_NODE, paths=1)
        if len(table) and not node.published:
            node.published = True
            for cap in sorted(node.caps):
                self._publish(node, cap)
        if thin:
            self._schedule_maintain(node, self.now + BOOTSTRAP_INTERVAL)

    def _disconnect(self, a: _Node, b: _Node) -> None:
        for x, y in ((a, b), (b, a)):
            x.conns.pop(y.idx, None)
            x.since.pop(y.idx, None)
            x.asker.forget(y.node_id)
            x.responder.forget(y.node_id)
            if x.online:
                self._kick(x)

    def _leave(self, node: _Node) -> None:
        self.counters.leaves += 1
        self.leave_log.append(self.now - T0)
        for j in list(node.conns):
            self._disconnect(node, self.nodes[j])
        node.online = False
        node.dialing.clear()
        node.next_tick = node.maintain_at = node.pex_at = float("inf")
        self._push(self.now + self.rng.expovariate(1 / self.config.downtime), _START, node.idx)

    def _deficits(self, node: _Node) -> dict[str, int]:
        if node.engine is None:
            return {}
        n = len(node.conns)
        out: dict[str, int] = {}
        for target in self.config.targets:
            have = sum(1 for j in node.conns if target.capability in self.nodes[j].caps)
            out[target.capability] = max(0, target.required(n) - have)
        return out

    def _pex(self, node: _Node) -> None:
        peers = [self.nodes[j].node_id for j in node.conns]
        plan = node.asker.plan(
            self.now, peers, known=len(node.store), deficits=self._deficits(node)
        )
        self._schedule_pex(node, plan.next_at)
        if plan.peer is None:
            return
        j = self.by_id[plan.peer]
        other = self.nodes[j]
        node.messages += 1
        self.counters.pex_requests += 1
        answer = other.responder.handle(node.node_id, plan.request, other.store, now=self.now)
        if answer.verdict is PexVerdict.RATE_LIMITED:
            self.counters.pex_rate_limited += 1
            return
        self._push(self.now + self.net.rtt(node.idx, j), _PEX_ANSWER, node.idx, j, answer.records)

    def _pex_answer(self, node: _Node, j: int, records: object) -> None:
        assert isinstance(records, tuple)
        source = self.nodes[j].node_id
        wanted = {c for c, d in self._deficits(node).items() if d > 0}
        useful = False
        for signed in records:
            self.counters.pex_records += 1
            if signed.node_id != node.node_id and node.store.offer(signed, self.now, source).stored:
                useful = useful or bool(wanted & signed.record.capabilities.keys())
        if useful:
            self._kick(node)
        if self.seeds:
            self._fill(node)

    def _publish(self, node: _Node, cap: str) -> None:
        key = provider_key(NETWORK, cap)
        self.counters.publish_lookups += 1
        run = self._lookup(node, key, LookupMode.FIND_NODE, paths=2)
        holders = [self.net.index[c] for c in run.replicas]
        self._push(self.now + run.elapsed + 0.15, _STORE, node.idx, payload=(key, holders))

    def _store(self, node: _Node, payload: object) -> None:
        assert isinstance(payload, tuple)
        key, holders = payload
        for h in holders:
            if not self.nodes[h].online:
                continue
            store = self.provider_stores.get(h)
            if store is None:
                store = self.provider_stores[h] = ProviderStore()
            store.put(
                key, self.net.ids[node.idx], node.idx, seq=1,
                expires_at=self.now + self.config.provider_ttl, source=self.net.ids[node.idx],
                now=self.now,
            )

    def _lookup(self, node: _Node, key: bytes, mode: LookupMode, *, paths: int,
                want: int | None = None, max_messages: int | None = None,
                until: Callable[[int], bool] | None = None) -> LookupRun:
        run = self.net.run_lookup(
            node.idx, key, mode, self.responder, self.lookup_config, self.dht_rng,
            now=self.now, loss=self.config.loss, paths=paths, want=want,
            learn=bool(self.seeds), max_messages=max_messages, until=until,
        )
        node.messages += run.result.messages
        self.counters.dht_lookups += 1
        self.counters.dht_rounds += run.result.rounds
        self.counters.dht_messages += run.result.messages
        return run

    # -- policy ----------------------------------------------------------------------------------

    def _schedule_tick(self, node: _Node, at: float) -> None:
        if at < node.next_tick:
            node.next_tick = at
            self._push(at, _TICK, node.idx)

    def _kick(self, node: _Node) -> None:
        if node.engine is not None and node.next_tick > self.now + 0.5:
            self._schedule_tick(node, self.now + 0.01)

    def _tick(self, node: _Node) -> None:
        engine = node.engine
        assert engine is not None
        node.next_tick = float("inf")
        self.counters.policy_ticks += 1
        nodes = self.nodes
        peers = tuple(
            ConnectedPeer(nodes[j].node_id, nodes[j].caps, out, 0.0, False, node.since[j])
            for j, out in node.conns.items()
        )
        seen: dict[NodeId, Candidate] = {}
        for target in self.config.targets:
            for signed in node.store.candidates(target.capability, self.now):
                nid = signed.node_id
                if nid not in seen:
                    seen[nid] = Candidate(nid, frozenset(signed.record.capabilities))
        dialing = frozenset(nodes[j].node_id for j in node.dialing)
        plan = engine.tick(PolicySnapshot(
            self.now, peers, tuple(seen.values()), self.config.targets, self.limits, dialing
        ))
        for action in plan.actions:
            if isinstance(action, Dial):
                self._dial(node, self.by_id[action.node_id])
            elif isinstance(action, Prune):
                self.counters.prunes += 1
                self._disconnect(node, nodes[self.by_id[action.node_id]])
            elif isinstance(action, Discover):
                self._discover(node, action.capability)
        self._schedule_tick(node, self.now + self.config.heartbeat)

    def _discover(self, node: _Node, cap: str) -> None:
        """A node's ``Discover`` (``Node._discover_providers``): ``discovery.candidates(cap,
        limit=8, exclude=known)`` with ``known`` its connected peers and the stored records of
        ``cap``. Connected peers and the store have nothing new then, so it asks up to
        ``pex_fanout`` connected peers (lowest ids) by PEX for ``cap``, and when those answers
        bring fewer than 8 new providers, runs a provider lookup for ``8 - new + |seen|``
        providers within what is left of the 64-message budget, ending once it has 8 new."""
        self.counters.discoveries += 1
        nodes = self.nodes
        seen = set(node.conns)
        seen.update(self.by_id[s.node_id] for s in node.store.candidates(cap, self.now))
        seen.add(node.idx)
        found = 0
        asked = sorted(node.conns, key=lambda j: nodes[j].node_id)[:min(_PEX_FANOUT, _BUDGET)]
        request = PexRequest(max=_PEX_MAX_RECORDS, wanted_capabilities=(cap,))
        wait = 0.0
        for j in asked:
            other = nodes[j]
            node.messages += 1
            self.counters.pex_requests += 1
            self.counters.discover_pex += 1
            rtt = self.net.rtt(node.idx, j)
            wait = max(wait, rtt)
            answer = other.responder.handle(node.node_id, request, other.store, now=self.now)
            if answer.verdict is PexVerdict.RATE_LIMITED:
                self.counters.pex_rate_limited += 1
                continue
            for signed in answer.records[:_PEX_MAX_RECORDS]:
                i = self.by_id.get(signed.node_id)
                if i is not None and i not in seen and cap in signed.record.capabilities:
                    seen.add(i)
                    found += 1
            self._push(self.now + rtt, _PEX_ANSWER, node.idx, j, answer.records)
        budget = _BUDGET - len(asked)
        if found < _DISCOVER_WANT and budget > 0:
            payload = (node.epoch, cap, frozenset(seen), found, budget)
            self._push(self.now + wait, _DISCOVER_DHT, node.idx, payload=payload)

    def _discover_dht(self, node: _Node, payload: object) -> None:
        assert isinstance(payload, tuple)
        epoch, cap, seen, found, budget = payload
        assert isinstance(seen, frozenset)
        known: frozenset[int] = seen
        if epoch != node.epoch:
            return
        new: set[int] = set()
        missing: int = _DISCOVER_WANT - found

        def enough(provider: int) -> bool:
            if provider not in known:
                new.add(provider)
            return len(new) >= missing

        self.counters.provider_lookups += 1
        run = self._lookup(
            node, provider_key(NETWORK, cap), LookupMode.GET_PROVIDERS, paths=2,
            want=missing + len(known), max_messages=budget, until=enough,
        )
        self.provider_lookups.append((run.result.rounds, run.result.messages))
        self.lookup_latency.append((self.now - T0, 1000 * run.elapsed))
        self._push(self.now + run.elapsed, _DISCOVERED, node.idx, payload=tuple(run.providers))

    def _discovered(self, node: _Node, providers: object) -> None:
        assert isinstance(providers, tuple)
        for p in providers:
            node.store.offer(self.nodes[p].record, self.now, "dht")
        self._kick(node)  # the node's driver ticks when a Discover ends

    def _check_met(self, node: _Node) -> None:
        if node.engine is None:
            return
        n = len(node.conns)
        for target in self.config.targets:
            cap = target.capability
            if cap in node.met_at:
                continue
            have = sum(1 for j in node.conns if cap in self.nodes[j].caps)
            if have >= target.required(n) and have > 0:
                node.met_at[cap] = self.now - node.started_at
                self.met_log.append((self.now - T0, cap))
