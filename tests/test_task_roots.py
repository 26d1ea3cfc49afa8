"""A bug caught at a task root is logged with its traceback, counted, and the node goes on.

The policy (docs/errors.md, "Broad excepts"): a broad ``except Exception`` stands only at the
root of a task that must survive a bug in user code or in the handling of one peer; there it
logs the traceback and reports ``Observer.on_task_failed(TaskRoot...)``, which the metrics
export as ``overlay_task_failures_total{task=...}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overlay.connection._observer import Observer, TaskRoot
from overlay.connection._timers import TimerService
from overlay.errors import ErrorCode, RequestError
from overlay.node import Node
from overlay.operator._http import Request, Response, open_http_listener, serve_http
from overlay.operator._metrics import MetricsObserver, NodeMetrics
from overlay.router._channel import ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork
from tests.support import (
    both_backends,
    both_transports,
    config_for,
    make_node,
    virtual_time,
    wait_until,
)
from tests.test_metrics import http_get

pytestmark = pytest.mark.anyio

anyio_backend = both_backends()
transport = both_transports()

ECHO = ChannelSpec(id=5, name="echo", codec=BytesCodec(), response_codec=BytesCodec())
LATE = ChannelSpec(id=9, name="late", codec=BytesCodec(), response_codec=BytesCodec())


class Recording(Observer):
    """Remembers the task roots that reported a bug."""

    def __init__(self) -> None:
        self.failed: list[TaskRoot] = []

    def on_task_failed(self, task: TaskRoot) -> None:
        self.failed.append(task)


@asynccontextmanager
async def watched_pair(transport: str) -> AsyncIterator[tuple[Node, Node, Recording]]:
    """Node ``a`` connected to node ``b``, ``b`` watched by a :class:`Recording` observer."""
    network = MemoryNetwork() if transport == "memory" else None
    config = config_for(transport)
    seen = Recording()
    async with make_node(config, network) as a, make_node(config, network, observer=seen) as b:
        a.channel(ECHO)
        b.channel(ECHO)
        assert await a.dial(b.address) == b.node_id
        await wait_until(lambda: a.node_id in b.connected_peers())
        yield a, b, seen


async def test_a_request_handler_bug_is_logged_counted_and_the_peer_stays(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(env: Envelope[bytes]) -> bytes:
        if env.message == b"boom":
            raise ValueError("handler bug")
        return b"fine"

    async with watched_pair(transport) as (a, b, seen):
        b.channel(ECHO).handle_requests(handler)
        with caplog.at_level(logging.ERROR), pytest.raises(RequestError) as info:
            await a.channel(ECHO).request(b.node_id, b"boom", timeout=5)
        assert info.value.code is ErrorCode.INTERNAL
        assert seen.failed == [TaskRoot.REQUEST_HANDLER]
        assert await a.channel(ECHO).request(b.node_id, b"again", timeout=5) == b"fine"
        assert b.connected_peers() == [a.node_id]
    logged = [r for r in caplog.records if "failed on a request" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # with the traceback


async def test_a_peer_info_listener_bug_is_counted_and_updates_go_on(transport: str) -> None:
    async with watched_pair(transport) as (a, b, seen):
        heard: list[int] = []

        def broken(peer: object, info: object) -> None:
            raise RuntimeError("listener bug")

        b.subscribe_peer_info(broken)
        b.subscribe_peer_info(lambda peer, info: heard.append(len(info.channels)))
        a.channel(LATE)  # a node-info update reaches b
        await wait_until(lambda: bool(heard))
        assert seen.failed == [TaskRoot.PEER_INFO_LISTENER]
        assert b.connected_peers() == [a.node_id]


class _Owner:
    def __init__(self, fail: bool) -> None:
        self.timer_at = math.inf
        self.fired: list[float] = []
        self.fail = fail

    def on_timer(self, now: float) -> None:
        self.fired.append(now)
        if self.fail:
            raise RuntimeError("timer bug")


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_timer_callback_bug_is_counted_and_other_timers_still_fire() -> None:
    seen = Recording()
    timers = TimerService(seen)
    broken, healthy = _Owner(fail=True), _Owner(fail=False)
    async with anyio.create_task_group() as tg:
        await tg.start(timers.run)
        start = anyio.current_time()
        timers.schedule(broken, start + 1)
        timers.schedule(healthy, start + 1)
        await anyio.sleep(2)  # virtual time
        assert broken.fired and healthy.fired
        assert seen.failed == [TaskRoot.TIMER]
        timers.schedule(healthy, anyio.current_time() + 1)
        await anyio.sleep(2)
        assert len(healthy.fired) == 2  # the service still serves
        tg.cancel_scope.cancel()


async def test_an_http_handler_bug_answers_500_is_counted_and_serving_goes_on() -> None:
    seen = Recording()

    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return Response(200, b"ok\n", "text/plain")

    listener, url = await open_http_listener("127.0.0.1:0", key="test.listen")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_http(handler, listener, observer=seen))
        statuses = [(await http_get(url, path))[0] for path in ("/boom", "/fine")]
        assert statuses == [500, 200]
        assert seen.failed == [TaskRoot.HTTP_REQUEST]
        tg.cancel_scope.cancel()


def test_task_failures_are_exported_by_task() -> None:
    metrics = NodeMetrics()
    MetricsObserver(metrics).on_task_failed(TaskRoot.TIMER)
    samples = {
        (s.name, s.labels.get("task")): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert samples[("overlay_task_failures_total", "timer")] == 1
    for task in TaskRoot:  # every root exported from the start, at zero
        assert ("overlay_task_failures_total", task.value) in samples
