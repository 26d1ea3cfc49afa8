"""Capability targets: validation against the connection limits and parsing from TOML and CLI."""

from __future__ import annotations

import pytest

import routing
from overlay.errors import ConfigError
from overlay.peers import PeerManagerConfig
from routing import (
    CapabilityTarget,
    ConnectionLimits,
    TargetSet,
    parse_target_assignments,
    parse_targets,
)

LIMITS = ConnectionLimits(max_connections=30, max_outbound=10, min_outbound=3)


def test_the_package_exports_a_sorted_all() -> None:
    assert list(routing.__all__) == sorted(routing.__all__)
    for name in routing.__all__:
        assert getattr(routing, name) is not None


def test_required_combines_floor_fraction_and_ceiling() -> None:
    t = CapabilityTarget("blocksync", min_peers=2, min_fraction=0.3, max_peers=8)
    assert t.required(0) == 2
    assert t.required(10) == 3  # 0.3 * 10 is 3.0000000000000004 in floats: still 3
    assert t.required(11) == 4
    assert t.required(100) == 8


@pytest.mark.parametrize(
    ("kwargs", "key", "words"),
    [
        ({"min_peers": -1}, "targets.x.min_peers", "at least 0"),
        ({"min_peers": True}, "targets.x.min_peers", "integer"),
        ({"min_fraction": 1.5}, "targets.x.min_fraction", "[0, 1]"),
        ({"min_fraction": float("nan")}, "targets.x.min_fraction", "[0, 1]"),
        ({"min_peers": 3, "max_peers": 2}, "targets.x.max_peers", "min_peers 3 exceeds"),
        ({"max_peers": 0}, "targets.x.max_peers", "at least 1"),
        ({"min_peers": 1, "priority": 101}, "targets.x.priority", "at most 100"),
        ({}, "targets.x", "set min_peers, min_fraction or max_peers"),
    ],
)
def test_a_bad_target_names_its_field(kwargs: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        CapabilityTarget("x", **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_a_bad_capability_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="invalid capability name"):
        CapabilityTarget("Block Sync", min_peers=1)


@pytest.mark.parametrize(
    ("targets", "key", "message"),
    [
        (
            [CapabilityTarget("archive", min_peers=40)],
            "targets.archive.min_peers",
            "archive: min_peers 40 exceeds max_connections 30",
        ),
        (
            [CapabilityTarget("a", min_peers=20), CapabilityTarget("b", min_peers=11)],
            "targets",
            "min_peers at priority 0 sum to 31 \\(a 20 \\+ b 11\\), beyond max_connections 30",
        ),
    ],
)
def test_impossible_targets_are_refused_in_words(
    targets: list[CapabilityTarget], key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TargetSet(tuple(targets)).validate(LIMITS)
    assert info.value.key == key


def test_combinations_that_need_overlap_are_warnings() -> None:
    targets = TargetSet.of(
        CapabilityTarget("a", min_fraction=0.6, min_peers=20, priority=1),
        CapabilityTarget("b", min_fraction=0.5, min_peers=15),
        CapabilityTarget("c", min_fraction=0.5, max_peers=5),
    )
    warnings = targets.validate(LIMITS)
    assert any("min_fraction values sum to 1.60" in w for w in warnings)
    assert any("min_peers of all priorities sum to 35" in w for w in warnings)
    assert any("c: min_fraction 0.5 of max_connections 30 asks for 15" in w for w in warnings)
    assert TargetSet.of(CapabilityTarget("a", min_peers=2)).validate(LIMITS) == ()


def test_limits_come_from_the_peer_manager() -> None:
    limits = ConnectionLimits.from_peer_config(
        PeerManagerConfig(max_connections=40, max_outbound=10)
    )
    assert limits == ConnectionLimits(max_connections=40, max_outbound=10, min_outbound=3)
    with pytest.raises(ConfigError, match="min_outbound"):
        ConnectionLimits(max_connections=10, max_outbound=4, min_outbound=5)


def test_duplicate_capabilities_are_refused_and_the_set_is_sorted() -> None:
    with pytest.raises(ConfigError, match="more than one target for a"):
        TargetSet.of(CapabilityTarget("a", min_peers=1), CapabilityTarget("a", min_peers=2))
    ts = TargetSet.of(CapabilityTarget("b", min_peers=1), CapabilityTarget("a", min_peers=2))
    assert [t.capability for t in ts] == ["a", "b"]
    assert ts.without("a").get("a") is None
    assert ts.with_target(CapabilityTarget("a", min_peers=5)).get("a") == CapabilityTarget(
        "a", min_peers=5
    )


def test_parse_targets_from_a_toml_table_round_trips() -> None:
    table = {"blocksync": {"min_fraction": 0.3}, "archive": {"min_peers": 2, "priority": 1}}
    ts = parse_targets(table)
    assert ts.get("blocksync") == CapabilityTarget("blocksync", min_fraction=0.3)
    assert ts.get("archive") == CapabilityTarget("archive", min_peers=2, priority=1)
    assert parse_targets(ts.to_mapping()) == ts


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"archive": {"min_peer": 2}}, "targets.archive.min_peer"),
        ({"archive": {"min_peers": "2"}}, "targets.archive.min_peers"),
        ({"archive": {"min_fraction": True}}, "targets.archive.min_fraction"),
        ({"archive": 2}, "targets.archive"),
        ({"BAD": {"min_peers": 1}}, "targets"),
    ],
)
def test_parse_targets_errors_name_the_field(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_targets(table)
    assert info.value.key == key


def test_cli_assignments_build_and_update_a_target() -> None:
    t = parse_target_assignments("archive", ["min_peers=2", "priority=1"])
    assert t == CapabilityTarget("archive", min_peers=2, priority=1)
    t2 = parse_target_assignments("archive", ["max_peers=4", "min_fraction=10%"], base=t)
    assert t2 == CapabilityTarget("archive", 2, 0.1, 4, 1)
    assert parse_target_assignments("archive", ["max_peers=none"], base=t2).max_peers is None


@pytest.mark.parametrize(
    ("words", "key"),
    [
        (["min_peers"], "targets.archive"),
        (["min_peers=two"], "targets.archive.min_peers"),
        (["colour=red"], "targets.archive.colour"),
        (["min_peers=1", "min_peers=2"], "targets.archive.min_peers"),
        (["min_fraction=lots"], "targets.archive.min_fraction"),
        ([], "targets.archive"),
    ],
)
def test_cli_assignment_errors_name_the_field(words: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target_assignments("archive", words)
    assert info.value.key == key
