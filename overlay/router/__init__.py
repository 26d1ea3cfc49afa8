"""Router layer: typed channels, codecs, destinations, and the router that moves envelopes between
channels and connections (LOCAL included)."""

__all__: list[str] = []
