"""Every code example in docs/reactor-guide.md and README.md runs, type-checks and lints.

How the documents mark their blocks (a comment on the first line of a ```python block):

* no marker: a complete program. It is run as a script with this interpreter (``-W error``, a
  time limit, cwd a scratch directory), must exit 0, and must pass ``mypy --strict`` (the
  project's configuration) and ``ruff check``.
* ``# doc: pytest``: a test module; run with ``python -m pytest`` instead, then checked the same.
* ``# doc: no-run``: a fragment or a deliberately wrong example; not executed. With
  ``mypy-errors`` as well, mypy must report exactly the errors written in ``# mypy: MESSAGE``
  comments, each for the nearest code line above it, and no others.

A ```proto block whose first line is ``// file: NAME.proto`` is compiled with grpc_tools.protoc and
mypy-protobuf into the scratch directory first, so examples can import the generated ``NAME_pb2``.

Examples use loopback TCP or the memory network only; the subprocesses run two at a time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mypy.api
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("docs/reactor-guide.md", "README.md")
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 30.0
"""Seconds one example may take (they take well under one; this only bounds a hang)."""
KNOWN_FLAGS = frozenset({"no-run", "mypy-errors", "pytest"})
MAX_NO_RUN = 3
"""Fragments and wrong examples must stay the exception."""

_FENCE = re.compile(r"^```(\w*)\s*$")
_FLAGS = re.compile(r"^(?:#|//)\s*doc:\s*(.+)$")
_PROTO_FILE = re.compile(r"^//\s*file:\s*(\w+)\.proto\s*$")
_EXPECT = re.compile(r"^\s*#\s*mypy:\s*(.+?)\s*$")
_MYPY_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<kind>error|note): (?P<msg>.*)$")
_MYPY_CODE = re.compile(r"\s+\[[a-z-]+\]$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of a document."""

    document: str
    line: int
    """Line number of the opening fence (1-based)."""
    language: str
    code: str
    flags: frozenset[str]

    @property
    def ident(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def module(self) -> str:
        stem = re.sub(r"\W", "_", Path(self.document).stem)
        return f"example_{stem}_{self.line}"

    @property
    def runs(self) -> bool:
        return self.language == "python" and "no-run" not in self.flags


def extract(document: str) -> list[Block]:
    """The fenced blocks of ``document`` (relative to the repository root), in order."""
    blocks: list[Block] = []
    lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
    start: int | None = None
    language = ""
    for number, text in enumerate(lines, start=1):
        fence = _FENCE.match(text)
        if fence is None:
            continue
        if start is None:
            start, language = number, fence.group(1)
            continue
        body = lines[start:number - 1]
        flags: frozenset[str] = frozenset()
        marker = _FLAGS.match(body[0]) if body else None
        if marker is not None:
            flags = frozenset(f.strip() for f in marker.group(1).split(","))
        blocks.append(Block(document, start, language, "\n".join(body) + "\n", flags))
        start = None
    assert start is None, f"{document}: unclosed code fence at line {start}"
    return blocks


ALL_BLOCKS = [block for document in DOCUMENTS for block in extract(document)]
PYTHON = [block for block in ALL_BLOCKS if block.language == "python"]
RUNNABLE = [block for block in PYTHON if block.runs]
WRONG = [block for block in PYTHON if "mypy-errors" in block.flags]


@dataclass(frozen=True, slots=True)
class Outcome:
    returncode: int
    output: str


def _environment(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), str(ROOT)])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    for name in ("PYTHONWARNINGS", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        env.pop(name, None)
    return env


def _compile_protos(workdir: Path) -> None:
    for block in ALL_BLOCKS:
        if block.language != "proto":
            continue
        name = _PROTO_FILE.match(block.code.splitlines()[0])
        assert name is not None, f"{block.ident}: a proto block starts with // file: NAME.proto"
        (workdir / f"{name.group(1)}.proto").write_text(block.code, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
             "--mypy_out=.", f"{name.group(1)}.proto"],
            cwd=workdir, env=_environment(workdir), capture_output=True, text=True,
            timeout=RUN_TIMEOUT, check=False,
        )
        assert done.returncode == 0, f"{block.ident}: protoc failed:\n{done.stderr}"


def _run(block: Block, workdir: Path) -> Outcome:
    path = workdir / f"{block.module}.py"
    if "pytest" in block.flags:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                   "--rootdir", str(workdir), "-c", str(workdir / "pytest.ini"), str(path)]
    else:
        command = [sys.executable, "-W", "error", str(path)]
    try:
        done = subprocess.run(
            command, cwd=workdir, env=_environment(workdir), capture_output=True, text=True,
            timeout=RUN_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(-1, f"timed out after {RUN_TIMEOUT:g} s\n{exc.stdout!r}\n{exc.stderr!r}")
    return Outcome(done.returncode, done.stdout + done.stderr)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory with every block written out and the protobuf modules generated."""
    path = tmp_path_factory.mktemp("doc-examples")
    (path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    _compile_protos(path)
    for block in PYTHON:
        (path / f"{block.module}.py").write_text(block.code, encoding="utf-8")
    return path


@dataclass(frozen=True, slots=True)
class Results:
    outcomes: dict[str, Outcome]
    """Per runnable block (by ident)."""
    mypy_stdout: str
    mypy_stderr: str


def _mypy(paths: list[Path]) -> tuple[str, str]:
    stdout, stderr, _ = mypy.api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", os.devnull,  # a cold run that writes no cache files
        "--no-error-summary",
        "--hide-error-context",
        *(str(path) for path in paths),
    ])
    return stdout, stderr


@pytest.fixture(scope="module")
def results(workdir: Path) -> Results:
    """Run mypy (in a thread) and every runnable block (two subprocesses at a time) at once."""
    checked = [workdir / f"{block.module}.py" for block in RUNNABLE + WRONG]
    with (
        pytest.MonkeyPatch.context() as patch,
        ThreadPoolExecutor(max_workers=1) as checker,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        patch.chdir(ROOT)  # mypy finds this tree's overlay package from the working directory
        typing = checker.submit(_mypy, checked)
        runs = {block.ident: pool.submit(_run, block, workdir) for block in RUNNABLE}
        outcomes = {ident: future.result() for ident, future in runs.items()}
        stdout, stderr = typing.result()
    return Results(outcomes, stdout, stderr)


# ------------------------------------------------------------------------------ the blocks


def test_documents_have_examples_and_few_exceptions() -> None:
    guide = [b for b in RUNNABLE if b.document == "docs/reactor-guide.md"]
    assert len(guide) >= 10
    assert any(b.document == "README.md" for b in RUNNABLE)
    assert len(WRONG) >= 1
    for block in PYTHON:
        unknown = block.flags - KNOWN_FLAGS
        assert not unknown, f"{block.ident}: unknown doc flags {sorted(unknown)}"
        if "mypy-errors" in block.flags:
            assert "no-run" in block.flags, f"{block.ident}: a wrong example must be no-run"
    assert len([b for b in PYTHON if not b.runs]) <= MAX_NO_RUN


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.ident)
def test_example_runs(block: Block, results: Results) -> None:
    outcome = results.outcomes[block.ident]
    assert outcome.returncode == 0, f"{block.ident} failed:\n{outcome.output}"


# --------------------------------------------------------------------------------- typing


def _expected_errors(block: Block) -> set[tuple[int, str]]:
    """``(line, message)`` for each ``# mypy: MESSAGE`` comment (line of the code above it)."""
    expected: set[tuple[int, str]] = set()
    code_line = 0
    for number, text in enumerate(block.code.splitlines(), start=1):
        match = _EXPECT.match(text)
        if match is not None:
            assert code_line, f"{block.ident}: a # mypy: comment needs a code line above it"
            expected.add((code_line, match.group(1)))
        elif text.strip() and not text.lstrip().startswith("#"):
            code_line = number
    return expected


def _reported_errors(stdout: str, path: Path) -> Iterator[tuple[int, str]]:
    for text in stdout.splitlines():
        match = _MYPY_LINE.match(text)
        if match is None or match.group("kind") != "error":
            continue
        if Path(match.group("path")).resolve() != path.resolve():
            continue
        yield int(match.group("line")), _MYPY_CODE.sub("", match.group("msg"))


def test_examples_type_check(workdir: Path, results: Results) -> None:
    """mypy --strict: runnable examples are clean; wrong ones fail with exactly their errors."""
    assert "error: " not in results.mypy_stderr, results.mypy_stderr
    for block in RUNNABLE + WRONG:
        reported = set(_reported_errors(results.mypy_stdout, workdir / f"{block.module}.py"))
        expected = _expected_errors(block)
        assert reported == expected, (
            f"{block.ident}: mypy reported {sorted(reported)}, the document expects "
            f"{sorted(expected)} (line 1 is the line after the fence)\n{results.mypy_stdout}"
        )


def test_examples_lint(workdir: Path) -> None:
    """ruff, as a user's project would see the imports (overlay third-party, kv_pb2 ours)."""
    ruff = BIN / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this interpreter")
    first_party = sorted({f.stem for f in workdir.glob("*_pb2.py")})
    done = subprocess.run(
        [str(ruff), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
         "--config", f"lint.isort.known-first-party = {first_party!r}".replace("'", '"'),
         "--config", 'lint.isort.known-third-party = ["overlay"]',
         *(str(workdir / f"{block.module}.py") for block in RUNNABLE)],
        cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
