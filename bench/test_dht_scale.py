"""The node-level DHT checks of tests/test_node_dht.py on 300 full nodes (``slow``: minutes of
CPU; run with ``OVERLAY_SLOW_TESTS=1 .venv/bin/python -m pytest bench/test_dht_scale.py -s``).
"""

from __future__ import annotations

import os
import statistics

import pytest

import overlay  # noqa: F401  (first: discovery and overlay import each other)
from bench._dhtnodes import dht_network, liar, run_lookup
from tests.support import virtual_time

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(not os.environ.get("OVERLAY_SLOW_TESTS"),
                       reason="set OVERLAY_SLOW_TESTS=1 for scale runs"),
]


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_300_nodes_find_providers_in_every_trial_and_survive_liars() -> None:
    async with dht_network(300, seed=30, capabilities={"archive": 3, "relay": 3}) as net:
        rounds, messages = [], []
        for trial in range(40):
            capability = ("archive", "relay")[trial % 2]
            holders = set(net.holders[capability])
            origin = net.rng.choice([n for n in net.nodes if n.node_id not in holders])
            run = await run_lookup(origin, capability)
            assert set(run.found) & holders, f"trial {trial}"
            rounds.append(run.report.rounds)
            messages.append(run.report.messages)
        print(f"\n300 real nodes: rounds median {statistics.median(rounds)}, messages median "
              f"{statistics.median(messages)} max {max(messages)}")

        holders = set(net.holders["archive"]) | set(net.holders["relay"])
        honest = [n for n in net.nodes if n.node_id not in holders]
        liars = net.rng.sample(honest, len(net.nodes) // 5)
        records = [n.dht.record for n in liars if n.dht is not None]
        colluders = [r for r in records if r is not None]
        for node in liars:
            assert node.dht is not None
            node.dht.set_responder(liar(colluders, 16))
        askers = [n for n in honest if n not in liars]
        trials, with_paths, without = 100, 0, 0
        for trial in range(trials):
            capability = ("archive", "relay")[trial % 2]
            want = set(net.holders[capability])
            origin = net.rng.choice(askers)
            with_paths += bool(set((await run_lookup(origin, capability)).found) & want)
            without += bool(set((await run_lookup(origin, capability, paths=1)).found) & want)
        print(f"300 nodes, 20 % liars: {with_paths}/{trials} with 2 disjoint paths, "
              f"{without}/{trials} with 1 path")
        assert with_paths / trials >= 0.99
