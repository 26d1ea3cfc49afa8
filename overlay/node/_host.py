"""What every node service reads of its node: the base of the narrow node protocols.

Each service names only what it uses of the :class:`~overlay.node.Node` in a ``Protocol`` of
its own (``DhtHost``, ``PexNode``, ``ControlledNode``); they all start from this one.
"""

from __future__ import annotations

from typing import Protocol

from overlay.connection._observer import Observer
from overlay.identity import NodeId
from overlay.node._config import NodeConfig
from overlay.router._router import Router

__all__ = ["NodeBasics"]


class NodeBasics(Protocol):
    """The node's id, config, router and observer (read-only)."""

    @property
    def node_id(self) -> NodeId: ...

    @property
    def config(self) -> NodeConfig: ...

    @property
    def router(self) -> Router: ...

    @property
    def observer(self) -> Observer: ...
