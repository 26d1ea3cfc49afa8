"""Typed channels are typed for real: mypy rejects the wrong message type for a
``Channel[Foo, Bar]`` and accepts correct use.

One ``mypy --strict`` run (via ``mypy.api``) checks two snippets from ``tests/typing/``: the
correct one as is, and a copy of the wrong one with its ``# type: ignore[...]`` comments
stripped; every stripped line must produce exactly the error code its ignore named, and nothing
else may be reported.
"""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

TYPING_DIR = Path(__file__).parent / "typing"
PROJECT_ROOT = Path(__file__).parent.parent
_IGNORE = re.compile(r"\s*# type: ignore\[([a-z-]+)\]")
_ERROR = re.compile(
    r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)  \[(?P<code>[a-z-]+)\]$"
)


def _strip_ignores(text: str) -> tuple[str, dict[int, str]]:
    """The text without ``type: ignore`` comments, and ``{line number: expected code}``."""
    expected: dict[int, str] = {}
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _IGNORE.search(line)
        if match:
            expected[number] = match.group(1)
            line = line[: match.start()]
        lines.append(line)
    return "\n".join(lines) + "\n", expected


def test_mypy_rejects_wrong_message_types_and_accepts_correct_use(tmp_path: Path) -> None:
    ok = TYPING_DIR / "channel_ok.py"
    wrong_text, expected = _strip_ignores((TYPING_DIR / "channel_wrong.py").read_text())
    assert len(expected) >= 5 and set(expected.values()) == {"arg-type", "assignment"}
    wrong = tmp_path / "channel_wrong.py"
    wrong.write_text(wrong_text)

    stdout, stderr, status = api.run([
        "--strict",
        "--config-file", str(PROJECT_ROOT / "pyproject.toml"),
        "--show-error-codes",
        "--no-error-summary",
        "--no-color-output",
        "--cache-dir", str(PROJECT_ROOT / ".mypy_cache"),  # shared with `make typecheck`
        str(ok),
        str(wrong),
    ])
    assert stderr == "", stderr
    errors: dict[str, dict[int, list[str]]] = {}
    for raw in stdout.splitlines():
        match = _ERROR.match(raw)
        if match is None:
            continue  # notes
        path = Path(match["path"]).name
        errors.setdefault(path, {}).setdefault(int(match["line"]), []).append(match["code"])
    assert "channel_ok.py" not in errors, stdout
    got = {line: codes for line, codes in errors.get("channel_wrong.py", {}).items()}
    assert got == {line: [code] for line, code in expected.items()}, stdout
    assert status == 1

    # the headline case, spelled out: a Bar sent on a Channel[Foo, Bar]
    send_line = next(n for n, line in enumerate(wrong_text.splitlines(), start=1)
                     if "ch.send(peer, Bar(1))" in line)
    message = next(m for m in stdout.splitlines() if f"channel_wrong.py:{send_line}:" in m)
    assert '"Bar"' in message and '"Foo"' in message and "[arg-type]" in message
