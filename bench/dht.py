"""DHT benchmark: provider lookups among N in-process nodes, ours against the ``kademlia``
package (2.2.3) doing ``get`` on the same N.

Ours: N full :class:`~overlay.Node` objects (peer manager, DHT service, transient connections,
Noise handshakes) on one memory network with 5 ms one-way link latency, on trio's mock clock
(latencies are virtual: exact, and independent of the machine's load; CPU per lookup is real).
Three nodes provide each capability; each trial asks a random other node for the providers of
one capability and waits for the lookup to end (all providers, 2 disjoint paths), then asks again
with ``want=1`` (stop at the first provider, what kademlia's ``get`` does with a value).

kademlia: N ``kademlia.network.Server`` objects on 127.0.0.1 UDP (loopback only), each
bootstrapped from a random earlier one; three of them ``set`` each key; each trial a random
other node ``get``s one key. Messages are the RPCs the getter's protocol sends (counted by
wrapping ``KademliaProtocol.call_*``); times are wall-clock.

Run: ``nice -n 10 .venv/bin/python -m bench.dht --sizes 100 300 --trials 30`` (kademlia must be
installed for the baseline: ``.venv/bin/pip install kademlia==2.2.3``; it is not a dependency
of the project, and the benchmark prints a note and runs ours only when it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import anyio
import trio.testing

import overlay  # noqa: F401  (first: discovery and overlay import each other)
from bench._dhtnodes import dht_network, run_lookup

CAPABILITIES = 4
LATENCY = 0.005


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"median": float("nan"), "p95": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


async def _ours(n: int, trials: int, seed: int) -> dict[str, Any]:
    caps = {f"cap{i}": 3 for i in range(CAPABILITIES)}
    built = time.process_time()
    async with dht_network(n, seed=seed, capabilities=caps, latency=LATENCY) as net:
        build_cpu = time.process_time() - built
        ok = complete = 0
        rounds: list[float] = []
        messages: list[float] = []
        first: list[float] = []
        end: list[float] = []
        one_ok = 0
        one_messages: list[float] = []
        cpu = time.process_time()
        for trial in range(trials):
            capability = f"cap{trial % CAPABILITIES}"
            holders = set(net.holders[capability])
            origin = net.rng.choice([x for x in net.nodes if x.node_id not in holders])
            run = await run_lookup(origin, capability)
            found = set(run.found) & holders
            ok += bool(found)
            complete += found == holders
            rounds.append(run.report.rounds)
            messages.append(run.report.messages)
            end.append(run.elapsed * 1000)
            if run.first_after is not None:
                first.append(run.first_after * 1000)
            one = await run_lookup(origin, capability, want=1)  # like kademlia's get
            one_ok += bool(set(one.found) & holders)
            one_messages.append(one.report.messages)
        cpu_per_lookup = (time.process_time() - cpu) / trials * 1000
    return {
        "n": n, "trials": trials, "success": ok / trials, "all_3_found": complete / trials,
        "rounds": _summary(rounds), "messages": _summary(messages),
        "first_provider_ms": _summary(first), "end_ms": _summary(end),
        "cpu_ms_per_lookup": cpu_per_lookup, "build_cpu_s": build_cpu,
        "first_only": {"success": one_ok / trials, "messages": _summary(one_messages)},
    }


def run_ours(n: int, trials: int, seed: int) -> dict[str, Any]:
    clock = trio.testing.MockClock(autojump_threshold=0)
    result: dict[str, Any] = anyio.run(
        _ours, n, trials, seed, backend="trio", backend_options={"clock": clock}
    )
    return result


async def _kademlia(n: int, trials: int, seed: int) -> dict[str, Any]:
    from kademlia.network import Server
    from kademlia.protocol import KademliaProtocol

    sent: dict[int, int] = {}

    def counting(name: str) -> None:
        original = getattr(KademliaProtocol, name)

        async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            sent[id(self)] = sent.get(id(self), 0) + 1
            return await original(self, *args, **kwargs)

        setattr(KademliaProtocol, name, call)

    for name in ("call_find_node", "call_find_value", "call_ping", "call_store"):
        counting(name)
    rng = random.Random(seed)
    servers: list[Any] = []
    base = 20000 + rng.randrange(20000)
    try:
        for index in range(n):
            server = Server(ksize=20, alpha=3)
            await server.listen(base + index, interface="127.0.0.1")
            if servers:
                peer = rng.choice(servers)
                await server.bootstrap([("127.0.0.1", peer.protocol.transport.get_extra_info(
                    "sockname")[1])])
            servers.append(server)
        holders: dict[str, list[int]] = {}
        for i in range(CAPABILITIES):
            key = f"cap{i}"
            holders[key] = rng.sample(range(n), 3)
            for index in holders[key]:
                await servers[index].set(key, f"provider-{index}")
        ok = 0
        messages: list[float] = []
        end: list[float] = []
        for trial in range(trials):
            key = f"cap{trial % CAPABILITIES}"
            origin = servers[rng.choice([i for i in range(n) if i not in holders[key]])]
            before = sent.get(id(origin.protocol), 0)
            started = time.perf_counter()
            value = await origin.get(key)
            end.append((time.perf_counter() - started) * 1000)
            messages.append(sent.get(id(origin.protocol), 0) - before)
            ok += value is not None
        return {"n": n, "trials": trials, "success": ok / trials,
                "messages": _summary(messages), "end_ms": _summary(end)}
    finally:
        for server in servers:
            server.stop()


def run_kademlia(n: int, trials: int, seed: int) -> dict[str, Any] | None:
    try:
        import kademlia  # noqa: F401
    except ImportError:
        print("note: the kademlia package is not installed: no baseline "
              "(.venv/bin/pip install kademlia==2.2.3 to compare)")
        return None
    return asyncio.run(_kademlia(n, trials, seed))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for n in args.sizes:
        ours = run_ours(n, args.trials, args.seed)
        theirs = None if args.no_baseline else run_kademlia(n, args.trials, args.seed)
        results.append({"ours": ours, "kademlia": theirs})
        line = (f"N={n}: ours success {ours['success']:.0%} (all 3: {ours['all_3_found']:.0%}), "
                f"rounds {ours['rounds']['median']:g}, messages {ours['messages']['median']:g} "
                f"(p95 {ours['messages']['p95']:g}), "
                f"first {ours['first_provider_ms']['median']:.0f}"
                f" ms, end {ours['end_ms']['median']:.0f} ms (virtual), "
                f"{ours['cpu_ms_per_lookup']:.1f} ms CPU/lookup; want=1: success "
                f"{ours['first_only']['success']:.0%}, messages "
                f"{ours['first_only']['messages']['median']:g}")
        if theirs is not None:
            line += (f" | kademlia success {theirs['success']:.0%}, messages "
                     f"{theirs['messages']['median']:g} (p95 {theirs['messages']['p95']:g}), "
                     f"get {theirs['end_ms']['median']:.1f} ms")
        print(line, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
