"""Applications hosted by a node: ``app = "package.module:setup"`` (``overlay start --app``).

``setup(node)`` (a plain or an ``async`` function) is called once the node listens and before
its peer manager dials anyone or the admin API answers. It opens the application's channels and
starts its tasks in the node's task group (:meth:`Node.start_soon <overlay.Node.start_soon>`,
:meth:`Node.start <overlay.Node.start>`); those tasks run until the node stops.

Every way a spec can be wrong is a :class:`~overlay.errors.ConfigError` on the ``app`` key that
names the spec and what is wrong: malformed, not importable, no such attribute, not callable,
or ``setup`` itself raised.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

from overlay.errors import ConfigError

__all__ = ["AppSetup", "check_app_spec", "load_app", "run_app"]

AppSetup = Callable[[Any], Awaitable[None] | None]
"""``setup(node)``: opens channels and starts tasks; may be ``async`` (the argument is the
:class:`~overlay.Node`; typed loosely here, since the node imports this module)."""

_SPEC = re.compile(
    r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$"
)


def check_app_spec(spec: str) -> tuple[str, str]:
    """``(module, attribute)`` of ``package.module:setup``, or a :class:`ConfigError`."""
    match = _SPEC.match(spec)
    if match is None:
        raise ConfigError(
            "app", f"{spec!r} is not of the form package.module:function (e.g. myapp.node:setup)"
        )
    return match.group("module"), match.group("attr")


def load_app(spec: str) -> AppSetup:
    """Import the setup function named by ``spec``."""
    module_name, attr = check_app_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code: any failure is the spec's
        raise ConfigError(
            "app", f"cannot import {module_name!r} (from {spec!r}): {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                "app", f"module {module_name!r} has no attribute {attr!r} (from {spec!r})"
            ) from None
    if not callable(target):
        raise ConfigError(
            "app",
            f"{spec!r} is not a function taking the node (it is of type {type(target).__name__})",
        )
    setup: AppSetup = target
    return setup


async def run_app(spec: str, node: object) -> None:
    """Load ``spec`` and run its setup on ``node``; a setup that raises is a ConfigError."""
    setup = load_app(spec)
    try:
        result = setup(node)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # the application's code: report it as the app's failure
        raise ConfigError("app", f"{spec} failed: {type(exc).__name__}: {exc}") from exc
