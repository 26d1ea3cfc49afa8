"""Seed mode's bookkeeping: whom to hang up on, and whom to crawl next (pure, sans-IO).

Theory of operation
-------------------
A seed node (``[discovery] seed_mode = true``) exists to hand out records and to collect them.
It keeps every connection short and asks every peer once:

* **Asking.** Each connection is asked for records once (:meth:`SeedKeeper.fresh` lists the
  connected peers not yet asked on this connection); the driver reports the answer (or the
  failure) with :meth:`SeedKeeper.asked`. A request the seed answers is reported with
  :meth:`SeedKeeper.served`.
* **Hanging up.** :meth:`SeedKeeper.hang_ups` returns the peers whose time is up: ``answer_grace``
  after the exchange went both ways (we asked and answered), ``linger`` after we asked when the
  peer has not asked us (it may still want to), and ``max_stay`` after the connection was first
  seen whatever happened. A peer the caller says to keep (persistent, unconditional) is never
  returned.
* **Crawling.** :meth:`SeedKeeper.crawl` picks, among the nodes whose records the seed holds,
  those to dial next: not connected, not crawled within ``recrawl_after``, at most
  ``max_crawls`` crawl dials and crawl connections at once; each pick is remembered.

All times are the driver's monotonic seconds, passed in as ``now``. State is bounded: entries
of peers that disconnected are dropped by :meth:`observe`, and crawl times are kept only for the
nodes offered to :meth:`crawl` (the record store's, itself bounded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, fields

from overlay.errors import ConfigError
from overlay.identity import NodeId

__all__ = ["SeedConfig", "SeedKeeper"]


@dataclass(frozen=True, slots=True)
class SeedConfig:
    """The numbers of seed mode. Durations are seconds."""

    answer_grace: float = 1.0
    """After the exchange went both ways: time for the last answer to drain, then hang up."""
    linger: float = 5.0
    """After we asked a peer that has not asked us: how long it may still ask."""
    max_stay: float = 10.0
    """The longest any connection to a seed lasts (persistent and unconditional peers aside)."""
    max_crawls: int = 8
    """Crawl dials plus crawl connections open at once."""
    recrawl_after: float = 600.0
    """A node is crawled again at most this often."""
    tick: float = 0.5
    """How often the driver looks at its connections and starts crawls."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"seed.{f.name}", f"must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"seed.{f.name}", f"must be finite and > 0, got {value!r}")
        if self.linger > self.max_stay or self.answer_grace > self.max_stay:
            raise ConfigError("seed.max_stay", "must be at least linger and answer_grace")


@dataclass(slots=True)
class _Visit:
    since: float
    asked_at: float | None = None
    served_at: float | None = None
    crawl: bool = False
    hung_up: bool = False


class SeedKeeper:
    """Seed mode's decisions (see the module docstring)."""

    def __init__(self, config: SeedConfig | None = None) -> None:
        self.config = config or SeedConfig()
        self._visits: dict[NodeId, _Visit] = {}
        self._crawled: dict[NodeId, float] = {}
        self._dialing: set[NodeId] = set()

    def observe(self, connected: Collection[NodeId], now: float) -> None:
        """The peers connected now: new ones start their stay, gone ones are forgotten."""
        for peer in connected:
            if peer not in self._visits:
                self._visits[peer] = _Visit(now)
        for peer in [p for p in self._visits if p not in connected]:
            del self._visits[peer]

    def fresh(self) -> list[NodeId]:
        """Connected peers not yet asked on this connection (in order of arrival)."""
        return [p for p, v in self._visits.items() if v.asked_at is None]

    def asked(self, peer: NodeId, now: float) -> None:
        """We asked ``peer`` and got an answer (or gave up)."""
        visit = self._visits.get(peer)
        if visit is not None and visit.asked_at is None:
            visit.asked_at = now

    def served(self, peer: NodeId, now: float) -> None:
        """We answered a request of ``peer``."""
        visit = self._visits.get(peer)
        if visit is not None:
            visit.served_at = now

    def hang_up_at(self, peer: NodeId) -> float | None:
        """When ``peer``'s stay ends (None: not connected)."""
        visit = self._visits.get(peer)
        if visit is None:
            return None
        cfg = self.config
        end = visit.since + cfg.max_stay
        if visit.asked_at is not None:
            if visit.served_at is not None:
                end = min(end, max(visit.asked_at, visit.served_at) + cfg.answer_grace)
            else:
                end = min(end, visit.asked_at + cfg.linger)
        return end

    def hang_ups(self, now: float, keep: Callable[[NodeId], bool]) -> list[NodeId]:
        """Peers to disconnect now (each returned once; never one ``keep`` says to keep)."""
        out: list[NodeId] = []
        for peer, visit in self._visits.items():
            end = self.hang_up_at(peer)
            if end is not None and now >= end and not visit.hung_up and not keep(peer):
                out.append(peer)
                visit.hung_up = True  # returned once; observe() drops it when it is gone
        return out

    def crawl(self, known: Iterable[NodeId], now: float, *, self_id: NodeId) -> list[NodeId]:
        """Nodes to dial now, among ``known`` (the record store's); the driver reports the end
        of each dial with :meth:`dial_done`."""
        cfg = self.config
        open_crawls = len(self._dialing) + sum(
            1 for p, v in self._visits.items() if v.crawl and p not in self._dialing
        )
        budget = cfg.max_crawls - open_crawls
        picked: list[NodeId] = []
        seen: set[NodeId] = set()
        for node_id in known:
            seen.add(node_id)
            if budget <= 0:
                continue
            if node_id == self_id or node_id in self._visits or node_id in self._dialing:
                continue
            last = self._crawled.get(node_id)
            if last is not None and now - last < cfg.recrawl_after:
                continue
            self._crawled[node_id] = now
            self._dialing.add(node_id)
            picked.append(node_id)
            budget -= 1
        for node_id in [n for n in self._crawled if n not in seen]:
            del self._crawled[node_id]
        return picked

    def dial_done(self, node_id: NodeId, now: float, *, connected: bool) -> None:
        """A crawl dial ended; ``connected``: its connection is up (and counts as a crawl)."""
        self._dialing.discard(node_id)
        if connected:
            visit = self._visits.setdefault(node_id, _Visit(now))
            visit.crawl = True
