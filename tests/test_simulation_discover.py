"""The simulation's ``Discover`` does what a node's does (``Node._discover_providers``): the
policy driver ticks as the node starts, PEX is asked first (at most ``pex_fanout`` connected
peers), and a provider lookup follows only for providers still missing, within what is left of
the 64-message budget, ending once it has enough new ones."""

from __future__ import annotations

import random

from discovery import LookupConfig, LookupMode, ProviderStore, provider_key
from overlay.sim import render_report, simulate
from overlay.sim._net import SimNetwork, honest_responder
from overlay.sim._world import NETWORK, T0
from routing import CapabilityTarget, TargetSet
from tests.test_simulation_bootstrap import config, run

KEY = provider_key(NETWORK, "archive")


def network_with_providers(providers: int) -> tuple[SimNetwork, dict[int, ProviderStore[int]]]:
    """300 nodes with full tables; ``providers`` of them stored on the 16 nodes nearest KEY."""
    net = SimNetwork(300, random.Random(4), k=16, rtt=(0.05, 0.15), now=T0)
    stores: dict[int, ProviderStore[int]] = {}
    for holder in net.closest_true(KEY, 16):
        store = stores[holder] = ProviderStore()
        for p in range(100, 100 + providers):
            store.put(KEY, net.ids[p], p, seq=1, expires_at=T0 + 3600, source=net.ids[p], now=T0)
    return net, stores


def lookup(net: SimNetwork, stores: dict[int, ProviderStore[int]], **kw: object) -> object:
    responder = honest_responder(net, stores, lambda i: True, lambda: T0)
    return net.run_lookup(0, KEY, LookupMode.GET_PROVIDERS, responder,
                          LookupConfig(k=16, alpha=3), random.Random(1), now=T0, loss=0.0,
                          paths=2, **kw)  # type: ignore[arg-type]


def test_a_lookup_ends_when_the_caller_has_enough() -> None:
    net, stores = network_with_providers(40)
    whole = lookup(net, stores)
    known = {100, 101, 102}
    new: set[int] = set()

    def enough(p: int) -> bool:
        if p not in known:
            new.add(p)
        return len(new) >= 2

    cut = lookup(net, stores, until=enough)
    assert len(whole.providers) >= 10  # type: ignore[attr-defined]
    # The caller took providers until the second new one, and nothing after it.
    assert len(new) == 2
    assert cut.providers[-1] in new  # type: ignore[attr-defined]
    assert len(cut.providers) <= len(known) + 2  # type: ignore[attr-defined]
    assert cut.result.messages <= whole.result.messages  # type: ignore[attr-defined]


def test_a_lookup_sends_no_more_than_its_budget() -> None:
    net, stores = network_with_providers(5)
    whole = lookup(net, stores)
    assert whole.result.messages > 4  # type: ignore[attr-defined]
    capped = lookup(net, stores, max_messages=4)
    assert capped.result.messages <= 4  # type: ignore[attr-defined]


def test_seekers_discover_as_they_start_pex_first_then_the_dht() -> None:
    # archive on 5 % of nodes, 3 wanted: some seekers discover again once connected.
    cfg = config(nodes=120, seed_nodes=3,
                 capabilities=(("archive", 0.05), ("blocksync", 0.3)),
                 targets=TargetSet.of(CapabilityTarget("archive", min_peers=3),
                                      CapabilityTarget("blocksync", min_peers=3)))
    world = run(cfg)
    c = world.counters
    seekers = len(world.seekers)
    # The first tick comes before any connection: every seeker discovers both capabilities.
    assert c.discoveries >= 2 * seekers
    # PEX asks first (at most three connected peers each), the DHT for what is still missing.
    assert 0 < c.discover_pex <= 3 * c.discoveries
    assert 0 < c.provider_lookups <= c.discoveries
    assert len(world.provider_lookups) == c.provider_lookups
    assert all(messages <= 64 for _, messages in world.provider_lookups)
    report = simulate(cfg)
    assert report["totals"]["provider_lookups"] == c.provider_lookups
    assert render_report(report) == render_report(simulate(cfg))
