"""A user's own code, outside this checkout, type-checks against the *installed* package.

``make`` installs the project in editable "compat" mode (see the README): a path entry in
site-packages that mypy can follow, where setuptools' default editable mode installs an import
hook that only runs at import time, so mypy answered "Cannot find implementation or library
stub for module named 'overlay'". The check runs mypy the way a user would: from a scratch
directory, with no configuration file, no MYPYPATH and no PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

USER_CODE = '''\
from overlay import BytesCodec, Channel, ChannelSpec, Node, NodeConfig

ECHO = ChannelSpec(id=0x20, name="echo", codec=BytesCodec(), response_codec=BytesCodec())


async def ask(node: Node) -> bytes:
    echo: Channel[bytes, bytes] = node.channel(ECHO)
    return await echo.request(node.node_id, b"hi", timeout=1.0)


def wrong(node: Node) -> None:
    node.channel(ECHO).send_nowait(node.node_id, "not bytes")


config = NodeConfig(listen=("tcp://127.0.0.1:0",))
'''


def test_mypy_strict_finds_the_installed_package_from_outside_the_checkout(
    tmp_path: Path,
) -> None:
    (tmp_path / "user_app.py").write_text(USER_CODE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--no-color-output",
         "--show-error-codes", "user_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50, check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    # Exactly the deliberate mistake: the package was found, and it is typed (no Any).
    assert len(errors) == 1, result.stdout + result.stderr
    assert errors[0].startswith("user_app.py:12:") and "[arg-type]" in errors[0], errors
