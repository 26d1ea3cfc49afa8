"""Regenerate ``proto/*_pb2.py`` and ``*_pb2.pyi`` from the ``.proto`` files.

Run from the project root with ``python -m proto.generate`` (``make proto``). With ``--check``
it generates into a temporary directory and exits non-zero when the committed files differ.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugin into ``out_dir``."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy not found: pip install mypy-protobuf")
    sources = sorted(PROTO_DIR.glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        *(str(s.relative_to(ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / "proto").glob("*_pb2.py*"))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = []
        for path in produced:
            committed = PROTO_DIR / path.name
            if check:
                if not committed.exists() or committed.read_bytes() != path.read_bytes():
                    stale.append(path.name)
            else:
                shutil.copyfile(path, committed)
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
