"""Connection and dial accounting: who is connected or being dialed, and the limit counters.

Theory of operation
-------------------
The table owns the three counters the limits are checked against, so they can never drift
from the set of live connections:

* inbound connections per IP key and per netgroup (only *counted* inbound connections: not
  unconditional peers, not addresses inside ``exempt_networks``);
* outbound connections **plus dials in flight** per netgroup (the diversity rule), again only
  counted ones (feelers and unconditional peers are not counted).

Every increment happens in ``attach`` / ``start_dial`` and the matching decrement in
``detach`` / ``finish_dial``, using the keys remembered on the connection or dial, so the
counters stay exact whatever the order of events. Connections marked ``closing`` (a
``DisconnectPeer`` was issued) still hold their per-IP/netgroup counts until the driver reports
the disconnect, but no longer use a connection slot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from overlay.address import NodeAddress
from overlay.identity import NodeId
from overlay.peers._records import Conn, PeerRecord, PendingDial
from overlay.peers._types import DialReason, Direction, PeerFlag
from overlay.wire._netgroup import IpNetworks, address_netgroup, in_networks, ip_key, netgroup

__all__ = ["ConnTable"]


def _inc(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _dec(counter: dict[str, int], key: str) -> None:
    value = counter.get(key, 0) - 1
    if value > 0:
        counter[key] = value
    else:
        counter.pop(key, None)


class ConnTable:
    """Live connections, dials in flight and the counters derived from them."""

    def __init__(self, exempt: IpNetworks) -> None:
        self._exempt = exempt
        self.conns: dict[NodeId, PeerRecord] = {}
        self.dials: dict[NodeId, PeerRecord] = {}
        self._in_ip: dict[str, int] = {}
        self._in_group: dict[str, int] = {}
        self._out_group: dict[str, int] = {}

    @property
    def inbound_per_ip(self) -> Mapping[str, int]:
        """Inbound connections by IP key (exempt addresses not counted); read-only."""
        return MappingProxyType(self._in_ip)

    @property
    def inbound_per_netgroup(self) -> Mapping[str, int]:
        """Inbound connections by netgroup (exempt addresses not counted); read-only."""
        return MappingProxyType(self._in_group)

    @property
    def outbound_per_netgroup(self) -> Mapping[str, int]:
        """Outbound connections and dials by netgroup; read-only."""
        return MappingProxyType(self._out_group)

    # -- exemptions -----------------------------------------------------------------------------

    def exempt_ip(self, remote_ip: str) -> bool:
        return in_networks(remote_ip, self._exempt)

    def exempt_address(self, address: NodeAddress) -> bool:
        return address.protocol == "tcp" and in_networks(address.host, self._exempt)

    # -- counters -------------------------------------------------------------------------------

    def inbound_from_ip(self, remote_ip: str) -> int:
        return self._in_ip.get(ip_key(remote_ip), 0)

    def inbound_from_group(self, remote_ip: str) -> int:
        return self._in_group.get(netgroup(remote_ip), 0)

    def outbound_in_group(self, group: str) -> int:
        return self._out_group.get(group, 0)

    def live(self, direction: Direction) -> Iterator[PeerRecord]:
        """Counted, not-closing connections in ``direction``."""
        for rec in self.conns.values():
            conn = rec.conn
            if (
                conn is not None
                and conn.direction == direction
                and conn.counted
                and not conn.closing
            ):
                yield rec

    def inbound_used(self) -> int:
        return sum(1 for _ in self.live("inbound"))

    def outbound_used(self) -> int:
        return sum(1 for _ in self.live("outbound"))

    def regular_dials(self) -> int:
        """Dials in flight that will take an outbound slot (not feelers/upgrades)."""
        return sum(
            1
            for rec in self.dials.values()
            if rec.dial is not None
            and rec.dial.reason not in (DialReason.FEELER, DialReason.UPGRADE)
            and not rec.has(PeerFlag.UNCONDITIONAL)
        )

    def upgrade_dials(self) -> int:
        return sum(
            1
            for rec in self.dials.values()
            if rec.dial is not None and rec.dial.reason is DialReason.UPGRADE
        )

    # -- changes --------------------------------------------------------------------------------

    def start_dial(
        self, rec: PeerRecord, address: NodeAddress, reason: DialReason, now: float
    ) -> None:
        group: str | None = None
        if (
            reason is not DialReason.FEELER
            and not rec.has(PeerFlag.UNCONDITIONAL)
            and not self.exempt_address(address)
        ):
            group = address_netgroup(address)
            _inc(self._out_group, group)
        rec.dial = PendingDial(address, now, reason, group)
        self.dials[rec.node_id] = rec

    def finish_dial(self, rec: PeerRecord) -> PendingDial | None:
        dial = rec.dial
        if dial is None:
            return None
        rec.dial = None
        self.dials.pop(rec.node_id, None)
        if dial.out_group is not None:
            _dec(self._out_group, dial.out_group)
        return dial

    def attach(
        self,
        rec: PeerRecord,
        direction: Direction,
        *,
        remote_ip: str | None,
        address: NodeAddress | None,
        now: float,
        feeler: bool = False,
        upgrade: bool = False,
        planned: bool = True,
    ) -> Conn:
        """Register a connection. An unplanned outbound one (no dial of ours: late or made by
        someone else) takes an outbound slot but is not counted for netgroup diversity."""
        counted = not feeler and not rec.has(PeerFlag.UNCONDITIONAL)
        conn = Conn(
            direction, now, remote_ip, counted, feeler=feeler, upgrade=upgrade, address=address
        )
        if counted and direction == "inbound":
            if remote_ip is not None and not self.exempt_ip(remote_ip):
                conn.ip_key = ip_key(remote_ip)
                conn.in_group = netgroup(remote_ip)
                _inc(self._in_ip, conn.ip_key)
                _inc(self._in_group, conn.in_group)
        elif counted and planned and address is not None and not self.exempt_address(address):
            conn.out_group = address_netgroup(address)
            _inc(self._out_group, conn.out_group)
        rec.conn = conn
        self.conns[rec.node_id] = rec
        if remote_ip:
            rec.last_ip = remote_ip
        return conn

    def detach(self, rec: PeerRecord) -> Conn | None:
        conn = rec.conn
        if conn is None:
            return None
        rec.conn = None
        self.conns.pop(rec.node_id, None)
        if conn.ip_key is not None:
            _dec(self._in_ip, conn.ip_key)
        if conn.in_group is not None:
            _dec(self._in_group, conn.in_group)
        if conn.out_group is not None:
            _dec(self._out_group, conn.out_group)
        return conn
