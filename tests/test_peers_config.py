"""PeerManagerConfig validation."""

from __future__ import annotations

from typing import Any

import pytest

from overlay.errors import ConfigError
from overlay.peers import PeerManagerConfig

ID = "cd" * 20


def test_defaults_are_valid_and_bitcoin_like() -> None:
    c = PeerManagerConfig()
    assert c.max_connections == 64
    assert c.max_outbound == 16
    assert c.max_inbound == 48
    assert c.max_outbound_per_netgroup == 1
    assert c.exempt() == ()


def test_peer_lists_parse() -> None:
    c = PeerManagerConfig(
        persistent_peers=(f"{ID}@10.0.0.1:7000",),
        seeds=(f"memory:{ID}",),
        unconditional_peer_ids=(ID.upper(),),
        private_peer_ids=(ID,),
        exempt_networks=("127.0.0.0/8",),
    )
    assert c.persistent_addresses()[0].port == 7000
    assert c.seed_addresses()[0].protocol == "memory"
    assert c.unconditional_ids() == frozenset({ID})
    assert c.private_ids() == frozenset({ID})
    assert len(c.exempt()) == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_connections", 0),
        ("max_outbound", -1),
        ("max_outbound", 65),
        ("max_inbound_per_ip", 0),
        ("max_concurrent_dials", 0),
        ("dial_timeout", 0.0),
        ("dial_timeout", float("nan")),
        ("dial_timeout", "5"),
        ("max_outbound", 2.5),
        ("max_outbound", True),
        ("backoff_cap", 0.5),
        ("persistent_backoff_cap", 0.1),
        ("disconnect_cooldown", -1.0),
        ("feeler_interval", float("inf")),
        ("ban_score", 0.0),
        ("disconnect_score", -500.0),
        ("max_score", -1.0),
        ("protect_longest_connected", 1.5),
        ("new_buckets_per_source_group", 1000),
        ("tried_buckets_per_group", 1000),
        ("bucket_size", 0),
        ("persistent_peers", ("nonsense",)),
        ("persistent_peers", [f"memory:{ID}"]),
        ("seeds", (f"{ID}@host",)),
        ("unconditional_peer_ids", ("xyz",)),
        ("private_peer_ids", ("00",)),
        ("exempt_networks", ("10.0.0.0/99",)),
    ],
)
def test_invalid_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        PeerManagerConfig(**{key: value})
    # The ordering of the score thresholds is reported under one key.
    expected = "ban_score" if key in ("disconnect_score", "max_score") else key
    assert info.value.key == expected
