"""A one-process testnet's nodes read a wall clock that follows the event loop's clock, so a
run on trio's mock clock is virtual throughout: the DHT refreshes its buckets after the
refresh interval of *virtual* time, as a real run of that length would, and a short virtual
run refreshes nothing however long it takes in real time."""

from __future__ import annotations

import time

import anyio
import pytest

from overlay.testing import MemoryNetwork
from overlay.testnet import Mode, parse_manifest, run_manifest
from overlay.testnet._cluster import LocalCluster
from tests.support import virtual_time

pytestmark = pytest.mark.anyio

REFRESH_INTERVAL = 600.0
"""``discovery.TableConfig.refresh_interval``'s default: a bucket is refreshed after this long."""


def quiet(duration: float) -> dict[str, object]:
    """Three nodes providing a capability nobody seeks, no workload: after the bootstrap and
    publishing the only DHT lookups left are bucket refreshes."""
    return {
        "testnet": {"nodes": 3, "seeds": 1, "duration": duration, "seed": 5},
        "capabilities": {"archive": "100%"},
        "workload": {"rate": 0.0},
        "criteria": {"targets_met": 0.0, "request_success": 0.0},
    }


async def lookups_after(duration: float) -> int:
    result = await run_manifest(parse_manifest(quiet(duration), mode=Mode.INPROC))
    counted = result.meta["dht_lookups"]
    assert isinstance(counted, dict)
    return int(counted["lookups"])


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_the_cluster_wall_clock_follows_virtual_time() -> None:
    async with anyio.create_task_group() as tg:
        cluster = LocalCluster([], tg, memory=MemoryNetwork())
        real, wall = time.time(), cluster.wall_clock()
        assert abs(wall - real) < 5.0  # starts at the real unix time
        await anyio.sleep(3 * 3600)
        assert cluster.wall_clock() - wall == pytest.approx(3 * 3600)
        assert time.time() - real < 600  # three virtual hours, far less real time


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_buckets_refresh_on_virtual_time_only() -> None:
    short = await lookups_after(REFRESH_INTERVAL - 100)
    again = await lookups_after(REFRESH_INTERVAL - 100)
    long = await lookups_after(REFRESH_INTERVAL + 100)
    # Runs shorter than the refresh interval do the same lookups (the bootstrap), however
    # long they take in real time; past the interval in virtual time the buckets are refreshed,
    # which a wall clock reading the real time (seconds here) would not do.
    assert short == again > 0
    assert long > short
