"""A read-only view of one connected peer (``Node.peer_summaries()``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from overlay.connection._driver import PeerConnection

__all__ = ["PeerSummary"]


class PeerSummary:
    """A read-only view of one connected peer (see :meth:`Node.peer_summaries`)."""

    __slots__ = ("conn",)

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn

    def as_dict(self) -> dict[str, Any]:
        conn = self.conn
        stats = conn.core.statistics()
        return {
            "id": conn.node_id,
            "direction": "outbound" if conn.outbound else "inbound",
            "remote_address": conn.remote_address,
            "remote_host": conn.remote_host,
            "network": conn.info.network,
            "moniker": conn.info.moniker,
            "software_version": conn.info.software_version,
            "listen_addrs": list(conn.info.listen_addrs),
            "channels": list(conn.info.channels),
            "info_seq": conn.info_seq,
            "connected_since": conn.connected_at,
            "statistics": _stats_dict(stats),
        }


def _stats_dict(stats: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    return {}
