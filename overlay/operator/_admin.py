"""The local admin API: HTTP/JSON on loopback TCP or a Unix socket, bearer-token protected.

Theory of operation
-------------------
:func:`serve_admin` binds a loopback ``HOST:PORT`` (port 0 picks a free one) or a Unix socket
(mode 0600), reports its URL through ``task_status`` (``http://127.0.0.1:PORT`` or
``unix:/abs/path``; pass it to :func:`write_admin_info` so the CLI can find the node) and serves
:class:`AdminApp` with :mod:`overlay.operator._http` until cancelled.

Every request must carry ``Authorization: Bearer <token>``; the token lives in a 0600 file in the
node home (:func:`load_or_create_token`) and is compared with :func:`hmac.compare_digest`.
Authentication is checked before routing, so an unauthenticated client learns nothing.

Routes (JSON in, JSON out)::

    GET  /status                                         Control.status()
    GET  /peers                                          Control.peers()   -> {"peers": [...]}
    POST /dial        {"address": str, "persistent": bool = false}
    POST /disconnect  {"id": str}
    POST /ban         {"target": node id | IP, "duration": seconds > 0 | null = default}
    POST /unban       {"target": node id | IP}
    POST /seeds       {"address": str}                   add a seed
    POST /seeds/remove       {"address": ADDR | node id} remove a seed added at run time
    GET  /bans                                           Control.bans()  (peers and IPs)
    GET  /seeds                                          Control.seeds()
    GET  /persistent                                     Control.persistent()
    POST /persistent/add     {"address": str}            mark persistent (stored), dial it
    POST /persistent/remove  {"id": str}                 clear the operator's persistent flag
    GET  /capabilities                                   Control.capabilities() (our record)
    POST /capabilities/set     {"capabilities": [str]}   advertise NAME / NAME=VERSION (live)
    POST /capabilities/remove  {"name": str}             stop advertising NAME (live)

Input is validated here before :class:`~overlay.operator._control.Control` sees it (JSON object,
known
fields only, right types, addresses / ids / IPs that parse). Statuses: 200 success; 400 bad input
(:class:`BadRequestError`, ``InvalidAddressError`` or another ``LocalProtocolError`` from
Control); 401 missing/wrong token; 404 unknown route or
:class:`~overlay.operator._control.UnknownPeerError`; 405 wrong method; 409 :class:`ConflictError`
(the
request is valid but the node's state forbids it: :class:`PeerBannedError` when dialing a banned
peer); 413 body over 64 KiB; 502 any other ``OverlayError`` (dial failures, timeouts); 500 a bug
(logged). Errors are ``{"error": message, "kind": name}`` where ``kind`` is the name of a public
exception class (never a private one: see :func:`error_kind`), or ``HttpError`` for failures of
the HTTP exchange itself (token, route, method).
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import logging
import math
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from overlay.address import NodeAddress
from overlay.connection._observer import Observer
from overlay.errors import (
    ConfigError,
    InvalidAddressError,
    LocalProtocolError,
    OverlayError,
)
from overlay.identity import parse_node_id
from overlay.operator._control import (
    BadRequestError,
    ConflictError,
    Control,
    PeerBannedError,
    UnknownCapabilityError,
    UnknownPeerError,
    parse_ban_target,
    parse_capability,
)
from overlay.operator._http import (
    HttpServerConfig,
    Request,
    Response,
    open_http_listener,
    serve_http,
)

__all__ = [
    "ADMIN_INFO_FILE",
    "AdminApp",
    "BadRequestError",
    "ConflictError",
    "PeerBannedError",
    "error_kind",
    "load_or_create_token",
    "parse_ban_target",
    "remove_admin_info",
    "serve_admin",
    "write_admin_info",
]

log = logging.getLogger("overlay.admin")

ADMIN_INFO_FILE = "admin.json"
"""Name of the file in the node home that tells the CLI where the admin API listens."""

_TOKEN_BYTES = 32
_MAX_CAPABILITY_ITEMS = 32
"""Capabilities one ``/capabilities/set`` may name (a record holds at most 32)."""


# -- token and admin.json --------------------------------------------------------------------


def load_or_create_token(path: Path) -> str:
    """Read the admin token from ``path``, or create it (32 random bytes, hex, mode 0600).

    An existing file readable by group/others is tightened to 0600 (with a warning). An empty or
    malformed token file raises :class:`ConfigError`.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError("admin.token_file", f"cannot create {path}: {exc}") from exc
    else:
        token = secrets.token_hex(_TOKEN_BYTES)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("admin token file %s had mode %o; setting 0600", path, mode)
            path.chmod(0o600)
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("admin.token_file", f"cannot read {path}: {exc}") from exc
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("admin.token_file", f"{path} does not hold a valid token")
    return token


def write_admin_info(home: Path, url: str, *, token_file: Path | None = None) -> Path:
    """Write ``HOME/admin.json`` atomically so that the CLI finds the running node.

    ``url`` is what :func:`serve_admin` reported: ``http://HOST:PORT`` gives ``{"url": ...}``,
    ``unix:/path`` gives ``{"unix_socket": "/path"}``. ``token_file`` (when not the default
    ``HOME/admin_token``) is recorded too.
    """
    info: dict[str, str] = {}
    if url.startswith("unix:"):
        info["unix_socket"] = url[len("unix:"):]
    else:
        info["url"] = url
    if token_file is not None:
        info["token_file"] = str(token_file.expanduser().absolute())
    target = home / ADMIN_INFO_FILE
    tmp = home / (ADMIN_INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, target)
    return target


def remove_admin_info(home: Path) -> None:
    """Remove ``HOME/admin.json`` (on shutdown); no error if it is already gone."""
    try:
        (home / ADMIN_INFO_FILE).unlink()
    except FileNotFoundError:
        pass


# -- input validation ------------------------------------------------------------------------


def _json_body(request: Request, fields: Mapping[str, bool]) -> dict[str, Any]:
    """The body as a JSON object with only ``fields`` (name → required)."""
    try:
        data = json.loads(request.body.decode("utf-8")) if request.body.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(name for name, required in fields.items() if required and name not in data)
    if missing:
        raise BadRequestError(f"missing field(s): {', '.join(missing)}")
    return data


def _string(data: Mapping[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value.strip():
        raise BadRequestError(f"field {name!r} must be a non-empty string")
    if len(value) > 1024:
        raise BadRequestError(f"field {name!r} is too long")
    return value.strip()


def _address(data: Mapping[str, Any], name: str) -> str:
    text = _string(data, name)
    NodeAddress.parse(text)  # raises InvalidAddressError -> 400
    return text


def _bool(data: Mapping[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise BadRequestError(f"field {name!r} must be true or false")
    return value


def _duration(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequestError(f"field {name!r} must be a number of seconds or null")
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise BadRequestError(f"field {name!r} must be a positive number of seconds")
    return seconds


# -- responses -------------------------------------------------------------------------------


def _jsonable(value: object) -> object:
    """``json.dumps`` fallback for the value types a Control is likely to return."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path | bytes):
        return value.hex() if isinstance(value, bytes) else str(value)
    return str(value)


def _json(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, default=_jsonable).encode() + b"\n"
    return Response(status, body, "application/json", headers)


def error_kind(exc: BaseException | str) -> str:
    """The ``kind`` of an error answer: the exception's class name, or that of its nearest
    public base class if the class is private (``_Something``); ``HttpError`` for a message."""
    if not isinstance(exc, BaseException):
        return "HttpError"
    for cls in type(exc).__mro__:
        if not cls.__name__.startswith("_"):
            return cls.__name__
    return "OverlayError"  # pragma: no cover - object is public


def _error(status: int, exc: BaseException | str, **extra: str) -> Response:
    headers = tuple(extra.items())
    return _json(status, {"error": str(exc), "kind": error_kind(exc)}, headers)


# -- the application -------------------------------------------------------------------------

_Route = Callable[[Request], Awaitable[object]]


class AdminApp:
    """The admin API as an :mod:`overlay.operator._http` handler (auth, routing, validation,
    errors)."""

    def __init__(self, control: Control, token: str) -> None:
        if not token:
            raise ConfigError("admin.token_file", "the admin token must not be empty")
        self._control = control
        self._token = token.encode()
        self._routes: dict[str, dict[str, _Route]] = {
            "/status": {"GET": self._status},
            "/peers": {"GET": self._peers},
            "/dial": {"POST": self._dial},
            "/disconnect": {"POST": self._disconnect},
            "/ban": {"POST": self._ban},
            "/unban": {"POST": self._unban},
            "/bans": {"GET": self._bans},
            "/seeds": {"GET": self._seeds_list, "POST": self._seeds},
            "/seeds/remove": {"POST": self._seeds_remove},
            "/persistent": {"GET": self._persistent},
            "/persistent/add": {"POST": self._persistent_add},
            "/persistent/remove": {"POST": self._persistent_remove},
            "/targets": {"GET": self._targets},
            "/targets/set": {"POST": self._targets_set},
            "/targets/remove": {"POST": self._targets_remove},
            "/capabilities": {"GET": self._capabilities},
            "/capabilities/set": {"POST": self._capabilities_set},
            "/capabilities/remove": {"POST": self._capabilities_remove},
            "/providers": {"POST": self._providers},
        }
        """Path -> method -> handler."""

    def routes(self) -> list[str]:
        """Every route as ``METHOD /path`` (what docs/operator-guide.md documents)."""
        return [f"{method} {path}" for path, methods in self._routes.items() for method in methods]

    def _authorized(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = credentials.strip().encode("utf-8", "replace")
        return hmac.compare_digest(given, self._token)

    async def __call__(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        methods = self._routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            return _error(404, f"no such endpoint: {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(methods)
            return _error(405, f"{request.path} takes {allow}", Allow=allow)
        try:
            result = await handler(request)
        except (UnknownPeerError, UnknownCapabilityError) as exc:
            return _error(404, exc)
        except ConflictError as exc:
            return _error(409, exc)
        except LocalProtocolError as exc:
            return _error(400, exc)
        except OverlayError as exc:  # logged by the route (``_logged``)
            return _error(502, exc)
        return _json(200, {} if result is None else result)

    async def _status(self, request: Request) -> object:
        return self._control.status()

    async def _peers(self, request: Request) -> object:
        return {"peers": self._control.peers()}

    async def _providers(self, request: Request) -> object:
        data = _json_body(request, {"capability": True})
        return await self._control.providers(_string(data, "capability"))

    async def _dial(self, request: Request) -> object:
        data = _json_body(request, {"address": True, "persistent": False})
        address = _address(data, "address")
        persistent = _bool(data, "persistent", False)
        return await _logged(f"dial {address} persistent={persistent}",
                             {"peer": _peer_of(address)},
                             self._control.dial(address, persistent=persistent))

    async def _disconnect(self, request: Request) -> object:
        data = _json_body(request, {"id": True})
        node_id = str(parse_node_id(_string(data, "id")))
        return await _logged(f"disconnect {node_id}", {"peer": node_id},
                             self._control.disconnect(node_id))

    async def _ban(self, request: Request) -> object:
        data = _json_body(request, {"target": True, "duration": False})
        target = parse_ban_target(_string(data, "target"))
        duration = _duration(data, "duration")
        return await _logged(f"ban {target} duration={duration}", _target_extra(target),
                             self._control.ban(target, duration=duration))

    async def _unban(self, request: Request) -> object:
        data = _json_body(request, {"target": True})
        target = parse_ban_target(_string(data, "target"))
        return await _logged(f"unban {target}", _target_extra(target),
                             self._control.unban(target))

    async def _bans(self, request: Request) -> object:
        return self._control.bans()

    async def _seeds_list(self, request: Request) -> object:
        return self._control.seeds()

    async def _persistent(self, request: Request) -> object:
        return self._control.persistent()

    async def _persistent_add(self, request: Request) -> object:
        data = _json_body(request, {"address": True})
        address = _address(data, "address")
        log.info("admin: add persistent peer %s", address, extra={"peer": _peer_of(address)})
        return await self._control.add_persistent(address)

    async def _seeds(self, request: Request) -> object:
        data = _json_body(request, {"address": True})
        address = _address(data, "address")
        return await _logged(f"add seed {address}", {"peer": _peer_of(address)},
                             self._control.add_seed(address))

    async def _seeds_remove(self, request: Request) -> object:
        data = _json_body(request, {"address": True})
        text = _string(data, "address")
        try:
            seed = str(parse_node_id(text))
        except InvalidAddressError:
            seed = _address(data, "address")
        return await _logged(f"remove seed {seed}", {"peer": _peer_of(seed)},
                             self._control.remove_seed(seed))

    async def _persistent_remove(self, request: Request) -> object:
        data = _json_body(request, {"id": True})
        node_id = str(parse_node_id(_string(data, "id")))
        return await _logged(f"remove persistent flag of {node_id}", {"peer": node_id},
                             self._control.remove_persistent(node_id))

    async def _capabilities(self, request: Request) -> object:
        return self._control.capabilities()

    async def _capabilities_set(self, request: Request) -> object:
        data = _json_body(request, {"capabilities": True})
        items = data["capabilities"]
        if (not isinstance(items, list) or not items or len(items) > _MAX_CAPABILITY_ITEMS
                or not all(isinstance(i, str) for i in items)):
            raise BadRequestError(
                f"field 'capabilities' must be a list of 1 to {_MAX_CAPABILITY_ITEMS} strings"
            )
        parsed = [parse_capability(text) for text in items]  # LocalProtocolError -> 400
        texts = [f"{name}={version}" for name, version in parsed]
        return await _logged(f"set capabilities {' '.join(texts)}", {},
                             self._control.set_capabilities(texts))

    async def _capabilities_remove(self, request: Request) -> object:
        data = _json_body(request, {"name": True})
        name, _ = parse_capability(_string(data, "name"))
        return await _logged(f"remove capability {name}", {},
                             self._control.remove_capability(name))


    async def _targets(self, request: Request) -> object:
        return self._control.targets()

    async def _targets_set(self, request: Request) -> object:
        data = _json_body(request, {"capability": True, "set": True})
        capability = _string(data, "capability")
        words = data["set"]
        if (not isinstance(words, list) or not words or len(words) > 8
                or not all(isinstance(w, str) and len(w) <= 64 for w in words)):
            raise BadRequestError("field 'set' must be a list of 1 to 8 key=value strings")
        return await _logged(f"set target {capability} {' '.join(words)}", {},
                             self._control.set_target(capability, list(words)))

    async def _targets_remove(self, request: Request) -> object:
        data = _json_body(request, {"capability": True})
        capability = _string(data, "capability")
        return await _logged(f"remove target {capability}", {},
                             self._control.remove_target(capability))


async def _logged(action: str, extra: Mapping[str, str], call: Awaitable[object]) -> object:
    """Run an operator action and log it once it is over: ``admin: ACTION`` when it was done,
    ``admin: ACTION failed: REASON`` when the node refused it or it failed."""
    try:
        result = await call
    except OverlayError as exc:
        log.info("admin: %s failed: %s", action, exc, extra=extra)
        raise
    log.info("admin: %s", action, extra=extra)
    return result


def _peer_of(text: str) -> str:
    """The node id in a (validated) address or node id."""
    try:
        return str(parse_node_id(text))
    except InvalidAddressError:
        return str(NodeAddress.parse(text).node_id)


def _target_extra(target: str) -> dict[str, str]:
    """Log fields of a ban target: ``peer`` for a node id, ``ip`` for an IP address."""
    try:
        return {"peer": str(parse_node_id(target))}
    except InvalidAddressError:
        return {"ip": target}


async def serve_admin(
    control: Control,
    *,
    listen: str,
    unix_socket: Path | None,
    token: str,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    config: HttpServerConfig | None = None,
    observer: Observer | None = None,
) -> None:
    """Serve the admin API until cancelled (``observer``: see :func:`serve_http`).

    Binds ``listen`` (loopback ``HOST:PORT`` only; port 0 allowed) or, when given, the Unix
    socket ``unix_socket`` (created with mode 0600, removed on exit). Calls
    ``task_status.started(url)`` with ``http://HOST:PORT`` or ``unix:/abs/path``. Bad or
    non-loopback addresses and bind failures raise :class:`ConfigError`.
    """
    app = AdminApp(control, token)
    key = "admin.unix_socket" if unix_socket is not None else "admin.listen"
    listener, url = await open_http_listener(
        listen, unix_socket=unix_socket, loopback_only=True, key=key
    )
    log.info("admin API listening on %s", url)
    try:
        async with listener:
            task_status.started(url)
            await serve_http(app, listener, config, observer=observer)
    finally:
        if url.startswith("unix:"):
            _unlink_socket(Path(url[len("unix:"):]))


def _unlink_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except OSError:
        pass
