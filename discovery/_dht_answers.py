"""Checking a DHT answer before the lookup core sees it (pure: decide, the driver acts).

``check_answer`` verifies every record of one answer with a :class:`RecordVerifier` and returns
one verdict: the verified contacts and providers (``Checked``), ``REFUSED`` for an error reply
(a plain failure), or the :class:`Penalty` the responder earned: a forged, spoofed or
foreign-network record, a provider record lacking the capability looked up, or the wrong kind of
answer. Expired records and records older than one already held (``held_seq``) are dropped
without blame (``SILENT_REJECTIONS``): the rest of the answer still counts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from discovery._dht_lookup_types import LookupMode
from discovery._record import RecordError, RecordRejection, SignedRecord
from discovery._service_types import Penalty, penalty_for_rejection
from discovery._verify import RecordVerifier
from discovery._wire import DhtError, DhtNodes, DhtProviders, DhtResponse
from overlay.identity import NodeId

__all__ = ["Checked", "Refused", "check_answer"]


class Refused(enum.Enum):
    REFUSED = "refused"
    """The responder answered with an error: a failure, not misbehaviour."""


@dataclass(frozen=True, slots=True)
class Checked:
    contacts: tuple[SignedRecord, ...]
    providers: tuple[SignedRecord, ...]


def check_answer(
    response: DhtResponse,
    mode: LookupMode,
    *,
    capability: str | None,
    verifier: RecordVerifier,
    held_seq: Callable[[NodeId], int | None],
    now: float,
) -> Checked | Refused | Penalty:
    """The verdict on one answer (see the module docstring); ``now`` is wall-clock time."""
    match response:
        case DhtError():
            return Refused.REFUSED
        case DhtNodes(records) if mode is LookupMode.FIND_NODE:
            contact_data: tuple[bytes, ...] = records
            provider_data: tuple[bytes, ...] = ()
        case DhtProviders(listed, closer) if mode is LookupMode.GET_PROVIDERS:
            contact_data, provider_data = closer, listed
        case _:
            return Penalty.MALFORMED_ANSWER
    checked: list[list[SignedRecord]] = [[], []]
    for index, batch in enumerate((contact_data, provider_data)):
        for data in batch:
            try:
                signed = verifier.verify(data, now)
                held = held_seq(signed.node_id)
                if held is not None and signed.seq < held:
                    verifier.counters.reject(RecordRejection.STALE_SEQ)
                    continue  # a replay of an older record
            except RecordError as exc:
                penalty = penalty_for_rejection(exc.reason)
                if penalty is None:
                    continue
                return penalty
            if index == 1 and capability is not None and not signed.record.has(capability):
                return Penalty.UNRELATED_PROVIDER
            checked[index].append(signed)
    return Checked(tuple(checked[0]), tuple(checked[1]))
