"""A role request whose peer disconnects while an attempt on it runs.

The node forgets a peer's health when it disconnects (``RoleService.forget``). That can
happen after the request counted an attempt in flight on that peer and before the attempt
ends: the attempt must finish the very record it started, not look the peer up again (the
lookup found a fresh record and ``finish()`` raised "finish() without a matching start()",
which crashed ``make testnet``). The request itself ends normally: answered, or moved on to
the next peer.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from overlay.errors import ConnectionClosed
from overlay.identity import NodeId
from overlay.router._destination import PeerView
from overlay.transport._failures import Direction
from routing import HealthTable, Outcome, PeerHealth
from routing._destinations import Role
from routing._role import RoleService
from tests.routing_support import nid
from tests.support import both_backends

anyio_backend = both_backends()

pytestmark = pytest.mark.anyio

CAP = "blocksync"


class _Peers:
    """A :class:`~overlay.router._destination.PeerSet` of peers advertising ``CAP``."""

    local_id = nid(0xFFFF)

    def __init__(self, ids: Sequence[NodeId]) -> None:
        self._views = [
            PeerView(n, Direction.OUTBOUND, 0.0, None, 0, advertised=frozenset({CAP}))
            for n in ids
        ]

    def connected_peers(self) -> list[NodeId]:
        return [v.node_id for v in self._views]

    def peers(self) -> list[PeerView]:
        return list(self._views)

    def peer(self, node_id: NodeId) -> PeerView | None:
        return next((v for v in self._views if v.node_id == node_id), None)


class _DisconnectsWhenAsked(HealthTable):
    """Health of peers that disconnect as soon as an attempt on them is counted in flight:
    from then on every lookup finds their health forgotten, as after the node's
    ``on_peer_disconnected``. Keeps the records it handed out, to check them afterwards."""

    def __init__(self, leaving: set[NodeId]) -> None:
        super().__init__()
        self.leaving = leaving
        self.handed: list[tuple[NodeId, PeerHealth]] = []

    def get(self, node_id: NodeId, capability: str) -> PeerHealth:
        entry = super().get(node_id, capability)
        if node_id in self.leaving and entry.in_flight:
            self.forget(node_id)  # it disconnected
            entry = super().get(node_id, capability)
        self.handed.append((node_id, entry))
        return entry


def _service(leaving: set[NodeId]) -> tuple[RoleService, _DisconnectsWhenAsked]:
    service = RoleService(capabilities_of=lambda view: view.advertised)
    table = _DisconnectsWhenAsked(leaving)
    service.health = table
    return service, table


async def test_an_answer_from_a_peer_that_disconnected_meanwhile_is_returned() -> None:
    a = nid(1)
    service, table = _service({a})

    async def attempt(node_id: NodeId) -> bytes:
        return b"block from " + node_id.encode()

    value, result = await service.run(_Peers([a]), Role(CAP), attempt)
    assert value == b"block from " + a.encode()
    assert (result.peer, result.attempt, result.attempts) == (a, 1, 1)
    assert service.statistics().succeeded == 1
    # every record handed out, the forgotten one included, has no attempt left in flight
    assert table.handed and all(h.in_flight == 0 for _, h in table.handed)
    # the record the attempt started got its success
    assert any(h.successes > 0 for n, h in table.handed if n == a)


async def test_a_peer_that_disconnects_mid_attempt_fails_over_to_the_next() -> None:
    a, b = nid(1), nid(2)
    service, table = _service({a})
    asked: list[NodeId] = []

    async def attempt(node_id: NodeId) -> bytes:
        asked.append(node_id)
        if node_id == a:
            raise ConnectionClosed("the connection closed")
        return b"block"

    value, result = await service.run(_Peers([a, b]), Role(CAP), attempt)
    assert asked == [a, b]  # both rank alike: ties go by id bytes, a first
    assert value == b"block" and result.peer == b and result.attempt == 2
    assert result.failures == ((a, Outcome.REFUSED),)
    assert all(h.in_flight == 0 for _, h in table.handed)
    lost = [h for n, h in table.handed if n == a and h.attempts > 0]
    assert lost and lost[0].consecutive_failures == 1  # the refusal landed on a's record
