"""The operator's guide and the testnet guide stay in sync with the code.

Each test takes the truth from the code (the config dataclasses walked as ``_configio`` walks
them, the argparse parser, the metrics registry, the admin routes, the score deltas) and fails
when ``docs/operator-guide.md`` or ``docs/testnet-guide.md`` misses or misstates something.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from overlay.cli import _main as cli
from overlay.node._config import NodeConfig, render_config
from overlay.operator._admin import AdminApp
from overlay.operator._control import Control
from overlay.operator._metrics import ChannelSnapshot, MetricsSnapshot, NodeMetrics
from overlay.peers import SCORE_DELTAS, PeerManagerStatistics, PeerSnapshot

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDE = DOCS / "operator-guide.md"
TESTNET = DOCS / "testnet-guide.md"

_HEADING = re.compile(r"^(#{1,4}) ")
_CONFIG_HEADING = re.compile(r"^### `\[(\w+(?:\.\w+)*)\]`\s*$")
_CONFIG_ROW = re.compile(r"^\| `(\w+)` \| [^|]+ \| `([^`]*)` \|")


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def testnet_guide() -> str:
    return TESTNET.read_text(encoding="utf-8")


# -- helpers ---------------------------------------------------------------------------------


def _table(hint: type[Any]) -> bool:
    """A config type written as one free-form table key (``[routing] targets``)."""
    return hasattr(hint, "from_toml") and hasattr(hint, "to_toml")


def config_sections(cls: type[Any] = NodeConfig, section: str = "") -> dict[str, list[str]]:
    """Keys per TOML table ("" = top level), walking nested dataclasses like ``from_mapping``."""
    hints = typing.get_type_hints(cls)
    out: dict[str, list[str]] = {section: []}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type) and not _table(hint):
            out.update(config_sections(hint, f"{section}.{f.name}" if section else f.name))
        else:
            out[section].append(f.name)
    return out


def template_defaults() -> dict[str, dict[str, str]]:
    """The default of every key as ``overlay init`` writes it (``# key = value``)."""
    defaults: dict[str, dict[str, str]] = {"": {}}
    section = ""
    for line in render_config().splitlines():
        header = re.match(r"^\[([\w.]+)\]$", line)
        if header:
            section = header.group(1)
            defaults.setdefault(section, {})
            continue
        entry = re.match(r"^# (\w+) = (.*)$", line)
        if entry:
            defaults[section][entry.group(1)] = entry.group(2)
    return defaults


def documented_config(text: str) -> dict[str, dict[str, str]]:
    """``{section: {key: default}}`` from the tables under the config headings of the guide."""
    tables: dict[str, dict[str, str]] = {}
    section: str | None = None
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if level <= 3:
                match = _CONFIG_HEADING.match(line)
                section = match.group(1) if match else ("" if line == "### Top level" else None)
                if section is not None:
                    tables.setdefault(section, {})
            continue
        row = _CONFIG_ROW.match(line)
        if row and section is not None:
            key, default = row.groups()
            assert key not in tables[section], f"[{section}] {key} documented twice"
            tables[section][key] = default
    return tables


def leaf_commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``("dial", subparser)``, ``("seeds add", subparser)``... for every runnable command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                nested = list(leaf_commands(sub, path))
                yield from nested or [(path, sub)]


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]


def command_sections(text: str) -> dict[str, str]:
    """Text of the level-3 sections whose heading names `overlay COMMAND`, by command."""
    sections: dict[str, str] = {}
    current: list[str] = []
    body: list[str] = []

    def flush() -> None:
        for command in current:
            sections[command] = sections.get(command, "") + "\n".join(body)

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading and len(heading.group(1)) <= 3:
            flush()
            current = re.findall(r"`overlay ([a-z]+(?: [a-z]+)?)", line) if line.startswith(
                "### ") else []
            body = [line]
        else:
            body.append(line)
    flush()
    return sections


def exported_metrics() -> dict[str, str]:
    """Every metric family a node exports, with its Prometheus type, from a real scrape."""
    metrics = NodeMetrics(
        "overlay", snapshot=lambda: MetricsSnapshot(channels={"echo": ChannelSnapshot()})
    )
    metrics.set_node_info(node_id="0" * 40, network="docs", version="0")
    types: dict[str, str] = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if not name.endswith("_created"):  # prometheus_client's creation-time series
                types[name] = kind
    return types


# -- tests -----------------------------------------------------------------------------------


def test_every_config_key_is_documented_with_its_default(guide: str) -> None:
    expected = config_sections()
    defaults = template_defaults()
    documented = documented_config(guide)
    assert sorted(documented) == sorted(expected), "one config table per TOML section"
    for section, keys in expected.items():
        table = documented[section]
        name = f"[{section}]" if section else "top level"
        assert sorted(table) == sorted(keys), f"keys of {name} differ from the dataclass"
        for key in keys:
            assert table[key] == defaults[section][key], (
                f"{name} {key}: guide says {table[key]}, config.toml has {defaults[section][key]}"
            )
    assert sum(len(keys) for keys in expected.values()) > 60


def test_every_cli_command_and_option_is_documented(guide: str) -> None:
    sections = command_sections(guide)
    commands = dict(leaf_commands(cli.build_parser()))
    assert {"init", "id", "start", "testnet", "status", "peers", "dial", "disconnect", "ban",
            "unban", "seeds add"} <= set(commands)
    for command, parser in commands.items():
        assert command in sections, f"no section headed `overlay {command}` in the guide"
        for option in option_strings(parser):
            assert option in sections[command], f"`overlay {command}` section misses {option}"


def test_testnet_guide_covers_every_testnet_flag(testnet_guide: str) -> None:
    commands = dict(leaf_commands(cli.build_parser()))
    assert "make testnet" in testnet_guide
    assert "MemoryNetwork" in testnet_guide
    for option in option_strings(commands["testnet"]):
        assert f"`{option}" in testnet_guide, f"testnet guide misses {option}"


def test_every_metric_is_documented_with_its_type(guide: str) -> None:
    exported = exported_metrics()
    assert len(exported) > 25
    documented = set(re.findall(r"^\| `(overlay_\w+)` \|", guide, flags=re.MULTILINE))
    assert documented == set(exported), "metrics table differs from what a node exports"
    for name, kind in exported.items():
        assert re.search(rf"^\| `{name}` \| {kind}\b", guide, flags=re.MULTILINE), (
            f"{name} should be documented as a {kind}"
        )


def test_every_admin_route_is_documented(guide: str) -> None:
    app = AdminApp(cast(Control, object()), "token")
    routes = set(app.routes())
    documented = set(re.findall(r"^\| `((?:GET|POST) /[\w/]+)` \|", guide, flags=re.MULTILINE))
    assert documented == routes


def test_score_deltas_match(guide: str) -> None:
    for event, delta in SCORE_DELTAS.items():
        row = re.search(rf"^\| `{event.value}` \| ([+−-]?\d+(?:\.\d+)?) \|", guide, re.MULTILINE)
        assert row is not None, f"score event {event.value} missing from the scoring table"
        assert float(row.group(1).replace("−", "-")) == delta, event.value


def test_peer_and_status_fields_are_documented(guide: str) -> None:
    names = [f.name for f in dataclasses.fields(PeerSnapshot) if f.name != "node_id"]
    names += [f.name for f in dataclasses.fields(PeerManagerStatistics)]
    for name in names:
        assert f"`{name}`" in guide, f"field {name} of the admin JSON is not described"


def test_generated_config_points_at_the_real_guide() -> None:
    header = render_config().split("\n\n", 1)[0]
    linked = re.findall(r"docs/[\w.-]+\.md", header)
    assert linked == ["docs/operator-guide.md"]
    assert all((DOCS.parent / path).is_file() for path in linked)


def test_config_meanings_are_the_field_docstrings(guide: str) -> None:
    """The "meaning" column of every configuration table is the field's docstring (what
    ``overlay init`` writes above the key), so the two cannot tell different stories."""
    from overlay.node._configio import field_docs

    def walk(cls: type[Any], section: str = "") -> Iterator[tuple[str, str, str]]:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint) and isinstance(hint, type) and not _table(hint):
                yield from walk(hint, f"{section}.{f.name}" if section else f.name)
            else:
                yield section, f.name, " ".join(docs[f.name].replace("``", "`").split())

    meanings: dict[tuple[str, str], str] = {}
    section: str | None = None
    for line in guide.splitlines():
        heading = _HEADING.match(line)
        if heading and len(heading.group(1)) <= 3:
            match = _CONFIG_HEADING.match(line)
            section = match.group(1) if match else ("" if line == "### Top level" else None)
            continue
        row = re.match(r"^\| `(\w+)` \| [^|]+ \| `[^`]*` \| .*? \| (.*) \|$", line)
        if row and section is not None:
            meanings[(section, row.group(1))] = row.group(2)
    for section_name, key, doc in walk(NodeConfig):
        assert meanings[(section_name, key)] == doc, f"[{section_name}] {key}"


def test_admin_error_kinds_in_the_guide_are_public(guide: str) -> None:
    kinds = set(re.findall(r'"kind": "(\w+)"', guide))
    assert {"BadRequestError", "PeerBannedError", "UnknownPeerError", "HttpError"} <= kinds
    assert not [kind for kind in kinds if kind.startswith("_")]
