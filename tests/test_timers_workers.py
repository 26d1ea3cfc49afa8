"""The node-wide timer service and the per-connection request workers (virtual time on trio)."""

from __future__ import annotations

import logging
import math
import random

import anyio
import anyio.lowlevel
import pytest

from overlay.connection._timers import TimerService
from overlay.connection._workers import KEEP_IDLE_WORKERS, Workers
from overlay.errors import ConnectionClosed
from tests.support import virtual_time

pytestmark = pytest.mark.anyio

VIRTUAL = [virtual_time()]


class Owner:
    def __init__(self, name: str, log: list[tuple[str, float]], service: TimerService,
                 every: float | None = None, fail: bool = False) -> None:
        self.name = name
        self.timer_at = math.inf
        self.log = log
        self.service = service
        self.every = every
        self.fail = fail

    def on_timer(self, now: float) -> None:
        self.log.append((self.name, now))
        if self.fail:
            raise RuntimeError("owner bug")
        if self.every is not None:
            self.service.schedule(self, now + self.every)


@pytest.fixture(params=VIRTUAL)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


async def test_deadlines_fire_in_order_at_their_time() -> None:
    service = TimerService()
    fired: list[tuple[str, float]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        start = anyio.current_time()
        a, b, c = (Owner(n, fired, service) for n in "abc")
        service.schedule(c, start + 3)
        service.schedule(a, start + 1)
        service.schedule(b, start + 2)
        await anyio.sleep(5)
        tg.cancel_scope.cancel()
    assert [(name, round(t - start, 6)) for name, t in fired] == [("a", 1), ("b", 2), ("c", 3)]
    assert all(o.timer_at == math.inf for o in (a, b, c))


async def test_an_earlier_deadline_wakes_the_sleeping_service() -> None:
    service = TimerService()
    fired: list[tuple[str, float]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        start = anyio.current_time()
        late, early = Owner("late", fired, service), Owner("early", fired, service)
        service.schedule(late, start + 100)
        await anyio.sleep(1)  # the service now sleeps until +100
        service.schedule(early, start + 2)
        await anyio.sleep(2)
        assert [name for name, _ in fired] == ["early"]
        assert fired[0][1] - start == pytest.approx(2)
        tg.cancel_scope.cancel()


async def test_reschedule_and_cancel_leave_only_the_current_deadline() -> None:
    service = TimerService()
    fired: list[tuple[str, float]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        start = anyio.current_time()
        moved, cancelled = Owner("moved", fired, service), Owner("cancelled", fired, service)
        service.schedule(moved, start + 1)
        service.schedule(moved, start + 4)  # the +1 entry is now stale
        service.schedule(cancelled, start + 2)
        service.cancel(cancelled)
        await anyio.sleep(10)
        tg.cancel_scope.cancel()
    assert [(name, round(t - start, 6)) for name, t in fired] == [("moved", 4)]


async def test_stale_entries_are_compacted() -> None:
    service = TimerService()
    owner = Owner("o", [], service)
    for i in range(10_000):  # an owner whose deadline moves on every write, never firing
        service.schedule(owner, 1_000_000.0 + i)
    assert len(service) <= 512


async def test_periodic_owner_and_a_failing_owner(caplog: pytest.LogCaptureFixture) -> None:
    service = TimerService()
    fired: list[tuple[str, float]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        start = anyio.current_time()
        ticker = Owner("tick", fired, service, every=1.0)
        broken = Owner("broken", fired, service, fail=True)
        service.schedule(ticker, start + 1)
        service.schedule(broken, start + 1.5)
        with caplog.at_level(logging.ERROR, logger="overlay.timers"):
            await anyio.sleep(4.5)
        tg.cancel_scope.cancel()
    ticks = [round(t - start, 6) for name, t in fired if name == "tick"]
    assert ticks == [1, 2, 3, 4]  # the broken owner did not stop the service
    assert "timer callback" in caplog.text


async def test_an_owner_due_again_at_once_lets_other_tasks_run() -> None:
    """An owner that reschedules itself at or before ``now`` does not keep the timer task in
    one synchronous loop: other tasks run between its firings (a wrong owner degrades to a busy
    loop that yields, not a hang)."""
    service = TimerService()
    ticks = 0
    fired_at_tick: list[int] = []

    async def ticker() -> None:  # another task: does it get to run between two firings?
        nonlocal ticks
        while len(fired_at_tick) < 50 and ticks < 1000:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:

        class Due:
            timer_at = math.inf

            def on_timer(self, now: float) -> None:
                if not fired_at_tick:
                    tg.start_soon(ticker)
                fired_at_tick.append(ticks)
                if len(fired_at_tick) < 50:
                    service.schedule(self, now)  # "still due": a refill time already reached

        await tg.start(service.run)
        service.schedule(Due(), anyio.current_time() + 1)
        await anyio.sleep(2)
        tg.cancel_scope.cancel()
    assert len(fired_at_tick) == 50
    assert fired_at_tick[-1] >= 10, fired_at_tick


async def test_a_nan_deadline_does_not_delay_other_owners() -> None:
    """A NaN deadline must not break the heap's order (the 0.5 s deadline below would fire
    at 1 s). Refusing NaN (ValueError) or ignoring it are both fine."""
    service = TimerService()
    fired: dict[str, float] = {}

    class NamedOwner:
        def __init__(self, name: str) -> None:
            self.name = name
            self.timer_at = math.inf

        def on_timer(self, now: float) -> None:
            fired[self.name] = now

    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        start = anyio.current_time()
        owners = {name: NamedOwner(name) for name in ("late", "nan", "mid", "early")}
        service.schedule(owners["late"], start + 5)
        try:
            service.schedule(owners["nan"], math.nan)
        except ValueError:
            pass
        service.schedule(owners["mid"], start + 1)
        service.schedule(owners["early"], start + 0.5)
        await anyio.sleep(10)
        tg.cancel_scope.cancel()
    assert fired["early"] - start == pytest.approx(0.5)


# -- request workers ------------------------------------------------------------------------


async def test_a_burst_of_quick_jobs_needs_few_workers() -> None:
    done: list[int] = []

    async def job(i: int) -> None:
        done.append(i)

    async with anyio.create_task_group() as tg:
        workers = Workers(tg)
        for i in range(256):
            workers.submit(job, (i,))
        await anyio.sleep(0.1)
        assert done == list(range(256))  # in order
        assert workers.workers <= 2  # not 256 tasks
        tg.cancel_scope.cancel()


async def test_a_blocked_job_does_not_hold_up_the_others() -> None:
    release = anyio.Event()
    done: list[str] = []

    async def slow() -> None:
        await release.wait()
        done.append("slow")

    async def quick(name: str) -> None:
        done.append(name)

    async with anyio.create_task_group() as tg:
        workers = Workers(tg)
        workers.submit(slow, ())
        for name in ("q1", "q2", "q3"):
            workers.submit(quick, (name,))
        await anyio.sleep(0.1)
        assert done == ["q1", "q2", "q3"]
        release.set()
        await anyio.sleep(0.1)
        assert done[-1] == "slow"
        assert workers.workers == KEEP_IDLE_WORKERS  # the extra worker left when idle
        tg.cancel_scope.cancel()


async def test_every_blocked_job_gets_its_own_worker() -> None:
    release = anyio.Event()
    started: list[int] = []

    async def blocker(i: int) -> None:
        started.append(i)
        await release.wait()

    async with anyio.create_task_group() as tg:
        workers = Workers(tg)
        for i in range(20):
            workers.submit(blocker, (i,))
        await anyio.sleep(0.1)
        assert sorted(started) == list(range(20))
        assert workers.workers == 20
        release.set()
        await anyio.sleep(0.1)
        assert workers.workers == KEEP_IDLE_WORKERS
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("seed", range(5))
async def test_random_bursts_run_every_job_at_once_and_the_pool_shrinks_back(seed: int) -> None:
    """Jobs that block for random (virtual) times, some raising OverlayError, submitted in
    random bursts: every job runs, none waits behind a blocked one, the pool shrinks back."""
    rng = random.Random(seed)
    started: dict[int, float] = {}
    finished: set[int] = set()

    async def job(i: int, hold: float, fail: bool) -> None:
        started[i] = anyio.current_time()
        if hold:
            await anyio.sleep(hold)
        finished.add(i)
        if fail:
            raise ConnectionClosed("gone")

    async with anyio.create_task_group() as tg:
        workers = Workers(tg)
        submitted: dict[int, float] = {}
        n = 0
        for _ in range(30):
            for _ in range(rng.randrange(0, 6)):
                hold = rng.choice([0.0, 0.0, 0.5, 3.0])
                submitted[n] = anyio.current_time()
                workers.submit(job, (n, hold, rng.random() < 0.2))
                n += 1
            await anyio.sleep(rng.choice([0.0, 0.1, 1.0]))
        await anyio.sleep(10)
        assert finished == set(range(n))
        assert all(started[i] == submitted[i] for i in range(n))  # nobody waited
        assert workers.workers == KEEP_IDLE_WORKERS
        tg.cancel_scope.cancel()
