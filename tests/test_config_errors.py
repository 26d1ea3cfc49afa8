"""A bad ``config.toml`` is reported in TOML's terms: the key's dotted path, the type expected,
and the value as the operator wrote it (``true``, not Python's ``True``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlay.address import ListenAddress, NodeAddress
from overlay.errors import ConfigError, InvalidAddressError
from overlay.node._config import load_config

ID = "7" * 40


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("network = true", "config key 'network': expected a string, got a boolean (true)"),
        ("[peers]\nmax_outbound = false",
         "config key 'peers.max_outbound': expected an integer, got a boolean (false)"),
        ("[connection]\ncompression = 1",
         "config key 'connection.compression': expected a boolean (true or false), "
         "got an integer (1)"),
        ("[connection]\nping_interval = \"10\"",
         "config key 'connection.ping_interval': expected a number, got a string (\"10\")"),
        ("[connection]\nping_interval = inf",
         "config key 'connection.ping_interval': expected a finite number, got inf"),
        ('listen = "tcp://127.0.0.1:1"',
         "config key 'listen': expected an array of strings, got a string "
         "(\"tcp://127.0.0.1:1\")"),
        ("[peers]\nseeds = [true]",
         "config key 'peers.seeds[0]': expected a string, got a boolean (true)"),
        ('[log]\nlevel = "trace"',
         "config key 'log.level': expected one of \"debug\", \"info\", \"warning\", \"error\", "
         "got a string (\"trace\")"),
        ("moniker = 1979-05-27",
         "config key 'moniker': expected a string, got a date (1979-05-27)"),
        ("peers = 3", "config key 'peers': expected a table, got an integer (3)"),
        ("network = [1, true]",
         "config key 'network': expected a string, got an array ([1, true])"),
    ],
)
def test_type_errors_speak_toml(toml: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == message
    assert "True" not in str(info.value) and "False" not in str(info.value)


def test_an_unsupported_scheme_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    # It used to say "wrap IPv6 in [brackets]".
    path = tmp_path / "config.toml"
    path.write_text('listen = ["udp://0.0.0.0:26656"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        "config key 'listen[0]': unsupported scheme 'udp' in 'udp://0.0.0.0:26656': supported "
        "are tcp://HOST:PORT and memory:"
    )
    with pytest.raises(InvalidAddressError, match="unsupported scheme 'quic'.*ID@HOST:PORT"):
        NodeAddress.parse(f"quic://{ID}@127.0.0.1:1")
    # tcp:// in any case is still TCP; a bare IPv6 host still asks for brackets.
    assert str(ListenAddress.parse("TCP://127.0.0.1:5")) == "tcp://127.0.0.1:5"
    with pytest.raises(InvalidAddressError, match=r"wrap IPv6 in \[brackets\]"):
        ListenAddress.parse("tcp://::1:5")
