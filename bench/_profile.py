"""Where a round trip's time goes: cProfile of the round-trip case plus sans-IO micro-timings.

Two views, both per 64-byte request/response round trip over TCP + Noise:

* **cProfile** of ``requests`` round trips (after a warm-up), self time summed by layer (the
  file a function lives in: anyio, asyncio, the Noise/secure layer, the sans-IO core and framing,
  the async driver, the AEAD and socket built-ins) and call counts per round trip of the
  functions that reveal the scheduling cost (event-loop callbacks = task steps, epoll waits,
  socket sends/receives). Profiling inflates Python-level time, so shares matter, not sums.
* **Micro-timings without I/O**: the pure ``ConnectionCore`` work of one round trip (request
  out, request in, response out, response in), the secure framing + AEAD of the two messages
  each way, and the AEAD calls alone. Subtracted from the unprofiled round-trip time they bound
  what is left for the async layers (anyio, the event loop, task switches, syscalls).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sysconfig
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench._ours import ECHO, ECHO_PIPELINED, node_pair
from overlay.connection._core import ChannelParams, ConnectionCore, CoreConfig, RequestReceived
from overlay.transport._secure import TransportReader, encrypt_frames
from overlay.wire._noise import CipherState

__all__ = ["ProfileReport", "profile_round_trips", "render_profile"]

_LAYERS: tuple[tuple[str, str], ...] = (
    # (prefix of the path relative to its root (see _relative), layer)
    ("anyio/", "anyio"),
    ("asyncio/", "asyncio event loop (Python)"),
    ("uvloop/", "uvloop"),
    ("overlay/transport/_secure.py", "secure stream (Noise framing)"),
    ("overlay/wire/_noise.py", "Noise CipherState"),
    ("overlay/connection/_core.py", "sans-IO core + framing"),
    ("overlay/connection/_receive.py", "sans-IO core + framing"),
    ("overlay/connection/_send.py", "sans-IO core + framing"),
    ("overlay/connection/_types.py", "sans-IO core + framing"),
    ("overlay/wire/_handshake.py", "secure stream (Noise framing)"),
    ("overlay/wire/_frames.py", "sans-IO core + framing"),
    ("overlay/wire/_messages.py", "sans-IO core + framing"),
    ("overlay/connection/_ratelimit.py", "sans-IO core + framing"),
    ("overlay/connection/_driver.py", "async driver (peer/router/channel)"),
    ("overlay/connection/_writer.py", "async driver (peer/router/channel)"),
    ("overlay/connection/_reader.py", "async driver (peer/router/channel)"),
    ("overlay/connection/_requests.py", "async driver (peer/router/channel)"),
    ("overlay/router/_serving.py", "async driver (peer/router/channel)"),
    ("overlay/router/_inbox.py", "async driver (peer/router/channel)"),
    ("overlay/router/_router.py", "async driver (peer/router/channel)"),
    ("overlay/router/_channel.py", "async driver (peer/router/channel)"),
    ("overlay/router/_codec.py", "async driver (peer/router/channel)"),
    ("overlay/connection/_observer.py", "async driver (peer/router/channel)"),
    ("overlay/router/_destination.py", "async driver (peer/router/channel)"),
    ("bench/", "benchmark loop"),
    ("cryptography/", "AEAD (ChaCha20-Poly1305)"),
)

_WATCHED: tuple[tuple[str, str, str], ...] = (
    # (label, path prefix relative to its root ("~" = built-in), exact function name or
    # built-in name fragment)
    ("event-loop callbacks (task steps)", "asyncio/events.py", "_run"),
    ("event-loop iterations", "asyncio/base_events.py", "_run_once"),
    ("epoll waits", "~", "'poll' of 'select.epoll'"),
    ("socket send()", "~", "'send' of '_socket.socket'"),
    ("socket recv()", "~", "'recv' of '_socket.socket'"),
    ("AEAD encrypt", "~", "'encrypt' of"),
    ("AEAD decrypt", "~", "'decrypt' of"),
    ("anyio cancel scopes entered", "anyio/_backends/_asyncio.py", "__enter__"),
    ("anyio.current_time()", "anyio/_core/_eventloop.py", "current_time"),
    ("anyio tasks spawned", "anyio/_backends/_asyncio.py", "_spawn"),
    ("loop.time() (ours + the loop's own)", "asyncio/base_events.py", "time"),
    ("anyio cancel checks (checkpoint_if_cancelled)", "anyio/lowlevel.py",
     "checkpoint_if_cancelled"),
    ("anyio backend lookups", "anyio/_core/_eventloop.py", "get_async_backend"),
    ("anyio sync primitives created (Event, Lock)", "anyio/_core/_synchronization.py",
     "__new__"),
    ("asyncio futures created", "asyncio/base_events.py", "create_future"),
    ("transport pause_reading", "asyncio/selector_events.py", "pause_reading"),
    ("transport resume_reading", "asyncio/selector_events.py", "resume_reading"),
)


_ROOTS: tuple[str, ...] = (
    *{sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")},
    str(Path(__file__).resolve().parent.parent),  # this checkout: overlay/, bench/, ...
)
"""Where the profiled files live; paths are classified relative to the innermost of them, so
the folder a checkout sits in (``~/src/overlay``, ``~/bench``) never decides a layer."""


def _relative(filename: str, roots: Sequence[str] = _ROOTS) -> str:
    """``filename`` relative to the innermost root holding it (``anyio/_core/x.py``,
    ``overlay/connection/_driver.py``), ``/`` separated; unchanged when no root holds it or for
    ``~``."""
    if filename == "~":
        return filename
    path = Path(filename)
    best: Path | None = None
    for root in roots:
        base = Path(root)
        if path.is_relative_to(base) and (best is None or base.is_relative_to(best)):
            best = base
    if best is None:
        return filename.replace(os.sep, "/")
    return path.relative_to(best).as_posix()


def _watched(filename: str, name: str, roots: Sequence[str] = _ROOTS) -> list[str]:
    path = _relative(filename, roots)
    labels = []
    for label, marker, func in _WATCHED:
        if marker == "~":
            if path == "~" and func in name:
                labels.append(label)
        elif path.startswith(marker) and name == func:
            labels.append(label)
    return labels


def _layer(filename: str, name: str, roots: Sequence[str] = _ROOTS) -> str:
    if filename == "~":
        if "ChaCha20Poly1305" in name or "aead" in name:
            return "AEAD (ChaCha20-Poly1305)"
        if "_socket.socket" in name or "select.epoll" in name:
            return "syscalls (socket, epoll)"
        return "other built-ins"
    path = _relative(filename, roots)
    for marker, layer in _LAYERS:
        if path.startswith(marker):
            return layer
    return "other Python"


@dataclass(frozen=True, slots=True)
class ProfileReport:
    """The two views (see the module docstring); times in microseconds per round trip."""

    requests: int
    us_per_rt: float
    """Unprofiled wall-clock time of one round trip."""
    profiled_us_per_rt: float
    layers: dict[str, float]
    """Self time per layer under cProfile, µs per round trip."""
    calls_per_rt: dict[str, float]
    top: list[tuple[str, float, float]]
    """(function, self µs per round trip, calls per round trip), the heaviest first."""
    core_us: float
    """Pure ConnectionCore work of one round trip (both nodes)."""
    secure_us: float
    """encrypt_frames + TransportReader of the 2 messages each way (AEAD included)."""
    aead_us: float
    """The 4 AEAD calls alone."""
    calls_per_pipelined: dict[str, float]
    """The watched call counts per request with 256 requests in flight (case 2)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "us_per_rt": self.us_per_rt,
            "profiled_us_per_rt": self.profiled_us_per_rt,
            "layers_us_per_rt": self.layers,
            "calls_per_rt": self.calls_per_rt,
            "top": [{"function": f, "self_us_per_rt": t, "calls_per_rt": c}
                    for f, t, c in self.top],
            "core_us_per_rt": self.core_us,
            "secure_us_per_rt": self.secure_us,
            "aead_us_per_rt": self.aead_us,
            "calls_per_pipelined_request": self.calls_per_pipelined,
        }


def _core_round_trip_us(payload: bytes, n: int) -> float:
    params = [ChannelParams(channel_id=ECHO.id)]
    a = ConnectionCore(CoreConfig(), params, now=0.0)
    b = ConnectionCore(CoreConfig(), params, now=0.0)
    started = time.perf_counter()
    for i in range(n):
        now = i * 1e-5
        a.send_request(ECHO.id, payload)
        b.receive_data(a.data_to_send(now), now)
        event = b.next_event()
        assert isinstance(event, RequestReceived)
        b.next_event()
        b.send_response(ECHO.id, event.request_id, event.payload)
        a.receive_data(b.data_to_send(now), now)
        a.next_event()
        a.next_event()
    return (time.perf_counter() - started) / n * 1e6


def _secure_round_trip_us(frame: bytes, n: int) -> tuple[float, float]:
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    reader = TransportReader(receiver)
    started = time.perf_counter()
    for _ in range(2 * n):
        reader.feed(encrypt_frames(sender, frame))
        reader.next_message()
    secure = (time.perf_counter() - started) / n * 1e6
    enc, dec = CipherState(key), CipherState(key)
    started = time.perf_counter()
    for _ in range(2 * n):
        dec.decrypt_with_ad(None, enc.encrypt_with_ad(None, frame))
    aead = (time.perf_counter() - started) / n * 1e6
    return secure, aead


def _key_name(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    return f"{_relative(filename)}:{line}({name})"


async def _pipelined_calls(requests: int, in_flight: int = 256,
                           payload: bytes = b"x" * 64) -> dict[str, float]:
    """Watched call counts per request of ``requests`` echo requests, ``in_flight`` at once."""
    async with node_pair(ECHO_PIPELINED) as (ca, _cb, peer):
        per_task = max(1, requests // in_flight)

        async def client(rounds: int) -> None:
            for _ in range(rounds):
                await ca.request(peer, payload)

        async with anyio.create_task_group() as tg:  # warm-up
            for _ in range(in_flight):
                tg.start_soon(client, 4)
        profiler = cProfile.Profile()
        profiler.enable()
        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(client, per_task)
        profiler.disable()
    done = per_task * in_flight
    calls: dict[str, float] = defaultdict(float)
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, ncalls, _t, _c, _callers) in stats.items():
        for label in _watched(filename, name):
            calls[label] += ncalls / done
    return {label: calls.get(label, 0.0) for label, _m, _f in _WATCHED}


async def profile_round_trips(requests: int, payload: bytes = b"x" * 64) -> ProfileReport:
    """Run the round-trip case unprofiled, then under cProfile; add the micro-timings."""
    async with node_pair(ECHO) as (ca, _cb, peer):
        for _ in range(500):
            await ca.request(peer, payload)
        started = time.perf_counter()
        for _ in range(requests):
            await ca.request(peer, payload)
        us_per_rt = (time.perf_counter() - started) / requests * 1e6
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for _ in range(requests):
            await ca.request(peer, payload)
        profiler.disable()
        profiled = (time.perf_counter() - started) / requests * 1e6
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    layers: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    rows: list[tuple[str, float, float]] = []
    for key, (_cc, ncalls, tottime, _cumtime, _callers) in stats.items():
        filename, _line, name = key
        layers[_layer(filename, name)] += tottime / requests * 1e6
        rows.append((_key_name(key), tottime / requests * 1e6, ncalls / requests))
        for label in _watched(filename, name):
            calls[label] += ncalls / requests
    rows.sort(key=lambda row: row[1], reverse=True)
    frame = b"\0" * (len(payload) + 12)
    core_us = min(_core_round_trip_us(payload, 10000) for _ in range(3))
    secure = [_secure_round_trip_us(frame, 10000) for _ in range(3)]
    secure_us = min(s for s, _a in secure)
    aead_us = min(a for _s, a in secure)
    pipelined = await _pipelined_calls(requests)
    return ProfileReport(
        requests=requests,
        us_per_rt=us_per_rt,
        profiled_us_per_rt=profiled,
        layers=dict(sorted(layers.items(), key=lambda kv: kv[1], reverse=True)),
        calls_per_rt={label: calls.get(label, 0.0) for label, _m, _f in _WATCHED},
        top=rows[:25],
        core_us=core_us,
        secure_us=secure_us,
        aead_us=aead_us,
        calls_per_pipelined=pipelined,
    )


def render_profile(report: ProfileReport) -> str:
    total = sum(report.layers.values()) or 1.0
    lines = [
        f"round-trip profile ({report.requests} requests): "
        f"{report.us_per_rt:.1f} µs/round trip unprofiled, "
        f"{report.profiled_us_per_rt:.1f} µs under cProfile",
        "",
        "  self time by layer (cProfile, µs per round trip, share):",
    ]
    for layer, us in report.layers.items():
        lines.append(f"    {layer:<38} {us:8.1f}  {us / total * 100:5.1f} %")
    lines += ["", "  calls per round trip (and per request with 256 in flight):"]
    hidden = [label for label, count in report.calls_per_rt.items()
              if not count and not report.calls_per_pipelined.get(label)]
    for label, count in report.calls_per_rt.items():
        piped = report.calls_per_pipelined.get(label, 0.0)
        if count or piped:
            lines.append(f"    {label:<46} {count:8.2f}  {piped:8.2f}")
    if hidden:
        lines.append(f"    (not visible to cProfile on this loop: {', '.join(hidden)})")
    lines += ["", "  heaviest functions (self µs per round trip, calls per round trip):"]
    for name, us, ncalls in report.top:
        lines.append(f"    {us:7.2f} µs {ncalls:6.2f}x  {name}")
    rest = report.us_per_rt - report.core_us - report.secure_us
    lines += [
        "",
        "  without I/O (unprofiled, µs per round trip):",
        f"    ConnectionCore (both ends)              {report.core_us:8.1f}",
        f"    secure framing + AEAD (4 messages)      {report.secure_us:8.1f}"
        f"   (AEAD alone {report.aead_us:.1f})",
        f"    left for the async layers + syscalls    {rest:8.1f}"
        f"   ({rest / report.us_per_rt * 100:.0f} % of the round trip)",
    ]
    return "\n".join(lines)
