"""The ``overlay`` command line.

::

    overlay init --home DIR [--network NAME] [--listen ADDR] [--force] [--new-key]
    overlay id --home DIR
    overlay start --home DIR
    overlay testnet [--nodes N --cap NAME=SHARE --target CAP:K=V | --manifest FILE]
                    [--mode inproc|tcp|procs] [--report FILE.json] [--plot FILE.png]
    overlay testnet init --nodes N --out DIR [--compose]
    overlay simulate --nodes N --seed S [--manifest FILE] --report FILE.json

``overlay --help`` and every ``overlay COMMAND --help`` show each option's default.

Operator commands that talk to a running node (status, peers, dial, ...) are in
``overlay.cli._admin`` and registered here.

Exit status: 0 success; 1 an error (one ``error: MESSAGE`` line on stderr), including a closed
standard output (``overlay peers | head -1``); 2 bad usage (argparse) or a configuration error
(``config error: ...``); 130 Ctrl-C. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import math
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from overlay._version import __version__
from overlay.cli._logging import setup_logging
from overlay.errors import ConfigError, OverlayError
from overlay.identity import NodeKey
from overlay.node._config import NodeConfig, load_config, render_config
from overlay.node._configio import from_mapping

__all__ = ["main"]

log = logging.getLogger("overlay.cli")

DEFAULT_HOME = "~/.overlay"


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home).expanduser()


def cmd_init(args: argparse.Namespace) -> int:
    home = _home(args)
    config_path = home / "config.toml"
    if config_path.exists() and not args.force:
        print(f"error: {config_path} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    overrides: dict[str, object] = {}
    # ``is not None``: an empty --network is refused by the config's own check, never dropped.
    if args.network is not None:
        overrides["network"] = args.network
    if args.listen is not None:
        overrides["listen"] = list(args.listen)
    if args.moniker is not None:
        overrides["moniker"] = args.moniker
    if config_path.exists():
        # --force: keep the key the old configuration names (when it still loads).
        try:
            old_key_file = load_config(config_path).node_key_file
        except ConfigError:
            old_key_file = NodeConfig().node_key_file
        if old_key_file != NodeConfig().node_key_file:
            overrides["node_key_file"] = old_key_file
    text = render_config(overrides=overrides)
    # Validate what we are about to write, before creating anything.
    config = from_mapping(NodeConfig, tomllib.loads(text))
    _check_servable(config)  # what `overlay start` would refuse, refused now
    key_path = home / config.node_key_file
    if key_path.exists() and not args.new_key:
        key = NodeKey.load(key_path)  # an unreadable key is an error, never silently replaced
    else:
        key = NodeKey.generate()
    home.mkdir(parents=True, exist_ok=True)
    config_path.write_text(text)
    if key_path.exists() and args.new_key:
        old = _old_id(key_path)
        print(f"replacing the node key {key_path} (old id {old}): this node gets a new identity",
              file=sys.stderr)
    if not key_path.exists() or args.new_key:
        key.save(key_path)
    print(key.node_id)
    return 0


def _old_id(key_path: Path) -> str:
    try:
        return NodeKey.load(key_path).node_id
    except ConfigError:
        return "unreadable"


def cmd_id(args: argparse.Namespace) -> int:
    home = _home(args)
    config = _load(home)
    print(NodeKey.load(home / config.node_key_file).node_id)
    return 0


def _load(home: Path) -> NodeConfig:
    path = home / "config.toml"
    if not path.exists():
        raise ConfigError("<file>", f"{path} not found; run `overlay init --home {home}` first")
    return load_config(path)


def _check_servable(config: NodeConfig) -> None:
    """``overlay start`` serves TCP only: a ``memory:`` listen address is a config error."""
    for i, address in enumerate(config.listen_addresses()):
        if address.protocol != "tcp":
            raise ConfigError(
                f"listen[{i}]", f"overlay start serves TCP only; {config.listen[i]!r} is an "
                "in-process address (use tcp://HOST:PORT)"
            )


def cmd_start(args: argparse.Namespace) -> int:
    home = _home(args)
    config = _load(home)
    _check_servable(config)
    if args.app is not None:
        config = dataclasses.replace(config, app=args.app)
    if config.app and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the app may live right here
    setup_logging(config.log.level, config.log.format)
    from overlay.node._service import run_node

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await run_node(config, home)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main, backend=args.backend,
                  backend_options=_backend_options(args.backend))
    except BaseExceptionGroup as group:
        raise _operator_error(group) from None
    return 0


def _operator_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a task-group failure: its first leaf when every leaf is an
    operator-facing error (``OverlayError``, ``OSError``); else the group itself (a bug, whose
    traceback is worth seeing)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    if leaves and all(isinstance(e, OverlayError | OSError | KeyboardInterrupt) for e in leaves):
        for leaf in leaves:
            if not isinstance(leaf, KeyboardInterrupt):
                return leaf
        return leaves[0]
    return group


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


def _backend_options(backend: str) -> dict[str, Any] | None:
    """Use uvloop on asyncio when it is installed."""
    if backend != "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        return None
    return {"use_uvloop": True}


def cmd_testnet(args: argparse.Namespace) -> int:
    from overlay.cli._testnet import cmd_testnet as run

    return run(args, _backend_options)


def cmd_simulate(args: argparse.Namespace) -> int:
    from overlay.sim import load_manifest, render_report, simulate_with_picture

    config = load_manifest(args.manifest, nodes=args.nodes, seed=args.seed)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ConfigError("--plot", f"must name a .png file, got {str(args.plot)!r}")
    report, picture = simulate_with_picture(
        config, progress=lambda text: print(text, file=sys.stderr)
    )
    args.report.write_bytes(render_report(report))
    print(f"report written to {args.report}")
    if args.plot is not None:
        from overlay.cli._testnet import plot_simulation  # the testnet's drawing

        plot_simulation(picture, args.plot)
        print(f"picture written to {args.plot}")
    return 0


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, except when there is nothing to show
    (flags, options without a default) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


_BACKEND_HELP = "async backend: asyncio (with uvloop when installed) or trio"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlay", formatter_class=HelpFormatter,
        description="Run a node of the overlay peer-to-peer network, and operate a running "
                    f"node through its admin API. Every command but testnet takes --home DIR "
                    f"(default: {DEFAULT_HOME}); 'overlay COMMAND --help' describes a command.",
        epilog="exit status: 0 success, 1 an error, 2 bad usage or a configuration error, "
               "130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"overlay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        p.add_argument("--home", default=DEFAULT_HOME, help="node home directory")
        return p

    p = add("init", "write config.toml (every key documented) and a node key; print the id")
    defaults = NodeConfig()
    p.add_argument("--network", help=f"network name (default: {defaults.network})")
    p.add_argument("--listen", action="append",
                   help="listen address tcp://HOST:PORT, repeatable (default: "
                        f"{', '.join(defaults.listen)})")
    p.add_argument("--moniker", help="human-readable node name (default: none)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing config.toml (the node key is kept)")
    p.add_argument("--new-key", action="store_true",
                   help="generate a new node key even if one exists: the node gets a new "
                        "identity (back up node_key first)")
    p.set_defaults(func=cmd_init)

    p = add("id", "print the node id")
    p.set_defaults(func=cmd_id)

    p = add("start", "run the node until SIGINT/SIGTERM")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                   help=_BACKEND_HELP)
    p.add_argument("--app", metavar="MODULE:FUNCTION", default=None,
                   help="load an application into the node: FUNCTION(node) opens its channels "
                        "and starts its tasks (overrides the app key of config.toml; MODULE is "
                        "imported from the working directory or the installed packages)")
    p.set_defaults(func=cmd_start)

    from overlay.cli._testnet import TESTNET_HELP, add_testnet_parser

    p = sub.add_parser("testnet", help=TESTNET_HELP, description=TESTNET_HELP,
                       formatter_class=HelpFormatter)
    add_testnet_parser(p, at_least=_at_least, seconds=_positive_seconds,
                       backend_help=_BACKEND_HELP)
    p.set_defaults(func=cmd_testnet)

    simulate_help = "simulate N nodes' discovery and routing cores on virtual time (seeded)"
    p = sub.add_parser("simulate", help=simulate_help, description=simulate_help,
                       formatter_class=HelpFormatter)
    p.add_argument("--nodes", type=_at_least(20), default=1000, help="number of nodes")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of every random choice: the same seed writes the same report")
    p.add_argument("--manifest", type=Path,
                   help="TOML file: capabilities, targets, churn, loss, trial counts")
    p.add_argument("--report", type=Path, required=True, help="where to write the JSON report")
    p.add_argument("--plot", type=Path,
                   help="write a PNG here: sampled final topology and timeline (matplotlib)")
    p.set_defaults(func=cmd_simulate)

    try:
        from overlay.cli._admin import register
    except ImportError:  # pragma: no cover - admin commands not built
        pass
    else:
        register(sub, add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            result: int = args.func(args)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        except OverlayError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return 1
    return result


def _silence_stdout() -> None:
    """After EPIPE on stdout (``overlay peers | head -1``): point stdout at /dev/null so that
    the interpreter's final flush does not fail again (the recipe of the ``signal`` docs)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (tests capture it)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
