"""What a main run counts (``World.counters``; the report's ``totals``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    dials: int = 0
    dial_failures: int = 0
    pex_requests: int = 0
    pex_rate_limited: int = 0
    pex_records: int = 0
    dht_lookups: int = 0
    bootstrap_lookups: int = 0
    """Of ``dht_lookups``: the self-lookups of the bootstrap from seeds."""
    publish_lookups: int = 0
    dht_rounds: int = 0
    dht_messages: int = 0
    policy_ticks: int = 0
    prunes: int = 0
    discoveries: int = 0
    """``Discover`` actions executed (each: PEX asks, then a provider lookup when needed)."""
    discover_pex: int = 0
    """Of ``pex_requests``: the asks of ``Discover`` actions."""
    provider_lookups: int = 0
    """Of ``dht_lookups``: the provider lookups of ``Discover`` actions."""
    leaves: int = 0
    events: int = 0
