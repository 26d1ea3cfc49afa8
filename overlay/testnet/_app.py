"""What every testnet node runs: the role channel (answered by nodes that serve the
capability asked for) and the workload (role-addressed requests at a set rate).

In one process the harness calls :meth:`TestnetApp.install` on each node and reads the
:class:`Recorder` directly; in ``procs`` mode ``overlay start --app overlay.testnet._app:setup``
loads :func:`setup`, which reads ``HOME/testnet.json`` (written by the harness) and appends
what happens to ``HOME/testnet-events.jsonl`` and ``HOME/testnet-state.json`` for the harness.

Role-addressed requests: when the routing layer's ``routing.Role`` destination exists, every
request goes to ``Role(capability)`` (the node's own routing picks the peer). On a build without
it, requests go to :class:`ProviderPick`, a plain destination that picks the connected peer
with the capability of lowest round trip from the provider list the harness wrote; the report
labels such a run ``"requests": "plain (fallback: routing.Role absent)"``.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from overlay.errors import ErrorCode, NoRoute, OverlayError, RequestError
from overlay.identity import NodeId
from overlay.router._channel import ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._destination import Destination, PeerSet

__all__ = [
    "AppConfig",
    "ProviderPick",
    "ROLE_CHANNEL",
    "Recorder",
    "RequestRecord",
    "TestnetApp",
    "role_destination",
    "role_kind",
    "setup",
]

ROLE_CHANNEL: ChannelSpec[bytes, bytes] = ChannelSpec(
    id=0x30, name="testnet.role", codec=BytesCodec(), response_codec=BytesCodec(), priority=2,
)
"""Requests carry ``CAPABILITY|payload``; a node serving the capability answers
``ok:CAPABILITY``, any other node answers ``NOT_FOUND``."""

CONFIG_FILE = "testnet.json"
EVENTS_FILE = "testnet-events.jsonl"
STATE_FILE = "testnet-state.json"


@dataclass(frozen=True, slots=True)
class AppConfig:
    """What one node's testnet app needs to know (``HOME/testnet.json`` in procs mode)."""

    index: int
    capabilities: tuple[str, ...]
    providers: Mapping[str, tuple[str, ...]]
    """Capability to the node ids serving it (for the fallback destination)."""
    peers: Mapping[str, int]
    """Node id to node index, for the state file."""
    rate: float = 5.0
    roles: tuple[str, ...] = ()
    timeout: float = 2.0
    payload: int = 64
    seed: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AppConfig:
        raw = json.loads(text)
        raw.pop("targets", None)  # for people reading the file; the harness measures them
        raw["capabilities"] = tuple(raw["capabilities"])
        raw["roles"] = tuple(raw["roles"])
        raw["providers"] = {k: tuple(v) for k, v in raw["providers"].items()}
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One role request: when it started (on its recorder's clock), for which role, outcome."""

    t: float
    node: int
    capability: str
    ok: bool
    latency: float
    error: str = ""


@dataclass(slots=True)
class Recorder:
    """Request records not yet collected by the harness."""

    records: list[RequestRecord] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    """The harness's clock: ``time.monotonic`` across processes (procs mode), the event loop's
    clock in one process (so a testnet can run on a mock clock)."""

    def drain(self) -> list[RequestRecord]:
        out, self.records = self.records, []
        return out


class ProviderPick(Destination):
    """The connected peer serving ``capability`` with the lowest round trip (fallback for
    ``routing.Role``; the provider list comes from the harness)."""

    __slots__ = ("capability", "providers", "rng")

    def __init__(self, capability: str, providers: Sequence[str], rng: random.Random) -> None:
        self.capability = capability
        self.providers = frozenset(providers)
        self.rng = rng

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        candidates = [p for p in view.peers() if p.node_id in self.providers]
        if not candidates:
            return ()
        self.rng.shuffle(candidates)
        best = min(candidates, key=lambda p: p.rtt if p.rtt is not None else 1.0)
        return (best.node_id,)

    def __repr__(self) -> str:
        return f"ProviderPick({self.capability!r})"


def _role_class() -> Any:
    return getattr(importlib.import_module("routing"), "Role", None)


def role_kind() -> str:
    """``"role"`` when ``routing.Role`` exists, else the fallback's label."""
    return "role" if _role_class() is not None else "plain (fallback: routing.Role absent)"


def role_destination(capability: str, providers: Sequence[str], rng: random.Random) -> Any:
    """``routing.Role(capability)`` when it exists, else :class:`ProviderPick`."""
    role = _role_class()
    if role is not None:
        return role(capability)
    return ProviderPick(capability, providers, rng)


class TestnetApp:
    """The role channel's handler and the workload of one node."""

    __test__ = False  # not a pytest class

    def __init__(self, node: Any, config: AppConfig, recorder: Recorder | None = None) -> None:
        self.node = node
        self.config = config
        self.recorder = recorder if recorder is not None else Recorder()
        self._served = frozenset(config.capabilities)

    def install(self) -> None:
        channel = self.node.channel(ROLE_CHANNEL)
        channel.handle_requests(self._handle)
        roles = self.config.roles or tuple(sorted(self.config.providers))
        if self.config.rate > 0 and roles:
            self.node.start_soon(self._workload, roles)

    async def _handle(self, env: Envelope[bytes]) -> bytes:
        capability = env.message.split(b"|", 1)[0].decode("ascii", "replace")
        if capability not in self._served:
            raise RequestError(ErrorCode.NOT_FOUND, f"{capability} not served here")
        return b"ok:" + capability.encode()

    async def _workload(self, roles: tuple[str, ...]) -> None:
        rng = random.Random(self.config.seed * 100_003 + self.config.index)
        channel = self.node.channel(ROLE_CHANNEL)
        interval = 1.0 / self.config.rate
        payload = rng.randbytes(self.config.payload)
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.sleep(interval * rng.uniform(0.5, 1.5))
                cap = rng.choice(roles)
                tg.start_soon(self._one, channel, cap, payload, rng)

    async def _one(self, channel: Any, cap: str, payload: bytes, rng: random.Random) -> None:
        providers = [p for p in self.config.providers.get(cap, ()) if p != self.node.node_id]
        clock = self.recorder.clock
        started = clock()
        error = ""
        try:
            answer = await channel.request(role_destination(cap, providers, rng),
                                           cap.encode() + b"|" + payload,
                                           timeout=self.config.timeout)
            if answer != b"ok:" + cap.encode():
                error = "wrong answer"
        except NoRoute:
            error = "no route"
        except RequestError as exc:
            error = f"error {exc.code.name}"
        except OverlayError as exc:
            error = type(exc).__name__
        self.recorder.records.append(RequestRecord(
            t=started, node=self.config.index, capability=cap, ok=not error,
            latency=clock() - started, error=error,
        ))


# -- procs mode ------------------------------------------------------------------------------


def write_state(home: Path, node: Any, config: AppConfig) -> None:
    """Connected peers (indexes) and traffic totals, replaced atomically."""
    snapshot = node.metrics_snapshot()
    messages = sum(c.messages_sent + c.messages_received for c in snapshot.channels.values())
    state = {
        "t": time.monotonic(),
        "pid": os.getpid(),
        "listen": [str(a) for a in node.listen_addresses],
        "peers": sorted(config.peers[p] for p in node.connected_peers() if p in config.peers),
        "messages": messages,
        "bytes": snapshot.wire_bytes_sent + snapshot.wire_bytes_received,
    }
    tmp = home / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(home / STATE_FILE)


def read_json_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete lines of ``path`` after byte ``offset``, and the new offset."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return lines, offset + end


async def _report_forever(home: Path, app: TestnetApp) -> None:
    events = home / EVENTS_FILE
    while True:
        write_state(home, app.node, app.config)
        records = app.recorder.drain()
        if records:
            with events.open("a") as f:
                for r in records:
                    f.write(json.dumps(asdict(r)) + "\n")
        await anyio.sleep(0.25)


def setup(node: Any) -> None:
    """``overlay start --app overlay.testnet._app:setup``: run the testnet app in a node whose
    home holds ``testnet.json``."""
    home = Path(node.home)
    config = AppConfig.from_json((home / CONFIG_FILE).read_text())
    app = TestnetApp(node, config)
    app.install()
    node.start_soon(_report_forever, home, app)

