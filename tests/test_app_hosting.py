"""Applications run by the node: ``setup(node)`` embedded with ``async with Node(...)`` or hosted
by ``overlay start --app`` (the reactor guide's ``greeter.py``, run for real in a subprocess),
and every way an ``app`` spec can be wrong (a ConfigError from the library, one ``error`` line
from the CLI)."""

from __future__ import annotations

import importlib
import importlib.util
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from overlay import ChannelSpec, Node, NodeAddress, NodeConfig
from overlay.cli import main as overlay_main
from overlay.errors import ConfigError
from tests.support import both_backends
from tests.test_docs_examples import extract

pytestmark = pytest.mark.anyio
anyio_backend = both_backends()

OVERLAY = [sys.executable, "-m", "overlay.cli"]
LOOPBACK = NodeConfig(listen=("tcp://127.0.0.1:0",))

APPS = textwrap.dedent('''
    from overlay import BytesCodec, ChannelSpec, Envelope, Node

    ECHO = ChannelSpec(id=0x4B, name="app-echo", codec=BytesCodec(), response_codec=BytesCodec())
    NOT_CALLABLE = 42


    async def echo(env: Envelope[bytes]) -> bytes:
        return env.message


    def plain(node: Node) -> None:
        node.channel(ECHO).handle_requests(echo)


    async def broken(node: Node) -> None:
        raise RuntimeError("no database")
''')


def greeter_source() -> str:
    """The reactor guide's hosted application, as a user would save it."""
    blocks = [b for b in extract("docs/reactor-guide.md") if b.code.startswith("# greeter.py")]
    assert len(blocks) == 1, "the reactor guide shows greeter.py once"
    return blocks[0].code


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of small applications, importable for this test; returns its name."""
    name = "overlay_sample_apps"
    (tmp_path / f"{name}.py").write_text(APPS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# ------------------------------------------------------------------------------- hosted


async def _line_with(stream: anyio.abc.ByteReceiveStream, marker: str, seen: list[str]) -> str:
    """Read log lines until one contains ``marker`` (all lines go to ``seen``)."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode(errors="replace")
            seen.append(line)
            if marker in line:
                return line
        buffer += await stream.receive()


async def test_overlay_start_hosts_the_guides_application(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, app_dir = tmp_path / "home", tmp_path / "app"
    assert overlay_main(["init", "--home", str(home), "--listen", "tcp://127.0.0.1:0"]) == 0
    capsys.readouterr()
    app_dir.mkdir()
    (app_dir / "greeter.py").write_text(greeter_source(), encoding="utf-8")
    greeter = load_module(app_dir / "greeter.py")
    greet_spec = greeter.GREET
    assert isinstance(greet_spec, ChannelSpec)

    seen: list[str] = []
    process = await anyio.open_process(
        [*OVERLAY, "start", "--home", str(home), "--app", "greeter:setup"],
        cwd=app_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    async with process:
        assert process.stderr is not None
        try:
            with anyio.fail_after(20):
                started = await _line_with(process.stderr, "started; listening on ", seen)
            address = NodeAddress.parse(started.rsplit("listening on ", 1)[1].split(",")[0])
            async with Node(LOOPBACK) as client:
                greet = client.channel(greet_spec)
                await client.dial(address)
                reply = await greet.request(address.node_id, b"embedded", timeout=10)
                assert reply == b"hello, embedded"
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                await _line_with(process.stderr, "stopped", seen)
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
    assert any("received SIGTERM" in line for line in seen), seen
    assert not any("Traceback" in line for line in seen), seen
    assert not (home / "admin.json").exists()


# ------------------------------------------------------------------------------- embedded


async def test_a_plain_setup_runs_on_an_embedded_node(apps: str) -> None:
    config = NodeConfig(listen=("tcp://127.0.0.1:0",), app=f"{apps}:plain")
    module = importlib.import_module(apps)
    async with Node(config) as server, Node(LOOPBACK) as client:
        echo = client.channel(module.ECHO)
        await client.dial(server.address)
        assert await echo.request(server.node_id, b"ping", timeout=10) == b"ping"


async def test_tasks_started_in_the_node_end_with_it() -> None:
    ended = anyio.Event()
    started_value: list[str] = []

    async def forever(*, task_status: anyio.abc.TaskStatus[str]) -> None:
        task_status.started("ready")
        try:
            await anyio.sleep_forever()
        finally:
            ended.set()

    async with Node(LOOPBACK) as node:
        started_value.append(await node.start(forever))
        node.start_soon(anyio.sleep_forever)
    assert started_value == ["ready"]
    assert ended.is_set()


# --------------------------------------------------------------------------------- errors

BAD_SPECS = {
    "malformed": ("just-a-name", "is not of the form package.module:function"),
    "not importable": ("no_such_module_for_overlay:setup", "cannot import 'no_such_module"),
    "no such attribute": ("{apps}:missing", "has no attribute 'missing'"),
    "not callable": ("{apps}:NOT_CALLABLE", "not a function taking the node (it is of type int)"),
    "setup raises": ("{apps}:broken", "broken failed: RuntimeError: no database"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
async def test_a_bad_app_is_a_config_error_from_the_library(apps: str, case: str) -> None:
    spec, message = (part.format(apps=apps) for part in BAD_SPECS[case])
    with pytest.raises(ConfigError, match="app") as caught:
        config = NodeConfig(listen=("tcp://127.0.0.1:0",), app=spec)
        async with Node(config):
            pytest.fail("a node with a bad app must not start")
    assert caught.value.key == "app"
    assert message in str(caught.value)


def test_a_bad_app_is_one_line_from_the_cli(
    tmp_path: Path, apps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    assert overlay_main(["init", "--home", str(home), "--listen", "tcp://127.0.0.1:0"]) == 0
    capsys.readouterr()
    for case, (spec_template, message) in sorted(BAD_SPECS.items()):
        spec = spec_template.format(apps=apps)
        done = subprocess.run(
            [*OVERLAY, "start", "--home", str(home), "--app", spec], cwd=tmp_path,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
        )
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2, (case, done.stderr)
        assert len(errors) == 1, (case, done.stderr)
        assert errors[0].startswith("config error: config key 'app': "), (case, errors)
        assert message in errors[0], (case, errors)
        assert "Traceback" not in done.stderr, (case, done.stderr)
        assert not (home / "admin.json").exists()
