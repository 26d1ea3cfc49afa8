"""The admin API over real HTTP (loopback TCP and a Unix socket) against a fake Control."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import ByteStream

from overlay.errors import (
    ConfigError,
    DialError,
    InvalidAddressError,
    LocalProtocolError,
    RequestTimeout,
)
from overlay.operator._admin import (
    AdminApp,
    load_or_create_token,
    parse_ban_target,
    remove_admin_info,
    serve_admin,
    write_admin_info,
)
from overlay.operator._control import ConflictError, Control, PeerBannedError, UnknownPeerError
from overlay.operator._http import HttpServerConfig, Request
from tests.support import ipv6_available

TOKEN = "a" * 64
ID_A = "1" * 40
ID_B = "2" * 40
ADDR_A = f"{ID_A}@127.0.0.1:26656"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class FakeControl:
    """Records every call; knows ID_A as connected and 10.0.0.1 / ID_B as banned."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    connected: set[str] = field(default_factory=lambda: {ID_A})
    banned: set[str] = field(default_factory=lambda: {ID_B, "10.0.0.1"})
    fail: BaseException | None = None

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        return {"node_id": ID_A, "peers": {"inbound": 1, "outbound": 2}, "version": "0.1.0"}

    def peers(self) -> list[dict[str, Any]]:
        self.calls.append(("peers", None))
        return [{"id": ID_A, "direction": "inbound", "score": 1.5, "flags": ["persistent"]}]

    async def dial(self, address: str, *, persistent: bool) -> dict[str, Any]:
        self.calls.append(("dial", (address, persistent)))
        if self.fail is not None:
            raise self.fail
        return {"address": address, "persistent": persistent, "node_id": address[:40]}

    async def providers(self, capability: str) -> dict[str, Any]:
        self.calls.append(("providers", capability))
        return {"capability": capability, "providers": [{"id": ID_A, "addresses": [],
                "version": 1, "after": 0.01}], "rounds": 2, "messages": 9,
                "outcome": "exhausted", "elapsed": 0.02, "first_provider_after": 0.01}

    async def disconnect(self, node_id: str) -> dict[str, Any]:
        self.calls.append(("disconnect", node_id))
        if node_id not in self.connected:
            raise UnknownPeerError(f"peer {node_id} is not connected")
        self.connected.discard(node_id)
        return {"id": node_id}

    async def ban(self, target: str, *, duration: float | None) -> dict[str, Any]:
        self.calls.append(("ban", (target, duration)))
        self.banned.add(target)
        return {"target": target, "duration": duration or 86400.0}

    async def unban(self, target: str) -> dict[str, Any]:
        self.calls.append(("unban", target))
        if target not in self.banned:
            raise UnknownPeerError(f"{target} is not banned")
        self.banned.discard(target)
        return {"target": target}

    async def add_seed(self, address: str) -> dict[str, Any]:
        self.calls.append(("add_seed", address))
        return {"address": address}

    async def remove_seed(self, address: str) -> dict[str, Any]:
        self.calls.append(("remove_seed", address))
        if self.fail is not None:
            raise self.fail
        return {"seed_removed": address}

    async def remove_persistent(self, node_id: str) -> dict[str, Any]:
        self.calls.append(("remove_persistent", node_id))
        if self.fail is not None:
            raise self.fail
        return {"persistent_removed": node_id}

    def bans(self) -> dict[str, Any]:
        self.calls.append(("bans", None))
        return {"bans": [{"kind": "ip", "target": t, "until": 1.0e9, "remaining_seconds": 5.0,
                          "reason": "operator"} for t in sorted(self.banned)]}

    def seeds(self) -> dict[str, Any]:
        self.calls.append(("seeds", None))
        return {"seeds": [{"id": ID_B, "addresses": [f"memory:{ID_B}"], "origin": ["config"],
                           "state": "known"}]}

    def persistent(self) -> dict[str, Any]:
        self.calls.append(("persistent", None))
        return {"persistent": []}

    async def add_persistent(self, address: str) -> dict[str, Any]:
        self.calls.append(("add_persistent", address))
        return {"persistent": address[:40], "address": address}

    def capabilities(self) -> dict[str, Any]:
        self.calls.append(("capabilities", None))
        return {"seq": 1, "capabilities": []}

    async def set_capabilities(self, items: list[str]) -> dict[str, Any]:
        self.calls.append(("set_capabilities", items))
        return {"seq": 2, "capabilities": []}

    async def remove_capability(self, name: str) -> dict[str, Any]:
        self.calls.append(("remove_capability", name))
        return {"seq": 3, "capabilities": []}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    url: str
    control: FakeControl

    async def connect(self) -> ByteStream:
        if self.url.startswith("unix:"):
            return await anyio.connect_unix(self.url[len("unix:"):])
        host, _, port = self.url[len("http://"):].rpartition(":")
        return await anyio.connect_tcp(host, int(port))

    async def raw(self, data: bytes) -> Reply:
        """Send ``data`` and read until the server closes; parse the first response."""
        stream = await self.connect()
        async with stream:
            await stream.send(data)
            received = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        return parse_reply(received)

    async def call(
        self, method: str, path: str, body: object = None, *, token: str | None = TOKEN,
        raw_body: bytes | None = None,
    ) -> Reply:
        payload = raw_body if raw_body is not None else (
            b"" if body is None else json.dumps(body).encode()
        )
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        if payload:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        return await self.raw(head.encode() + b"\r\n" + payload)


def parse_reply(data: bytes) -> Reply:
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response in {data!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Reply(status, headers, rest[:length])


@asynccontextmanager
async def running(
    tmp_path: Path, *, unix: bool = False, config: HttpServerConfig | None = None,
    control: FakeControl | None = None,
) -> AsyncIterator[Server]:
    fake = control or FakeControl()
    sock = tmp_path / "admin.sock" if unix else None
    async with anyio.create_task_group() as tg:
        url = await tg.start(_serve, fake, sock, config)
        yield Server(url, fake)
        tg.cancel_scope.cancel()


async def _serve(
    control: Control, sock: Path | None, config: HttpServerConfig | None,
    *, task_status: anyio.abc.TaskStatus[str],
) -> None:
    await serve_admin(control, listen="127.0.0.1:0", unix_socket=sock, token=TOKEN,
                      task_status=task_status, config=config)


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_or_wrong_token_is_401_and_control_untouched(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        for token in (None, "b" * 64, "", TOKEN[:-1], TOKEN + "0"):
            reply = await server.call("GET", "/status", token=token)
            assert reply.status == 401, token
            assert reply.headers["www-authenticate"] == "Bearer"
            assert "token" in reply.json()["error"]
        reply = await server.call("POST", "/dial", {"address": ADDR_A}, token="nope")
        assert reply.status == 401
        # Authentication is checked before routing: unknown routes do not leak.
        assert (await server.call("GET", "/nope", token=None)).status == 401
        # Wrong scheme.
        reply = await server.raw(
            f"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Basic {TOKEN}\r\n\r\n".encode()
        )
        assert reply.status == 401
        assert server.control.calls == []


# -- every route ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_route_works(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        fake = server.control
        reply = await server.call("GET", "/status")
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["peers"] == {"inbound": 1, "outbound": 2}

        reply = await server.call("GET", "/peers")
        assert reply.status == 200
        assert reply.json() == {"peers": [
            {"id": ID_A, "direction": "inbound", "score": 1.5, "flags": ["persistent"]}
        ]}

        reply = await server.call("POST", "/dial", {"address": ADDR_A, "persistent": True})
        assert (reply.status, reply.json()["persistent"]) == (200, True)
        reply = await server.call("POST", "/dial", {"address": f"memory:{ID_B}"})
        assert reply.status == 200

        reply = await server.call("POST", "/disconnect", {"id": ID_A.upper()})
        assert (reply.status, reply.json()) == (200, {"id": ID_A})

        reply = await server.call("POST", "/ban", {"target": ID_A, "duration": 30})
        assert (reply.status, reply.json()["duration"]) == (200, 30.0)
        reply = await server.call("POST", "/ban", {"target": " 192.168.1.7 ", "duration": None})
        assert reply.status == 200
        reply = await server.call("POST", "/ban", {"target": "::FFFF:1"})
        assert reply.status == 200

        reply = await server.call("POST", "/unban", {"target": "10.0.0.1"})
        assert (reply.status, reply.json()) == (200, {"target": "10.0.0.1"})

        reply = await server.call("POST", "/seeds", {"address": ADDR_A})
        assert (reply.status, reply.json()) == (200, {"address": ADDR_A})
        reply = await server.call("POST", "/seeds/remove", {"address": ADDR_A})
        assert (reply.status, reply.json()) == (200, {"seed_removed": ADDR_A})
        reply = await server.call("POST", "/seeds/remove", {"address": ID_B.upper()})
        assert (reply.status, reply.json()) == (200, {"seed_removed": ID_B})
        reply = await server.call("POST", "/persistent/remove", {"id": ID_A})
        assert (reply.status, reply.json()) == (200, {"persistent_removed": ID_A})

        assert fake.calls == [
            ("status", None),
            ("peers", None),
            ("dial", (ADDR_A, True)),
            ("dial", (f"memory:{ID_B}", False)),
            ("disconnect", ID_A),
            ("ban", (ID_A, 30.0)),
            ("ban", ("192.168.1.7", None)),
            ("ban", ("::ffff:1", None)),
            ("unban", "10.0.0.1"),
            ("add_seed", ADDR_A),
            ("remove_seed", ADDR_A),
            ("remove_seed", ID_B),
            ("remove_persistent", ID_A),
        ]


@pytest.mark.anyio
async def test_what_the_operator_set_is_listed(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        reply = await server.call("GET", "/bans")
        assert reply.status == 200
        assert [b["target"] for b in reply.json()["bans"]] == sorted([ID_B, "10.0.0.1"])
        reply = await server.call("GET", "/seeds")
        assert (reply.status, reply.json()["seeds"][0]["origin"]) == (200, ["config"])
        reply = await server.call("GET", "/persistent")
        assert (reply.status, reply.json()) == (200, {"persistent": []})
        reply = await server.call("POST", "/persistent/add", {"address": ADDR_A})
        assert (reply.status, reply.json()) == (200, {"persistent": ID_A, "address": ADDR_A})
        # /seeds takes GET (list) and POST (add); anything else is told both.
        reply = await server.call("DELETE", "/seeds")
        assert (reply.status, reply.headers["allow"]) == (405, "GET, POST")
        reply = await server.call("POST", "/bans", {})
        assert (reply.status, reply.headers["allow"]) == (405, "GET")
        assert server.control.calls == [
            ("bans", None), ("seeds", None), ("persistent", None), ("add_persistent", ADDR_A),
        ]


# -- bad input --------------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, bytes]] = [
    ("/dial", b"{not json"),
    ("/dial", b"\xff\xfe"),
    ("/dial", b"[1, 2]"),
    ("/dial", b'"address"'),
    ("/dial", b""),
    ("/dial", b"{}"),
    ("/dial", json.dumps({"address": 5}).encode()),
    ("/dial", json.dumps({"address": ""}).encode()),
    ("/dial", json.dumps({"address": "x" * 2000}).encode()),
    ("/dial", json.dumps({"address": ADDR_A, "persistent": "yes"}).encode()),
    ("/dial", json.dumps({"address": ADDR_A, "persistant": True}).encode()),
    ("/dial", json.dumps({"address": "not-an-address"}).encode()),
    ("/dial", json.dumps({"address": f"{ID_A}@127.0.0.1:0"}).encode()),
    ("/dial", json.dumps({"address": "abc@127.0.0.1:1"}).encode()),
    ("/dial", b"[" * 5000 + b"]" * 5000),
    ("/disconnect", json.dumps({"id": "xyz"}).encode()),
    ("/disconnect", json.dumps({"id": None}).encode()),
    ("/disconnect", json.dumps({"node": ID_A}).encode()),
    ("/ban", json.dumps({"target": "nobody"}).encode()),
    ("/ban", json.dumps({"target": "300.1.1.1"}).encode()),
    ("/ban", json.dumps({"target": ID_A, "duration": "10m"}).encode()),
    ("/ban", json.dumps({"target": ID_A, "duration": -1}).encode()),
    ("/ban", json.dumps({"target": ID_A, "duration": 0}).encode()),
    ("/ban", json.dumps({"target": ID_A, "duration": True}).encode()),
    ("/ban", b'{"target": "' + ID_A.encode() + b'", "duration": 1e999}'),
    ("/ban", b'{"target": "' + ID_A.encode() + b'", "duration": NaN}'),
    ("/unban", json.dumps({"target": ["10.0.0.1"]}).encode()),
    ("/seeds", json.dumps({"address": {"host": "x"}}).encode()),
    ("/seeds", json.dumps({"address": "memory:short"}).encode()),
    ("/seeds/remove", json.dumps({"address": "nothex"}).encode()),
    ("/seeds/remove", json.dumps({"id": ID_A}).encode()),
    ("/persistent/remove", json.dumps({"id": ADDR_A}).encode()),
    ("/persistent/remove", json.dumps({"id": ID_A, "persistent": False}).encode()),
    ("/persistent/add", json.dumps({"id": ID_A}).encode()),
    ("/persistent/add", json.dumps({"address": f"{ID_A}@256.1.1.1:26656"}).encode()),
    ("/persistent/add", json.dumps({"address": f"{ID_A}@0.0.0.0:26656"}).encode()),
    ("/dial", json.dumps({"address": f"{ID_A}@256.1.1.1:26656"}).encode()),
    ("/dial", json.dumps({"address": f"{ID_A}@[::]:26656"}).encode()),
]


@pytest.mark.anyio
async def test_bad_input_is_400_and_never_reaches_control(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        for path, body in BAD_BODIES:
            reply = await server.call("POST", path, raw_body=body)
            assert reply.status == 400, (path, body[:60], reply.body)
            assert isinstance(reply.json()["error"], str)
            assert reply.json()["kind"] in ("BadRequestError", "InvalidAddressError")
        assert server.control.calls == []
        reply = await server.call("POST", "/dial", {"address": "nonsense"})
        assert reply.json()["kind"] == "InvalidAddressError"
        reply = await server.call("POST", "/dial", {"address": ADDR_A, "extra": 1})
        assert reply.json() == {"error": "unknown field(s): extra", "kind": "BadRequestError"}


@pytest.mark.anyio
async def test_control_errors_map_to_statuses(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        fake = server.control
        reply = await server.call("POST", "/disconnect", {"id": ID_B})
        assert (reply.status, reply.json()["kind"]) == (404, "UnknownPeerError")
        assert ID_B in reply.json()["error"]
        reply = await server.call("POST", "/unban", {"target": "10.9.9.9"})
        assert reply.status == 404

        cases: list[tuple[BaseException, int]] = [
            (DialError("connection refused"), 502),
            (RequestTimeout("too slow"), 502),
            (InvalidAddressError("cannot dial ourselves"), 400),
            (LocalProtocolError("already connected"), 400),
            (UnknownPeerError("who?"), 404),
            (PeerBannedError("node is banned"), 409),
            (ConflictError("config.toml lists it"), 409),
            (RuntimeError("a bug"), 500),
        ]
        for exc, status in cases:
            fake.fail = exc
            reply = await server.call("POST", "/dial", {"address": ADDR_A})
            assert reply.status == status, exc
            if status != 500:
                assert str(exc) in reply.json()["error"]
        fake.fail = None
        # The server survived a handler bug.
        assert (await server.call("GET", "/status")).status == 200


@pytest.mark.anyio
async def test_unknown_route_404_and_wrong_method_405(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        assert (await server.call("GET", "/nope")).status == 404
        assert (await server.call("GET", "/")).status == 404
        reply = await server.call("POST", "/status", {})
        assert (reply.status, reply.headers["allow"]) == (405, "GET")
        reply = await server.call("GET", "/dial")
        assert (reply.status, reply.headers["allow"]) == (405, "POST")
        assert (await server.call("DELETE", "/ban")).status == 405
        # Query strings and a trailing slash are tolerated.
        assert (await server.call("GET", "/status/?verbose=1")).status == 200
        assert server.control.calls == [("status", None)]


# -- hostile HTTP -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_oversized_body_is_413_and_server_keeps_serving(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        big = json.dumps({"address": "x" * 100_000}).encode()
        reply = await server.call("POST", "/dial", raw_body=big)
        assert reply.status == 413
        # Announced too big: rejected before the body is read.
        reply = await server.raw(
            b"POST /dial HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 999999999999\r\n\r\n{"
        )
        assert reply.status == 413
        # Chunked, no length announced.
        chunk = b"x" * 40_000
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        reply = await server.raw(
            b"POST /dial HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        )
        assert reply.status == 413
        assert server.control.calls == []
        assert (await server.call("GET", "/status")).status == 200


@pytest.mark.anyio
async def test_malformed_http_is_400_and_server_keeps_serving(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        for garbage in (
            b"GARBAGE\r\n\r\n",
            b"GET /status HTTP/1.1\r\nHost x\r\n\r\n",
            b"\x00\x01\x02\xff\r\n\r\n",
            b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"GET /status HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        ):
            reply = await server.raw(garbage)
            assert reply.status == 400, garbage
        reply = await server.raw(b"GET /status HTTP/9.9\r\nHost: x\r\n\r\n")
        assert reply.status == 505
        reply = await server.raw(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
        assert reply.status in (400, 431)
        # A client that connects and says nothing, then goes away.
        stream = await server.connect()
        await stream.aclose()
        assert (await server.call("GET", "/status")).status == 200


@pytest.mark.anyio
async def test_keep_alive_serves_several_requests(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        first = b"GET /status HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
        second = b"GET /peers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n"
        reply_data = b""
        stream = await server.connect()
        async with stream:
            await stream.send(first + second)  # pipelined
            with anyio.fail_after(5):
                while True:
                    try:
                        reply_data += await stream.receive()
                    except anyio.EndOfStream:
                        break
        assert reply_data.count(b"HTTP/1.1 200") == 2
        assert server.control.calls == [("status", None), ("peers", None)]


@pytest.mark.anyio
async def test_stalled_request_times_out_with_408(tmp_path: Path) -> None:
    config = HttpServerConfig(read_timeout=0.1)
    async with running(tmp_path, config=config) as server:
        # An incomplete request: the server answers 408 and closes.
        reply = await server.raw(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        assert reply.status == 408


@pytest.mark.anyio
async def test_connections_beyond_the_limit_get_503(tmp_path: Path) -> None:
    config = HttpServerConfig(max_connections=1, read_timeout=30)
    async with running(tmp_path, config=config) as server:
        holder = await server.connect()
        async with holder:
            await holder.send(b"GET /status HTTP/1.1\r\n")  # incomplete: holds the slot
            reply = await server.call("GET", "/status")
            assert reply.status == 503
            await holder.send(
                b"Host: x\r\nConnection: close\r\nAuthorization: Bearer "
                + TOKEN.encode() + b"\r\n\r\n"
            )
            data = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        data += await holder.receive()
                    except anyio.EndOfStream:
                        break
            assert parse_reply(data).status == 200
        # The slot is free again.
        with anyio.fail_after(5):
            while (reply := await server.call("GET", "/status")).status == 503:
                await anyio.lowlevel.checkpoint()
        assert reply.status == 200


# -- Unix socket ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unix_socket_mode(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    async with running(tmp_path, unix=True) as server:
        assert server.url == f"unix:{sock}"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert (await server.call("GET", "/status", token=None)).status == 401
        reply = await server.call("POST", "/ban", {"target": ID_A, "duration": 60})
        assert reply.status == 200
        assert server.control.calls == [("ban", (ID_A, 60.0))]
    assert not sock.exists()


@pytest.mark.anyio
@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
async def test_ipv6_loopback(tmp_path: Path) -> None:
    fake = FakeControl()

    async def run(*, task_status: anyio.abc.TaskStatus[str]) -> None:
        await serve_admin(fake, listen="[::1]:0", unix_socket=None, token=TOKEN,
                          task_status=task_status)

    async with anyio.create_task_group() as tg:
        url = await tg.start(run)
        assert url.startswith("http://[::1]:")
        port = int(url.rpartition(":")[2])
        async with await anyio.connect_tcp("::1", port) as stream:
            await stream.send(f"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            data = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        data += await stream.receive()
                    except anyio.EndOfStream:
                        break
        assert parse_reply(data).status == 200
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_only_loopback_may_be_bound(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:0", "192.0.2.1:0", "example.com:0", "nonsense", "127.0.0.1:99999"):
        with pytest.raises(ConfigError):
            await serve_admin(FakeControl(), listen=listen, unix_socket=None, token=TOKEN)


# -- tokens and admin.json --------------------------------------------------------------------


def test_token_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "admin_token"
    token = load_or_create_token(path)
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == token
    other = load_or_create_token(tmp_path / "other")
    assert other != token


def test_token_file_permissions_tightened_and_bad_files_rejected(tmp_path: Path) -> None:
    path = tmp_path / "admin_token"
    path.write_text("operator-chosen-secret\n")
    path.chmod(0o644)
    assert load_or_create_token(path) == "operator-chosen-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for content in ("", "  \n", "two words"):
        path.write_text(content)
        with pytest.raises(ConfigError):
            load_or_create_token(path)
    with pytest.raises(ConfigError):
        AdminApp(FakeControl(), "")


def test_admin_info_written_atomically_and_removed(tmp_path: Path) -> None:
    target = write_admin_info(tmp_path, "http://127.0.0.1:4321")
    assert json.loads(target.read_text()) == {"url": "http://127.0.0.1:4321"}
    write_admin_info(tmp_path, "unix:/run/overlay.sock", token_file=tmp_path / "tok")
    assert json.loads(target.read_text()) == {
        "unix_socket": "/run/overlay.sock", "token_file": str(tmp_path / "tok")
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin.json"]
    remove_admin_info(tmp_path)
    remove_admin_info(tmp_path)
    assert not target.exists()


def test_parse_ban_target() -> None:
    assert parse_ban_target(ID_A.upper()) == ID_A
    assert parse_ban_target(" 10.0.0.1 ") == "10.0.0.1"
    assert parse_ban_target("[2001:DB8::1]") == "2001:db8::1"
    for bad in ("", "10.0.0", "1" * 39, "host.example"):
        with pytest.raises(InvalidAddressError):
            parse_ban_target(bad)


@pytest.mark.anyio
async def test_app_rejects_without_network(tmp_path: Path) -> None:
    """The application alone (no HTTP): a quick check of header parsing edge cases."""
    app = AdminApp(FakeControl(), TOKEN)
    request = Request("GET", "/status", "", {"authorization": f"bearer   {TOKEN}  "}, b"")
    assert (await app(request)).status == 200
    request = Request("GET", "/status", "", {"authorization": "Bearer é" + TOKEN}, b"")
    assert (await app(request)).status == 401
