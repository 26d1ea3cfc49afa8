"""The ``overlay`` command line.

::

    overlay init --home DIR [--network NAME] [--listen ADDR] [--force]
    overlay id --home DIR
    overlay start --home DIR
    overlay testnet --nodes N [--duration S]

Operator commands that talk to a running node (status, peers, dial, ...) are in
``overlay._cli_admin`` and registered here.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from overlay import __version__
from overlay._logging import setup_logging
from overlay.config import NodeConfig, load_config, render_config
from overlay.errors import ConfigError, OverlayError
from overlay.identity import NodeKey

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
    home.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, object] = {}
    if args.network:
        overrides["network"] = args.network
    if args.listen:
        overrides["listen"] = list(args.listen)
    if args.moniker:
        overrides["moniker"] = args.moniker
    text = render_config(overrides=overrides)
    # Validate what we are about to write.
    import tomllib

    from overlay._configio import from_mapping

    from_mapping(NodeConfig, tomllib.loads(text))
    config_path.write_text(text)
    config = load_config(config_path)
    key_path = home / config.node_key_file
    if key_path.exists() and not args.force:
        key = NodeKey.load(key_path)
    else:
        key = NodeKey.generate()
        key.save(key_path)
    print(key.node_id)
    return 0


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


def cmd_start(args: argparse.Namespace) -> int:
    home = _home(args)
    config = _load(home)
    setup_logging(config.log.level, config.log.format)
    from overlay._service import run_node

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await run_node(config, home)
            tg.cancel_scope.cancel()

    anyio.run(main, backend=args.backend,
              backend_options=_backend_options(args.backend))
    return 0


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
    from overlay._testnet import run_testnet

    setup_logging("warning", "text")

    async def main() -> bool:
        report = await run_testnet(args.nodes, args.duration, concurrency=args.concurrency,
                                   seed=args.seed)
        print(report.render())
        return report.ok

    ok = anyio.run(main, backend=args.backend,
              backend_options=_backend_options(args.backend))
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlay", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"overlay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--home", default=DEFAULT_HOME, help="node home directory")
        return p

    p = add("init", "write config.toml (every key documented) and a node key; print the id")
    p.add_argument("--network", help="network name")
    p.add_argument("--listen", action="append", help="listen address (repeatable)")
    p.add_argument("--moniker", help="human-readable node name")
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.set_defaults(func=cmd_init)

    p = add("id", "print the node id")
    p.set_defaults(func=cmd_id)

    p = add("start", "run the node until SIGINT/SIGTERM")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("testnet", help="run a local multi-node testnet and print a summary")
    p.add_argument("--nodes", type=int, default=4, help="number of nodes (default 4)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of traffic")
    p.add_argument("--concurrency", type=int, default=4, help="request loops per node")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.set_defaults(func=cmd_testnet)

    try:
        from overlay._cli_admin import register
    except ImportError:  # pragma: no cover - admin commands not built
        pass
    else:
        register(sub, add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    raise SystemExit(main())
