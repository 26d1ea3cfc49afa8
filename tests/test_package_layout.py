"""The package's shape: explicit, sorted exports that exist, and the layers as a contract.

The import contract itself (``[tool.importlinter]`` in pyproject.toml) runs as ``lint-imports`` in
``make test``; these tests keep the exports honest and the architecture picture in step with it.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("overlay", "discovery", "routing", "proto")


def _modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if info.name.endswith("_pb2") or info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_exports_are_sorted_unique_and_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("name", [m for m in MODULES if not m.rpartition(".")[2].startswith("_")])
def test_public_modules_declare_their_exports(name: str) -> None:
    if name == "proto.generate":  # a script (``make proto``), not a library module
        return
    assert hasattr(importlib.import_module(name), "__all__"), f"public module {name} has no __all__"


def test_architecture_picture_lists_the_contract_layers() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    picture = (ROOT / "docs" / "architecture.md").read_text()
    for layer in layers:
        for module in layer.replace("|", " ").replace(":", " ").split():
            assert f"`{module}`" in picture, f"docs/architecture.md does not show layer {module}"


@pytest.mark.parametrize("first", ["discovery", "routing", "overlay.errors", "overlay.node"])
def test_any_package_can_be_imported_first(first: str) -> None:
    """No import cycle through the package root: each layer imports cleanly in a fresh
    interpreter, whichever package a program imports first."""
    import subprocess
    import sys

    code = f"import {first}; import overlay; overlay.Node; overlay.NodeConfig"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
