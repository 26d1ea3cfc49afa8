"""Wire schema (protobuf) and the codecs that keep generated classes behind dataclasses."""

__all__: list[str] = []
