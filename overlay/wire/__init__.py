"""Wire layer (pure, sans-IO): Noise, the handshake state machine, framing, wire messages, node
info.

Everything here takes bytes and returns bytes or events; nothing imports anyio, sockets or sqlite.
"""

__all__: list[str] = []
