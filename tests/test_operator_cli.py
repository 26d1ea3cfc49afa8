"""The ``overlay`` command line as an operator meets it: ``init`` keeps the identity, usage and
start-up errors are one line (never a traceback), a closed stdout is not an error report."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from overlay import cli
from overlay.node._config import load_config

OVERLAY = [sys.executable, "-m", "overlay.cli"]


def _overlay(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OVERLAY, *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=30, check=False)


def _init(home: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert cli.main(["init", "--home", str(home), *extra]) == 0
    return capsys.readouterr().out.strip()


# -- init -------------------------------------------------------------------------------------


def test_init_force_keeps_the_node_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "a"
    first = _init(home, capsys, "--network", "one")
    key_before = (home / "node_key").read_bytes()
    assert cli.main(["init", "--home", str(home)]) == 1  # exists, no --force
    assert "use --force" in capsys.readouterr().err
    assert _init(home, capsys, "--force", "--network", "two") == first
    assert (home / "node_key").read_bytes() == key_before
    assert load_config(home / "config.toml").network == "two"
    assert stat.S_IMODE((home / "node_key").stat().st_mode) == 0o600


def test_init_new_key_replaces_the_identity_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "a"
    first = _init(home, capsys)
    assert cli.main(["init", "--home", str(home), "--force", "--new-key"]) == 0
    captured = capsys.readouterr()
    second = captured.out.strip()
    assert second != first and len(second) == 40
    assert f"old id {first}" in captured.err
    assert cli.main(["id", "--home", str(home)]) == 0
    assert capsys.readouterr().out.strip() == second


def test_init_force_keeps_a_custom_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "a"
    _init(home, capsys)
    text = (home / "config.toml").read_text()
    (home / "config.toml").write_text('node_key_file = "keys/my_key"\n' + text)
    (home / "keys").mkdir()
    (home / "node_key").rename(home / "keys" / "my_key")
    assert cli.main(["id", "--home", str(home)]) == 0
    node_id = capsys.readouterr().out.strip()
    assert _init(home, capsys, "--force") == node_id
    assert load_config(home / "config.toml").node_key_file == "keys/my_key"
    assert not (home / "node_key").exists()


def test_init_with_a_bad_listen_address_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "new"
    assert cli.main(["init", "--home", str(home), "--listen", "bogus"]) == 2
    assert capsys.readouterr().err.startswith("config error: config key 'listen[0]'")
    assert not home.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # Both were accepted, then ignored (an empty network: the default was written) or
        # refused only by `overlay start` (memory:).
        (["--network", ""], "config key 'network': must be 1 to 64 characters"),
        (["--listen", "memory:"],
         "config key 'listen[0]': overlay start serves TCP only; 'memory:' is an in-process "
         "address (use tcp://HOST:PORT)"),
        (["--listen", "udp://127.0.0.1:5"],
         "config key 'listen[0]': unsupported scheme 'udp' in 'udp://127.0.0.1:5': supported "
         "are tcp://HOST:PORT and memory:"),
    ],
)
def test_init_refuses_what_start_would_refuse_and_creates_nothing(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "new"
    assert cli.main(["init", "--home", str(home), *extra]) == 2
    assert capsys.readouterr().err == f"config error: {message}\n"
    assert not home.exists()


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_is_plain_text_and_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    top = _help(capsys)
    assert "`" not in top  # no RST or Markdown markup
    assert "--home DIR (default: ~/.overlay)" in top
    for command in (["init"], ["start"], ["status"], ["ban"], ["seeds", "add"],
                    ["persistent", "remove"]):
        text = _help(capsys, *command)
        assert "`" not in text, command
        assert "default: " in text and "~/.overlay" in text, command
    init = _help(capsys, "init")
    assert "(default: overlay-local)" in init and "(default: tcp://127.0.0.1:26656)" in init
    testnet = _help(capsys, "testnet")
    assert "--seed SEED seed of the random choices" in testnet
    assert "--backend {asyncio,trio} async backend" in testnet
    for default in ("(default: 8)", "(default: 15.0)", "(default: 1)", "(default: asyncio)"):
        assert default in testnet
    assert "(default: None)" not in testnet + init and "(default: False)" not in init


def test_help_of_init_explains_force_and_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["init", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the node key is kept" in text
    assert "--new-key" in text and "new identity" in text


# -- usage and start-up errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["testnet", "--nodes", "2"], "argument --nodes: must be at least 3, got 2"),
        (["testnet", "--nodes", "x"], "argument --nodes: invalid integer 'x'"),
        (["testnet", "--duration", "-1"],
         "argument --duration: must be a positive number of seconds, got -1"),
        # Zero used to run no traffic and print "p50 nan ms ... FAILED" with no reason.
        (["testnet", "--duration", "0"],
         "argument --duration: must be a positive number of seconds, got 0"),
        (["testnet", "--duration", "inf"],
         "argument --duration: must be a positive number of seconds, got inf"),
        (["testnet", "--seeds", "0"], "argument --seeds: must be at least 1"),
        (["testnet", "--mode", "docker"], "argument --mode: invalid choice: 'docker'"),
    ],
)
def test_testnet_arguments_are_checked_by_argparse(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: overlay testnet")
    assert f"overlay testnet: error: {message}" in err


def test_start_refuses_a_memory_listen_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "m"
    _init(home, capsys)
    text = (home / "config.toml").read_text()
    (home / "config.toml").write_text('listen = ["memory:"]\n' + text)
    assert cli.main(["start", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "config error: config key 'listen[0]': overlay start serves TCP only; 'memory:' is an "
        "in-process address (use tcp://HOST:PORT)\n"
    )


def test_start_with_the_port_in_use_prints_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        home = tmp_path / "p"
        _init(home, capsys, "--listen", f"tcp://127.0.0.1:{port}")
        result = _overlay("start", "--home", str(home))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"error: cannot listen on tcp://127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in result.stderr
    assert not (home / "admin.json").exists()


def test_a_busy_metrics_port_is_one_config_error_and_leaves_no_admin_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        home = tmp_path / "p"
        _init(home, capsys, "--listen", "tcp://127.0.0.1:0")
        text = (home / "config.toml").read_text()
        live = f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
        text = text.replace("[metrics]\n", live, 1)
        (home / "config.toml").write_text(text)
        result = _overlay("start", "--home", str(home))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"config error: config key 'metrics.listen': cannot listen on '127.0.0.1:{port}': "
        "[Errno 98] Address already in use"
    ]
    assert "Traceback" not in result.stderr
    assert not (home / "admin.json").exists()  # the admin API had started: its file is gone


# -- a closed stdout --------------------------------------------------------------------------


def test_a_closed_pipe_on_stdout_is_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "a"
    _init(home, capsys)
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` after its first line: every write gets EPIPE
    try:
        result = _overlay("id", "--home", str(home), stdout=write_end)
        usage = _overlay("--help", stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")
    assert usage.stderr == ""  # argparse writes --help itself and ignores the error


class _ClosedPipe:
    """A stdout whose reader went away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_epipe_in_the_middle_of_a_command_is_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["init", "--home", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err == ""
