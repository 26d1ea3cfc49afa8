"""Operator commands that talk to a running node through its admin API.

::

    overlay status [--json]
    overlay peers [--json]
    overlay dial ADDR [--persistent]
    overlay providers CAP [--json]            DHT lookup: providers, rounds, messages
    overlay disconnect ID
    overlay ban ID|IP [--for DURATION]        DURATION: 90, 30s, 10m, 2h, 7d, 1w, 1h30m
    overlay unban ID|IP
    overlay bans [--json]                     active peer and IP bans, with expiry
    overlay seeds list [--json]
    overlay seeds add ADDR
    overlay seeds remove ADDR|ID
    overlay persistent list [--json]
    overlay persistent add ADDR               like ``dial --persistent``, without waiting
    overlay persistent remove ID              clears the flag set by ``dial --persistent``
    overlay capabilities [list] [--json]      this node's signed record and capabilities
    overlay capabilities set NAME[=VERSION] ...   advertise (live, persisted)
    overlay capabilities remove NAME          stop advertising (live, persisted)

Every command takes ``--home DIR`` to find the node (``admin.json`` and the token file there).
Exit status: 0 success, 1 an error from (or reaching) the node, 2 bad usage (argparse).
Arguments are validated locally first, so malformed input never reaches the node.

``overlay peers`` prints a table from these keys of each peer dict when present: ``id`` (or
``node_id``), ``state``, ``direction``, ``addresses`` (list of strings; else ``remote_address``),
``score``, ``latency`` (seconds), ``uptime_seconds`` (or ``uptime``), ``flags`` (list);
``--json`` prints everything the node sent.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from overlay.address import NodeAddress
from overlay.cli._admin_client import AdminClient
from overlay.cli._format import (
    duration_text,
    format_bans,
    format_capabilities,
    format_operator_peers,
    format_peers,
    format_providers,
    format_targets,
    print_mapping,
)
from overlay.errors import InvalidAddressError, LocalProtocolError
from overlay.identity import parse_node_id
from overlay.operator._control import (
    MAX_BAN_SECONDS,
    MIN_BAN_SECONDS,
    parse_ban_target,
    parse_capability,
)

__all__ = [
    "format_bans",
    "format_capabilities",
    "format_operator_peers",
    "format_peers",
    "parse_duration",
    "register",
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

AddParser = Callable[[str, str], argparse.ArgumentParser]


# -- argument types (bad values → argparse error, exit 2) ------------------------------------


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``10m``, ``2h``, ``7d``, ``1w`` or sums like ``1h30m``:
    finite and at least ``MIN_BAN_SECONDS`` (1 s). Longer than ``MAX_BAN_SECONDS`` (10 years)
    is accepted here; the node caps it and ``overlay ban`` says so."""
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        parts = list(_PART.finditer(raw))
        if not parts or "".join(m.group(0) for m in parts) != raw:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r}: use e.g. 90, 30s, 10m, 2h, 7d or 1h30m"
            ) from None
        seconds = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in parts)
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be finite")
    if seconds < MIN_BAN_SECONDS:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a ban lasts at least {MIN_BAN_SECONDS:g}s"
        )
    return seconds


def _address(text: str) -> str:
    try:
        return str(NodeAddress.parse(text))
    except InvalidAddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_id(text: str) -> str:
    try:
        return str(parse_node_id(text))
    except InvalidAddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed(text: str) -> str:
    """A seed to remove: its address or just its node id."""
    try:
        return str(parse_node_id(text))
    except InvalidAddressError:
        pass
    try:
        return str(NodeAddress.parse(text))
    except InvalidAddressError:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: expected ID@HOST:PORT, memory:ID or a node id"
        ) from None


def _capability(text: str) -> str:
    """``NAME`` or ``NAME=VERSION``, normalised to ``NAME=VERSION``."""
    try:
        name, version = parse_capability(text)
    except LocalProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"{name}={version}"


def _capability_name(text: str) -> str:
    try:
        name, version = parse_capability(text)
    except LocalProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if "=" in text:
        raise argparse.ArgumentTypeError(f"give the name only: {name}")
    return name


def _target(text: str) -> str:
    try:
        return parse_ban_target(text)
    except InvalidAddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- commands --------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient.from_home(Path(args.home).expanduser())


def _report(summary: str, result: Mapping[str, Any]) -> int:
    print(summary)
    print_mapping(result)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print_mapping(status)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _client(args).peers()
    if args.json:
        print(json.dumps(peers, indent=2, sort_keys=True))
    else:
        print(format_peers(peers))
    return 0


def _already_connected(result: Mapping[str, Any], address: str) -> str:
    via, direction = result.get("via") or "?", result.get("direction") or ""
    return (f"already connected to {result.get('connected')} via {via}"
            f"{f' ({direction})' if direction else ''}; {address} was not dialed nor stored")


def cmd_dial(args: argparse.Namespace) -> int:
    result = _client(args).dial(args.address, persistent=args.persistent)
    if result.get("already_connected"):
        return _report(_already_connected(result, args.address), result)
    kind = "persistent peer" if args.persistent else "peer"
    return _report(f"dialed {kind} {args.address}", result)


def cmd_providers(args: argparse.Namespace) -> int:
    result = _client(args).providers(args.capability)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_providers(result))
    return 0 if result.get("providers") else 1


def _print_list(args: argparse.Namespace, items: list[dict[str, Any]], text: str) -> int:
    print(json.dumps(items, indent=2, sort_keys=True) if args.json else text)
    return 0


def cmd_bans(args: argparse.Namespace) -> int:
    bans = _client(args).bans()
    return _print_list(args, bans, format_bans(bans))


def cmd_seeds_list(args: argparse.Namespace) -> int:
    seeds = _client(args).seeds()
    return _print_list(args, seeds, format_operator_peers(seeds, "no seeds"))


def cmd_persistent_list(args: argparse.Namespace) -> int:
    peers = _client(args).persistent()
    return _print_list(args, peers, format_operator_peers(peers, "no persistent peers"))


def cmd_persistent_add(args: argparse.Namespace) -> int:
    result = _client(args).add_persistent(args.address)
    if result.get("already_connected"):
        return _report(_already_connected(result, args.address) + "; it is persistent now",
                       result)
    return _report(f"{args.address} is persistent (dialing it in the background)", result)


def cmd_capabilities(args: argparse.Namespace) -> int:
    record = _client(args).capabilities()
    print(json.dumps(record, indent=2, sort_keys=True) if args.json
          else format_capabilities(record))
    return 0


def cmd_capabilities_set(args: argparse.Namespace) -> int:
    record = _client(args).set_capabilities(args.capabilities)
    print(f"advertising {' '.join(args.capabilities)} (pushed to connected peers)")
    print(format_capabilities(record))
    return 0


def cmd_capabilities_remove(args: argparse.Namespace) -> int:
    record = _client(args).remove_capability(args.name)
    print(f"no longer advertising {args.name} (pushed to connected peers)")
    print(format_capabilities(record))
    return 0


def cmd_disconnect(args: argparse.Namespace) -> int:
    return _report(f"disconnected {args.id}", _client(args).disconnect(args.id))


def cmd_ban(args: argparse.Namespace) -> int:
    duration = args.duration
    if duration is not None and duration > MAX_BAN_SECONDS:
        print(f"note: bans last at most 10 years; banning {args.target} for "
              f"{duration_text(MAX_BAN_SECONDS)} instead of {duration_text(duration)}",
              file=sys.stderr)
        duration = MAX_BAN_SECONDS
    result = _client(args).ban(args.target, duration=duration)
    seconds = result.get("seconds", duration)
    length = "the default duration" if seconds is None else duration_text(seconds)
    if result.get("capped"):
        length += " (capped: the longest ban)"
    return _report(f"banned {args.target} for {length}", result)


def cmd_unban(args: argparse.Namespace) -> int:
    return _report(f"unbanned {args.target}", _client(args).unban(args.target))


def cmd_seeds_add(args: argparse.Namespace) -> int:
    return _report(f"added seed {args.address}", _client(args).add_seed(args.address))


def cmd_seeds_remove(args: argparse.Namespace) -> int:
    return _report(f"removed seed {args.seed}", _client(args).remove_seed(args.seed))


def cmd_persistent_remove(args: argparse.Namespace) -> int:
    result = _client(args).remove_persistent(args.id)
    return _report(f"{args.id} is no longer persistent", result)


def cmd_targets_list(args: argparse.Namespace) -> int:
    targets = _client(args).targets()
    return _print_list(args, targets, format_targets(targets))


def cmd_targets_set(args: argparse.Namespace) -> int:
    result = _client(args).set_target(args.capability, args.assignments)
    for warning in result.get("warnings") or ():
        print(f"warning: {warning}", file=sys.stderr)
    return _report(f"target {args.capability} set", result)


def cmd_targets_remove(args: argparse.Namespace) -> int:
    return _report(f"target {args.capability} removed",
                   _client(args).remove_target(args.capability))


def _subcommand(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """``overlay GROUP NAME``; ``--home`` may come before or after ``NAME``."""
    q: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
    q.add_argument("--home", default=argparse.SUPPRESS,
                   help="node home directory (default: the --home given before the "
                        "subcommand, else ~/.overlay)")
    return q


def register(sub: Any, add: AddParser) -> None:
    """Add the operator commands to the ``overlay`` parser (``sub`` is its subparsers object;
    ``add(name, help)`` creates a subcommand that already has ``--home``)."""
    p = add("status", "show the running node's status")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = add("peers", "list the peers the running node knows (a table, or --json for all)")
    p.add_argument("--json", action="store_true", help="print everything known per peer")
    p.set_defaults(func=cmd_peers)

    p = add("dial", "connect to a peer now")
    p.add_argument("address", type=_address, metavar="ADDR", help="ID@HOST:PORT or memory:ID")
    p.add_argument("--persistent", action="store_true",
                   help="keep redialing it forever (persisted)")
    p.set_defaults(func=cmd_dial)

    p = add("providers", "look up the providers of a capability in the DHT (rounds, messages)")
    p.add_argument("capability", type=_capability_name, metavar="CAP",
                   help="capability name")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_providers)

    p = add("disconnect", "close the connection to a peer")
    p.add_argument("id", type=_node_id, metavar="ID", help="node id")
    p.set_defaults(func=cmd_disconnect)

    p = add("ban", "ban a node id or an IP address (and disconnect it)")
    p.add_argument("target", type=_target, metavar="ID|IP", help="node id or IP address")
    p.add_argument("--for", dest="duration", type=parse_duration, metavar="DURATION",
                   help="ban length: 30s, 10m, 2h, 7d..., at least 1s; longer than 10 years "
                        "is capped (default: the node's ban_duration)")
    p.set_defaults(func=cmd_ban)

    p = add("unban", "lift the ban of a node id or an IP address")
    p.add_argument("target", type=_target, metavar="ID|IP", help="node id or IP address")
    p.set_defaults(func=cmd_unban)

    p = add("bans", "list the active bans of node ids and IPs (IPv6: the /64), with expiry")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_bans)

    p = add("seeds", "manage seed addresses")
    seeds = p.add_subparsers(dest="seeds_command", required=True, metavar="SUBCOMMAND")
    q = _subcommand(seeds, "list", "list the seeds (from config.toml and `seeds add`)")
    q.add_argument("--json", action="store_true", help="print the raw JSON")
    q.set_defaults(func=cmd_seeds_list)
    q = _subcommand(seeds, "add", "add a seed address (persisted)")
    q.add_argument("address", type=_address, metavar="ADDR", help="ID@HOST:PORT or memory:ID")
    q.set_defaults(func=cmd_seeds_add)
    q = _subcommand(seeds, "remove",
                    "remove a seed added with 'overlay seeds add' (persisted; seeds from "
                    "config.toml are removed by editing the file)")
    q.add_argument("seed", type=_seed, metavar="ADDR|ID",
                   help="the seed's address (ID@HOST:PORT, memory:ID) or node id")
    q.set_defaults(func=cmd_seeds_remove)

    p = add("persistent", "list, add or remove persistent peers (redialed forever)")
    persistent = p.add_subparsers(dest="persistent_command", required=True,
                                  metavar="SUBCOMMAND")
    q = _subcommand(persistent, "list",
                    "list the persistent peers (from config.toml and the operator)")
    q.add_argument("--json", action="store_true", help="print the raw JSON")
    q.set_defaults(func=cmd_persistent_list)
    q = _subcommand(persistent, "add",
                    "keep redialing a peer forever (persisted); like `dial --persistent` "
                    "without waiting for the connection")
    q.add_argument("address", type=_address, metavar="ADDR", help="ID@HOST:PORT or memory:ID")
    q.set_defaults(func=cmd_persistent_add)
    q = _subcommand(persistent, "remove",
                    "stop redialing a peer forever: clear the persistent flag set by "
                    "'overlay dial --persistent' (persisted; the connection stays open)")
    q.add_argument("id", type=_node_id, metavar="ID", help="node id")
    q.set_defaults(func=cmd_persistent_remove)

    p = add("targets", "list, set or remove capability peer targets (capability routing)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_targets_list)
    targets = p.add_subparsers(dest="targets_command", required=False, metavar="SUBCOMMAND")
    q = _subcommand(targets, "list", "list the targets with connected, required, deficit and "
                                     "state (the same as plain `overlay targets`)")
    q.add_argument("--json", action="store_true", help="print the raw JSON")
    q.set_defaults(func=cmd_targets_list)
    q = _subcommand(targets, "set", "add or change the target of a capability (live, not "
                                    "written to config.toml)")
    q.add_argument("capability", metavar="CAP", help="capability name")
    q.add_argument("assignments", nargs="+", metavar="KEY=VALUE",
                   help="min_peers=N, min_fraction=F or P%%, max_peers=N|none, priority=N")
    q.set_defaults(func=cmd_targets_set)
    q = _subcommand(targets, "remove", "drop the target of a capability (live)")
    q.add_argument("capability", metavar="CAP", help="capability name")
    q.set_defaults(func=cmd_targets_remove)
    p = add("capabilities", "show or change the capabilities this node advertises (live)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_capabilities)
    caps = p.add_subparsers(dest="capabilities_command", required=False, metavar="SUBCOMMAND")
    q = _subcommand(caps, "list", "show this node's record: seq, expiry, capabilities")
    q.add_argument("--json", action="store_true", help="print the raw JSON")
    q.set_defaults(func=cmd_capabilities)
    q = _subcommand(caps, "set",
                    "advertise capabilities (added or changed; re-signed, pushed to connected "
                    "peers and persisted)")
    q.add_argument("capabilities", type=_capability, nargs="+", metavar="NAME[=VERSION]",
                   help="a capability name, optionally with a version (default 0)")
    q.set_defaults(func=cmd_capabilities_set)
    q = _subcommand(caps, "remove",
                    "stop advertising a capability (re-signed, pushed and persisted)")
    q.add_argument("name", type=_capability_name, metavar="NAME", help="the capability name")
    q.set_defaults(func=cmd_capabilities_remove)
