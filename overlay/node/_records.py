"""The node's own signed capability record: ``node.capabilities``.

Theory of operation
-------------------
A node advertises what it serves in one signed :class:`~discovery.CapabilityRecord` (see
docs/discovery.md): its capabilities, its advertised addresses, a sequence number and a
lifetime of ``[discovery] record_ttl`` seconds. :class:`NodeCapabilities` owns that record:

* **Where capabilities come from.** ``[discovery] capabilities`` (``NAME`` or
  ``NAME=VERSION``) at start, and the API while running: :meth:`~NodeCapabilities.set`,
  :meth:`~NodeCapabilities.remove`, :meth:`~NodeCapabilities.replace` (``overlay capabilities``
  calls them through the admin API). Reading: ``node.capabilities`` is a read-only mapping
  ``name -> CapabilityInfo`` (:meth:`~NodeCapabilities.current` is a snapshot).
* **Signing.** Every change re-signs at once with a new ``seq`` (:func:`discovery.next_seq`:
  ``max(previous + 1, unix_ms(now))``, the previous seq persisted, so a restart never goes
  backwards even if the clock did). The record is re-signed unchanged at half its lifetime
  (:func:`refresh_delay`), well before it expires. Before the node starts nothing is signed
  (the addresses are not known yet); the first record is signed once the listeners are bound.
* **Pushing.** Each new record goes into the node's NodeInfo (``node.update_local_info``):
  connected peers get it in a node-info update at once, paced by the update rate of
  docs/protocol.md section 9.1 (at most 8 back to back, then 2 per second, the newest kept);
  new connections get it in the hello.
* **Listeners.** :meth:`~NodeCapabilities.subscribe` registers ``listener(RecordChanged)``,
  called (synchronously) for every new record; the DHT re-provides when
  ``capabilities_changed`` says the set changed (and may refresh its provider records on the
  periodic re-sign too).
* **Addresses.** Records carry ``HOST:PORT`` with IP-literal hosts only: the node's advertised
  ``tcp`` addresses (never unspecified, see ``overlay.node._advertise``), at most
  ``MAX_ADDRESSES``; host names and memory-network addresses are left out. A node on the
  memory network therefore signs a record with **no addresses**: its peers reach it through
  the connection they have, or by the ``memory:ID`` address its hello lists.
* **Persistence** (a node with a home): ``HOME/data_dir/capabilities.json`` holds the last seq,
  the capabilities and where they came from. An operator's live change is written at once
  (a tiny file, replaced atomically). At start the persisted set wins over ``config.toml``
  **unless** ``[discovery] capabilities`` changed since that set was saved: the file remembers
  the configured list it was based on, so whichever the operator changed last wins. A file
  that does not parse is a :class:`~overlay.errors.ConfigError` naming it.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio

from discovery import (
    MAX_ADDRESSES,
    CapabilityInfo,
    RecordError,
    SignedRecord,
    next_seq,
    parse_record_address,
    sign_record,
    valid_capability_name,
)
from overlay.address import NodeAddress
from overlay.errors import ConfigError, LocalProtocolError
from overlay.identity import NodeKey
from overlay.operator._control import parse_capability

__all__ = [
    "CAPABILITIES_FILE",
    "CapabilityOrigin",
    "NodeCapabilities",
    "RecordChanged",
    "record_addresses",
    "refresh_delay",
]

log = logging.getLogger("overlay.records")

CAPABILITIES_FILE = "capabilities.json"
"""The node's capabilities and last record seq, in ``data_dir``."""
_FORMAT = 1


class CapabilityOrigin(enum.Enum):
    """Where the node's current capability set comes from (the value is shown to operators)."""

    CONFIG = "config"
    """``[discovery] capabilities`` in config.toml."""
    OPERATOR = "operator"
    """Changed while running (API or ``overlay capabilities``), persisted in the home."""


@dataclass(frozen=True, slots=True)
class RecordChanged:
    """The node signed a new record (told to :meth:`NodeCapabilities.subscribe` listeners)."""

    record: SignedRecord
    previous: SignedRecord | None
    capabilities_changed: bool
    """The capability set differs from the previous record's (False: a periodic re-sign)."""


Listener = Callable[[RecordChanged], None]


def record_addresses(advertised: Sequence[NodeAddress]) -> tuple[str, ...]:
    """The advertised addresses a record may carry: ``tcp`` ones with an IP-literal host that
    passes the record's address rules, first ``MAX_ADDRESSES``, in order."""
    out: list[str] = []
    for address in advertised:
        if address.protocol != "tcp":
            continue
        text = str(address).partition("@")[2]
        try:
            parse_record_address(text, address.node_id)
        except RecordError:
            continue  # a host name, or not dialable by others
        if text not in out:
            out.append(text)
    return tuple(out[:MAX_ADDRESSES])


def refresh_delay(record: SignedRecord, now: float) -> float:
    """Seconds from ``now`` until the record should be re-signed: half its lifetime after it
    was issued (``record_ttl`` is at least 60 s, so at least 30 s before it expires)."""
    rec = record.record
    return max(0.0, rec.issued_at + (rec.expires_at - rec.issued_at) / 2 - now)


def _info(value: CapabilityInfo | int) -> CapabilityInfo:
    if isinstance(value, CapabilityInfo):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise LocalProtocolError(f"a capability is a CapabilityInfo or a version, not {value!r}")
    return CapabilityInfo(value)


class NodeCapabilities(Mapping[str, CapabilityInfo]):
    """``node.capabilities``: what the node advertises, and its signed record (module
    docstring). A read-only mapping ``name -> CapabilityInfo`` with methods that change it."""

    def __init__(
        self,
        key: NodeKey,
        *,
        network: str,
        ttl: float,
        configured: Sequence[str],
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._network = network
        self._ttl = ttl
        self._clock = clock
        self._configured = list(configured)
        self._state_file = state_file
        self._caps: dict[str, CapabilityInfo] = {}
        for text in configured:
            name, version = parse_capability(text)
            self._caps[name] = CapabilityInfo(version)
        self.origin = CapabilityOrigin.CONFIG
        self._last_seq: int | None = None
        self._record: SignedRecord | None = None
        self._listeners: list[Listener] = []
        self._addresses: Callable[[], Sequence[NodeAddress]] | None = None
        self._publish: Callable[[bytes], None] | None = None
        self._changed: anyio.Event | None = None
        if state_file is not None:
            self._load(state_file)

    # -- reading -----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> CapabilityInfo:
        return self._caps[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._caps))

    def __len__(self) -> int:
        return len(self._caps)

    def current(self) -> Mapping[str, CapabilityInfo]:
        """A snapshot of the capabilities, sorted by name."""
        return MappingProxyType(dict(sorted(self._caps.items())))

    @property
    def record(self) -> SignedRecord | None:
        """The current signed record (None until the node started)."""
        return self._record

    # -- changing ----------------------------------------------------------------------------

    def set(self, name: str, version: int = 0, attributes: Mapping[str, str] | None = None
            ) -> None:
        """Advertise ``name`` (or change its version / attributes); re-signs, pushes, persists.
        LocalProtocolError (nothing changed) if the name, version or attributes are invalid or
        the record would break a limit (32 capabilities, 1024 bytes)."""
        if not valid_capability_name(name):
            raise LocalProtocolError(f"{name!r} is not a capability name")
        caps = dict(self._caps)
        caps[name] = CapabilityInfo(version, dict(attributes or {}))
        self._change(caps)

    def remove(self, name: str) -> bool:
        """Stop advertising ``name``; False (nothing changed) if it was not advertised."""
        if name not in self._caps:
            return False
        caps = dict(self._caps)
        del caps[name]
        self._change(caps)
        return True

    def replace(self, capabilities: Mapping[str, CapabilityInfo | int]) -> None:
        """Advertise exactly ``capabilities`` (name -> CapabilityInfo or version)."""
        caps = {}
        for name, value in capabilities.items():
            if not isinstance(name, str) or not valid_capability_name(name):
                raise LocalProtocolError(f"{name!r} is not a capability name")
            caps[name] = _info(value)
        self._change(caps)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(RecordChanged)`` for every new record (synchronously: do not block).
        Returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def refresh(self) -> SignedRecord:
        """Re-sign the record now (same capabilities, new seq and lifetime) and push it."""
        if self._addresses is None:
            raise LocalProtocolError("the node is not running: nothing is signed yet")
        return self._sign(dict(self._caps))

    # -- the node's side ---------------------------------------------------------------------

    def start(self, addresses: Callable[[], Sequence[NodeAddress]],
              publish: Callable[[bytes], None]) -> SignedRecord:
        """The node is listening: sign the first record and push it (``publish`` is
        ``node.update_local_info``)."""
        self._addresses = addresses
        self._publish = publish
        return self._sign(dict(self._caps))

    async def run(self) -> None:
        """Re-sign at half the record's lifetime, until cancelled (runs in the node's tasks)."""
        while True:
            record = self._record
            assert record is not None, "start() signs the first record"
            self._changed = anyio.Event()
            with anyio.move_on_after(refresh_delay(record, self._clock())):
                await self._changed.wait()
                continue  # a change signed a new record: schedule from it
            self.refresh()

    def _change(self, caps: dict[str, CapabilityInfo]) -> None:
        if self._addresses is None:  # not started: checked now, signed at start
            self._check(caps)
            self._caps, self.origin = caps, CapabilityOrigin.OPERATOR
            self._save()
        else:
            self._sign(caps, origin=CapabilityOrigin.OPERATOR)

    def _check(self, caps: dict[str, CapabilityInfo]) -> SignedRecord:
        now = self._clock()
        issued = math.floor(now)
        return sign_record(
            self._key, network=self._network, seq=next_seq(self._last_seq, now),
            issued_at=issued, expires_at=issued + max(1, math.floor(self._ttl)),
            addresses=record_addresses(self._addresses() if self._addresses else ()),
            capabilities=caps,
        )

    def _sign(self, caps: dict[str, CapabilityInfo], *,
              origin: CapabilityOrigin | None = None) -> SignedRecord:
        signed = self._check(caps)  # LocalProtocolError: nothing changed
        previous = self._record
        if self._publish is not None:
            self._publish(signed.data)
        self._caps, self._record, self._last_seq = caps, signed, signed.seq
        if origin is not None:
            self.origin = origin
        if self._changed is not None:
            self._changed.set()
        self._save()
        event = RecordChanged(
            signed, previous,
            capabilities_changed=previous is None
            or dict(previous.record.capabilities) != dict(signed.record.capabilities),
        )
        log.info("signed capability record seq %d: %s", signed.seq,
                 ", ".join(f"{n}={i.version}" for n, i in sorted(caps.items())) or "(none)")
        for listener in list(self._listeners):
            listener(event)
        return signed

    # -- persistence -------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError("discovery.capabilities", f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError(f"not a format-{_FORMAT} capabilities file")
            seq = data["seq"]
            if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)
                                    or not 0 <= seq < 2**64):
                raise ValueError("seq must be a uint64 or null")
            origin = CapabilityOrigin(data["origin"])
            saved: dict[str, CapabilityInfo] = {}
            for name, entry in dict(data["capabilities"]).items():
                if not valid_capability_name(name) or not isinstance(entry, dict):
                    raise ValueError(f"bad capability {name!r}")
                saved[name] = CapabilityInfo(int(entry["version"]),
                                             {str(k): str(v) for k, v in
                                              dict(entry.get("attributes", {})).items()})
            based_on = list(data["config"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                "discovery.capabilities",
                f"{path} is damaged ({exc}); delete it to use config.toml's capabilities",
            ) from None
        self._last_seq = seq
        if origin is CapabilityOrigin.OPERATOR:
            if based_on == self._configured:
                self._caps, self.origin = saved, CapabilityOrigin.OPERATOR
            else:
                log.warning("[discovery] capabilities changed in config.toml since the "
                            "operator's last live change: using config.toml's")

    def _save(self) -> None:
        path = self._state_file
        if path is None:
            return
        data: dict[str, Any] = {
            "format": _FORMAT,
            "origin": self.origin.value,
            "config": self._configured,
            "seq": self._last_seq,
            "capabilities": {
                name: {"version": info.version, "attributes": dict(info.attributes)}
                for name, info in sorted(self._caps.items())
            },
        }
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:  # the record is signed and pushed; only persistence failed
            log.warning("cannot save %s: %s", path, exc)
