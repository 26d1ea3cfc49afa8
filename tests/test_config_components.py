"""One config object per component, one default per setting: the node's ``[connection]`` table
reaches the connection core and the transports through one projection, never a hand copy; the
``[discovery.dht]`` table reaches the DHT service the same way."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from overlay.connection._types import CoreConfig
from overlay.errors import ConfigError
from overlay.node._config import ConnectionConfig, NodeConfig, load_config
from overlay.node._dht import dht_config
from overlay.transport import TransportConfig
from overlay.transport._pending import PendingLimits

SHARED_CORE = [
    f.name for f in dataclasses.fields(CoreConfig)
    if f.name in {g.name for g in dataclasses.fields(ConnectionConfig)}
]
SHARED_TRANSPORT = [
    f.name for f in dataclasses.fields(TransportConfig)
    if f.name in {g.name for g in dataclasses.fields(ConnectionConfig)}
]


def test_shared_settings_have_one_default() -> None:
    conn, core, transport = ConnectionConfig(), CoreConfig(), TransportConfig()
    assert len(SHARED_CORE) >= 11 and len(SHARED_TRANSPORT) == 4
    for name in SHARED_CORE:
        assert getattr(conn, name) == getattr(core, name), name
    for name in SHARED_TRANSPORT:
        assert getattr(conn, name) == getattr(transport, name), name
    limits = PendingLimits()
    assert (transport.max_pending_handshakes, transport.max_pending_handshakes_per_ip,
            transport.max_pending_handshakes_per_netgroup) == (
        limits.max_total, limits.max_per_ip, limits.max_per_netgroup)


def test_every_shared_setting_reaches_its_component() -> None:
    conn = ConnectionConfig(
        max_frame_payload=1000, max_write_batch=5000, send_rate=10.0, send_burst=7,
        recv_rate=20.0, recv_burst=9, compression_threshold=99, ping_interval=2.0,
        idle_timeout=7.0, close_timeout=0.5, max_outbound_requests=3, handshake_timeout=1.5,
        max_pending_handshakes=5, max_pending_handshakes_per_ip=2,
        max_pending_handshakes_per_netgroup=4,
    )
    core = conn.core_config()
    for name in SHARED_CORE:
        assert getattr(core, name) == getattr(conn, name), name
    transport = conn.transport_config(("192.0.2.0/24",))
    for name in SHARED_TRANSPORT:
        assert getattr(transport, name) == getattr(conn, name), name
    assert transport.exempt_networks == ("192.0.2.0/24",)


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_frame_payload", 63), ("close_timeout", 0.0), ("max_outbound_requests", 0),
     ("handshake_timeout", -1.0), ("max_pending_handshakes_per_netgroup", 0),
     ("ping_interval", 0.0), ("max_write_batch", 63)],
)
def test_connection_config_errors_name_the_key(key: str, value: float) -> None:
    overrides: dict[str, Any] = {key: value}
    with pytest.raises(ConfigError) as caught:
        ConnectionConfig(**overrides)
    assert caught.value.key == key


def test_the_dht_settings_reach_the_dht_service(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[discovery.dht]\nk = 12\nalpha = 2\ndisjoint_paths = 3\nquery_timeout = 0.5\n'
        "density_limit = true\n"
    )
    service = dht_config(load_config(path))
    assert (service.table.k, service.lookup.k, service.lookup.alpha) == (12, 12, 2)
    assert (service.lookup.provider_paths, service.lookup.query_timeout) == (3, 0.5)
    assert service.density_limit is True
    assert dht_config(NodeConfig()).density_limit is False
