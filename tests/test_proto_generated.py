"""The committed ``proto/*_pb2.py(i)`` files are what ``make proto`` generates from the
``.proto`` sources (regenerate with ``make proto`` when this fails)."""

from __future__ import annotations

from proto import generate


def test_generated_code_is_fresh() -> None:
    assert generate.main(["--check"]) == 0
