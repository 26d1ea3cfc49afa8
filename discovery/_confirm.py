"""Which advertised capabilities peers have proved by behaviour (pure, sans-IO).

Theory of operation
-------------------
A record *advertises* capabilities; advertising costs nothing. A capability is **confirmed** for
a peer once the peer served a request for it (``confirm``), and loses that flag the moment a
request for it fails or is refused (``refute``). A refuted ``(peer, capability)`` pair is
**suspect** for ``cooldown`` seconds: discovery hands it out only after every other candidate,
so a peer that lies about a capability stops attracting its traffic, while a peer that failed
once for an honest reason gets another chance later. A confirmation clears the suspicion.

Bounded: at most ``max_peers`` peers are tracked; the peer touched least recently is forgotten
first. Time is the caller's ``now`` (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overlay.errors import ConfigError
from overlay.identity import NodeId

__all__ = ["Confirmations", "ConfirmationsConfig"]


@dataclass(frozen=True, slots=True)
class ConfirmationsConfig:
    cooldown: float = 600.0
    """Seconds a refuted capability stays suspect (unless confirmed again)."""
    max_peers: int = 4096
    """Peers tracked; the least recently touched is forgotten first."""

    def __post_init__(self) -> None:
        if self.cooldown < 0:
            raise ConfigError("discovery.cooldown", f"must be >= 0, got {self.cooldown!r}")
        if self.max_peers < 1:
            raise ConfigError("discovery.max_peers", f"must be >= 1, got {self.max_peers!r}")


@dataclass(slots=True)
class _Peer:
    confirmed: set[str] = field(default_factory=set)
    suspect_until: dict[str, float] = field(default_factory=dict)


class Confirmations:
    """Confirmed and suspect capabilities per peer (see the module docstring)."""

    def __init__(self, config: ConfirmationsConfig | None = None) -> None:
        self.config = config or ConfirmationsConfig()
        self._peers: dict[NodeId, _Peer] = {}  # least recently touched first
        self.confirmations = 0
        self.refutations = 0

    def __len__(self) -> int:
        return len(self._peers)

    def confirm(self, peer: NodeId, capability: str) -> bool:
        """``peer`` served a request for ``capability``; True if newly confirmed."""
        entry = self._touch(peer)
        entry.suspect_until.pop(capability, None)
        self.confirmations += 1
        if capability in entry.confirmed:
            return False
        entry.confirmed.add(capability)
        return True

    def refute(self, peer: NodeId, capability: str, now: float) -> bool:
        """A request to ``peer`` for ``capability`` failed or was refused; True if it had been
        confirmed."""
        entry = self._touch(peer)
        entry.suspect_until[capability] = now + self.config.cooldown
        self.refutations += 1
        if capability in entry.confirmed:
            entry.confirmed.discard(capability)
            return True
        return False

    def confirmed(self, peer: NodeId) -> frozenset[str]:
        entry = self._peers.get(peer)
        return frozenset(entry.confirmed) if entry is not None else frozenset()

    def is_confirmed(self, peer: NodeId, capability: str) -> bool:
        entry = self._peers.get(peer)
        return entry is not None and capability in entry.confirmed

    def is_suspect(self, peer: NodeId, capability: str, now: float) -> bool:
        entry = self._peers.get(peer)
        if entry is None:
            return False
        until = entry.suspect_until.get(capability)
        if until is None:
            return False
        if until <= now:
            del entry.suspect_until[capability]
            return False
        return True

    def forget(self, peer: NodeId) -> None:
        self._peers.pop(peer, None)

    def peers_with_confirmations(self) -> int:
        return sum(1 for entry in self._peers.values() if entry.confirmed)

    def _touch(self, peer: NodeId) -> _Peer:
        entry = self._peers.pop(peer, None)
        if entry is None:
            entry = _Peer()
            while len(self._peers) >= self.config.max_peers:
                del self._peers[next(iter(self._peers))]
        self._peers[peer] = entry
        return entry
