"""Misuse of a typed channel: every line marked ``# type: ignore[<code>]`` is an error that mypy
must report, with exactly that code.

The ignores keep the project's own mypy run clean (and, with ``warn_unused_ignores``, fail it if
an error disappears); ``tests/test_typed_channels.py`` strips them and checks each error is
reported on its line. Never executed.
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay import LOCAL, ChannelSpec, Envelope, Node, NodeId


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


async def bad_handler(env: Envelope[Bar]) -> Bar:
    return env.message


async def misuse(node: Node, peer: NodeId) -> None:
    ch = node.channel(SPEC)
    await ch.send(peer, Bar(1))  # type: ignore[arg-type]
    ch.send_nowait(LOCAL, b"raw bytes")  # type: ignore[arg-type]
    await ch.request(peer, Bar(2))  # type: ignore[arg-type]
    await ch.send("not-a-node-id", Foo("x"))  # type: ignore[arg-type]
    ch.handle_requests(bad_handler)  # type: ignore[arg-type]
    wrong: Foo = await ch.request(peer, Foo("y"))  # type: ignore[assignment]
    env = await ch.receive()
    number: Bar = env.message  # type: ignore[assignment]
    print(wrong, number)
