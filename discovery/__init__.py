"""Discovery: signed capability records, PEX and the DHT (see docs/discovery.md).

The DHT cores (routing table, lookup state machine, provider store) are pure: they take ``now``
and return events; the driver does the I/O and verifies every record it feeds them.
"""

from discovery._dht_lookup import (
    Lookup,
    LookupConfig,
    LookupDone,
    LookupEvent,
    LookupMode,
    LookupOutcome,
    LookupResult,
    Misbehaved,
    Misbehaviour,
    ProviderFound,
    Query,
)
from discovery._dht_providers import (
    ProviderEntry,
    ProviderStore,
    ProviderStoreConfig,
    RepublishSchedule,
    StoreOutcome,
)
from discovery._dht_table import (
    AddOutcome,
    ContactInfo,
    RoutingTable,
    TableConfig,
    bucket_index,
    xor_distance,
)

__all__ = [
    # DHT
    "AddOutcome",
    "ContactInfo",
    "Lookup",
    "LookupConfig",
    "LookupDone",
    "LookupEvent",
    "LookupMode",
    "LookupOutcome",
    "LookupResult",
    "Misbehaved",
    "Misbehaviour",
    "ProviderEntry",
    "ProviderFound",
    "ProviderStore",
    "ProviderStoreConfig",
    "Query",
    "RepublishSchedule",
    "RoutingTable",
    "StoreOutcome",
    "TableConfig",
    "bucket_index",
    "xor_distance",
]
