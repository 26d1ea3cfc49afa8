"""py-libp2p as an optional second baseline: 64-byte round trips and ``connect()`` times.

Only used when ``import libp2p`` works. It follows py-libp2p's own echo example
(``examples/echo/echo.py``): two hosts made by ``new_host()`` with secp256k1 identities, both in
this process, listening on ``/ip4/127.0.0.1/tcp/0``, with py-libp2p's default security (Noise is
offered first) and muxer (yamux); a stream protocol echoes 64-byte messages and one caller does
round trips on one stream. py-libp2p runs on trio only, so this runs in its own ``trio.run``
after the main (asyncio) run.

Then the client repeats ``disconnect()`` + ``connect()``: TCP connect, multistream-select, the
Noise XX handshake and the muxer negotiation (identify then runs in the background, untimed).
The hosts get ``ConnectionConfig(max_connections_per_peer=1)`` where ``new_host`` accepts it:
with the default (3), py-libp2p 0.8.1's ``Swarm.dial_peer`` returns only after its 250 ms
happy-eyeballs delay even when the one address connected at once, so ``connect()`` would
measure that timer, not the handshake.

Any failure (an API change, a stalled stream) raises :class:`Libp2pError` or the library's own
error; ``bench/run.py`` turns it into a note and never crashes on it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import Figure, Rate, best, percentile

__all__ = [
    "LIBP2P_PYTHON_ENV",
    "Libp2pError",
    "Libp2pResult",
    "libp2p_available",
    "libp2p_baseline",
    "libp2p_figures",
    "libp2p_notes",
    "libp2p_subprocess",
]

LIBP2P_PYTHON_ENV = "OVERLAY_BENCH_LIBP2P_PYTHON"
"""Environment variable naming the interpreter of py-libp2p's own venv (as ``--libp2p-python``)."""

_PROTOCOL = "/overlay-bench/echo/1.0.0"
_LOOPBACK = "/ip4/127.0.0.1/tcp/0"
_STALL_SECONDS = 5.0
"""A window that has not ended this long after its nominal end counts as stalled."""
_SETUP_SECONDS = 10.0
"""Limit of one connect / new_stream / disconnect step outside the timed windows."""


class Libp2pError(Exception):
    """The py-libp2p baseline could not be measured (the message says why)."""


@dataclass(frozen=True, slots=True)
class Libp2pResult:
    """What the py-libp2p baseline measured."""

    version: str
    """The installed ``libp2p`` distribution's version."""
    stack: str
    """What the round-trip stream negotiated, e.g. ``TCP + Noise + Yamux``."""
    windows: tuple[Rate, ...]
    """One rate per round-trip window (round trips per second)."""
    connect_times: tuple[float, ...]
    """Seconds of each measured ``connect()`` (warm-up cycles left out)."""

    @property
    def round_trips(self) -> Rate:
        """The best window (wall clock) and the best rate per CPU-second."""
        return best(self.windows)

    @property
    def connect_median(self) -> float:
        return statistics.median(self.connect_times)

    @property
    def connect_p90(self) -> float:
        return percentile(self.connect_times, 90)

    def as_dict(self) -> dict[str, Any]:
        rt = self.round_trips
        return {
            "version": self.version,
            "stack": self.stack,
            "round_trips_per_second": rt.per_second,
            "round_trips_per_cpu_second": rt.per_cpu_second,
            "cpu_share": rt.cpu_share,
            "windows": [w.per_second for w in self.windows],
            "connect_median_ms": self.connect_median * 1000.0,
            "connect_p90_ms": self.connect_p90 * 1000.0,
            "connect_min_ms": min(self.connect_times) * 1000.0,
            "connect_max_ms": max(self.connect_times) * 1000.0,
            "connect_cycles": len(self.connect_times),
        }

    def to_json(self) -> str:
        """Everything measured, for :meth:`from_json` in the parent process."""
        return json.dumps({
            "version": self.version,
            "stack": self.stack,
            "windows": [[w.per_second, w.per_cpu_second, w.cpu_share] for w in self.windows],
            "connect_times": list(self.connect_times),
        })

    @classmethod
    def from_json(cls, text: str) -> Libp2pResult:
        try:
            data = json.loads(text)
            return cls(str(data["version"]), str(data["stack"]),
                       tuple(Rate(float(a), float(b), float(c)) for a, b, c in data["windows"]),
                       tuple(float(t) for t in data["connect_times"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise Libp2pError(f"unreadable result from the py-libp2p process: {exc!r}") from None


def libp2p_available() -> bool:
    return importlib.util.find_spec("libp2p") is not None


def libp2p_baseline(
    payload: bytes, warmup: float, duration: float, rounds: int, connects: int, warm: int = 3
) -> Libp2pResult:
    """Round trips on one stream (``rounds`` windows of ``duration`` s after ``warmup`` s),
    then ``connects`` timed ``connect()`` cycles after ``warm`` untimed ones. Runs its own
    ``trio.run``."""
    import trio

    if rounds < 1 or connects < 1:
        raise ValueError("rounds and connects must be >= 1")
    try:
        result: Libp2pResult = trio.run(_measure, payload, warmup, duration, rounds, connects,
                                        warm)
    except BaseExceptionGroup as group:  # trio's nurseries (inside ``host.run()``) wrap errors
        leaf = _first_leaf(group)
        if isinstance(leaf, Exception):
            raise leaf from group
        raise
    return result


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


@contextlib.contextmanager
def _limit(step: str) -> Iterator[None]:
    """Fail with a readable :class:`Libp2pError` when ``step`` takes over ``_SETUP_SECONDS``."""
    import trio

    try:
        with trio.fail_after(_SETUP_SECONDS):
            yield
    except trio.TooSlowError:
        raise Libp2pError(f"{step} took longer than {_SETUP_SECONDS:g} s") from None


async def _read_exactly(stream: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.read(size - len(data))
        if not chunk:
            raise EOFError("libp2p stream closed")
        data += chunk
    return data


def _new_host() -> Any:
    """A host as in the echo example (secp256k1 identity, default security and muxer)."""
    from libp2p import new_host
    from libp2p.crypto.secp256k1 import create_new_key_pair

    options: dict[str, Any] = {"key_pair": create_new_key_pair()}
    if "connection_config" in inspect.signature(new_host).parameters:
        from libp2p.network.config import ConnectionConfig

        options["connection_config"] = ConnectionConfig(max_connections_per_peer=1)
    return new_host(**options)


def _stack(stream: Any) -> str:
    """``TCP + <security> + <muxer>`` from the classes behind an open stream."""
    muxer = getattr(stream, "muxed_conn", None)
    secured = getattr(muxer, "secured_conn", None)
    security = type(getattr(secured, "conn", secured)).__name__  # NoiseTransportReadWriter
    if "noise" in security.lower():
        security = "Noise"
    return f"TCP + {security} + {type(muxer).__name__}"


async def _measure(
    payload: bytes, warmup: float, duration: float, rounds: int, connects: int, warm: int
) -> Libp2pResult:
    import trio
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    multiaddr: Any = importlib.import_module("multiaddr")  # a dependency of libp2p, untyped
    size = len(payload)
    protocol = TProtocol(_PROTOCOL)

    async def echo(stream: Any) -> None:
        try:
            while True:
                await stream.write(await _read_exactly(stream, size))
        except Exception:  # the caller closed the stream: the round trips are over
            return

    server, client = _new_host(), _new_host()
    listen = multiaddr.Multiaddr(_LOOPBACK)
    async with server.run(listen_addrs=[listen]), client.run(listen_addrs=[listen]):
        server.set_stream_handler(protocol, echo)
        info = info_from_p2p_addr(server.get_addrs()[0])
        with _limit("the first connect() + new_stream()"):
            await client.connect(info)
            stream = await client.new_stream(info.peer_id, [protocol])
        stack = _stack(stream)

        done = 0

        def stalled(count: int) -> Libp2pError:
            return Libp2pError(
                f"round trips stalled: one waited over {_STALL_SECONDS:g} s for its echo after "
                f"{count} round trips ({count * size:,} bytes each way on one stream); the "
                "yamux of py-libp2p 0.2.7, for one, never sends a window update, so a stream "
                "stops after 256 KiB"
            )

        async def window(seconds: float) -> tuple[int, float, float]:
            """Round trips for ``seconds``: (count, wall seconds, CPU seconds)."""
            nonlocal done
            count = 0
            c0, t0 = time.process_time(), time.perf_counter()
            end = t0 + seconds
            try:
                with trio.move_on_after(seconds + _STALL_SECONDS) as scope:
                    while time.perf_counter() < end:
                        await stream.write(payload)
                        await _read_exactly(stream, size)
                        count += 1
            except Exception as error:  # py-libp2p 0.2.7 turns the cancellation into this
                if time.perf_counter() < end + _STALL_SECONDS:
                    raise
                raise stalled(done + count) from error
            if scope.cancelled_caught:
                raise stalled(done + count)
            done += count
            return count, time.perf_counter() - t0, time.process_time() - c0

        await window(warmup)
        windows: list[Rate] = []
        for _ in range(rounds):
            count, wall, cpu = await window(duration)
            windows.append(Rate(count / wall, count / max(cpu, 1e-9), cpu / wall))
        with _limit("closing the round-trip stream"):
            await stream.close()

        times: list[float] = []
        client_id = client.get_id()
        for i in range(connects + warm):
            with _limit("disconnect() until the server dropped the client"):  # untimed
                await client.disconnect(info.peer_id)
                while server.get_network().connections.get(client_id):
                    await trio.sleep(0.0002)
            started = time.perf_counter()
            with _limit(f"connect() #{i + 1}"):
                await client.connect(info)
            elapsed = time.perf_counter() - started
            if i >= warm:
                times.append(elapsed)
    return Libp2pResult(importlib.metadata.version("libp2p"), stack, tuple(windows),
                        tuple(times))


def libp2p_notes(result: Libp2pResult, round_trip: Figure, dial: Figure) -> list[str]:
    """Two lines for ``bench/run.py``: round trips against case 1, ``connect()`` against case 4
    (``dial.ours`` is our median in ms)."""
    rt = result.round_trips
    windows = ", ".join(f"{w.per_second:,.0f}" for w in result.windows)
    ours_cpu = round_trip.extra.get("ours_per_cpu_second")
    cpu = f" (per CPU-second {ours_cpu / rt.per_cpu_second * 100:.0f} %)" if ours_cpu else ""
    median = result.connect_median * 1000.0
    return [
        f"py-libp2p {result.version} (trio; {result.stack}): {rt.per_second:,.0f} round trips/s "
        f"(windows {windows}), {rt.per_cpu_second:,.0f} per CPU-second, CPU share "
        f"{rt.cpu_share * 100:.0f} %; ours / py-libp2p = "
        f"{round_trip.ours / rt.per_second * 100:.0f} %{cpu}",
        f"py-libp2p connect() (TCP + multistream-select + Noise + muxer; identify follows in the "
        f"background): median {median:.2f} ms, p90 {result.connect_p90 * 1000.0:.2f} ms, min "
        f"{min(result.connect_times) * 1000.0:.2f} ms, max {max(result.connect_times) * 1000.0:.2f}"
        f" ms over {len(result.connect_times)} cycles; our dial() median {dial.ours:.2f} ms = "
        f"{dial.ours / median * 100:.0f} % of it",
    ]


def libp2p_figures(result: Libp2pResult, round_trip: Figure, dial: Figure) -> list[Figure]:
    """Ours against py-libp2p as figures (no target): round trips/s (case 1) and the connect
    time (case 4's ``dial()`` median against py-libp2p's ``connect()`` median)."""
    rt = result.round_trips
    ours_cpu = round_trip.extra.get("ours_per_cpu_second")
    extra = {f"libp2p_window_{i}": w.per_second for i, w in enumerate(result.windows)}
    if ours_cpu:
        extra["cpu_ratio"] = ours_cpu / rt.per_cpu_second
    name = f"py-libp2p {result.version} (trio; {result.stack})"
    return [
        Figure("libp2p_round_trip", "64 B round trips vs py-libp2p", "req/s", round_trip.ours,
               rt.per_second, name, None, extra),
        Figure("libp2p_connect", "dial() median vs py-libp2p connect() median", "ms",
               dial.ours, result.connect_median * 1000.0, name, None,
               {"libp2p_connect_p90_ms": result.connect_p90 * 1000.0,
                "libp2p_connect_cycles": float(len(result.connect_times))}),
    ]


_ROOT = Path(__file__).resolve().parent.parent


def libp2p_subprocess(
    python: str, payload: bytes, warmup: float, duration: float, rounds: int, connects: int
) -> Libp2pResult:
    """Run :func:`libp2p_baseline` in py-libp2p's own venv (``python`` is its interpreter:
    py-libp2p 0.8.1 cannot share overlay's venv) and read its result."""
    command = [python, "-m", "bench._libp2p", "--payload-size", str(len(payload)),
               "--warmup", repr(warmup), "--duration", repr(duration), "--rounds", str(rounds),
               "--connects", str(connects)]
    timeout = 120.0 + rounds * (warmup + duration + _STALL_SECONDS) + connects * 2.0
    try:
        done = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Libp2pError(f"could not run {python}: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise Libp2pError(f"{python} -m bench._libp2p exited with {done.returncode}: {tail[0]}")
    return Libp2pResult.from_json(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """``python -m bench._libp2p``: measure py-libp2p and print the result as one JSON line
    (``bench/run.py --libp2p-python`` runs this in py-libp2p's venv)."""
    parser = argparse.ArgumentParser(description="py-libp2p baseline (see bench/run.py)")
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--connects", type=int, required=True)
    args = parser.parse_args(argv)
    if not libp2p_available():
        print(f"libp2p is not importable by {sys.executable}", file=sys.stderr)
        return 2
    result = libp2p_baseline(b"\x5a" * args.payload_size, args.warmup, args.duration,
                             args.rounds, args.connects)
    print(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
