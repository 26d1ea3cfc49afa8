"""Role and group destinations on a node: who answers, LOCAL, failures moving on, typed
errors, per-member group results, confirmed/refuted capabilities and scores, live targets
through the node's control. Virtual time over the memory network."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from overlay.errors import (
    ChannelError,
    ConfigError,
    ErrorCode,
    IncompatiblePeerError,
    NoRoute,
    RequestError,
    RequestTimeout,
    RoleFailure,
    RoleUnavailable,
)
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.operator._control import UnknownTargetError
from overlay.router._channel import Envelope, RequestHandler
from routing import TargetSet
from routing._destinations import Group, Role
from tests.routing_hedging import PEERS, SERVERS
from tests.routing_network import SERVE, Plan, record_for, routing_network
from tests.support import virtual_time, wait_until

pytestmark = pytest.mark.anyio

BEHAVIOUR: dict[int, str] = {}


def behaving(node: Node) -> RequestHandler[bytes, bytes]:
    """Node ``i`` (in creation order) answers per ``BEHAVIOUR[i]``: ok, error, slow."""
    index = _count()

    async def answer(env: Envelope[bytes]) -> bytes:
        match BEHAVIOUR.get(index, "ok"):
            case "error":
                raise RequestError(ErrorCode.UNAVAILABLE, "not today")
            case "slow":
                await anyio.sleep(10)
        return node.node_id.encode()

    return answer


_made = [0]


def _count() -> int:
    _made[0] += 1
    return _made[0] - 1


@contextlib.asynccontextmanager
async def star(caps: list[frozenset[str]], behaviour: dict[int, str] | None = None,
               client_caps: frozenset[str] = frozenset()) -> AsyncIterator[list[Node]]:
    """Servers with ``caps`` and a client (last) connected to all of them."""
    _made[0] = 0
    BEHAVIOUR.clear()
    BEHAVIOUR.update(behaviour or {})
    plan = Plan([*caps, client_caps])
    async with routing_network(plan, targets=TargetSet(), handler=behaving, peers=PEERS,
                               server_peers={"blocksync": SERVERS}, last_peers=PEERS) as nodes:
        client = nodes[-1]
        for server in nodes[:-1]:
            with contextlib.suppress(IncompatiblePeerError):
                await client.dial(f"memory:{server.node_id}")
        await wait_until(lambda: len(client.connected_peers()) >= len(caps), timeout=10)
        yield nodes


BS = frozenset({"blocksync"})


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_role_request_says_who_answered_and_moves_on_after_errors() -> None:
    async with star([BS, BS, frozenset()]) as nodes:
        client, ch = nodes[-1], nodes[-1].channel(SERVE)
        bad = client.routing.roles.ranked(client.router.peer_table, "blocksync")[0]
        good = next(n.node_id for n in nodes[:2] if n.node_id != bad)
        BEHAVIOUR[[n.node_id for n in nodes].index(bad)] = "error"  # the first choice fails
        answers = set()
        for _ in range(6):
            response = await client.routing.request(ch, Role("blocksync"), b"q", timeout=2)
            assert response.peer in (nodes[0].node_id, nodes[1].node_id)
            assert response.value == response.peer.encode()
            answers.add(response.peer)
            if response.attempts == 2:
                assert response.result.failures[0][0] == bad
        assert answers == {good}  # the failing peer never answers
        caps = client.routing.peer_capabilities(bad)["blocksync"]
        assert caps["suspect"] and not caps["confirmed"]
        assert client.routing.peer_capabilities(good)["blocksync"]["confirmed"]
        view = client.router.peer_table.peer(bad)
        assert view is not None and view.score is not None and view.score < 0
        # the plain API returns the response only
        assert await ch.request(Role("blocksync"), b"q", timeout=2) == good.encode()


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_role_failures_are_typed() -> None:
    async with star([BS, BS], {0: "error", 1: "error"}) as nodes:
        client, ch = nodes[-1], nodes[-1].channel(SERVE)
        with pytest.raises(RoleUnavailable) as caught:
            await ch.request(Role("blocksync"), b"q", timeout=2)
        assert caught.value.failure is RoleFailure.ALL_FAILED
        assert caught.value.attempts == 2 and isinstance(caught.value, NoRoute)
        with pytest.raises(RoleUnavailable) as caught:
            await ch.request(Role("archive"), b"q", timeout=2)
        assert caught.value.failure is RoleFailure.NONE_KNOWN
        # a provider known from its record but unreachable: nobody listens at its address
        ghost = record_for(NodeKey.generate(), client.config.network, frozenset({"archive"}))
        client.discovery.records.offer(ghost, client.wall_clock(), "test")
        with pytest.raises(RoleUnavailable) as caught:
            await ch.request(Role("archive"), b"q", timeout=2)
        assert caught.value.failure is RoleFailure.NONE_REACHABLE
        with pytest.raises(ChannelError):
            Role("Not A Name")


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_the_deadline_ends_a_role_request_with_every_attempt_cancelled() -> None:
    async with star([BS, BS], {0: "slow", 1: "slow"}) as nodes:
        client, ch = nodes[-1], nodes[-1].channel(SERVE)
        started = anyio.current_time()
        with pytest.raises(RoleUnavailable) as caught:
            await ch.request(Role("blocksync"), b"q", timeout=1)
        assert caught.value.failure is RoleFailure.DEADLINE
        assert anyio.current_time() - started == pytest.approx(1.0, abs=0.01)
        assert client.routing.roles.statistics().failed[RoleFailure.DEADLINE] == 1


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_role_with_local_and_group_requests() -> None:
    async with star([BS, BS, BS], {2: "slow"}, client_caps=BS) as nodes:
        client, ch = nodes[-1], nodes[-1].channel(SERVE)
        local = await client.routing.request(ch, Role("blocksync", allow_local=True), b"q")
        assert local.peer == client.node_id and local.value == client.node_id.encode()
        remote = await client.routing.request(ch, Role("blocksync"), b"q", timeout=2)
        assert remote.peer != client.node_id
        started = anyio.current_time()
        group = await client.routing.group_request(ch, Group("blocksync"), b"q", timeout=0.5)
        assert anyio.current_time() - started == pytest.approx(0.5, abs=0.01)
        assert set(group.responses) == {nodes[0].node_id, nodes[1].node_id}
        assert isinstance(group.errors[nodes[2].node_id], RequestTimeout)
        assert not group.ok and len(group.members) == 3
        two = await client.routing.group_request(ch, Group("blocksync", n=2), b"q", timeout=1)
        assert len(two.members) == 2 and two.ok  # the two healthiest: not the slow one
        report = await ch.send(Group("blocksync"), b"hello")
        assert len(report.delivered) == 3
        with pytest.raises(ChannelError):
            await ch.request(Group("blocksync"), b"q")
        with pytest.raises(RoleUnavailable):
            await client.routing.group_request(ch, Group("archive"), b"q")


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_targets_change_live_and_impossible_ones_are_explained() -> None:
    async with star([BS]) as nodes:
        control = nodes[-1].control
        answer = await control.set_target("blocksync", ["min_peers=1", "priority=2"])
        assert answer["target"] == {"min_peers": 1, "priority": 2}
        await control.set_target("blocksync", ["min_fraction=50%"])  # others kept
        assert nodes[-1].routing.targets.get("blocksync") is not None
        target = nodes[-1].routing.targets.get("blocksync")
        assert target is not None and target.min_peers == 1 and target.min_fraction == 0.5
        with pytest.raises(ConfigError, match="exceeds max_connections 24"):
            await control.set_target("archive", ["min_peers=40"])
        await wait_until(lambda: bool(control.targets()["targets"][0].get("state")), timeout=5)
        listed = control.targets()["targets"][0]
        assert listed["capability"] == "blocksync" and listed["state"] == "met"
        assert control.status()["targets"] == control.targets()["targets"]
        peers = [p for p in control.peers() if p.get("connected")]
        assert [c["name"] for c in peers[0]["capabilities"]["advertised"]] == ["blocksync"]
        assert (await control.remove_target("blocksync")) == {"removed": "blocksync"}
        with pytest.raises(UnknownTargetError):
            await control.remove_target("blocksync")
