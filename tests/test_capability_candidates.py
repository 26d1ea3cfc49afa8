"""The capability view: candidates for a capability from connected peers, the address book,
PEX and the DHT in that order, within a budget; confirmed and refuted claims."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import pytest

from discovery import (
    Budget,
    CandidateSource,
    CapabilityView,
    DiscoveryConfig,
    Penalty,
    RecordRejection,
    RecordStore,
    SignedRecord,
)
from overlay.errors import DialError, LocalProtocolError
from overlay.identity import NodeId
from tests.dht_memory import NETWORK, Network, build_network, wall_clock
from tests.support import both_backends, virtual_time

anyio_backend = both_backends()
pytestmark = pytest.mark.anyio


@dataclass
class FakePex:
    """Answers PEX requests from a table of records per peer; ``hang`` peers never answer."""

    answers: dict[NodeId, list[bytes]] = field(default_factory=dict)
    hang: set[NodeId] = field(default_factory=set)
    asked: list[tuple[NodeId, tuple[str, ...]]] = field(default_factory=list)

    async def request_records(
        self, peer: NodeId, wanted: Sequence[str], *, max_records: int, timeout: float
    ) -> Sequence[bytes]:
        self.asked.append((peer, tuple(wanted)))
        await anyio.lowlevel.checkpoint()
        if peer in self.hang:
            await anyio.sleep_forever()
        if peer not in self.answers:
            raise DialError(f"{peer} is gone")
        return self.answers[peer][:max_records]


@dataclass
class Scene:
    net: Network
    view: CapabilityView
    pex: FakePex
    connected: list[SignedRecord]
    book: RecordStore
    holders: list[NodeId]
    penalties: list[tuple[NodeId, Penalty]]


async def scene(*, holders: int = 8, budget: Budget | None = None) -> Scene:
    """A 100-node DHT in which ``holders`` nodes provide "archive": the origin is connected
    to holders 0 and 1 and two others, its address book knows holder 2, PEX peers know
    holders 3 and 4, and the DHT knows them all."""
    net = build_network(100, seed=41, capabilities={"archive": holders})
    for capability, nodes in net.holders.items():
        for node in nodes:
            await net.service(node).provide(capability)
    archive = net.holders["archive"]
    origin = next(s for s in net.services if s.node_id not in archive)
    plain = [s for s in net.services if s.node_id not in archive and s is not origin]
    connected = [net.service(archive[0]).record, net.service(archive[1]).record,
                 plain[0].record, plain[1].record]
    book = RecordStore()
    book.offer(net.service(archive[2]).record, wall_clock(), "seed")
    pex = FakePex({
        plain[0].node_id: [net.service(archive[3]).record.data, plain[5].record.data],
        plain[1].node_id: [net.service(archive[4]).record.data],
    })
    penalties: list[tuple[NodeId, Penalty]] = []
    config = DiscoveryConfig(NETWORK, budget=budget or Budget(), pex_fanout=4)
    view = CapabilityView(
        config, local_id=origin.node_id, connected=lambda: connected, address_book=book,
        wall_clock=wall_clock, pex=pex, dht=origin,
        penalise=lambda peer, reason: penalties.append((peer, reason)),
    )
    return Scene(net, view, pex, connected, book, archive, penalties)


async def test_sources_are_consulted_cheapest_first_without_duplicates() -> None:
    s = await scene()
    found = await s.view.collect("archive", limit=8)
    sources = [c.source for c in found]
    assert sources == sorted(sources, key=list(CandidateSource).index)
    assert [c.node_id for c in found[:2]] == sorted(s.holders[:2])
    assert sources[:4] == [CandidateSource.CONNECTED, CandidateSource.CONNECTED,
                           CandidateSource.ADDRESS_BOOK, CandidateSource.PEX]
    assert found[2].node_id == s.holders[2]
    assert {c.node_id for c in found[3:5]} == set(s.holders[3:5])
    assert sources[5:] == [CandidateSource.DHT] * 3
    assert sorted(c.node_id for c in found) == sorted(s.holders)
    assert all(c.record.has("archive") for c in found)
    assert [c.connected for c in found] == [True, True] + [False] * 6
    # PEX and DHT records went into the address book, with their source.
    assert all(c.node_id in s.book for c in found)
    stats = s.view.statistics()
    assert (stats.calls, stats.pex_requests, stats.pex_failures) == (1, 4, 2)
    assert stats.candidates == {"connected": 2, "address_book": 1, "pex": 2, "dht": 3}


async def test_a_call_stops_at_the_limit_and_skips_costlier_sources() -> None:
    s = await scene()
    found = await s.view.collect("archive", limit=3)
    assert [c.source for c in found] == [CandidateSource.CONNECTED] * 2 + [
        CandidateSource.ADDRESS_BOOK]
    assert not s.pex.asked  # never needed
    excluded = await s.view.collect("archive", limit=2, exclude=s.holders[:3])
    assert {c.node_id for c in excluded} == set(s.holders[3:5])
    assert all(c.source is CandidateSource.PEX for c in excluded)


async def test_the_message_budget_bounds_pex_and_the_dht() -> None:
    s = await scene()
    async with s.view.candidates("archive", limit=8, budget=Budget(max_messages=2)) as stream:
        found = [c async for c in stream]
    assert len(s.pex.asked) == 2 and stream.messages == 2 and stream.budget_exhausted
    assert CandidateSource.DHT not in {c.source for c in found}
    async with s.view.candidates("archive", limit=8, budget=Budget(max_messages=6)) as capped:
        more = [c async for c in capped]
    assert capped.messages <= 6
    assert capped.budget_exhausted == (len(more) < 8)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_the_time_budget_bounds_a_call_with_hanging_peers() -> None:
    s = await scene()
    s.pex.hang.update(s.pex.answers)
    started = anyio.current_time()
    async with s.view.candidates("archive", limit=8, budget=Budget(max_time=1.5)) as stream:
        found = [c async for c in stream]
    assert anyio.current_time() - started == pytest.approx(1.5)
    assert stream.budget_exhausted
    assert [c.source for c in found] == [CandidateSource.CONNECTED] * 2 + [
        CandidateSource.ADDRESS_BOOK]
    assert s.net.net.in_flight == 0


async def test_confirmed_claims_come_first_and_refuted_ones_last() -> None:
    s = await scene()
    first, second = sorted(s.holders[:2])
    s.view.confirm(second, "archive")
    assert s.view.confirmed(second) == frozenset({"archive"})
    assert s.view.confirmed(first) == frozenset()
    found = await s.view.collect("archive", limit=2)
    assert [c.node_id for c in found] == [second, first]
    assert [c.confirmed for c in found] == [True, False]

    s.view.refute(second, "archive")
    assert s.view.confirmed(second) == frozenset()
    assert (second, Penalty.CAPABILITY_REFUTED) in s.penalties
    found = await s.view.collect("archive", limit=2)
    assert [c.node_id for c in found] == [first, second]  # suspect: after the others

    s.view.confirm(second, "archive")  # serving again clears the suspicion
    found = await s.view.collect("archive", limit=2)
    assert found[0].node_id == second and found[0].confirmed
    stats = s.view.statistics()
    assert (stats.confirmations, stats.refutations, stats.confirmed_peers) == (2, 1, 1)


async def test_forged_pex_records_are_refused_and_their_sender_penalised() -> None:
    s = await scene()
    liar = next(iter(s.pex.answers))
    good = s.pex.answers[liar][0]
    bad = bytearray(good)
    bad[-1] ^= 1
    s.pex.answers[liar] = [bytes(bad), good]
    found = await s.view.collect("archive", limit=8, budget=Budget(max_messages=4))
    assert bytes(bad) not in {c.signed.data for c in found}
    assert good not in {c.signed.data for c in found}  # the whole answer is dropped
    assert (liar, Penalty.FORGED_RECORD) in s.penalties
    assert s.view.statistics().records_rejected[RecordRejection.BAD_SIGNATURE] == 1


async def test_leaving_a_call_early_cancels_its_lookups() -> None:
    s = await scene()
    s.connected.clear()
    s.book.remove(s.holders[2])
    s.pex.answers.clear()
    async with s.view.candidates("archive", limit=8) as stream:
        async for candidate in stream:
            assert candidate.source is CandidateSource.DHT
            break
    assert s.net.net.in_flight == 0


async def test_bad_arguments_are_refused() -> None:
    s = await scene()
    with pytest.raises(LocalProtocolError):
        await s.view.collect("Archive!")
    with pytest.raises(LocalProtocolError):
        await s.view.collect("archive", limit=0)
