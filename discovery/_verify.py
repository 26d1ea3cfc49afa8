"""Verification of records from the network, with counters and a signature cache (pure).

Every record a discovery service receives (DHT answers and stores, PEX responses) goes through
``RecordVerifier.verify`` before it reaches a core. The expensive part, the ed25519 check of
the signature over the canonical bytes, depends only on the bytes and the network, so a
successful check is remembered (bounded LRU, keyed by the exact envelope bytes); the time
checks (``FUTURE``, ``EXPIRED``) and the sequence check (``STALE_SEQ``) run on every call, so
the cache never lets an expired or replayed record through.
"""

from __future__ import annotations

from collections import OrderedDict

from discovery._record import (
    MAX_CLOCK_SKEW,
    RecordError,
    RecordRejection,
    SignedRecord,
    verify_signed_record,
)
from discovery._service_types import RecordCounters
from overlay.errors import ConfigError

__all__ = ["RecordVerifier"]


class RecordVerifier:
    """Verifies records of one network and counts what it received and rejected."""

    def __init__(self, network: str, *, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ConfigError("discovery.verify_cache", f"must be >= 0, got {cache_size!r}")
        self.network = network
        self.counters = RecordCounters()
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, SignedRecord] = OrderedDict()

    def verify(self, data: bytes, now: float, *, newer_than: int | None = None) -> SignedRecord:
        """The verified record, or ``RecordError`` (counted by reason). ``newer_than``: a seq
        already known for that node (the record must be higher)."""
        self.counters.received += 1
        try:
            signed = self._cache.get(data) if isinstance(data, bytes) else None
            if signed is None:
                signed = verify_signed_record(data, network=self.network, now=now)
                if self._cache_size:
                    self._cache[signed.data] = signed
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(data)
                record = signed.record
                if record.issued_at > now + MAX_CLOCK_SKEW:
                    raise RecordError(RecordRejection.FUTURE, f"record of {record.node_id}")
                if record.expires_at <= now:
                    raise RecordError(RecordRejection.EXPIRED, f"record of {record.node_id}")
            if newer_than is not None and signed.seq <= newer_than:
                raise RecordError(
                    RecordRejection.STALE_SEQ,
                    f"record of {signed.node_id}: seq {signed.seq} is not above {newer_than}",
                )
        except RecordError as exc:
            self.counters.reject(exc.reason)
            raise
        return signed
