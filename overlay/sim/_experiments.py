"""Lookup experiments on the simulated network: finding providers after the main run, FIND_NODE
efficiency, and the DHT's defence against liars.

Liar scenarios (every node online, fresh provider stores per scenario):

* ``colluding``: a share of nodes answer every query with the ``k`` liars nearest the target
  (ids that exist and answer, so the far-contacts rule cannot catch them) and drop every provider
  record stored on them. Three honest providers per key publish through that same network (a
  FIND_NODE lookup with the scenario's path count, then a store on the nodes it returned).
* ``fresh``: liars answer every query with ``k`` freshly minted ids, each nearer the target
  than the one answering; those ids answer the same way (a Sybil with unlimited cheap
  identities). A minted id is backed by a key the liar holds and must be reachable at an address
  it controls, so it is served at the liar's address: the liar's netgroup and latency
  (``SimNetwork.minted``), and its records are dropped too.
* ``fresh-colluding``: as ``fresh``, but each minted id is served by a random liar (the liars
  share keys and addresses), so one answer spans up to ``k`` liar netgroups.

Each scenario runs with one path (the control) and with two (or more) disjoint paths; the
lookups apply netgroup diversity (``LookupConfig.max_per_netgroup``) unless the caller turns it
off (``diversity=False``, the comparison without the defence).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from discovery import LookupConfig, LookupMode, LookupOutcome, ProviderStore, provider_key
from overlay.sim._net import Answer, LookupRun, SimNetwork, honest_responder, nearest

__all__ = ["find_trials", "liar_experiment", "node_lookups", "percentile", "summary"]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summary(values: list[float], digits: int = 3) -> dict[str, float | None]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "max": r(max(values)) if values else None,
    }


def _share(count: int, total: int) -> float | None:
    return None if total == 0 else round(100.0 * count / total, 2)


def find_trials(
    net: SimNetwork,
    responder: Callable[[bytes, bytes, LookupMode], Answer | None],
    config: LookupConfig,
    rng: random.Random,
    *,
    network: str,
    capability: str,
    holders: int,
    origins: list[int],
    trials: int,
    now: float,
    loss: float,
    within: float,
) -> dict[str, Any]:
    """Provider lookups (2 disjoint paths) for ``capability`` from random online nodes: how
    often ``min(3, holders)`` providers are found within ``within`` seconds, at what cost."""
    key = provider_key(network, capability)
    want = min(3, holders)
    found = 0
    messages: list[float] = []
    times: list[float] = []
    for _ in range(trials):
        origin = rng.choice(origins)
        run = net.run_lookup(origin, key, LookupMode.GET_PROVIDERS, responder, config, rng,
                             now=now, loss=loss, paths=2, want=want, give_up_after=within)
        messages.append(run.result.messages)
        if len(run.providers) >= want and run.elapsed <= within:
            found += 1
            times.append(run.elapsed)
    return {
        "holders": holders,
        "want": want,
        "trials": trials,
        "found_pct": _share(found, trials),
        "messages": summary(messages, 1),
        "seconds_to_found": summary(times),
    }


def node_lookups(
    net: SimNetwork,
    responder: Callable[[bytes, bytes, LookupMode], Answer | None],
    config: LookupConfig,
    rng: random.Random,
    *,
    origins: list[int],
    trials: int,
    now: float,
    loss: float,
) -> dict[str, Any]:
    """FIND_NODE lookups (one path) for random targets: rounds, messages, and how often the
    k nodes found are the true k nearest among the online nodes."""
    rounds: list[float] = []
    messages: list[float] = []
    times: list[float] = []
    exact = 0
    online_sorted = sorted(origins)
    for _ in range(trials):
        origin = rng.choice(origins)
        target = rng.randbytes(20)
        run = net.run_lookup(origin, target, LookupMode.FIND_NODE, responder, config, rng,
                             now=now, loss=loss, paths=1)
        rounds.append(run.result.rounds)
        messages.append(run.result.messages)
        times.append(run.elapsed)
        truth = [net.ids[i] for i in net.closest_true(target, config.k, online_sorted)
                 if i != origin][: config.k - 1]
        if set(truth) <= set(run.result.closest):
            exact += 1
    return {
        "trials": trials,
        "rounds": summary(rounds, 1),
        "messages": summary(messages, 1),
        "seconds": summary(times),
        "found_true_closest_pct": _share(exact, trials),
    }


def _liar_responder(
    net: SimNetwork,
    honest: Callable[[bytes, bytes, LookupMode], Answer | None],
    liars: set[int],
    kind: str,
    rng: random.Random,
) -> Callable[[bytes, bytes, LookupMode], Answer | None]:
    liar_nums = sorted(net.nums[i] for i in liars)
    liar_list = sorted(liars)
    minted = net.minted
    k = net.k
    index = net.index

    def answer(peer: bytes, target: bytes, mode: LookupMode) -> Answer | None:
        i = index.get(peer)
        if i is not None and i not in liars:
            return honest(peer, target, mode)
        owner = i if i is not None else minted.get(peer)
        if owner is None:
            return None
        t = int.from_bytes(target, "big")
        me = int.from_bytes(peer, "big")
        if kind == "colluding":
            picks = [liar_nums[j] for j in nearest(liar_nums, t, k + 1) if liar_nums[j] != me]
            return Answer([n.to_bytes(20, "big") for n in picks[:k]], [])
        own = me ^ t
        if own <= 1:
            return Answer([], [])
        made = []
        for _ in range(k):
            new = (t ^ rng.randrange(max(1, own >> 4))).to_bytes(20, "big")
            if new not in index:
                served_by = owner if kind == "fresh" else rng.choice(liar_list)
                minted.setdefault(new, served_by)
                made.append(new)
        return Answer(made, [])

    return answer


def liar_experiment(
    net: SimNetwork,
    rng: random.Random,
    config: LookupConfig,
    *,
    kind: str,
    share: float,
    paths: int,
    keys: int,
    trials: int,
    now: float,
    loss: float,
    ttl: float,
    diversity: bool = True,
    density: bool = False,
) -> dict[str, Any]:
    """One liar scenario (see the module docstring); ``density``: every lookup (publishing and
    finding) applies the density limit with its origin's table estimate of the size."""
    if not diversity:  # a cap no path can reach: the lookups without the defence
        config = dataclasses.replace(config, max_per_netgroup=net.k * 1000)
    net.minted.clear()
    n = len(net)
    liars = set(rng.sample(range(n), round(share * n)))
    honest_nodes = [i for i in range(n) if i not in liars]
    stores: dict[int, ProviderStore[int]] = {}
    honest = honest_responder(net, stores, lambda i: True, lambda: now)
    responder = _liar_responder(net, honest, liars, kind, rng)
    key_providers: list[tuple[bytes, list[int]]] = []
    kept_on_honest: list[float] = []
    for c in range(keys):
        key = provider_key("sim-liars", f"cap{c}")
        providers = rng.sample(honest_nodes, 3)
        key_providers.append((key, providers))
        for p in providers:
            run = net.run_lookup(p, key, LookupMode.FIND_NODE, responder, config, rng,
                                 now=now, loss=loss, paths=paths, density=density)
            kept = 0
            for holder in run.replicas:
                h = net.index.get(holder)
                if h is None or h in liars:
                    continue  # liars drop provider records
                store = stores.setdefault(h, ProviderStore())
                store.put(key, net.ids[p], p, seq=1, expires_at=now + ttl, source=net.ids[p],
                          now=now)
                kept += 1
            kept_on_honest.append(kept)
    success = complete = 0
    first_rounds: list[float] = []
    first_messages: list[float] = []
    messages: list[float] = []
    for _ in range(trials):
        origin = rng.choice(honest_nodes)
        key, providers = rng.choice(key_providers)
        found: LookupRun = net.run_lookup(
            origin, key, LookupMode.GET_PROVIDERS, responder, config, rng, now=now, loss=loss,
            paths=paths, want=3, density=density,
        )
        messages.append(found.result.messages)
        if found.providers:
            success += 1
            first_rounds.append(found.result.first_provider_rounds or 0)
            first_messages.append(found.result.first_provider_messages or 0)
        if found.result.outcome is LookupOutcome.ENOUGH_PROVIDERS:
            complete += 1
    net.minted.clear()
    return {
        "kind": kind,
        "liar_share": share,
        "paths": paths,
        "netgroup_diversity": diversity,
        "density_limit": density,
        "trials": trials,
        "success_pct": _share(success, trials),
        "all_providers_pct": _share(complete, trials),
        "first_provider_rounds": summary(first_rounds, 1),
        "first_provider_messages": summary(first_messages, 1),
        "messages": summary(messages, 1),
        "honest_replicas_per_provider": summary(kept_on_honest, 1),
    }
