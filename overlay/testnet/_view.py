"""What a running testnet shows: a live ``rich`` table on a terminal, a plain log line per
second (and one per perturbation) otherwise.

Both show the same numbers, computed from the last ticks: nodes up, connections, targets met
per capability, role requests per second and errors over the last second.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from overlay.testnet._report import RunResult, targets_status

__all__ = ["LiveView", "PlainLog", "view_for"]


def _status(result: RunResult) -> dict[str, str]:
    tick = result.ticks[-1]
    recent = [r for r in result.requests if r.t - result.t0 >= tick.t - 1.0]
    targets = targets_status(result.manifest, tick)
    return {
        "t": f"{tick.t:6.1f} s",
        "up": f"{sum(s.up for s in tick.nodes)}/{len(tick.nodes)}",
        "connections": str(sum(len(s.peers) for s in tick.nodes) // 2),
        "targets": " ".join(f"{cap} {m}/{t}" for cap, (m, t) in sorted(targets.items())) or "-",
        "requests/s": str(sum(r.ok for r in recent)),
        "errors/s": str(sum(not r.ok for r in recent)),
    }


class PlainLog:
    """One line per second and per perturbation (stdout not a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last = -1.0

    def __enter__(self) -> PlainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, result: RunResult, event: str | None) -> None:
        if event is not None:
            print(f"perturbation {event.strip()}", file=self.out, flush=True)
            return
        tick = result.ticks[-1]
        if tick.t - self._last < 1.0:
            return
        self._last = tick.t
        s = _status(result)
        print(f"{s['t']}  up {s['up']}  connections {s['connections']}  targets "
              f"{s['targets']}  requests/s {s['requests/s']}  errors/s {s['errors/s']}",
              file=self.out, flush=True)


class LiveView:
    """A ``rich`` live table refreshed on every tick, with the perturbation log below."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.events: list[str] = []

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.live.__exit__(exc_type, exc, tb)

    def __call__(self, result: RunResult, event: str | None) -> None:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        if event is not None:
            self.events.append(event)
        if not result.ticks:
            return
        s = _status(result)
        table = Table(title=f"overlay testnet · {result.manifest.mode.value} · "
                            f"{len(result.manifest.nodes)} nodes")
        for name in s:
            table.add_column(name)
        table.add_row(*s.values())
        log = Text("\n".join(self.events[-8:]) or "no perturbation yet", style="yellow")
        self.live.update(Group(table, log))


def view_for(out: TextIO = sys.stdout) -> LiveView | PlainLog:
    """A live view on a terminal, a plain log otherwise."""
    return LiveView(out) if out.isatty() else PlainLog(out)
