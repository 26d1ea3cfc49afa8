"""The DHT service over an in-process RPC (tests/dht_memory.py): provider lookups in 300 nodes,
streaming, records checked at store and at answer time, liars penalised, cancellation, the
message budget, republishing on a virtual clock, and the statistics.

Rounds and messages are printed (``pytest -s``).
"""

from __future__ import annotations

import statistics

import anyio
import pytest

from discovery import (
    DhtAck,
    DhtAddProvider,
    DhtError,
    DhtErrorCode,
    DhtFindNode,
    DhtGetProviders,
    DhtNodes,
    DhtPing,
    DhtProviders,
    DhtRequest,
    DhtResponse,
    LookupOutcome,
    Misbehaviour,
    Penalty,
    RecordRejection,
    SignedRecord,
    StoreOutcome,
    node_id_bytes,
    provider_key,
    signing_input,
)
from overlay.errors import LocalProtocolError
from overlay.identity import NodeId, NodeKey
from proto import discovery_pb2
from tests.dht_memory import BASE_TIME, NETWORK, Network, build_network, make_record, wall_clock
from tests.support import both_backends, virtual_time

anyio_backend = both_backends()
pytestmark = pytest.mark.anyio


def forged(signed: SignedRecord) -> bytes:
    """The record with one bit of its signature flipped."""
    data = bytearray(signed.data)
    data[-1] ^= 1
    return bytes(data)


def spoofed(attacker: NodeKey, victim_id: bytes, *, now: float) -> bytes:
    """A record signed by ``attacker`` that claims ``victim_id`` as its node id."""
    payload = discovery_pb2.CapabilityRecord()
    payload.ParseFromString(make_record(attacker, issued_at=now).record.encode())
    payload.node_id = victim_id
    body = payload.SerializeToString(deterministic=True)
    signature = attacker.sign(signing_input(body))
    return discovery_pb2.SignedRecord(payload=body, signature=signature).SerializeToString(
        deterministic=True
    )


async def provide_all(net: Network) -> None:
    for capability, holders in net.holders.items():
        for holder in holders:
            report = await net.service(holder).provide(capability)
            assert report.stored == report.attempted == 16


async def test_find_providers_for_a_capability_held_by_3_of_300_succeeds_every_trial() -> None:
    net = build_network(300, seed=21, capabilities={f"cap{i}": 3 for i in range(4)})
    await provide_all(net)
    rng = net.net.rng
    rounds, messages = [], []
    for trial in range(12):
        capability = f"cap{trial % 4}"
        holders = set(net.holders[capability])
        origin = rng.choice([s for s in net.services if s.node_id not in holders])
        async with origin.find_providers(capability) as found:
            got = [signed.node_id async for signed in found]
        assert found.report is not None
        assert sorted(got) == sorted(holders), trial
        assert found.report.outcome is LookupOutcome.COMPLETED and found.report.providers == 3
        rounds.append(found.report.rounds)
        messages.append(found.report.messages)
    print(
        f"DhtService find_providers N=300 d=2 k=16: rounds max {max(rounds)}, messages median "
        f"{statistics.median(messages)} max {max(messages)}"
    )
    assert max(rounds) <= 4
    assert not net.net.penalties  # honest network: nobody penalised
    assert net.net.in_flight == 0


async def test_the_density_limit_keeps_honest_provider_lookups_whole() -> None:
    # With ``density_limit`` the service hands each lookup its table's size estimate: on an
    # honest network the ids near a key are as dense as the estimate says, so every provider is
    # still found.
    net = build_network(300, seed=32, capabilities={"cap": 3}, density_limit=True)
    await provide_all(net)
    rng = net.net.rng
    holders = set(net.holders["cap"])
    for trial in range(6):
        origin = rng.choice([s for s in net.services if s.node_id not in holders])
        async with origin.find_providers("cap") as found:
            got = [signed.node_id async for signed in found]
        assert sorted(got) == sorted(holders), trial
    assert not net.net.penalties


async def test_the_density_limit_reaches_the_lookup_core() -> None:
    # A factor far too small for the network (it allows a thousandth of the expected ids near
    # the key) starves the walk: with the limit on it stops after a few queries, without it
    # the same lookup walks on. Proof that the estimate is passed, not just configured.
    messages = {}
    for on in (True, False):
        net = build_network(120, seed=33, capabilities={"cap": 3}, density_limit=on,
                            density_factor=0.001)
        origin = next(s for s in net.services if s.node_id not in net.holders["cap"])
        async with origin.find_providers("cap") as found:
            _ = [signed async for signed in found]
        assert found.report is not None
        messages[on] = found.report.messages
    assert messages[True] < messages[False]


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_node_lookups_apply_the_netgroup_limit_to_contacts_from_answers() -> None:
    # The service hands the lookup core its contacts' netgroups (from their records' addresses):
    # when every contact shares one netgroup and a path may query one node of a netgroup, each
    # of the two paths queries one node and stops; without netgroups the walk goes on. (Nobody
    # provides: publishing is a lookup too, and would be limited the same way.)
    messages = {}
    for limited in (True, False):
        net = build_network(60, seed=5, capabilities={"cap": 3}, max_per_netgroup=1,
                            netgroup=(lambda record: "one-group") if limited else None)
        origin = next(s for s in net.services if s.node_id not in net.holders["cap"])
        async with origin.find_providers("cap") as found:
            _ = [signed async for signed in found]
        assert found.report is not None
        messages[limited] = found.report.messages
    assert messages[True] <= 2 < messages[False]


async def test_find_closest_after_a_real_bootstrap_matches_brute_force() -> None:
    net = build_network(40, seed=22, prefill=False)
    first = net.services[0]
    for service in net.services[1:]:  # each joins through the first node
        await service.bootstrap([first.record])
    for service in net.services:  # a second pass, as bucket refreshes would do
        await service.bootstrap([])
    rng = net.net.rng
    for _ in range(10):
        target = rng.randbytes(20)
        origin = rng.choice(net.services)
        records = await origin.find_closest(target)
        assert [r.node_id for r in records] == net.true_closest(target, 16, origin.node_id)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_a_node_that_started_with_an_empty_table_refreshes_its_buckets() -> None:
    # A node providing nothing starts maintenance with no contact (nothing to wait for); its
    # first contact must schedule the bucket refreshes, which then fill the table through it.
    net = build_network(30, seed=34, prefill=False)
    first, late = net.services[0], net.services[-1]
    for service in net.services[1:-1]:
        await service.bootstrap([first.record])
    async with anyio.create_task_group() as tg:
        await tg.start(late.run)
        await anyio.wait_all_tasks_blocked()
        assert len(late.table) == 0
        late.add_contact(first.record, verified=True)
        await anyio.sleep(late.table.config.refresh_interval + 60)
        assert len(late.table) > 1
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_the_first_provider_arrives_before_the_lookup_ends() -> None:
    net = build_network(300, seed=23, capabilities={"archive": 3}, latency=(0.01, 0.1))
    await provide_all(net)
    holders = set(net.holders["archive"])
    origin = next(s for s in net.services if s.node_id not in holders)
    started = anyio.current_time()
    async with origin.find_providers("archive") as found:
        arrivals = []
        async for signed in found:
            arrivals.append((anyio.current_time() - started, found.report))
            assert signed.node_id in holders and signed.record.has("archive")
    report = found.report
    assert report is not None and report.first_provider_after is not None
    assert arrivals[0][1] is None  # the lookup was still running when the first one came
    assert arrivals[0][0] == pytest.approx(report.first_provider_after)
    assert report.first_provider_after < report.elapsed
    print(f"first provider after {report.first_provider_after:.3f} s of {report.elapsed:.3f} s")


async def test_forged_replayed_and_expired_records_are_refused_at_store() -> None:
    net = build_network(20, seed=24, capabilities={"archive": 1})
    holder_id = net.holders["archive"][0]
    provider = net.service(holder_id)
    target = net.services[0] if net.services[0].node_id != holder_id else net.services[1]
    attacker = next(s for s in net.services if s not in (provider, target))
    key = provider_key(NETWORK, "archive")
    now = wall_clock()

    def store(sender: NodeId, data: bytes) -> DhtResponse:
        return target.handle(sender, DhtAddProvider(key, data))

    bad = store(attacker.node_id, forged(provider.record))
    assert isinstance(bad, DhtError) and bad.code is DhtErrorCode.RECORD_REJECTED
    assert (target.node_id, attacker.node_id, Penalty.FORGED_RECORD) in net.net.penalties

    other_net = make_record(net.keys[holder_id], capabilities={"archive": 1}, issued_at=now,
                            network="othernet")
    assert isinstance(store(attacker.node_id, other_net.data), DhtError)
    assert (target.node_id, attacker.node_id, Penalty.WRONG_NETWORK) in net.net.penalties

    expired = make_record(net.keys[holder_id], capabilities={"archive": 1},
                          issued_at=now - 1000, ttl=500)
    assert isinstance(store(holder_id, expired.data), DhtError)
    assert not [p for p in net.net.penalties if p[1] == holder_id]  # expiry is not blamed

    # The provider stores seq 1, then re-signs (seq 2); a replay of seq 1 changes nothing.
    old = provider.record
    assert isinstance(store(holder_id, old.data), DhtAck)
    newer = make_record(net.keys[holder_id], seq=2, capabilities={"archive": 1}, issued_at=now)
    assert isinstance(store(holder_id, newer.data), DhtAck)
    replay = store(attacker.node_id, old.data)
    assert isinstance(replay, DhtError) and replay.code is DhtErrorCode.RECORD_REJECTED
    stored = target.handle(attacker.node_id, DhtGetProviders(key))
    assert isinstance(stored, DhtProviders) and stored.providers == (newer.data,)
    # A replica stored again by someone else never extends expiry: same seq, same record.
    assert isinstance(store(attacker.node_id, newer.data), DhtAck)
    stats = target.statistics()
    assert stats.provides[StoreOutcome.DUPLICATE] == 1
    assert stats.provides[StoreOutcome.STALE] == 1
    assert stats.records_rejected[RecordRejection.BAD_SIGNATURE] == 1
    assert stats.records_rejected[RecordRejection.WRONG_NETWORK] == 1
    assert stats.records_rejected[RecordRejection.EXPIRED] == 1

    # A record that does not advertise the key's capability is refused and blamed.
    unrelated = make_record(net.keys[attacker.node_id], seq=5, issued_at=now)
    assert isinstance(store(attacker.node_id, unrelated.data), DhtError)
    assert (target.node_id, attacker.node_id, Penalty.UNRELATED_PROVIDER) in net.net.penalties


def tamper_providers(replacement: bytes):  # type: ignore[no-untyped-def]
    def tamper(request: DhtRequest, response: DhtResponse) -> DhtResponse:
        if isinstance(response, DhtProviders):
            return DhtProviders((replacement,), response.closer)
        return response

    return tamper


@pytest.mark.parametrize("kind", ["forged", "other-network", "expired", "replayed"])
async def test_bad_provider_records_are_refused_at_answer_time(kind: str) -> None:
    net = build_network(120, seed=25, capabilities={"archive": 3})
    await provide_all(net)
    holders = net.holders["archive"]
    victim = holders[0]
    now = wall_clock()
    origin = next(s for s in net.services if s.node_id not in holders)
    match kind:
        case "forged":
            bad = forged(net.service(victim).record)
        case "other-network":
            bad = make_record(net.keys[victim], capabilities={"archive": 1}, issued_at=now,
                              network="othernet").data
        case "expired":
            bad = make_record(net.keys[victim], capabilities={"archive": 1},
                              issued_at=now - 1000, ttl=500).data
        case _:  # the origin knows seq 2 of the victim; a liar serves seq 1
            newer = make_record(net.keys[victim], seq=2, capabilities={"archive": 1},
                                issued_at=now)
            origin.add_contact(newer, verified=False)
            bad = net.service(victim).record.data
    key = provider_key(NETWORK, "archive")
    liars = set(net.true_closest(key, 24)) - set(holders) - {origin.node_id}
    for liar in liars:
        net.net.tamper[liar] = tamper_providers(bad)
    async with origin.find_providers("archive") as found:
        got = [signed async for signed in found]
    assert bad not in {signed.data for signed in got}
    assert {signed.node_id for signed in got} <= set(holders)
    blamed = {peer for judge, peer, _ in net.net.penalties if judge == origin.node_id}
    rejected = origin.statistics().records_rejected
    if kind in ("forged", "other-network"):
        assert blamed and blamed <= liars
        reason = Penalty.FORGED_RECORD if kind == "forged" else Penalty.WRONG_NETWORK
        assert {r for j, _, r in net.net.penalties if j == origin.node_id} == {reason}
    else:
        assert not blamed  # dropped without blame
        expected = RecordRejection.EXPIRED if kind == "expired" else RecordRejection.STALE_SEQ
        assert rejected[expected] >= 1


async def test_a_responder_that_spoofs_an_id_is_ignored_and_penalised() -> None:
    net = build_network(120, seed=26, capabilities={"archive": 3})
    await provide_all(net)
    holders = net.holders["archive"]
    origin = next(s for s in net.services if s.node_id not in holders)
    key = provider_key(NETWORK, "archive")
    near = [node for node in net.true_closest(key, 24) if node not in holders]
    spoofers = [node for node in near if node != origin.node_id][:4]
    attacker_key = net.keys[spoofers[0]]

    def spoof(request: DhtRequest, response: DhtResponse) -> DhtResponse:
        fake = spoofed(attacker_key, key, now=wall_clock())  # claims the id nearest the key
        match response:
            case DhtNodes(records):
                return DhtNodes((fake, *records[:15]))
            case DhtProviders(providers, closer):
                return DhtProviders(providers, (fake, *closer[:15]))
        return response

    for node in spoofers:
        net.net.tamper[node] = spoof
    for service in net.services:  # everybody knows the spoofers
        for node in spoofers:
            service.add_contact(net.service(node).record, verified=True)
    async with origin.find_providers("archive") as found:
        got = {signed.node_id async for signed in found}
    assert got == set(holders)
    judged = [(peer, reason) for judge, peer, reason in net.net.penalties
              if judge == origin.node_id]
    assert judged and all(peer in spoofers and reason is Penalty.SPOOFED_ID
                          for peer, reason in judged)
    for peer, _ in judged:  # dropped from the routing table
        assert node_id_bytes(peer) not in origin.table
    assert origin.statistics().records_rejected[RecordRejection.ID_MISMATCH] >= len(judged)


def test_every_reason_a_lookup_drops_a_peer_for_has_one_penalty_and_back() -> None:
    for reason in Misbehaviour:  # the core's own verdicts and the driver's
        assert Penalty.of(reason).misbehaviour is reason
    assert Penalty.WRONG_NETWORK.misbehaviour is Misbehaviour.FORGED_RECORD
    assert Penalty.UNRELATED_PROVIDER.misbehaviour is Misbehaviour.FORGED_RECORD
    assert Penalty.of(Misbehaviour.FORGED_RECORD) is Penalty.FORGED_RECORD


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_leaving_a_lookup_early_leaves_nothing_running() -> None:
    net = build_network(300, seed=27, capabilities={"archive": 3}, latency=(0.05, 0.2))
    await provide_all(net)
    origin = next(s for s in net.services if s.node_id not in net.holders["archive"])
    async with origin.find_providers("archive") as found:
        async for _ in found:
            assert net.net.in_flight > 0  # queries were still out when we stopped
            break
    assert net.net.in_flight == 0
    assert found.report is not None and found.report.outcome is LookupOutcome.CANCELLED

    with anyio.move_on_after(0.1):  # cancelled from outside, mid-lookup
        async with origin.find_providers("archive") as again:
            async for _ in again:
                pass
    assert net.net.in_flight == 0
    assert again.report is not None and again.report.outcome is LookupOutcome.CANCELLED


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_offline_nodes_cost_timeouts_and_the_budget_bounds_messages() -> None:
    net = build_network(300, seed=28, capabilities={"archive": 3}, latency=(0.01, 0.05),
                        query_timeout=0.5)
    await provide_all(net)
    holders = net.holders["archive"]
    origin = next(s for s in net.services if s.node_id not in holders)
    rng = net.net.rng
    others = [s.node_id for s in net.services if s.node_id not in holders and s is not origin]
    net.net.offline.update(rng.sample(others, 30))
    async with origin.find_providers("archive") as found:
        got = {signed.node_id async for signed in found}
    assert got == set(holders)
    assert found.report is not None and found.report.timeouts > 0
    async with origin.find_providers("archive", max_messages=5) as capped:
        _ = [signed async for signed in capped]
    assert capped.report is not None
    assert capped.report.budget_exhausted and capped.report.messages <= 5
    assert net.net.in_flight == 0


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_provider_records_are_republished_before_they_expire() -> None:
    ttl, interval, margin = 1000.0, 400.0, 100.0
    net = build_network(30, seed=29, capabilities={"archive": 1}, holder_ttl=ttl,
                        republish=(interval, margin), renew=True)
    provider = net.service(net.holders["archive"][0])
    origin = next(s for s in net.services if s is not provider)
    key = provider_key(NETWORK, "archive")
    async with anyio.create_task_group() as tg:
        await tg.start(provider.run)
        await provider.provide("archive")
        await anyio.sleep(3 * ttl)
        tg.cancel_scope.cancel()
    stores = [(t, request) for t, sender, _, request in net.net.log
              if sender == provider.node_id and isinstance(request, DhtAddProvider)
              and request.key == key]
    rounds = sorted({round(t) for t, _ in stores})
    assert len(rounds) >= 3 * ttl / interval - 1
    expiries = []
    for t, request in stores:
        parsed = discovery_pb2.SignedRecord()
        parsed.ParseFromString(request.record)
        payload = discovery_pb2.CapabilityRecord()
        payload.ParseFromString(parsed.payload)
        expiries.append((t, payload.expires_at))
    for (t1, _), (t2, _) in zip(expiries, expiries[1:], strict=False):
        assert t2 - t1 <= interval + 1  # never longer than the interval between stores
    for t, expires_at in expiries:  # each store happened at least `margin` before expiry
        assert margin <= expires_at - (BASE_TIME + t) <= ttl
    assert provider.record.seq > 1  # the renew hook re-signed the record
    assert provider.statistics().republished >= 2
    async with origin.find_providers("archive") as found:
        got = [signed async for signed in found]
    assert [s.node_id for s in got] == [provider.node_id]
    assert got[0].record.expires_at > wall_clock()


async def test_serving_answers_every_request_kind() -> None:
    net = build_network(30, seed=30, capabilities={"archive": 1})
    service = net.services[0]
    peer = net.services[1].node_id
    target = net.net.rng.randbytes(20)
    nodes = service.handle(peer, DhtFindNode(target))
    assert isinstance(nodes, DhtNodes) and len(nodes.records) == 16
    assert isinstance(service.handle(peer, DhtPing()), DhtAck)
    empty = service.handle(peer, DhtGetProviders(target))
    assert isinstance(empty, DhtProviders) and empty.providers == () and len(empty.closer) == 16
    stats = service.statistics()
    assert stats.requests_served == 3 and stats.table_size == len(service.table)
    with pytest.raises(LocalProtocolError):
        await service.provide("not-advertised")
    with pytest.raises(LocalProtocolError):
        async with service.find_providers("Not A Name"):
            pass


async def test_statistics_count_lookups_and_provider_records() -> None:
    net = build_network(100, seed=31, capabilities={"archive": 3})
    await provide_all(net)
    origin = next(s for s in net.services if s.node_id not in net.holders["archive"])
    before = origin.statistics()
    async with origin.find_providers("archive") as found:
        _ = [signed async for signed in found]
    after = origin.statistics()
    assert found.report is not None
    assert after.lookups == before.lookups + 1
    assert after.lookups_succeeded == before.lookups_succeeded + 1
    assert after.lookup_messages - before.lookup_messages == found.report.messages
    assert sum(after.lookup_latency) == after.lookups
    assert after.records_received > before.records_received
    held = sum(s.statistics().provider_records for s in net.services)
    assert held == 3 * 17  # 16 holders each, plus the provider's own copy
