"""Per-capability peer targets and the connection limits they must fit in.

A :class:`CapabilityTarget` says how many connected peers with one capability a node wants:
``min_peers`` (an absolute floor), ``min_fraction`` (a share of all connected peers), an optional
``max_peers`` ceiling and a ``priority`` for when targets compete for connection slots (higher
wins). The number a target asks for at a given moment is::

    required(n) = min(max(min_peers, ceil(min_fraction * n)), max_peers)

where ``n`` is the number of connected peers. A :class:`TargetSet` is all targets of a node;
:meth:`TargetSet.validate` checks it against :class:`ConnectionLimits` (taken from the peer
manager's configuration) and

* refuses what can never be met, whatever peers exist: a ``min_peers`` above
  ``max_connections``, or the ``min_peers`` of one priority summing beyond ``max_connections``
  (the engine cannot count on the same peers carrying several of them);
* warns about what can only be met if capabilities overlap on the same peers: fractions summing
  above 1, minimums of all priorities summing beyond ``max_connections`` (lower priorities lose),
  and a ``min_fraction`` that asks for more than ``max_peers`` at full occupancy (the ceiling
  wins).

Targets come from a TOML table (:func:`parse_targets`) or from the CLI's ``key=value`` words
(:func:`parse_target_assignments`). Errors are :class:`~overlay.errors.ConfigError` naming the
field, e.g. ``targets.archive.min_peers``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from discovery._keys import CAPABILITY_NAME_PATTERN, valid_capability_name
from overlay.errors import ConfigError
from overlay.peers._config import PeerManagerConfig

__all__ = [
    "CapabilityTarget",
    "ConnectionLimits",
    "TargetSet",
    "parse_target_assignments",
    "parse_targets",
]

"""Capability names (shared with discovery's records)."""

_FIELDS = ("min_peers", "min_fraction", "max_peers", "priority")
_MAX_PRIORITY = 100
_EPSILON = 1e-9  # 0.3 * 10 is 3.0000000000000004 in binary floating point


def _check_int(key: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be at most {maximum}, got {value}")


@dataclass(frozen=True, slots=True)
class CapabilityTarget:
    """How many connected peers with ``capability`` the node wants."""

    capability: str
    """Capability name (``^[a-z][a-z0-9_.-]{0,31}$``)."""
    min_peers: int = 0
    """Keep at least this many connected peers with the capability."""
    min_fraction: float = 0.0
    """Keep at least this share (0..1) of all connected peers with the capability (rounded up)."""
    max_peers: int | None = None
    """Never keep more than this many peers with the capability (None: no ceiling). Peers above
    it are pruned, unless that would break another target."""
    priority: int = 0
    """0..100, higher wins: deficits of higher priorities are dialed first and may take
    connection slots from peers no target needs."""

    def __post_init__(self) -> None:
        prefix = f"targets.{self.capability}"
        if not valid_capability_name(self.capability):
            raise ConfigError(
                "targets",
                f"invalid capability name {self.capability!r}: "
                f"expected {CAPABILITY_NAME_PATTERN}",
            )
        _check_int(f"{prefix}.min_peers", self.min_peers, 0)
        _check_int(f"{prefix}.priority", self.priority, 0, _MAX_PRIORITY)
        fraction = self.min_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ConfigError(f"{prefix}.min_fraction", f"must be a number, got {fraction!r}")
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ConfigError(f"{prefix}.min_fraction", f"must be within [0, 1], got {fraction}")
        if self.max_peers is not None:
            _check_int(f"{prefix}.max_peers", self.max_peers, 1)
            if self.min_peers > self.max_peers:
                raise ConfigError(
                    f"{prefix}.max_peers",
                    f"{self.capability}: min_peers {self.min_peers} exceeds "
                    f"max_peers {self.max_peers}",
                )
        if self.min_peers == 0 and fraction == 0 and self.max_peers is None:
            raise ConfigError(
                prefix, f"{self.capability}: set min_peers, min_fraction or max_peers"
            )

    @property
    def wanted(self) -> bool:
        """True when the target asks for peers (a floor), not only a ceiling."""
        return self.min_peers > 0 or self.min_fraction > 0

    def required(self, connected: int) -> int:
        """Peers with the capability wanted when ``connected`` peers are connected in total."""
        by_fraction = math.ceil(self.min_fraction * connected - _EPSILON)
        want = max(self.min_peers, by_fraction)
        if self.max_peers is not None:
            want = min(want, self.max_peers)
        return want

    def to_mapping(self) -> dict[str, int | float]:
        """The TOML form: only the fields that differ from their defaults."""
        out: dict[str, int | float] = {}
        if self.min_peers:
            out["min_peers"] = self.min_peers
        if self.min_fraction:
            out["min_fraction"] = self.min_fraction
        if self.max_peers is not None:
            out["max_peers"] = self.max_peers
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The peer manager's limits that targets must fit in."""

    max_connections: int = 64
    """Total connections (the peer manager's ``max_connections``)."""
    max_outbound: int = 16
    """Outbound connections the peer manager keeps by itself."""
    min_outbound: int = 0
    """The policy never prunes outbound peers below this count (anti-eclipse: our own choices
    stay a share of the connections)."""

    def __post_init__(self) -> None:
        _check_int("max_connections", self.max_connections, 1)
        _check_int("max_outbound", self.max_outbound, 0, self.max_connections)
        _check_int("min_outbound", self.min_outbound, 0, self.max_outbound)

    @classmethod
    def from_peer_config(cls, config: PeerManagerConfig) -> ConnectionLimits:
        """The limits of a peer manager; ``min_outbound`` is 30 % of its outbound slots."""
        return cls(
            max_connections=config.max_connections,
            max_outbound=config.max_outbound,
            min_outbound=math.ceil(0.3 * config.max_outbound),
        )


@dataclass(frozen=True, slots=True)
class TargetSet:
    """All capability targets of a node, one per capability, sorted by name."""

    targets: tuple[CapabilityTarget, ...] = ()

    def __post_init__(self) -> None:
        names = [t.capability for t in self.targets]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError("targets", f"more than one target for {', '.join(dup)}")
        ordered = tuple(sorted(self.targets, key=lambda t: t.capability))
        object.__setattr__(self, "targets", ordered)

    @classmethod
    def of(cls, *targets: CapabilityTarget) -> TargetSet:
        return cls(tuple(targets))

    def __len__(self) -> int:
        return len(self.targets)

    def __iter__(self) -> Iterator[CapabilityTarget]:
        return iter(self.targets)

    def get(self, capability: str) -> CapabilityTarget | None:
        for target in self.targets:
            if target.capability == capability:
                return target
        return None

    def with_target(self, target: CapabilityTarget) -> TargetSet:
        """A copy with ``target`` added or replacing the one for its capability."""
        others = tuple(t for t in self.targets if t.capability != target.capability)
        return TargetSet((*others, target))

    def without(self, capability: str) -> TargetSet:
        return TargetSet(tuple(t for t in self.targets if t.capability != capability))

    def to_mapping(self) -> dict[str, dict[str, int | float]]:
        return {t.capability: t.to_mapping() for t in self.targets}

    @classmethod
    def from_toml(cls, table: object) -> TargetSet:
        """The config loader's hook: a ``[targets]``-style table (:func:`parse_targets`)."""
        if not isinstance(table, Mapping):
            raise ConfigError("targets", f"must be a table, got {type(table).__name__}")
        return parse_targets(table)

    def to_toml(self) -> dict[str, dict[str, int | float]]:
        """The config renderer's hook (same as :meth:`to_mapping`)."""
        return self.to_mapping()

    def validate(self, limits: ConnectionLimits) -> tuple[str, ...]:
        """Raise :class:`ConfigError` for targets no network could meet within ``limits``;
        return warnings (sentences) for those that need capabilities to overlap on peers."""
        cap = limits.max_connections
        warnings: list[str] = []
        by_priority: dict[int, list[CapabilityTarget]] = {}
        for t in self.targets:
            by_priority.setdefault(t.priority, []).append(t)
            if t.min_peers > cap:
                raise ConfigError(
                    f"targets.{t.capability}.min_peers",
                    f"{t.capability}: min_peers {t.min_peers} exceeds max_connections {cap}",
                )
            if t.max_peers is not None and t.min_fraction > 0:
                at_full = math.ceil(t.min_fraction * cap - _EPSILON)
                if at_full > t.max_peers:
                    warnings.append(
                        f"{t.capability}: min_fraction {t.min_fraction} of max_connections {cap} "
                        f"asks for {at_full} peers but max_peers is {t.max_peers}; "
                        f"the ceiling wins"
                    )
        for priority in sorted(by_priority, reverse=True):
            group = by_priority[priority]
            total = sum(t.min_peers for t in group)
            if total > cap:
                parts = " + ".join(f"{t.capability} {t.min_peers}" for t in group if t.min_peers)
                raise ConfigError(
                    "targets",
                    f"min_peers at priority {priority} sum to {total} ({parts}), "
                    f"beyond max_connections {cap}",
                )
        all_mins = sum(t.min_peers for t in self.targets)
        if all_mins > cap:
            warnings.append(
                f"min_peers of all priorities sum to {all_mins}, beyond max_connections {cap}: "
                f"lower priorities are met only where peers carry several capabilities"
            )
        fractions = sum(t.min_fraction for t in self.targets)
        if fractions > 1.0 + _EPSILON:
            parts = " + ".join(
                f"{t.capability} {t.min_fraction}" for t in self.targets if t.min_fraction
            )
            warnings.append(
                f"min_fraction values sum to {fractions:.2f} ({parts}), above 1: they can only "
                f"all be met by peers that carry several of these capabilities"
            )
        return tuple(warnings)


def _coerce(cap: str, key: str, value: object) -> object:
    """Check the type of one field of a TOML target table (``bool`` is never a number)."""
    path = f"targets.{cap}.{key}"
    if key == "min_fraction":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"must be a number, got {value!r}")
        return float(value)
    if key == "max_peers" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"must be an integer, got {value!r}")
    return value


def _build(
    cap: str, values: Mapping[str, object], base: CapabilityTarget | None
) -> CapabilityTarget:
    if not valid_capability_name(cap):
        raise ConfigError("targets", f"invalid capability name {cap!r}")
    checked: dict[str, object] = {}
    for key, value in values.items():
        if key not in _FIELDS:
            raise ConfigError(
                f"targets.{cap}.{key}", f"unknown field (expected one of {', '.join(_FIELDS)})"
            )
        checked[key] = _coerce(cap, key, value)
    if base is None:
        return CapabilityTarget(cap, **checked)  # type: ignore[arg-type]
    if base.capability != cap:
        raise ConfigError(f"targets.{cap}", f"base target is for {base.capability!r}")
    return replace(base, **checked)  # type: ignore[arg-type]


def parse_targets(table: Mapping[str, object]) -> TargetSet:
    """Targets from a TOML-like mapping: ``{"archive": {"min_peers": 2, "priority": 1}}``."""
    if not isinstance(table, Mapping):
        raise ConfigError("targets", f"must be a table, got {type(table).__name__}")
    targets = []
    for cap, values in table.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"targets.{cap}", f"must be a table, got {type(values).__name__}")
        targets.append(_build(cap, values, None))
    return TargetSet(tuple(targets))


def _parse_word(cap: str, key: str, text: str) -> object:
    path = f"targets.{cap}.{key}"
    if key == "max_peers" and text.lower() in ("none", ""):
        return None
    if key == "min_fraction":
        percent = text.endswith("%")
        try:
            number = float(text[:-1] if percent else text)
        except ValueError:
            raise ConfigError(path, f"must be a number, got {text!r}") from None
        return number / 100 if percent else number
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigError(path, f"must be an integer, got {text!r}") from None


def parse_target_assignments(
    capability: str, words: Sequence[str], base: CapabilityTarget | None = None
) -> CapabilityTarget:
    """A target from CLI words (``overlay targets set archive min_peers=2 priority=1``).

    ``base`` (the current target, if any) supplies the fields not named; ``max_peers=none``
    clears the ceiling and ``min_fraction`` accepts a percentage (``30%``).
    """
    if not words:
        raise ConfigError(f"targets.{capability}", "expected at least one key=value")
    values: dict[str, object] = {}
    for word in words:
        key, sep, text = word.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"targets.{capability}", f"expected key=value, got {word!r}")
        if key not in _FIELDS:
            raise ConfigError(
                f"targets.{capability}.{key}",
                f"unknown field (expected one of {', '.join(_FIELDS)})",
            )
        if key in values:
            raise ConfigError(f"targets.{capability}.{key}", "given twice")
        values[key] = _parse_word(capability, key, text.strip())
    return _build(capability, values, base)
