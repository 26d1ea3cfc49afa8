"""Operator surface served by a node: the admin API (over a small h11 server), the control contract
it calls, and Prometheus metrics."""

__all__: list[str] = []
