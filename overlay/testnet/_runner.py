"""Run a testnet: start the nodes of a manifest in its mode, apply its perturbations on time,
sample every node twice a second, and return what happened (:class:`RunResult`).

Seeds start first, then every other node at once; the run's clock (``duration``, every
``at``, every time in the report) starts once they all listen. It is the event loop's clock when
the nodes run in this process (so a run on trio's ``MockClock`` takes virtual time: see
bench/sim_validate.py) and ``time.monotonic`` in ``procs`` mode (node processes report request
times on it). From then on the nodes find each
other themselves (seeds, then PEX/DHT; see :mod:`overlay.testnet._plan`). The perturbation schedule
runs beside the sampler: each perturbation is applied at ``at`` seconds, logged with its time,
and undone after ``duration`` (restart, SIGCONT, heal, links restored).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.abc

from overlay.identity import NodeKey
from overlay.testing import MemoryNetwork
from overlay.testnet._app import role_kind
from overlay.testnet._cluster import Cluster, LocalCluster
from overlay.testnet._homes import write_home
from overlay.testnet._manifest import Manifest, Mode, Perturbation, PerturbationKind
from overlay.testnet._plan import NodePlan, bootstrap_label, has_routing_config, plan_nodes
from overlay.testnet._procs import ProcCluster
from overlay.testnet._relay import Relay, node_host
from overlay.testnet._report import PerturbationLog, RunResult, Tick

__all__ = ["SAMPLE_INTERVAL", "run_manifest"]

SAMPLE_INTERVAL = 0.5

Clock = Callable[[], float]
Listener = Callable[[RunResult, str | None], None]
"""Told after every tick (``None``) and every perturbation event (a log line)."""


def _keys(count: int, seed: int) -> list[NodeKey]:
    rng = random.Random(seed)
    return [NodeKey.from_seed(rng.randbytes(32)) for _ in range(count)]


INPROC_PORT = 26656
"""The port every node of an ``inproc`` testnet serves on its synthetic address."""


async def run_manifest(manifest: Manifest, *, workdir: Path | None = None,
                       listener: Listener | None = None) -> RunResult:
    """Run ``manifest`` to the end (see the module docstring); ``workdir`` holds the homes in
    ``procs`` mode (default: a temporary directory, removed afterwards)."""
    count = len(manifest.nodes)
    keys = _keys(count, manifest.seed)
    clock: Clock = time.monotonic if manifest.mode is Mode.PROCS else anyio.current_time
    result = RunResult(manifest=manifest, meta={
        "bootstrap": bootstrap_label(),
        "request_kind": role_kind(),
        "targets_in_node_config": has_routing_config(),
        "dht_lookups": None,
        "dht_note": "the DHT service is not wired into the node on this build"
        if not _has_dht() else "not counted by the node yet",
    })
    notify = listener or (lambda _r, _m: None)
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        cluster: Cluster
        if manifest.mode is Mode.INPROC:
            # Memory links posing as TCP (``IpMemoryTransport``): each node serves
            # ``ID@127.A.B.1:26656``, so its signed record carries an address PEX can spread.
            hosts = [node_host(i) for i in range(count)]
            addresses = [f"{k.node_id}@{h}:{INPROC_PORT}" for k, h in zip(keys, hosts,
                                                                          strict=True)]
            plans = plan_nodes(manifest, keys, hosts=hosts, ports=[INPROC_PORT] * count,
                               advertised=addresses,
                               listen=[f"tcp://{h}:{INPROC_PORT}" for h in hosts],
                               extra={"admin": {"enabled": False}})
            local = LocalCluster(plans, tg, memory=MemoryNetwork(rng=random.Random(manifest.seed)))
            stack.push_async_callback(local.aclose)
            cluster = local
        else:
            relay = Relay(count, seed=manifest.seed)
            fronts: list[int] = await tg.start(relay.run)
            hosts = [node_host(i) for i in range(count)]
            advertised = [f"{k.node_id}@{h}:{p}" for k, h, p in zip(keys, hosts, fronts,
                                                                   strict=True)]
            listen = [f"tcp://{h}:0" for h in hosts]
            if manifest.mode is Mode.TCP:
                plans = plan_nodes(manifest, keys, hosts=hosts, ports=[0] * count,
                                   advertised=advertised, listen=listen,
                                   extra={"admin": {"enabled": False}})
                local = LocalCluster(plans, tg, relay=relay)
                stack.push_async_callback(local.aclose)
                cluster = local
            else:
                plans = plan_nodes(manifest, keys, hosts=hosts, ports=[0] * count,
                                   advertised=advertised, listen=listen,
                                   extra={"metrics": {"enabled": True}, "log": {"level": "info"}})
                root = workdir
                if root is None:
                    root = Path(stack.enter_context(tempfile.TemporaryDirectory(
                        prefix="overlay-testnet-")))
                homes = _write_homes(root, plans, hosts)
                procs = ProcCluster(plans, homes, relay)
                stack.push_async_callback(procs.aclose)
                cluster = procs
                result.meta["homes"] = str(root)
        begun = clock()
        async with anyio.create_task_group() as starting:
            for i in manifest.seeds:
                starting.start_soon(cluster.start, i)
        async with anyio.create_task_group() as starting:
            for spec in manifest.nodes:
                if not spec.seed:
                    starting.start_soon(cluster.start, spec.index)
        result.t0 = clock()  # the run's clock starts once every node listens
        result.meta["startup_s"] = round(result.t0 - begun, 3)
        async with anyio.create_task_group() as run:
            run.start_soon(_schedule, cluster, result, notify, clock)
            await _sample(cluster, result, notify, clock)
            run.cancel_scope.cancel()
        result.requests.extend(cluster.drain_requests())
        if isinstance(cluster, LocalCluster):
            totals = cluster.totals()
            result.meta["dht_lookups"] = {k: totals[k] for k in ("lookups", "rounds", "messages")}
            result.meta["dht_note"] = "summed over the nodes running at the end"
            result.meta["channel_messages"] = totals["channel_messages"]
        tg.cancel_scope.cancel()
    return result


def _has_dht() -> bool:
    import importlib.util

    return importlib.util.find_spec("overlay.node._dht") is not None


def _write_homes(root: Path, plans: list[NodePlan], hosts: list[str]) -> list[Path]:
    homes = []
    for plan, host in zip(plans, hosts, strict=True):
        mapping = dict(plan.mapping)
        mapping["metrics"] = {"enabled": True, "listen": f"{host}:0"}
        home = root / plan.spec.name
        write_home(home, NodePlan(spec=plan.spec, key=plan.key, host=plan.host, port=plan.port,
                                  advertised=plan.advertised, mapping=mapping, app=plan.app))
        homes.append(home)
    return homes


async def _sample(cluster: Cluster, result: RunResult, notify: Listener, clock: Clock) -> None:
    end = result.t0 + result.manifest.duration
    while True:
        now = clock()
        result.ticks.append(Tick(t=now - result.t0, nodes=tuple(cluster.sample())))
        result.requests.extend(cluster.drain_requests())
        notify(result, None)
        if now >= end:
            return
        await anyio.sleep(min(SAMPLE_INTERVAL, max(0.0, end - now)))


async def _schedule(cluster: Cluster, result: RunResult, notify: Listener, clock: Clock) -> None:
    async with anyio.create_task_group() as tg:
        for p in result.manifest.perturbations:
            delay = result.t0 + p.at - clock()
            if delay > 0:
                await anyio.sleep(delay)
            tg.start_soon(_perturb, cluster, result, p, notify, clock)


async def _perturb(cluster: Cluster, result: RunResult, p: Perturbation,
                   notify: Listener, clock: Clock) -> None:
    started = clock() - result.t0
    index = len(result.perturbations)
    result.perturbations.append(PerturbationLog(p, started))
    notify(result, f"{started:7.2f} s  {p.label()}")
    await _apply(cluster, p, undo=False)
    if p.duration is None:
        return
    await anyio.sleep(max(0.0, result.t0 + p.at + p.duration - clock()))
    await _apply(cluster, p, undo=True)
    ended = clock() - result.t0
    result.perturbations[index] = PerturbationLog(p, started, ended)
    notify(result, f"{ended:7.2f} s  {p.label()} undone")


async def _apply(cluster: Cluster, p: Perturbation, *, undo: bool) -> None:
    match p.kind:
        case PerturbationKind.KILL | PerturbationKind.PROVIDERS_LEAVE:
            kill = p.kind is PerturbationKind.KILL
            async with anyio.create_task_group() as tg:
                for n in p.nodes:
                    if undo:
                        tg.start_soon(cluster.start, n)
                    else:
                        tg.start_soon(_stop, cluster, n, kill)
        case PerturbationKind.PAUSE:
            for n in p.nodes:
                await (cluster.resume(n) if undo else cluster.pause(n))
        case PerturbationKind.DISCONNECT:
            cluster.isolate(p.nodes, not undo)
        case PerturbationKind.PARTITION:
            cluster.partition(None if undo else p.groups)
        case PerturbationKind.LATENCY | PerturbationKind.LOSS:
            if undo:
                cluster.set_links(p.nodes, 0.0, 0.0)
            else:
                cluster.set_links(p.nodes, p.latency, p.loss)


async def _stop(cluster: Cluster, n: int, kill: bool) -> None:
    await cluster.stop(n, kill=kill)
