"""Destinations: what a selector sees of each peer (``PeerView``), the deadline and per-peer
outcome of every attempt whatever the destination, ``NoRoute`` when a destination reaches
nobody, and the enum outcomes in delivery reports.

Elapsed times and exact round trips are asserted on trio's mock clock (``virtual_time``) over the
memory network, where they are exact; everything else runs on both backends and both transports.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import pytest

from overlay.connection._observer import Observer
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import (
    ChannelError,
    ErrorCode,
    NoRoute,
    NoRouteReason,
    PeerNotConnected,
    RequestError,
    RequestTimeout,
)
from overlay.identity import NodeId, NodeKey
from overlay.node import Node
from overlay.node._config import ConnectionConfig
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._destination import BROADCAST, Destination, PeerSet, PeerView
from overlay.testing import MemoryNetwork
from overlay.transport._failures import Direction
from tests.support import (
    Holding,
    Parked,
    both_backends,
    both_transports,
    config_for,
    make_node,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

anyio_backend = both_backends()
transport = both_transports()

T = TypeVar("T")

ECHO = ChannelSpec(id=0x21, name="echo", codec=BytesCodec(), response_codec=BytesCodec())
ONLY_A = ChannelSpec(id=0x22, name="only-a", codec=BytesCodec(), response_codec=BytesCodec())
QUIET = ConnectionConfig(ping_interval=100.0, idle_timeout=300.0)
"""No keep-alive ping during a test: round trips come from requests only."""


# ------------------------------------------------------------------------------- helpers


@dataclass(slots=True)
class Recorder(Observer):
    """Records every outbound request attempt the router reports."""

    done: list[tuple[NodeId, str, float, AttemptOutcome]] = field(default_factory=list)

    def on_request_done(
        self, peer: NodeId, channel: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        self.done.append((peer, channel, seconds, outcome))

    def outcomes(self) -> list[tuple[NodeId, AttemptOutcome]]:
        return [(peer, outcome) for peer, _channel, _seconds, outcome in self.done]


@dataclass(slots=True)
class Observed:
    a: Node
    b: Node
    ca: Channel[bytes, bytes]
    cb: Channel[bytes, bytes]
    recorder: Recorder


@contextlib.asynccontextmanager
async def observed_pair(
    transport: str, *, connect: bool = True, **overrides: object
) -> AsyncIterator[Observed]:
    """Node ``a`` (its request attempts recorded) dialled node ``b``; ECHO open on both,
    ONLY_A on ``a`` only."""
    network = MemoryNetwork() if transport == "memory" else None
    recorder = Recorder()
    config = config_for(transport, **overrides)
    async with make_node(config, network, observer=recorder) as a, \
            make_node(config, network) as b:
        ca, cb = a.channel(ECHO), b.channel(ECHO)
        a.channel(ONLY_A)
        if connect:
            assert await a.dial(b.address) == b.node_id
            await wait_until(lambda: a.node_id in b.connected_peers())
        yield Observed(a, b, ca, cb, recorder)


class Pick(Destination):
    """Exactly the peers given (connected or not): the simplest custom destination."""

    __slots__ = ("fanout", "peers")

    def __init__(self, *peers: NodeId, fanout: bool = False) -> None:
        self.peers = peers
        self.fanout = fanout

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        return self.peers

    def __repr__(self) -> str:
        return f"Pick({len(self.peers)})"


class WithChannel(Destination):
    """Connected peers that have a channel, fewest requests in flight first (selects by views)."""

    __slots__ = ("channel_id",)

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id

    def select(self, view: PeerSet) -> Sequence[NodeId]:
        peers = [p for p in view.peers() if self.channel_id in p.channels]
        return [p.node_id for p in sorted(peers, key=lambda p: p.requests_in_flight)][:1]


class Recording(Pick):
    """Like :class:`Pick`, and remembers what its one attempt raised."""

    __slots__ = ("raised",)

    def __init__(self, *peers: NodeId) -> None:
        super().__init__(*peers)
        self.raised: list[BaseException] = []

    async def run_request(self, view: PeerSet, attempt: Callable[[NodeId], Awaitable[T]]) -> T:
        try:
            return await attempt(self.peers[0])
        except BaseException as exc:
            self.raised.append(exc)
            raise


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message


def _view(node: Node, peer: NodeId) -> PeerView:
    view = node.router.peer_table.peer(peer)
    assert view is not None
    return view


# --------------------------------------------------------------------------------- views


async def test_views_describe_each_connected_peer(transport: str) -> None:
    async with observed_pair(transport) as p:
        table = p.a.router.peer_table
        assert table.local_id == p.a.node_id
        assert table.connected_peers() == (p.b.node_id,)
        (view,) = table.peers()
        assert view == table.peer(p.b.node_id)
        assert view.node_id == p.b.node_id
        assert view.direction is Direction.OUTBOUND
        assert _view(p.b, p.a.node_id).direction is Direction.INBOUND
        assert ECHO.id in view.channels and ONLY_A.id not in view.channels
        assert ONLY_A.id in _view(p.b, p.a.node_id).channels
        assert view.connected_since <= anyio.current_time()
        assert view.requests_in_flight == 0 and dict(view.requests_in_flight_by_channel) == {}
        assert view.score is not None  # every node runs a peer manager
        assert view.advertised == frozenset() and view.confirmed == frozenset()
        assert table.peer(NodeKey.generate().node_id) is None


async def test_capabilities_fill_the_slot_and_are_forgotten_on_disconnect(
    transport: str,
) -> None:
    async with observed_pair(transport) as p:
        table = p.a.router.peer_table
        assert table.set_capabilities(p.b.node_id, advertised=frozenset({"kv", "blocks"}),
                                      confirmed=frozenset({"kv"}))
        view = _view(p.a, p.b.node_id)
        assert view.advertised == {"kv", "blocks"} and view.confirmed == {"kv"}
        assert await p.a.disconnect(p.b.node_id)
        assert table.peer(p.b.node_id) is None
        assert not table.set_capabilities(p.b.node_id, advertised=frozenset({"kv"}),
                                          confirmed=frozenset())
        assert await p.a.dial(p.b.address) == p.b.node_id
        assert _view(p.a, p.b.node_id).advertised == frozenset()  # not carried over


async def test_score_comes_from_the_peer_manager(transport: str) -> None:
    """Every node runs a peer manager: a peer's view carries the manager's score of it."""
    network = MemoryNetwork() if transport == "memory" else None
    config = config_for(transport)
    async with make_node(config, network) as a, make_node(config, network) as b:
        assert await a.dial(b.address) == b.node_id
        await wait_until(lambda: b.node_id in a.connected_peers())
        await wait_until(lambda: a.peering.manager.peer(b.node_id, a.wall_clock()) is not None)
        score = _view(a, b.node_id).score
        assert score is not None
        snapshot = a.peering.manager.peer(b.node_id, a.wall_clock())
        assert snapshot is not None and score == pytest.approx(snapshot.score)


async def test_views_count_requests_in_flight(transport: str) -> None:
    async with observed_pair(transport) as p:
        holding = Holding(3)
        p.cb.handle_requests(holding)
        answers: list[bytes] = []

        async def call(n: int) -> None:
            answers.append(await p.ca.request(p.b.node_id, b"%d" % n, timeout=10))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(call, n)
                await holding.all_in.wait()
                view = _view(p.a, p.b.node_id)
                assert view.requests_in_flight == 3
                assert dict(view.requests_in_flight_by_channel) == {ECHO.id: 3}
                holding.release.set()
        assert sorted(answers) == [b"0", b"1", b"2"]
        view = _view(p.a, p.b.node_id)
        assert view.requests_in_flight == 0 and dict(view.requests_in_flight_by_channel) == {}


async def test_request_round_trips_give_a_sane_rtt(transport: str) -> None:
    async with observed_pair(transport, connection=QUIET) as p:
        p.cb.handle_requests(_echo)
        assert _view(p.a, p.b.node_id).rtt is None  # no ping, no request yet
        for n in range(3):
            assert await p.ca.request(p.b.node_id, b"%d" % n, timeout=5) == b"%d" % n
        rtt = _view(p.a, p.b.node_id).rtt
        assert rtt is not None and 0.0 <= rtt < 5.0
        conn = p.a.router.get_peer(p.b.node_id)
        assert conn is not None and conn.meter.samples == 3


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_rtt_is_a_moving_average_of_request_round_trips() -> None:
    """Virtual time: the memory network takes no time, so a round trip is the handler's delay."""
    async with observed_pair("memory", connection=QUIET) as p:

        async def delayed(env: Envelope[bytes]) -> bytes:
            await anyio.sleep(float(env.message))
            return env.message

        p.cb.handle_requests(delayed)
        await p.ca.request(p.b.node_id, b"0.4", timeout=5)
        assert _view(p.a, p.b.node_id).rtt == pytest.approx(0.4)
        await p.ca.request(p.b.node_id, b"0", timeout=5)
        assert _view(p.a, p.b.node_id).rtt == pytest.approx(0.4 + (0.0 - 0.4) / 8)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_pings_feed_the_rtt_without_any_request() -> None:
    pings = ConnectionConfig(ping_interval=1.0, idle_timeout=10.0)
    async with observed_pair("memory", connection=pings) as p:
        conn = p.a.router.get_peer(p.b.node_id)
        assert conn is not None and conn.meter.samples == 0
        await anyio.sleep(2.5)
        assert conn.meter.samples >= 2
        assert _view(p.a, p.b.node_id).rtt == pytest.approx(0.0)


async def test_a_destination_selects_by_views(transport: str) -> None:
    async with observed_pair(transport) as p:
        p.cb.handle_requests(_echo)
        assert await p.ca.request(WithChannel(ECHO.id), b"x", timeout=5) == b"x"
        only_a = p.a.channel(ONLY_A)
        with pytest.raises(NoRoute) as info:  # b does not have the channel
            await only_a.request(WithChannel(ONLY_A.id), b"x", timeout=5)
        assert info.value.reason is NoRouteReason.NO_PEER_MATCHES


async def test_views_follow_the_channels_a_peer_opens_and_closes(transport: str) -> None:
    """``PeerView.channels`` is the peer's live set (its node-info updates), not its hello's."""
    async with observed_pair(transport) as p:
        b_id = p.b.node_id
        only_a = p.a.channel(ONLY_A)
        assert ONLY_A.id not in _view(p.a, b_id).channels
        p.b.channel(ONLY_A).handle_requests(_echo)  # b opens it while connected
        await wait_until(lambda: ONLY_A.id in _view(p.a, b_id).channels)
        assert await only_a.request(WithChannel(ONLY_A.id), b"now", timeout=5) == b"now"

        p.b.close_channel(ONLY_A)
        await wait_until(lambda: ONLY_A.id not in _view(p.a, b_id).channels)
        assert ECHO.id in _view(p.a, b_id).channels
        with pytest.raises(NoRoute):  # a selector by views no longer picks b
            await only_a.request(WithChannel(ONLY_A.id), b"gone", timeout=5)
        conn = p.a.router.get_peer(b_id)
        assert conn is not None
        sent = conn.statistics().frames_out
        with pytest.raises(RequestError) as info:  # a destination naming b fails fast ...
            await only_a.request(Pick(b_id), b"gone", timeout=5)
        assert info.value.code is ErrorCode.NO_HANDLER
        assert conn.statistics().frames_out == sent  # ... without a round trip
        assert p.recorder.outcomes() == [  # ... and counts as b's refusal, like its answer
            (b_id, AttemptOutcome.OK),
            (b_id, AttemptOutcome.REFUSED),
        ]


# ------------------------------------------------------------- deadlines and outcomes


async def test_every_destination_reports_each_attempt_per_peer(transport: str) -> None:
    async with observed_pair(transport) as p:

        async def answer(env: Envelope[bytes]) -> bytes:
            match env.message:
                case b"busy":
                    raise RequestError(ErrorCode.UNAVAILABLE, "busy")
                case b"missing":
                    raise RequestError(ErrorCode.NOT_FOUND, "missing")
            return env.message

        p.cb.handle_requests(answer)
        b_id = p.b.node_id
        assert await p.ca.request(b_id, b"bare", timeout=5) == b"bare"
        assert await p.ca.request(Pick(b_id), b"custom", timeout=5) == b"custom"
        assert await p.ca.request(WithChannel(ECHO.id), b"views", timeout=5) == b"views"
        for message in (b"busy", b"missing"):
            with pytest.raises(RequestError):
                await p.ca.request(Pick(b_id), message, timeout=5)
        assert p.recorder.outcomes() == [
            (b_id, AttemptOutcome.OK),
            (b_id, AttemptOutcome.OK),
            (b_id, AttemptOutcome.OK),
            (b_id, AttemptOutcome.REFUSED),
            (b_id, AttemptOutcome.ERROR),
        ]
        assert {channel for _peer, channel, _s, _o in p.recorder.done} == {"echo"}
        assert all(0.0 <= seconds < 5.0 for _peer, _c, seconds, _o in p.recorder.done)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_custom_destination_on_a_stalled_peer_times_out_at_its_deadline() -> None:
    async with observed_pair("memory") as p:
        parked = Parked()
        p.cb.handle_requests(parked)
        destination = Recording(p.b.node_id)
        before = anyio.current_time()
        with pytest.raises(RequestTimeout):
            await p.ca.request(destination, b"slow", timeout=0.5)
        assert anyio.current_time() - before == pytest.approx(0.5)
        # the attempt itself ended by its timer-heap deadline, not by an outer cancel scope
        assert [type(exc) for exc in destination.raised] == [RequestTimeout]
        ((peer, _channel, seconds, outcome),) = p.recorder.done
        assert (peer, outcome) == (p.b.node_id, AttemptOutcome.TIMEOUT)
        assert seconds == pytest.approx(0.5)
        await parked.cancelled.wait()  # cancelled on the wire
        assert _view(p.a, p.b.node_id).requests_in_flight == 0


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_the_callers_scope_deadline_counts_as_a_timeout_of_the_peer() -> None:
    async with observed_pair("memory") as p:
        parked = Parked()
        p.cb.handle_requests(parked)
        before = anyio.current_time()
        with anyio.move_on_after(0.3) as scope:
            await p.ca.request(Pick(p.b.node_id), b"slow")
        assert scope.cancelled_caught  # the caller's scope ended it quietly, as anyio does
        assert anyio.current_time() - before == pytest.approx(0.3)
        assert p.recorder.outcomes() == [(p.b.node_id, AttemptOutcome.TIMEOUT)]
        await parked.cancelled.wait()


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_an_attempt_cancelled_before_its_deadline_is_not_the_peers_fault() -> None:
    async with observed_pair("memory") as p:
        parked = Parked()
        p.cb.handle_requests(parked)
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await p.ca.request(Pick(p.b.node_id), b"slow", timeout=5)

            tg.start_soon(call)
            await parked.started.wait()
            tg.cancel_scope.cancel()
        assert p.recorder.done == []
        await parked.cancelled.wait()


# ------------------------------------------------------------------------------ no route


async def test_a_bare_id_that_is_not_connected_has_no_route(transport: str) -> None:
    async with observed_pair(transport) as p:
        stranger = NodeKey.generate().node_id
        calls = (
            lambda: p.ca.send(stranger, b"x"),
            lambda: p.ca.request(stranger, b"x", timeout=1),
            lambda: p.ca.send(Pick(stranger), b"x"),
            lambda: p.ca.request(Pick(stranger), b"x", timeout=1),
        )
        for call in calls:
            with pytest.raises(PeerNotConnected) as info:
                await call()
            assert isinstance(info.value, NoRoute)
            assert info.value.reason is NoRouteReason.NOT_CONNECTED
        with pytest.raises(PeerNotConnected):
            p.ca.send_nowait(stranger, b"x")
        assert p.recorder.done == []  # nothing went on the wire: nothing to report


async def test_broadcast_with_no_peer_has_no_route(transport: str) -> None:
    async with observed_pair(transport, connect=False) as p:
        with pytest.raises(NoRoute) as info:
            await p.ca.send(BROADCAST, b"x")
        assert info.value.reason is NoRouteReason.NO_PEERS_CONNECTED
        with pytest.raises(NoRoute) as info:
            p.ca.send_nowait(BROADCAST, b"x")
        assert info.value.reason is NoRouteReason.NO_PEERS_CONNECTED
        with pytest.raises(ChannelError):  # a request needs one responder, peers or not
            await p.ca.request(BROADCAST, b"x", timeout=1)


@pytest.mark.parametrize("connect", [False, True], ids=["no-peers", "no-match"])
async def test_a_destination_selecting_nobody_has_no_route(transport: str, connect: bool) -> None:
    reason = NoRouteReason.NO_PEER_MATCHES if connect else NoRouteReason.NO_PEERS_CONNECTED
    async with observed_pair(transport, connect=connect) as p:
        for nobody in (Pick(), Pick(fanout=True)):
            with pytest.raises(NoRoute) as info:
                await p.ca.send(nobody, b"x")
            assert info.value.reason is reason
            with pytest.raises(NoRoute) as info:
                p.ca.send_nowait(nobody, b"x")
            assert info.value.reason is reason
            with pytest.raises(NoRoute) as info:
                await p.ca.request(nobody, b"x", timeout=1)
            assert info.value.reason is reason


async def test_a_fanout_reports_each_peer_with_an_outcome(transport: str) -> None:
    async with observed_pair(transport) as p:
        stranger = NodeKey.generate().node_id
        everyone = Pick(p.b.node_id, stranger, fanout=True)
        report = await p.ca.send(everyone, b"hello")
        assert report.delivered == (p.b.node_id,)
        assert report.failed == {stranger: AttemptOutcome.NOT_CONNECTED}
        assert not report.ok
        report = p.ca.send_nowait(everyone, b"again")
        assert report.failed == {stranger: AttemptOutcome.NOT_CONNECTED}
        with anyio.fail_after(5):
            assert (await p.cb.receive()).message == b"hello"
            assert (await p.cb.receive()).message == b"again"
