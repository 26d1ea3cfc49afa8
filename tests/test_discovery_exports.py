"""discovery's public surface: explicit, sorted, complete; its modules stay pure cores, except
the service drivers named in ``discovery.DRIVER_MODULES``, which may use anyio (never a clock or
a higher layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import discovery

ROOT = Path(discovery.__file__).parent
FORBIDDEN = {"anyio", "asyncio", "trio", "socket", "sqlite3", "time", "routing", "overlay.node"}
DRIVER_ALLOWED = {"anyio"}


def test_all_is_sorted_and_complete() -> None:
    names = discovery.__all__
    assert names == sorted(names)  # the order tests/test_package_layout.py checks everywhere
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(discovery, name), name
    public = {n for n in vars(discovery) if not n.startswith("_")}
    assert public == set(names)


def test_generated_protobuf_classes_do_not_leak() -> None:
    for name in discovery.__all__:
        value = getattr(discovery, name)
        assert not getattr(value, "__module__", "").startswith("proto"), name


def test_pure_cores_import_no_io_and_no_higher_layer() -> None:
    drivers = {name.rsplit(".", 1)[1] for name in discovery.DRIVER_MODULES}
    for name in drivers:
        assert (ROOT / f"{name}.py").exists(), name
    for path in sorted(ROOT.glob("*.py")):
        forbidden = FORBIDDEN - DRIVER_ALLOWED if path.stem in drivers else FORBIDDEN
        if path.stem == "__init__":  # re-exports the drivers; imports nothing itself
            forbidden = FORBIDDEN - DRIVER_ALLOWED
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top not in forbidden and module not in forbidden, (path.name, module)


def test_the_guide_states_the_numbers_the_code_uses() -> None:
    guide = (ROOT.parent / "docs" / "discovery.md").read_text()
    assert discovery.RECORD_DOMAIN.decode() in guide
    assert f"{discovery.MAX_RECORD_BYTES} bytes" in guide
    assert f"| addresses | {discovery.MAX_ADDRESSES} |" in guide
    assert f"| capabilities | {discovery.MAX_CAPABILITIES} |" in guide
    assert f"{discovery.MAX_ATTRIBUTES} per capability" in guide
    assert f"now + {discovery.MAX_CLOCK_SKEW} s" in guide
    assert f"<= {discovery.MAX_LIFETIME // 86400} days" in guide
    for reason in discovery.RecordRejection:
        assert f"`{reason.name}`" in guide, reason
    for outcome in discovery.OfferOutcome:
        assert f"`{outcome.name}`" in guide, outcome


def test_the_guide_states_the_service_numbers() -> None:
    guide = (ROOT.parent / "docs" / "discovery.md").read_text()
    services = guide[guide.index("## Services"):]
    budget = discovery.Budget()
    config = discovery.DiscoveryConfig("net")
    dht = discovery.DhtConfig("net")
    assert f"`max_messages` ({budget.max_messages}:" in services
    assert f"`max_time` ({budget.max_time:g} s," in services
    assert f"`pex_fanout` ({config.pex_fanout})" in services
    assert f"`pex_max_records` ({config.pex_max_records})" in services
    assert f"`pex_timeout` ({config.pex_timeout:g} s)" in services
    assert f"`cooldown`\n({config.confirmations.cooldown / 60:g} min)" in services
    assert f"`republish_interval` ({dht.republish_interval / 60:g} min" in services
    assert f"`republish_margin` ({dht.republish_margin / 60:g} min)" in services
    assert f"`distrust_for` ({dht.distrust_for / 3600:g} h)" in services
    assert f"`refresh_per_pass` = {dht.refresh_per_pass}" in services
    for source in discovery.CandidateSource:
        assert source.name.replace("_", " ").lower() in services.lower(), source
