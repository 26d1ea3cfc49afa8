"""Builders shared by the policy-engine tests."""

from __future__ import annotations

from collections.abc import Iterable

from overlay.identity import NodeId
from routing import Candidate, ConnectedPeer


def nid(i: int) -> NodeId:
    return NodeId(f"{i:040x}")


def peer(
    i: int,
    caps: Iterable[str] = (),
    *,
    outbound: bool = False,
    score: float = 0.0,
    protected: bool = False,
    since: float = 0.0,
) -> ConnectedPeer:
    return ConnectedPeer(nid(i), frozenset(caps), outbound, score, protected, since)


def cand(i: int, caps: Iterable[str] = (), backoff_until: float = 0.0) -> Candidate:
    return Candidate(nid(i), frozenset(caps), backoff_until)
