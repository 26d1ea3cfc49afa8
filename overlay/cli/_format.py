"""How the operator commands print what a node answers: tables of peers, bans, seeds,
capabilities and routing targets, nested mappings as ``key.sub: value`` lines, durations and
latencies in human units. Pure text: no I/O but :func:`print_mapping`'s ``print``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "duration_text",
    "format_bans",
    "format_capabilities",
    "format_operator_peers",
    "format_peers",
    "format_providers",
    "format_targets",
    "print_mapping",
]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, name + ".")
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from _flatten(item, f"{name}[{i}].")
                else:
                    yield f"{name}[{i}]", str(item)
        elif isinstance(value, list | tuple):
            yield name, ", ".join(str(v) for v in value) if value else "-"
        elif value is None or value == "" or value == {}:
            yield name, "-"
        else:
            yield name, str(value)


def print_mapping(data: Mapping[str, Any]) -> None:
    rows = list(_flatten(data))
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")


def duration_text(seconds: object) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _number(value: object, fmt: str, scale: float = 1.0) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return format(value * scale, fmt)


def _address_text(value: object) -> str:
    """An address as ``ID@HOST:PORT`` / ``memory:ID``, also from its dict form."""
    if isinstance(value, Mapping):
        node_id, host, port = value.get("node_id"), value.get("host"), value.get("port")
        if value.get("protocol") == "memory" and node_id:
            return f"memory:{node_id}"
        if node_id and host and port:
            host_text = f"[{host}]" if ":" in str(host) else str(host)
            return f"{node_id}@{host_text}:{port}"
    return str(value)


def _ms(seconds: object) -> str:
    text = _number(seconds, ".1f", 1000.0)
    return text if text == "-" else text + "ms"


def format_peers(peers: Sequence[Mapping[str, Any]]) -> str:
    """A readable table of peer dicts (see the module docstring for the keys used)."""
    if not peers:
        return "no peers"
    header = ("ID", "STATE", "DIR", "ADDRESS", "SCORE", "RTT", "UPTIME", "FLAGS")
    rows = [header]
    for peer in peers:
        addresses = peer.get("addresses") or []
        address = (_address_text(addresses[0]) if isinstance(addresses, list) and addresses
                   else str(peer.get("remote_address") or "-"))
        uptime = peer.get("uptime_seconds", peer.get("uptime"))
        flags = peer.get("flags") or []
        rows.append((
            str(peer.get("id") or peer.get("node_id") or "?"),
            str(peer.get("state") or "-"),
            str(peer.get("direction") or "-"),
            address,
            _number(peer.get("score"), ".1f"),
            _ms(peer.get("latency")),
            duration_text(uptime),
            ",".join(str(f) for f in flags) if isinstance(flags, list) and flags else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_providers(result: Mapping[str, Any]) -> str:
    """The ``/providers`` answer as text (``overlay providers``)."""
    providers = result.get("providers") or []
    lines = [f"{len(providers)} provider(s) of {result.get('capability')}: "
             f"{result.get('rounds')} rounds, {result.get('messages')} messages, "
             f"{_ms(result.get('elapsed'))} ({result.get('outcome')}); first after "
             f"{_ms(result.get('first_provider_after'))}"]
    if providers:
        lines.append(_table(
            ("ID", "VERSION", "ADDRESSES", "AFTER"),
            [(str(p.get("id")), str(p.get("version")), ", ".join(p.get("addresses") or ()) or "-",
              _ms(p.get("after"))) for p in providers],
        ))
    return "\n".join(lines)


def format_bans(bans: Sequence[Mapping[str, Any]]) -> str:
    """A table of the ``/bans`` answer (``overlay bans``)."""
    if not bans:
        return "no bans"
    return _table(("KIND", "TARGET", "REMAINING", "UNTIL", "REASON"), [
        (str(b.get("kind", "?")), str(b.get("target", "?")),
         duration_text(b.get("remaining_seconds")), _utc(b.get("until")),
         str(b.get("reason") or "-"))
        for b in bans
    ])


def format_operator_peers(peers: Sequence[Mapping[str, Any]], empty: str) -> str:
    """A table of the ``/seeds`` or ``/persistent`` answer."""
    if not peers:
        return empty
    rows = []
    for peer in peers:
        addresses = peer.get("addresses") or []
        origin = peer.get("origin") or []
        rows.append((
            str(peer.get("id", "?")),
            str(addresses[0]) if isinstance(addresses, list) and addresses else "-",
            ",".join(str(o) for o in origin) if isinstance(origin, list) and origin else "-",
            str(peer.get("state") or "-"),
        ))
    return _table(("ID", "ADDRESS", "FROM", "STATE"), rows)


def _utc(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = [header, *rows]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def format_capabilities(record: Mapping[str, Any]) -> str:
    """The ``/capabilities`` answer as text (``overlay capabilities``)."""
    caps = record.get("capabilities") or []
    lines = [
        f"record seq {record.get('seq')}, expires {_utc(record.get('expires_at'))}, "
        f"from {record.get('origin', '?')}",
    ]
    if not caps:
        lines.append("no capabilities")
        return "\n".join(lines)
    rows = []
    for cap in caps:
        attributes = cap.get("attributes") or {}
        rows.append((str(cap.get("name", "?")), str(cap.get("version", "-")),
                     ",".join(f"{k}={v}" for k, v in sorted(attributes.items())) or "-"))
    lines.append(_table(("NAME", "VERSION", "ATTRIBUTES"), rows))
    return "\n".join(lines)


def format_targets(targets: Sequence[Mapping[str, Any]]) -> str:
    """A table of the ``/targets`` answer (``overlay targets``)."""
    if not targets:
        return "no targets"

    def fields(t: Mapping[str, Any]) -> str:
        spec = t.get("target") or {}
        return " ".join(f"{k}={v}" for k, v in sorted(spec.items())) or "-"

    return _table(("CAPABILITY", "TARGET", "CONNECTED", "REQUIRED", "DEFICIT", "STATE",
                   "REASON"), [
        (str(t.get("capability", "?")), fields(t), str(t.get("connected", "-")),
         str(t.get("required", "-")), str(t.get("deficit", "-")),
         str(t.get("state", "not ticked yet")), str(t.get("reason", "")))
        for t in targets
    ])

