"""Run a node as a service (``overlay start``): a thin wrapper around ``async with Node(...)``.

Theory of operation
-------------------
The :class:`~overlay.Node` itself runs everything (transports, router, peer manager with its
SQLite store, admin API, metrics, the application named by ``app``). :func:`run_node` adds what
belongs to a service on a home directory: it loads the node key (it never creates one:
``overlay init`` does), creates the data directory (mode 0700), takes the home's lock
(:class:`HomeLock`: one running node per home), starts the node, then waits to be cancelled
(the CLI cancels it on SIGINT / SIGTERM).

Shutdown is orderly although it starts with a cancellation: once started, the node runs in a
shielded cancel scope, and cancelling :func:`run_node` only sets a stop event. The node then
shuts down in its own order: remove ``admin.json``, close every connection with a ``shutdown``
Disconnect (so peers log ``shutdown``, not ``connection_closed``), and only then stop the
peering driver (which writes the last changes to the store and closes it), the admin API and
the metrics endpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc

from overlay.connection._observer import MultiObserver, Observer
from overlay.errors import ConfigError, OverlayError
from overlay.identity import NodeKey
from overlay.node._advertise import check_external_addresses
from overlay.node._config import NodeConfig
from overlay.node._node import Node
from overlay.node._services import private_directory

__all__ = [
    "HomeLock",
    "HomeLockedError",
    "LOCK_FILE",
    "load_node_key",
    "run_node",
]

log = logging.getLogger("overlay.service")

LOCK_FILE = "node.lock"
"""Lock file in the data directory, held (``flock``) by the running node; holds its pid."""


class HomeLockedError(OverlayError):
    """Another node runs on this home (it holds the home's lock)."""


class HomeLock:
    """An exclusive ``flock`` on ``DATA_DIR/node.lock``, held while the node runs.

    The file holds the pid of the holder (for the error message of a second start); it is
    never removed, so two starts cannot both lock different files. The kernel drops the lock
    when the process dies, even after ``kill -9``.
    """

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`HomeLockedError` (naming the holder's pid)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError("data_dir", f"cannot create {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise HomeLockedError(
                f"another node is already running on home {self.home} ({who} holds "
                f"{self.path}); stop it first, or use another --home"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError("data_dir", f"cannot lock {self.path}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


async def run_node(config: NodeConfig, home: Path, *, observers: tuple[Observer, ...] = (),
                   task_status: anyio.abc.TaskStatus[Node] = anyio.TASK_STATUS_IGNORED,
                   wall_clock: Callable[[], float] = time.time,
                   ) -> None:
    """Run until cancelled (the CLI cancels on SIGINT/SIGTERM), then shut down in order (see
    the module docstring). ``wall_clock`` is the node's (``Node(wall_clock=...)``).

    Start-up failures: :class:`ConfigError` (no node key: run ``overlay init``; a bad store,
    admin or metrics address...),
    :class:`HomeLockedError` (another node runs on ``home``), :class:`NetworkError` (a listen
    address cannot be bound, e.g. the port is in use).
    """
    key = load_node_key(config, home)  # before creating anything
    check_external_addresses(config.external_addresses, key.node_id)
    data_dir = home / config.data_dir
    private_directory(data_dir)
    with HomeLock(data_dir / LOCK_FILE, home):
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            node: Node = await tg.start(_serve, config, home, key, observers, stop, wall_clock)
            task_status.started(node)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()  # the service, shielded, shuts down in order


def load_node_key(config: NodeConfig, home: Path) -> NodeKey:
    """The node's key (``HOME/node_key_file``). A service never creates one: a missing key is
    a :class:`ConfigError` that says to run ``overlay init`` (a mistyped ``node_key_file``
    must not silently give the node a new identity, nor create directories)."""
    path = home / config.node_key_file
    if not path.exists():
        raise ConfigError(
            "node_key_file",
            f"no node key at {path}; run `overlay init --home {home}` to create one (or fix "
            "node_key_file in config.toml: `start` never creates a key, since a new key is a "
            "new identity)",
        )
    return NodeKey.load(path)


async def _serve(config: NodeConfig, home: Path, key: NodeKey, observers: tuple[Observer, ...],
                 stop: anyio.Event, wall_clock: Callable[[], float], *,
                 task_status: anyio.abc.TaskStatus[Node]) -> None:
    observer = MultiObserver(*observers) if observers else None
    with anyio.CancelScope() as service_scope:
        async with Node(config, key=key, home=home, observer=observer,
                        wall_clock=wall_clock) as node:
            log.info("node %s started; listening on %s", node.node_id,
                     ", ".join(str(a) for a in node.listen_addresses))
            service_scope.shield = True  # from now on a cancellation arrives as ``stop``
            task_status.started(node)
            await stop.wait()
            peers = len(node.router.peers())
            log.info("shutting down: closing %d connection%s", peers, "" if peers == 1 else "s")
    log.info("node %s stopped", node.node_id)
