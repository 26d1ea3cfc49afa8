"""Scores: event deltas, decay towards neutral, disconnect and ban thresholds, IP bans."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from overlay.identity import NodeId
from overlay.peers import (
    SCORE_DELTAS,
    Action,
    DisconnectPeer,
    PeerManager,
    PeerManagerConfig,
    PeerState,
    Persist,
    ScoreEvent,
)
from overlay.peers._scoring import apply_event, decayed

T0 = 1_700_000_000.0
SELF = NodeId("ff" * 20)
HALF = 1800.0


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def make(config: PeerManagerConfig | None = None) -> PeerManager:
    return PeerManager(
        config or PeerManagerConfig(), SELF, now=T0, rng=random.Random(1), secret=b"s" * 32
    )


def disconnects(actions: Sequence[Action]) -> list[DisconnectPeer]:
    return [a for a in actions if isinstance(a, DisconnectPeer)]


def score(m: PeerManager, node: NodeId, now: float) -> float:
    snap = m.peer(node, now)
    assert snap is not None
    return snap.score


def test_decay_halves_per_half_life_and_never_grows() -> None:
    assert decayed(-80.0, 0.0, HALF, HALF) == pytest.approx(-40.0)
    assert decayed(-80.0, 0.0, 2 * HALF, HALF) == pytest.approx(-20.0)
    assert decayed(20.0, 0.0, HALF, HALF) == pytest.approx(10.0)
    assert decayed(-80.0, 100.0, 50.0, HALF) == -80.0  # clock went backwards: no change
    assert decayed(-80.0, 0.0, 100 * HALF, HALF) == 0.0  # snaps to neutral


def test_apply_event_clamps() -> None:
    kw = {"half_life": HALF, "min_score": -200.0, "max_score": 25.0}
    value, delta = apply_event(25.0, 0.0, 0.0, ScoreEvent.USEFUL_RESPONSE, **kw)
    assert value == 25.0 and delta == 1.0
    value, _ = apply_event(-190.0, 0.0, 0.0, ScoreEvent.PROTOCOL_VIOLATION, **kw)
    assert value == -200.0
    assert set(SCORE_DELTAS) == set(ScoreEvent)
    assert SCORE_DELTAS[ScoreEvent.USEFUL_RESPONSE] > 0
    assert all(SCORE_DELTAS[e] < 0 for e in ScoreEvent if e is not ScoreEvent.USEFUL_RESPONSE)


def test_good_behaviour_raises_the_score_up_to_the_cap() -> None:
    m = make()
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    for k in range(40):
        m.report(nid(1), ScoreEvent.USEFUL_RESPONSE, T0 + k * 0.01)
    assert score(m, nid(1), T0 + 1) == pytest.approx(25.0, abs=0.1)
    snap = m.peer(nid(1), T0 + 1)
    assert snap is not None and snap.last_useful == pytest.approx(T0 + 0.39)
    assert len(snap.recent_events) == 20  # bounded ring
    assert snap.recent_events[-1].event is ScoreEvent.USEFUL_RESPONSE
    # ...and decays towards neutral without it.
    assert score(m, nid(1), T0 + 0.39 + HALF) == pytest.approx(12.5, abs=0.1)


def test_disconnect_threshold() -> None:
    m = make()
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    for _ in range(9):
        m.report(nid(1), ScoreEvent.TIMEOUT, T0)
    assert disconnects(m.poll(T0)) == []  # -45
    m.report(nid(1), ScoreEvent.TIMEOUT, T0)  # -50
    out = disconnects(m.poll(T0))
    assert [(d.node_id, d.reason, d.evict) for d in out] == [(nid(1), "low_score", False)]
    m.report(nid(1), ScoreEvent.TIMEOUT, T0)
    assert disconnects(m.poll(T0)) == []  # asked once only
    assert m.statistics().score_disconnects == 1
    snap = m.peer(nid(1), T0)
    assert snap is not None and snap.ban_until is None


def test_ban_threshold_bans_with_expiry_and_persists_at_once() -> None:
    m = make(PeerManagerConfig(ban_duration=3600.0))
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    m.poll(T0)
    m.report(nid(1), ScoreEvent.PROTOCOL_VIOLATION, T0 + 0.1)
    actions = m.poll(T0 + 0.1)
    assert [(d.node_id, d.reason) for d in disconnects(actions)] == [(nid(1), "banned")]
    persisted = [a for a in actions if isinstance(a, Persist)]
    assert len(persisted) == 1  # urgent, despite the 1 s persist interval
    rows = {p.node_id: p for p in persisted[0].changes.peers_upsert}
    assert rows[nid(1)].ban_until == pytest.approx(T0 + 0.1 + 3600.0)
    snap = m.peer(nid(1), T0 + 1)
    assert snap is not None and snap.state is PeerState.BANNED
    assert snap.ban_reason == "score:protocol_violation"
    m.disconnected(nid(1), T0 + 1, reason="banned")
    assert m.accept_inbound(nid(1), "10.0.0.1", T0 + 3600).reason == "banned"
    assert m.accept_inbound(nid(1), "10.0.0.1", T0 + 3601).accepted
    assert m.statistics().bans == 1


@pytest.mark.parametrize("gap", [0.0, 1.0, 0.05 * HALF, 0.0589 * HALF, 0.06 * HALF, HALF])
def test_a_useful_response_at_the_cap_scores_as_the_arithmetic_says(gap: float) -> None:
    # A busy good peer sits at the cap and earns one reward per answered request: the manager
    # keeps it there without the full update, and must agree with apply_event every time.
    m = make()
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    for _ in range(25):
        m.report(nid(1), ScoreEvent.USEFUL_RESPONSE, T0)
    assert score(m, nid(1), T0) == 25.0
    m.report(nid(1), ScoreEvent.USEFUL_RESPONSE, T0 + gap)
    expected, _ = apply_event(25.0, T0, T0 + gap, ScoreEvent.USEFUL_RESPONSE,
                              half_life=HALF, min_score=-200.0, max_score=25.0)
    assert score(m, nid(1), T0 + gap) == pytest.approx(expected)
    assert score(m, nid(1), T0 + gap + HALF) == pytest.approx(expected / 2)
    snap = m.peer(nid(1), T0 + gap)
    assert snap is not None and snap.last_useful == T0 + gap


def test_high_score_absorbs_one_violation_as_a_disconnect_only() -> None:
    m = make()
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    for _ in range(25):
        m.report(nid(1), ScoreEvent.USEFUL_RESPONSE, T0)
    m.report(nid(1), ScoreEvent.PROTOCOL_VIOLATION, T0)
    assert [d.reason for d in disconnects(m.poll(T0))] == ["low_score"]
    snap = m.peer(nid(1), T0)
    assert snap is not None and snap.ban_until is None and snap.score == pytest.approx(-75.0)


def test_repeated_bans_from_one_ip_ban_the_ip() -> None:
    m = make(PeerManagerConfig(ip_ban_threshold=3))
    for i in range(1, 4):
        assert m.accept_inbound(nid(i), "203.0.113.5", T0 + i).accepted or i > 3
        m.report(nid(i), ScoreEvent.PROTOCOL_VIOLATION, T0 + i)
        m.disconnected(nid(i), T0 + i, reason="banned")
    assert m.check_inbound("203.0.113.5", T0 + 10).reason == "ip_banned"
    assert m.check_inbound("203.0.113.6", T0 + 10).accepted
    stats = m.statistics()
    assert stats.bans == 3 and stats.ip_bans == 1 and stats.banned_ips == 1
    # Expiry: the IP ban lasts ban_duration.
    assert m.check_inbound("203.0.113.5", T0 + 3 + 86400 + 1).accepted


def test_strikes_outside_the_window_do_not_add_up() -> None:
    m = make(PeerManagerConfig(ip_ban_threshold=2, ip_ban_window=100.0))
    m.accept_inbound(nid(1), "203.0.113.5", T0)
    m.report(nid(1), ScoreEvent.PROTOCOL_VIOLATION, T0)
    m.disconnected(nid(1), T0, reason="banned")
    m.accept_inbound(nid(2), "203.0.113.5", T0 + 200)
    m.report(nid(2), ScoreEvent.PROTOCOL_VIOLATION, T0 + 200)
    assert m.check_inbound("203.0.113.5", T0 + 201).reason != "ip_banned"


def test_persistent_peers_are_not_banned_automatically() -> None:
    persistent = f"{nid(1)}@10.0.0.1:7000"
    m = make(PeerManagerConfig(persistent_peers=(persistent,)))
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    m.report(nid(1), ScoreEvent.PROTOCOL_VIOLATION, T0)
    m.report(nid(1), ScoreEvent.PROTOCOL_VIOLATION, T0)
    assert [d.reason for d in disconnects(m.poll(T0))] == ["low_score"]
    snap = m.peer(nid(1), T0)
    assert snap is not None and snap.ban_until is None


def test_reports_for_unknown_peers_are_ignored() -> None:
    m = make()
    m.report(nid(5), ScoreEvent.PROTOCOL_VIOLATION, T0)
    m.record_latency(nid(5), 0.1)
    m.mark_useful(nid(5), T0)
    assert m.statistics().known_peers == 0


def test_latency_is_smoothed_and_validated() -> None:
    from overlay.errors import LocalProtocolError

    m = make()
    m.accept_inbound(nid(1), "10.0.0.1", T0)
    m.record_latency(nid(1), 0.100)
    m.record_latency(nid(1), 0.200)
    snap = m.peer(nid(1), T0)
    assert snap is not None and snap.latency == pytest.approx(0.125)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(LocalProtocolError):
            m.record_latency(nid(1), bad)
