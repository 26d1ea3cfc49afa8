"""A fixed amount of request work, for counting instructions with callgrind.

    valgrind --tool=callgrind .venv/bin/python bench/instructions.py rt 300
    valgrind --tool=callgrind .venv/bin/python bench/instructions.py rt 900

runs 300 (then 900) 64-byte round trips between two full nodes over TCP + Noise (``pipelined``
instead: that many requests in batches of 256 concurrent callers) after a warm-up; the
difference of the two "Collected" totals divided by the difference of the counts is the
instructions per request, whatever else the machine is doing (docs/benchmarks.md, session 5).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # ``python bench/instructions.py`` from a checkout
    sys.path.insert(0, str(_ROOT))

import anyio

from bench._ours import ECHO, ECHO_PIPELINED, node_pair

_BATCH = 256
_PAYLOAD = b"x" * 64


async def _run(kind: str, count: int) -> None:
    async with node_pair(ECHO if kind == "rt" else ECHO_PIPELINED) as (channel, _cb, peer):
        for _ in range(20):  # warm-up
            await channel.request(peer, _PAYLOAD)
        if kind == "rt":
            for _ in range(count):
                await channel.request(peer, _PAYLOAD)
            return

        async def one() -> None:
            await channel.request(peer, _PAYLOAD)

        for _ in range(count // _BATCH):
            async with anyio.create_task_group() as tg:
                for _ in range(_BATCH):
                    tg.start_soon(one)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("rt", "pipelined"):
        sys.exit("usage: bench/instructions.py rt|pipelined COUNT")
    anyio.run(_run, sys.argv[1], int(sys.argv[2]), backend="asyncio")


if __name__ == "__main__":
    main()
