"""Capability routing: policy engine, role destinations, peer selection (filed later)."""

__all__: list[str] = []
