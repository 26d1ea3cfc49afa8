"""Error answers of the admin API carry a stable, public ``kind`` and the right status."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from overlay.errors import DialError, InvalidAddressError, LocalProtocolError
from overlay.operator._admin import AdminApp, error_kind
from overlay.operator._control import (
    BadRequestError,
    ConflictError,
    PeerBannedError,
    UnknownPeerError,
)
from overlay.operator._http import Request, Response

TOKEN = "t" * 64
ID = "3" * 40
ADDR = f"{ID}@127.0.0.1:26656"


class Refusing:
    """A Control whose every action fails with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def status(self) -> dict[str, Any]:
        return {}

    def peers(self) -> list[dict[str, Any]]:
        return []

    def bans(self) -> dict[str, Any]:
        return {"bans": []}

    def seeds(self) -> dict[str, Any]:
        return {"seeds": []}

    def persistent(self) -> dict[str, Any]:
        return {"persistent": []}

    async def _fail(self, *args: object, **kwargs: object) -> dict[str, Any]:
        raise self.error

    def capabilities(self) -> dict[str, Any]:
        return {}

    dial = disconnect = ban = unban = add_seed = remove_seed = providers = _fail
    add_persistent = remove_persistent = set_capabilities = remove_capability = _fail


async def _call(app: AdminApp, path: str, body: bytes) -> Response:
    request = Request("POST", path, "", {"authorization": f"Bearer {TOKEN}"}, body)
    return await app(request)


def _kind(response: Response) -> tuple[int, str]:
    data = json.loads(response.body)
    assert isinstance(data["error"], str) and data["error"]
    return response.status, data["kind"]


@pytest.mark.anyio
async def test_bad_bodies_are_bad_request_errors_not_private_names() -> None:
    app = AdminApp(Refusing(RuntimeError("unreachable")), TOKEN)
    for path, body in [
        ("/dial", b"{not json"),
        ("/dial", b"[]"),
        ("/dial", b'{"address": "' + ADDR.encode() + b'", "extra": 1}'),
        ("/dial", b"{}"),
        ("/ban", b'{"target": "' + ID.encode() + b'", "duration": "10m"}'),
        ("/seeds/remove", b'{"address": 5}'),
        ("/persistent/remove", b'{"address": "x"}'),
    ]:
        assert _kind(await _call(app, path, body)) == (400, "BadRequestError"), (path, body)
    assert _kind(await _call(app, "/dial", b'{"address": "nope"}')) == (
        400, "InvalidAddressError"
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PeerBannedError(f"cannot dial {ADDR}: node {ID} is banned"), (409, "PeerBannedError")),
        (ConflictError("config.toml lists it"), (409, "ConflictError")),
        (UnknownPeerError("not a seed"), (404, "UnknownPeerError")),
        (InvalidAddressError("that is this node's own id"), (400, "InvalidAddressError")),
        (DialError("refused"), (502, "DialError")),
    ],
)
async def test_control_errors_map_to_status_and_kind(
    error: BaseException, expected: tuple[int, str]
) -> None:
    app = AdminApp(Refusing(error), TOKEN)
    for path, body in [
        ("/dial", json.dumps({"address": ADDR}).encode()),
        ("/seeds/remove", json.dumps({"address": ID}).encode()),
        ("/persistent/remove", json.dumps({"id": ID}).encode()),
    ]:
        response = await _call(app, path, body)
        assert _kind(response) == expected
        assert json.loads(response.body)["error"] == str(error)


class Accepting(Refusing):
    """A Control whose every action succeeds."""

    async def _ok(self, *args: object, **kwargs: object) -> dict[str, Any]:
        return {}

    dial = disconnect = ban = unban = add_seed = remove_seed = remove_persistent = _ok
    set_capabilities = remove_capability = _ok


@pytest.mark.anyio
async def test_actions_are_logged_with_their_outcome(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="overlay.admin")
    refused = AdminApp(Refusing(UnknownPeerError(f"{ID} is not a seed")), TOKEN)
    assert (await _call(refused, "/seeds/remove", json.dumps({"address": ID}).encode())).status \
        == 404
    failed = AdminApp(Refusing(DialError("connection refused")), TOKEN)
    assert (await _call(failed, "/dial", json.dumps({"address": ADDR}).encode())).status == 502
    done = AdminApp(Accepting(RuntimeError("unused")), TOKEN)
    assert (await _call(done, "/seeds/remove", json.dumps({"address": ID}).encode())).status \
        == 200
    # A refused removal used to be logged as "admin: remove seed ID", exactly like a done one.
    assert [(r.getMessage(), getattr(r, "peer", None)) for r in caplog.records] == [
        (f"admin: remove seed {ID} failed: {ID} is not a seed", ID),
        (f"admin: dial {ADDR} persistent=False failed: connection refused", ID),
        (f"admin: remove seed {ID}", ID),
    ]


def test_error_kind_never_names_a_private_class() -> None:
    class _Private(LocalProtocolError):
        pass

    class _Deeper(_Private):
        pass

    assert error_kind(_Deeper("x")) == "LocalProtocolError"
    assert error_kind(BadRequestError("x")) == "BadRequestError"
    assert error_kind("a message") == "HttpError"
