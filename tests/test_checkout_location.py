"""Nothing in the suite or the benchmarks depends on where the checkout sits or what its folder
is called: files are attributed to a package by its own directory, never by a name fragment such
as ``/overlay/`` (which a checkout in a folder named ``overlay`` puts in front of its virtualenv's
site-packages too)."""

from __future__ import annotations

from pathlib import Path

import overlay
from bench._profile import _layer, _relative, _watched
from tests.support import in_directory

CHECKOUT = "/home/user/bench/overlay"
SITE = f"{CHECKOUT}/.venv/lib/python3.11/site-packages"
ROOTS = (SITE, "/usr/lib/python3.11", CHECKOUT)


def test_allocations_are_attributed_by_the_package_directory() -> None:
    package = Path(overlay.__file__).parent
    assert in_directory(overlay.__file__, package)
    assert in_directory(str(package / "_peer.py"), package)
    # The virtualenv of a checkout named ``overlay``: outside the package, whatever its path.
    assert not in_directory(f"{SITE}/anyio/_core/_eventloop.py", Path(f"{CHECKOUT}/overlay"))
    assert not in_directory(str(package.parent / ".venv" / "lib" / "anyio.py"), package)


def test_profile_layers_do_not_depend_on_the_checkout_folder() -> None:
    # A checkout at ~/bench/overlay: both folder names appear in every path below it.
    assert _relative(f"{SITE}/cryptography/hazmat/aead.py", ROOTS) == "cryptography/hazmat/aead.py"
    assert _layer(f"{SITE}/cryptography/hazmat/aead.py", "f", ROOTS) == "AEAD (ChaCha20-Poly1305)"
    assert _layer(f"{SITE}/anyio/_core/_tasks.py", "f", ROOTS) == "anyio"
    assert _layer(f"{SITE}/trio/_core/_run.py", "f", ROOTS) == "other Python"
    assert _layer(f"{CHECKOUT}/overlay/connection/_driver.py", "f", ROOTS) == (
        "async driver (peer/router/channel)"
    )
    assert _layer(f"{CHECKOUT}/bench/_ours.py", "f", ROOTS) == "benchmark loop"
    assert _layer("/usr/lib/python3.11/asyncio/events.py", "_run", ROOTS) == (
        "asyncio event loop (Python)"
    )
    assert _watched("/usr/lib/python3.11/asyncio/events.py", "_run", ROOTS) == [
        "event-loop callbacks (task steps)"
    ]
    assert _watched(f"{SITE}/bench/asyncio/events.py", "_run", ROOTS) == []
