"""A small synchronous client of the admin API (used by the ``overlay`` CLI).

It finds the node through ``HOME/admin.json`` (written by the running node:
``{"url": "http://127.0.0.1:PORT"}`` or ``{"unix_socket": "/path"}``, optionally with
``"token_file"``) and authenticates with the token in ``HOME/admin_token`` (or the recorded
``token_file``). Every failure raises :class:`AdminError` with a message meant for an operator.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from overlay.errors import OverlayError
from overlay.operator._admin import ADMIN_INFO_FILE

__all__ = ["AdminClient", "AdminError"]

DEFAULT_TOKEN_FILE = "admin_token"
_MAX_RESPONSE = 64 * 1024 * 1024


class AdminError(OverlayError):
    """The admin API could not be reached, or it answered with an error.

    ``status`` is the HTTP status of an error answer (None when the node was not reached).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` over a Unix stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class _Target:
    host: str = ""
    port: int = 0
    unix_socket: str = ""

    def describe(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class AdminClient:
    """Calls the admin API of one node. Methods return the decoded JSON answer."""

    def __init__(
        self, *, token: str, url: str = "", unix_socket: str = "", timeout: float = 60.0
    ) -> None:
        if bool(url) == bool(unix_socket):
            raise AdminError("give exactly one of url and unix_socket")
        if unix_socket:
            self._target = _Target(unix_socket=unix_socket)
        else:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme != "http" or not parts.hostname or port is None:
                raise AdminError(f"invalid admin url {url!r}: expected http://HOST:PORT")
            self._target = _Target(host=parts.hostname, port=port)
        self._token = token
        self._timeout = timeout

    @classmethod
    def from_home(cls, home: Path, *, timeout: float = 60.0) -> AdminClient:
        """A client for the node whose home is ``home`` (reads admin.json and the token)."""
        info_path = home / ADMIN_INFO_FILE
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise AdminError(
                f"node not running? no {ADMIN_INFO_FILE} in {home} "
                "(is the admin API enabled and is this the right --home?)"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AdminError(f"cannot read {info_path}: {exc}") from None
        if not isinstance(info, dict):
            raise AdminError(f"{info_path} is not a JSON object")
        url, unix_socket, token_file = (info.get(k, "") for k in ("url", "unix_socket",
                                                                  "token_file"))
        if not all(isinstance(v, str) for v in (url, unix_socket, token_file)):
            raise AdminError(f"{info_path} has fields of the wrong type")
        token_path = Path(token_file) if token_file else home / DEFAULT_TOKEN_FILE
        try:
            token = token_path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(f"cannot read the admin token {token_path}: {exc}") from None
        if not token:
            raise AdminError(f"the admin token file {token_path} is empty")
        if not url and not unix_socket:
            raise AdminError(f"{info_path} has neither url nor unix_socket")
        return cls(token=token, url=url, unix_socket=unix_socket, timeout=timeout)

    @property
    def address(self) -> str:
        """Where the node is reached (for messages)."""
        return self._target.describe()

    def _connection(self) -> http.client.HTTPConnection:
        if self._target.unix_socket:
            return _UnixHTTPConnection(self._target.unix_socket, self._timeout)
        return http.client.HTTPConnection(self._target.host, self._target.port,
                                          timeout=self._timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON answer or raise :class:`AdminError`."""
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read(_MAX_RESPONSE)
            status = response.status
        except TimeoutError:
            raise AdminError(f"the node at {self.address} did not answer in time") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(
                f"cannot reach the node at {self.address}: {exc} (is it running?)"
            ) from None
        finally:
            conn.close()
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, ValueError):
            data = None
        if status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            if not isinstance(message, str):
                message = raw.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"
            if status == 401:
                message += " (check the admin token file)"
            raise AdminError(message, status)
        if data is None:
            raise AdminError(f"the node at {self.address} sent an invalid answer")
        return data

    def _object(self, answer: Any) -> dict[str, Any]:
        if not isinstance(answer, dict):
            raise AdminError(f"the node at {self.address} sent an invalid answer")
        return answer

    # -- one method per route ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._object(self.request("GET", "/status"))

    def peers(self) -> list[dict[str, Any]]:
        answer = self.request("GET", "/peers")
        peers = answer.get("peers") if isinstance(answer, dict) else None
        if not isinstance(peers, list):
            raise AdminError(f"the node at {self.address} sent an invalid peer list")
        return peers

    def dial(self, address: str, *, persistent: bool = False) -> dict[str, Any]:
        return self._object(self.request("POST", "/dial",
                                 {"address": address, "persistent": persistent}))

    def providers(self, capability: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/providers", {"capability": capability}))

    def disconnect(self, node_id: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/disconnect", {"id": node_id}))

    def ban(self, target: str, *, duration: float | None = None) -> dict[str, Any]:
        return self._object(self.request("POST", "/ban", {"target": target, "duration": duration}))

    def unban(self, target: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/unban", {"target": target}))

    def add_seed(self, address: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/seeds", {"address": address}))

    def remove_seed(self, address: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/seeds/remove", {"address": address}))

    def bans(self) -> list[dict[str, Any]]:
        return self._list("/bans", "bans")

    def seeds(self) -> list[dict[str, Any]]:
        return self._list("/seeds", "seeds")

    def persistent(self) -> list[dict[str, Any]]:
        return self._list("/persistent", "persistent")

    def add_persistent(self, address: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/persistent/add", {"address": address}))

    def _list(self, path: str, key: str) -> list[dict[str, Any]]:
        answer = self.request("GET", path)
        items = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise AdminError(f"the node at {self.address} sent an invalid {key} list")
        return items

    def remove_persistent(self, node_id: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/persistent/remove", {"id": node_id}))

    def capabilities(self) -> dict[str, Any]:
        return self._object(self.request("GET", "/capabilities"))

    def set_capabilities(self, items: list[str]) -> dict[str, Any]:
        return self._object(self.request("POST", "/capabilities/set", {"capabilities": items}))

    def remove_capability(self, name: str) -> dict[str, Any]:
        return self._object(self.request("POST", "/capabilities/remove", {"name": name}))
