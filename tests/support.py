"""Helpers shared by the tests: the backend and transport fixtures (virtual time included),
configs per transport, running node pairs, a parked request handler, transport-level helpers, and
waiting for a condition without sleeping.

Fixtures are made per module (``anyio_backend = both_backends()``) rather than in conftest.py,
so each module says which backends and transports it runs on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import anyio.lowlevel
import pytest
import sniffio
import trio
import trio.testing

from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import DiscoveryConfig, NodeConfig
from overlay.router._channel import ChannelSpec, Envelope
from overlay.testing import MemoryNetwork
from overlay.transport._secure import SecureIdentity, SecureStream

__all__ = [
    "Holding",
    "Parked",
    "both_backends",
    "both_transports",
    "config_for",
    "connected_pair",
    "echo_stream",
    "in_directory",
    "ipv6_available",
    "node_pair",
    "seeded_identity",
    "settle",
    "virtual_time",
    "wait_until",
]

T = TypeVar("T")

_SPINS = 200
"""Plain checkpoints taken before falling back to ``wait_all_tasks_blocked``."""

_VIRTUAL_STEP = 0.001
"""Virtual seconds :func:`wait_until` lets pass between two looks on a mock clock."""


# ------------------------------------------------------------------------------ fixtures


def _param_fixture(name: str, params: Sequence[str]) -> object:
    def fixture(request: pytest.FixtureRequest) -> str:
        return str(request.param)

    return pytest.fixture(name=name, params=list(params))(fixture)


def both_backends() -> object:
    """The ``anyio_backend`` fixture of a module whose async tests run on asyncio and trio:
    ``anyio_backend = both_backends()`` at module level."""
    return _param_fixture("anyio_backend", ("asyncio", "trio"))


def every_loop() -> object:
    """The ``anyio_backend`` fixture of a module that must pass on every data path: asyncio,
    trio, and asyncio on uvloop when uvloop is installed (``anyio_backend = every_loop()``)."""
    params: list[Any] = [pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")]
    if importlib.util.find_spec("uvloop") is not None:
        params.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))

    def fixture(request: pytest.FixtureRequest) -> Any:
        return request.param

    return pytest.fixture(name="anyio_backend", params=params)(fixture)


def both_transports() -> object:
    """The ``transport`` fixture, loopback TCP then the memory network:
    ``transport = both_transports()`` at module level."""
    return _param_fixture("transport", ("tcp", "memory"))


def virtual_time() -> Any:
    """An ``anyio_backend`` parameter: trio on a fresh ``MockClock(autojump_threshold=0)``.

    Time only passes when every task is blocked, and then jumps straight to the next deadline,
    so timeouts and delays cost no real time and elapsed times are exact. Use it as
    ``@pytest.mark.parametrize("anyio_backend", [virtual_time()])`` (asyncio has no mock
    clock, so a test whose subject is elapsed time runs on this backend only).
    """
    clock = trio.testing.MockClock(autojump_threshold=0)
    return pytest.param(("trio", {"clock": clock}), id="trio-virtual-time")


def _on_virtual_clock() -> bool:
    return (sniffio.current_async_library() == "trio"
            and isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock))


# ---------------------------------------------------------------------------------- waiting


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the other tasks run until ``predicate()`` holds (no sleeping; bounded by ``timeout``).

    Spins on plain checkpoints first: asyncio's ``wait_all_tasks_blocked`` polls every 0.1 s
    while any task is runnable, which would make every wait cost 0.1 s.

    On a mock clock (:func:`virtual_time`) a condition may need time to pass (a deadline, a
    rate limit), and ``wait_all_tasks_blocked`` returns before the clock's autojump could
    move it; so once every task is blocked this sleeps a virtual millisecond and looks again
    (``timeout`` is then virtual seconds too).
    """
    virtual = _on_virtual_clock()
    with anyio.fail_after(timeout):
        for _ in range(_SPINS):
            if predicate():
                return
            await anyio.lowlevel.checkpoint()
        while not predicate():
            await anyio.wait_all_tasks_blocked()
            if virtual and not predicate():
                await anyio.sleep(_VIRTUAL_STEP)


async def settle(rounds: int = 1) -> None:
    """Wait until every other task is blocked, ``rounds`` times over.

    Lets runnable tasks go on plain checkpoints first, for the reason given in
    :func:`wait_until`; each round still ends with ``wait_all_tasks_blocked``.
    """
    for _ in range(rounds):
        for _ in range(_SPINS):
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()


# ------------------------------------------------------------------------------------ nodes


def config_for(transport: str, **overrides: Any) -> NodeConfig:
    """A node config listening on loopback TCP (free port) or on the memory network. PEX is
    off unless ``discovery`` is given: tests of connections and channels count every request,
    and PEX would add its own (its tests use tests/pex_support.py)."""
    listen = ("tcp://127.0.0.1:0",) if transport == "tcp" else ("memory:",)
    overrides.setdefault("discovery", DiscoveryConfig(pex_enabled=False))
    return NodeConfig(listen=listen, **overrides)


def make_node(config: NodeConfig, network: MemoryNetwork | None = None, **kwargs: Any) -> Node:
    """A node for ``config``: on ``network`` when ``config`` listens on ``memory:`` (its
    transport passed in, as an application would), else on the default TCP transport."""
    if any(a.protocol == "memory" for a in config.listen_addresses()):
        if network is None:
            network = MemoryNetwork()
        kwargs["transports"] = [network.node_transport()]
    return Node(config, **kwargs)


@contextlib.asynccontextmanager
async def node_pair(
    transport: str,
    specs: Sequence[ChannelSpec[Any, Any]] = (),
    *,
    network: MemoryNetwork | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[Node, Node]]:
    """Two running nodes (one ``network``, a fresh one by default) with ``specs`` open on both;
    not connected. The second node closes first."""
    if network is None and transport == "memory":
        network = MemoryNetwork()
    config = config_for(transport, **overrides)
    async with make_node(config, network) as a, make_node(config, network) as b:
        for spec in specs:
            a.channel(spec)
            b.channel(spec)
        yield a, b


@contextlib.asynccontextmanager
async def connected_pair(
    transport: str, specs: Sequence[ChannelSpec[Any, Any]] = (), **overrides: Any
) -> AsyncIterator[tuple[Node, Node]]:
    """A :func:`node_pair`, the first dialled to the second and the connection registered on
    both ends."""
    async with node_pair(transport, specs, **overrides) as (a, b):
        assert await a.dial(b.address) == b.node_id
        await wait_until(lambda: a.node_id in b.connected_peers())
        yield a, b


class Parked:
    """A request handler that parks until cancelled and records that it saw the cancellation."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()

    async def __call__(self, env: Envelope[Any]) -> NoReturn:
        self.started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")


class Holding:
    """A request handler that answers each request with its own message once :attr:`release`
    is set; :attr:`all_in` is set when ``count`` requests are held."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.held = 0
        self.all_in = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, env: Envelope[T]) -> T:
        self.held += 1
        if self.held == self.count:
            self.all_in.set()
        await self.release.wait()
        return env.message


# ------------------------------------------------------------------------------- transports


def seeded_identity(n: int) -> SecureIdentity:
    """The same identity for the same ``n`` (0 to 255)."""
    return SecureIdentity(NodeKey.from_seed(bytes([n]) * 32))


async def echo_stream(stream: SecureStream) -> None:
    """An inbound handler that sends back whatever it reads until the peer goes away."""
    async with stream:
        try:
            async for chunk in stream:
                await stream.send(chunk)
        except anyio.BrokenResourceError:
            pass


def ipv6_available() -> bool:
    """Whether this machine can listen on the IPv6 loopback address."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def in_directory(filename: str, directory: Path) -> bool:
    """Whether ``filename`` (a traceback's file) lies inside ``directory``. Compares resolved
    paths, never a name fragment: a checkout inside a folder named ``overlay`` puts its
    virtualenv's site-packages under ``.../overlay/`` too."""
    return Path(filename).resolve().is_relative_to(directory.resolve())
