"""The ``overlay`` command line (layer: cli, the top; nothing in the library imports it)."""

from overlay.cli._main import main

__all__ = ["main"]
