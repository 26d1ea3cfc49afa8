"""Discovery: signed capability records, PEX and the DHT (filed later; see docs/architecture.md)."""

__all__: list[str] = []
