"""Correct use of a typed channel: must type-check clean under ``mypy --strict``.

Checked by ``tests/test_typed_channels.py`` (and by the project's own mypy run); never executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_type

from overlay import (
    BROADCAST,
    LOCAL,
    Channel,
    ChannelSpec,
    DeliveryReport,
    Envelope,
    Node,
    NodeId,
)


@dataclass(frozen=True, slots=True)
class Foo:
    key: str


@dataclass(frozen=True, slots=True)
class Bar:
    value: int


class FooCodec:
    def encode(self, message: Foo, /) -> bytes:
        return message.key.encode()

    def decode(self, data: bytes, /) -> Foo:
        return Foo(data.decode(errors="replace"))


class BarCodec:
    def encode(self, message: Bar, /) -> bytes:
        return message.value.to_bytes(8, "big")

    def decode(self, data: bytes, /) -> Bar:
        return Bar(int.from_bytes(data, "big"))


SPEC = ChannelSpec(id=0x40, name="foo", codec=FooCodec(), response_codec=BarCodec())


async def serve(env: Envelope[Foo]) -> Bar:
    return Bar(len(env.message.key))


async def use(node: Node, peer: NodeId) -> None:
    ch = node.channel(SPEC)
    assert_type(ch, Channel[Foo, Bar])
    report = await ch.send(peer, Foo("a"))
    assert_type(report, DeliveryReport)
    await ch.send(LOCAL, Foo("b"), timeout=1.0)
    ch.send_nowait(BROADCAST, Foo("c"))
    answer = await ch.request(peer, Foo("d"), timeout=2)
    assert_type(answer, Bar)
    ch.handle_requests(serve)
    env = await ch.receive()
    assert_type(env, Envelope[Foo])
    assert_type(env.message, Foo)
    async for inbound in ch:
        assert_type(inbound.message, Foo)
