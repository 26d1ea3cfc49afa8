"""The testnet manifest: flags and TOML build the same nodes, capabilities spread by the seed,
and every bad manifest is refused with an error naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overlay.errors import ConfigError
from overlay.testnet import (
    Mode,
    PerturbationKind,
    load_manifest,
    manifest_from_flags,
    parse_manifest,
)

DEFAULT = Path(__file__).resolve().parent.parent / "testnets" / "default.toml"


def test_flags_spread_capabilities_over_the_non_seed_nodes() -> None:
    m = manifest_from_flags(nodes=32, caps=["blocksync=30%", "archive=3"],
                            targets=["archive:min_peers=2"], seeds=3)
    assert m.seeds == (0, 1, 2)
    assert len(m.providers("archive")) == 3
    assert len(m.providers("blocksync")) == round(0.3 * 29)
    assert not set(m.providers("archive")) & set(m.seeds)
    for spec in m.nodes:
        target = spec.targets.get("archive")
        assert (target is None) == spec.seed
        if target is not None:
            assert target.min_peers == 2
    # The same seed spreads them the same way; another seed differently.
    again = manifest_from_flags(nodes=32, caps=["blocksync=30%", "archive=3"], seeds=3)
    other = manifest_from_flags(nodes=32, caps=["blocksync=30%", "archive=3"], seeds=3, seed=2)
    assert again.providers("archive") == m.providers("archive")
    assert other.providers("blocksync") != m.providers("blocksync")


def test_the_default_manifest_loads_with_every_perturbation_kind_but_pause() -> None:
    m = load_manifest(DEFAULT)
    assert m.mode is Mode.TCP and len(m.nodes) == 16
    kinds = {p.kind for p in m.perturbations}
    assert kinds == set(PerturbationKind) - {PerturbationKind.PAUSE, PerturbationKind.LOSS}
    partition = next(p for p in m.perturbations if p.kind is PerturbationKind.PARTITION)
    assert partition.groups == (tuple(range(8)),)
    leave = next(p for p in m.perturbations if p.kind is PerturbationKind.PROVIDERS_LEAVE)
    assert leave.nodes == m.providers("archive")
    assert load_manifest(DEFAULT, mode=Mode.INPROC).mode is Mode.INPROC


def test_groups_take_the_nodes_after_the_seeds_with_their_own_targets() -> None:
    m = parse_manifest({
        "testnet": {"nodes": 6, "seeds": 1},
        "targets": {"archive": {"min_peers": 1}},
        "groups": [{"name": "archive", "count": 2, "capabilities": ["archive"],
                    "targets": {"blocksync": {"min_fraction": 0.5}}}],
        "capabilities": {"blocksync": 2},
        "perturbations": [{"at": 1, "kind": "kill", "group": "archive", "duration": 2}],
    })
    assert [n.group for n in m.nodes] == ["seed", "archive", "archive", "default", "default",
                                          "default"]
    assert m.providers("archive") == (1, 2)
    assert m.nodes[1].targets.get("blocksync") is not None
    assert m.nodes[1].targets.get("archive") is None
    assert m.nodes[3].targets.get("archive") is not None
    assert m.perturbations[0].nodes == (1, 2)


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"testnet": {"nodes": 1}}, "testnet.nodes", "between 2 and 2000"),
    ({"testnet": {"mode": "docker"}}, "testnet.mode", "inproc, tcp, procs"),
    ({"testnet": {"duration": -3}}, "testnet.duration", "positive"),
    ({"testnet": {"nodes": 4, "seeds": 4}}, "testnet.seeds", "leave no other node"),
    ({"testnet": {"bogus": 1}}, "testnet.bogus", "unknown field"),
    ({"capabilities": {"Archive!": 2}}, "capabilities.Archive!", "not a capability name"),
    ({"capabilities": {"archive": "150%"}}, "capabilities.archive", "within 0..100"),
    ({"capabilities": {"archive": 99}}, "capabilities.archive", "non-seed nodes exist"),
    ({"targets": {"archive": {"min_peers": "two"}}}, "targets.archive.min_peers",
     "must be an integer"),
    ({"groups": [{"count": 0}]}, "groups[0].count", ">= 1"),
    ({"groups": [{"count": 1, "colour": "red"}]}, "groups[0].colour", "unknown field"),
    ({"groups": [{"count": 1, "targets": {"archive": {"min_peers": -1}}}]},
     "groups[0].targets.archive.min_peers", "at least 0"),
    ({"perturbations": [{"kind": "kill", "nodes": ["n1"]}]}, "perturbations[0].at", "missing"),
    ({"perturbations": [{"at": 1, "kind": "explode"}]}, "perturbations[0].kind", "one of"),
    ({"perturbations": [{"at": 1, "kind": "kill", "nodes": ["n99"]}]},
     "perturbations[0].nodes[0]", "names no node"),
    ({"perturbations": [{"at": 1, "kind": "pause", "nodes": ["n1"]}]},
     "perturbations[0].kind", "needs --mode procs"),
    ({"perturbations": [{"at": 1, "kind": "partition", "fraction": 0.5}]},
     "perturbations[0].duration", "needs a duration"),
    ({"perturbations": [{"at": 99, "kind": "kill", "nodes": ["n1"]}]},
     "perturbations[0].at", "not within the run"),
    ({"perturbations": [{"at": 1, "kind": "loss"}]}, "perturbations[0].loss", "missing"),
    ({"perturbations": [{"at": 1, "kind": "providers_leave", "capability": "archive"}]},
     "perturbations[0].capability", "no node serves"),
    ({"workload": {"rate": -1}}, "workload.rate", "a number in"),
    ({"workload": {"capabilities": ["archive"]}}, "workload.capabilities[0]", "no node serves"),
    ({"criteria": {"request_success": 2}}, "criteria.request_success", "a number in"),
    ({"surprise": {}}, "surprise", "unknown field"),
]


@pytest.mark.parametrize(("data", "key", "message"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_manifest_is_refused_naming_the_field(data: dict[str, Any], key: str,
                                                     message: str) -> None:
    data.setdefault("testnet", {}).setdefault("duration", 10)
    with pytest.raises(ConfigError) as info:
        parse_manifest(data)
    assert info.value.key == key
    assert message in str(info.value)


def test_bad_flags_name_the_flag_or_field() -> None:
    with pytest.raises(ConfigError) as info:
        manifest_from_flags(nodes=8, caps=["archive"])
    assert info.value.key == "--cap"
    with pytest.raises(ConfigError) as info:
        manifest_from_flags(nodes=8, targets=["archive=2"])
    assert info.value.key == "--target"
    with pytest.raises(ConfigError) as info:
        manifest_from_flags(nodes=8, targets=["archive:min_peers=x"])
    assert info.value.key == "targets.archive.min_peers"


def test_an_unreadable_manifest_file_names_the_flag(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text("[testnet\n")
    with pytest.raises(ConfigError) as info:
        load_manifest(bad)
    assert info.value.key == "--manifest" and "not valid TOML" in str(info.value)
