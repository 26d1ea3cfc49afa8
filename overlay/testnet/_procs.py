"""``--mode procs``: one ``overlay start`` process per node, each with its own home (config,
key, SQLite peer store, admin API, metrics), connected through the loopback relay.

Homes are written by :func:`overlay.testnet._homes.write_home` (what ``overlay init`` writes,
plus the testnet's settings and ``testnet.json`` for the app). Each process runs
``python -m overlay.cli start --home HOME --app overlay.testnet._app:setup``; the app appends
request records to ``testnet-events.jsonl`` and rewrites ``testnet-state.json`` (connected
peers, traffic) four times a second, which is what this cluster samples. The state file names
the process id and the listen port, which the relay needs (the node listens on port 0).

Kill is ``SIGKILL`` (then the relay resets the node's connections, as the kernel would), pause
``SIGSTOP`` / ``SIGCONT``, a clean stop ``SIGTERM``. Every process is ended when the run ends.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc

from overlay.address import NodeAddress
from overlay.testnet._app import EVENTS_FILE, STATE_FILE, RequestRecord, read_json_lines
from overlay.testnet._cluster import Cluster, NodeSample
from overlay.testnet._plan import NodePlan
from overlay.testnet._relay import Relay

__all__ = ["ProcCluster"]

APP = "overlay.testnet._app:setup"
START_TIMEOUT = 30.0


class ProcCluster(Cluster):
    """One OS process per node (see the module docstring)."""

    def __init__(self, plans: Sequence[NodePlan], homes: Sequence[Path], relay: Relay) -> None:
        super().__init__(plans)
        self.homes = list(homes)
        self.relay = relay
        self._procs: list[anyio.abc.Process | None] = [None] * len(plans)
        self._logs: list[IO[Any] | None] = [None] * len(plans)
        self._paused: set[int] = set()
        self._offsets = [0] * len(plans)
        self._isolated: set[int] = set()
        self._retired: list[tuple[int, int]] = [(0, 0)] * len(plans)
        self._last: list[tuple[int, int]] = [(0, 0)] * len(plans)

    async def start(self, i: int) -> None:
        if self.is_up(i):
            return
        home = self.homes[i]
        (home / STATE_FILE).unlink(missing_ok=True)
        log = self._logs[i] = (home / "node.log").open("ab")
        proc = await anyio.open_process(
            [sys.executable, "-m", "overlay.cli", "start", "--home", str(home), "--app", APP],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        self._procs[i] = proc
        with anyio.fail_after(START_TIMEOUT):
            while True:
                state = self._state(i)
                if state is not None and state.get("pid") == proc.pid:
                    self.relay.backend_ports[i] = NodeAddress.parse(state["listen"][0]).port
                    return
                if proc.returncode is not None:
                    raise RuntimeError(f"node n{i} exited with {proc.returncode}; see "
                                       f"{home / 'node.log'}")
                await anyio.sleep(0.05)

    def _state(self, i: int) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads((self.homes[i] / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return state

    async def stop(self, i: int, *, kill: bool) -> None:
        proc = self._procs[i]
        if proc is None:
            return
        if i in self._paused:
            _signal(proc, signal.SIGCONT)
            self._paused.discard(i)
        _signal(proc, signal.SIGKILL if kill else signal.SIGTERM)
        with anyio.move_on_after(10.0) as scope:
            await proc.wait()
        if scope.cancelled_caught:
            _signal(proc, signal.SIGKILL)
            await proc.wait()
        self.relay.break_all(i)
        self.relay.backend_ports[i] = None
        m, b = self._retired[i]
        lm, lb = self._last[i]
        self._retired[i] = (m + lm, b + lb)
        self._last[i] = (0, 0)
        self._procs[i] = None
        log = self._logs[i]
        if log is not None:
            log.close()
            self._logs[i] = None

    async def pause(self, i: int) -> None:
        proc = self._procs[i]
        if proc is not None and i not in self._paused:
            _signal(proc, signal.SIGSTOP)
            self._paused.add(i)

    async def resume(self, i: int) -> None:
        proc = self._procs[i]
        if proc is not None and i in self._paused:
            _signal(proc, signal.SIGCONT)
            self._paused.discard(i)

    def is_up(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.returncode is None

    def isolate(self, nodes: Sequence[int], on: bool) -> None:
        if on:
            self._isolated.update(nodes)
        else:
            self._isolated.difference_update(nodes)
        self.relay.links.isolated = set(self._isolated)
        self.relay.refresh()

    def partition(self, groups: Sequence[Sequence[int]] | None) -> None:
        if groups is None:
            self.relay.links.heal()
        else:
            self.relay.links.partition(groups)
            self.relay.refresh()

    def set_links(self, nodes: Sequence[int], latency: float, loss: float) -> None:
        for n in self.every(nodes):
            for table, value in ((self.relay.links.latency, latency),
                                 (self.relay.links.loss, loss)):
                if value:
                    table[n] = value
                else:
                    table.pop(n, None)

    def sample(self) -> list[NodeSample]:
        out = []
        for i in range(len(self.plans)):
            m, b = self._retired[i]
            state = self._state(i) if self.is_up(i) else None
            if state is None or i in self._paused:
                lm, lb = self._last[i]
                out.append(NodeSample(up=False, messages=m + lm, bytes=b + lb))
                continue
            self._last[i] = (int(state["messages"]), int(state["bytes"]))
            out.append(NodeSample(up=True, peers=frozenset(state["peers"]),
                                  messages=m + int(state["messages"]),
                                  bytes=b + int(state["bytes"])))
        return out

    def drain_requests(self) -> list[RequestRecord]:
        out: list[RequestRecord] = []
        for i, home in enumerate(self.homes):
            lines, self._offsets[i] = read_json_lines(home / EVENTS_FILE, self._offsets[i])
            out.extend(RequestRecord(**line) for line in lines)
        return out

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for i, proc in enumerate(self._procs):  # all at once, then wait for each
                if proc is not None:
                    if i in self._paused:
                        _signal(proc, signal.SIGCONT)
                        self._paused.discard(i)
                    _signal(proc, signal.SIGTERM)
            for i in range(len(self.plans)):
                if self._procs[i] is not None:
                    await self.stop(i, kill=False)


def _signal(proc: anyio.abc.Process, signum: signal.Signals) -> None:
    """Send ``signum``; a process that already exited is fine."""
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass
