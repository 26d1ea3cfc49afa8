"""ConnectionCore: the sans-IO connection state machine, driven with a fake clock (plain floats)."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest
import zstandard

from overlay.connection._core import (
    CancelReceived,
    ChannelParams,
    ConnectionCore,
    ConnectionState,
    CoreConfig,
    DisconnectReceived,
    ErrorReceived,
    Event,
    IdleTimeout,
    LatencyMeasured,
    MessageDropped,
    MessageReceived,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    next_request_id,
    shared_message,
)
from overlay.errors import (
    ChannelError,
    ConfigError,
    ConnectionClosed,
    ErrorCode,
    FrameError,
    LocalProtocolError,
    MessageTooLarge,
    WouldBlock,
)
from overlay.wire._frames import (
    FLAG_COMPRESSED,
    FLAG_MORE,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_frame,
)
from overlay.wire._messages import (
    Disconnect,
    DisconnectReason,
    Ping,
    Pong,
    decode_control,
    encode_control,
)

HI, MID, LO, LO2 = 1, 2, 3, 4
CHANNELS = [
    ChannelParams(HI, priority=10),
    ChannelParams(MID, priority=5, send_queue_size=256),
    ChannelParams(LO, priority=0),
    ChannelParams(LO2, priority=0),
]
QUIET = CoreConfig(ping_interval=0, idle_timeout=0)


def make(
    config: CoreConfig = QUIET,
    channels: list[ChannelParams] | None = None,
    *,
    compression: bool = False,
    now: float = 0.0,
) -> ConnectionCore:
    return ConnectionCore(
        config, CHANNELS if channels is None else channels, now=now, compression=compression
    )


def parse(data: bytes, max_payload: int = 1 << 24) -> list[Frame]:
    decoder = FrameDecoder(max_payload)
    decoder.feed(data)
    frames = list(decoder)
    assert decoder.buffered == 0, "a batch must contain whole frames only"
    return frames


def drain(core: ConnectionCore, now: float = 0.0) -> bytes:
    out = []
    while data := core.data_to_send(now):
        out.append(data)
    return b"".join(out)


def pump(a: ConnectionCore, b: ConnectionCore, now: float = 0.0) -> None:
    """Move bytes both ways until neither side has anything to send."""
    while True:
        ab = drain(a, now)
        ba = drain(b, now)
        if not ab and not ba:
            return
        if ab:
            b.receive_data(ab, now)
        if ba:
            a.receive_data(ba, now)


def of_type(events: list[Event], cls: type) -> list[Event]:
    return [e for e in events if isinstance(e, cls)]


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_frame_payload": 63}, "max_frame_payload"),
        ({"max_frame_payload": (1 << 24) + 1}, "max_frame_payload"),
        ({"max_write_batch": 0}, "max_write_batch"),
        ({"send_rate": -1.0}, "send_rate"),
        ({"recv_rate": math.inf}, "recv_rate"),
        ({"send_rate": 10.0, "send_burst": 0}, "send_burst"),
        ({"recv_rate": 10.0, "recv_burst": 0}, "recv_burst"),
        ({"compression_threshold": -1}, "compression_threshold"),
        ({"compression_level": 0}, "compression_level"),
        ({"ping_interval": math.nan}, "ping_interval"),
        ({"ping_interval": 30.0, "idle_timeout": 30.0}, "idle_timeout"),
        ({"max_outbound_requests": 0}, "max_outbound_requests"),
        ({"max_control_queue": 0}, "max_control_queue"),
    ],
)
def test_core_config_validation(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        CoreConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"channel_id": 0}, "channel_id"),
        ({"channel_id": 65536}, "channel_id"),
        ({"channel_id": 1, "send_queue_size": 0}, "send_queue_size"),
        ({"channel_id": 1, "max_message_size": 0}, "max_message_size"),
        ({"channel_id": 1, "max_concurrent_inbound": 0}, "max_concurrent_inbound"),
    ],
)
def test_channel_params_validation(kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ChannelParams(**kwargs)
    assert info.value.key == key


def test_defaults_and_duplicate_channels() -> None:
    config = CoreConfig()
    assert config.max_frame_payload == 65_519 - 12 and config.max_write_batch == 65_519
    assert (config.ping_interval, config.idle_timeout) == (10.0, 30.0)
    params = ChannelParams(5)
    assert (params.send_queue_size, params.max_message_size) == (16, 4 * 1024 * 1024)
    assert params.max_concurrent_inbound == 32
    with pytest.raises(ChannelError):
        make(channels=[ChannelParams(1), ChannelParams(1, priority=3)])


# ---------------------------------------------------------------------------------- sending


def test_send_errors_and_queue_capacity() -> None:
    core = make(channels=[ChannelParams(1, send_queue_size=2, max_message_size=100)])
    with pytest.raises(ChannelError):
        core.send_message(2, b"x")
    with pytest.raises(ChannelError):
        core.has_space(2)
    with pytest.raises(MessageTooLarge):
        core.send_message(1, b"x" * 101)
    core.send_message(1, b"x" * 100)
    assert core.has_space(1)
    core.send_request(1, b"q")
    assert not core.has_space(1)
    with pytest.raises(WouldBlock):
        core.send_message(1, b"y")
    with pytest.raises(WouldBlock):
        core.send_request(1, b"y")
    assert core.statistics().channel(1).queue_depth == 2
    assert len(parse(drain(core))) == 2
    assert core.has_space(1)
    core.send_message(1, b"z")


def test_small_message_wire_bytes() -> None:
    core = make()
    core.send_message(MID, b"hi")
    assert core.data_to_send(0.0) == encode_frame(FrameKind.MESSAGE, 0, MID, 0, b"hi")
    assert core.data_to_send(0.0) == b""


def test_chunking_and_reassembly() -> None:
    config = CoreConfig(max_frame_payload=1000, ping_interval=0, idle_timeout=0)
    a, b = make(config), make(config)
    payload = random.Random(1).randbytes(3500)
    a.send_message(LO, payload)
    wire = drain(a)
    frames = parse(wire)
    assert [len(f.payload) for f in frames] == [1000, 1000, 1000, 500]
    assert [f.flags for f in frames] == [FLAG_MORE, FLAG_MORE, FLAG_MORE, 0]
    assert {(f.kind, f.channel_id, f.request_id) for f in frames} == {(FrameKind.MESSAGE, LO, 0)}
    for i in range(0, len(wire), 777):  # arbitrary pieces
        b.receive_data(wire[i : i + 777], 0.0)
    assert b.events() == [MessageReceived(LO, payload)]


def test_empty_message_and_exact_max_size() -> None:
    channels = [ChannelParams(1, max_message_size=2500)]
    config = CoreConfig(max_frame_payload=1000, ping_interval=0, idle_timeout=0)
    a, b = make(config, channels), make(config, channels)
    a.send_message(1, b"")
    a.send_message(1, b"m" * 2500)
    pump(a, b)
    assert b.events() == [MessageReceived(1, b""), MessageReceived(1, b"m" * 2500)]


def test_reassembled_size_over_channel_limit_is_a_violation() -> None:
    config = CoreConfig(max_frame_payload=1000, ping_interval=0, idle_timeout=0)
    big = make(config, [ChannelParams(1, max_message_size=5000)])
    small = make(config, [ChannelParams(1, max_message_size=2500)])
    big.send_message(1, b"m" * 2501)
    with pytest.raises(FrameError, match="exceeds 2500"):
        small.receive_data(drain(big), 0.0)


def test_priority_bulk_delays_urgent_by_at_most_one_chunk() -> None:
    chunk = 16 * 1024
    config = CoreConfig(
        max_frame_payload=chunk, max_write_batch=65_519, ping_interval=0, idle_timeout=0
    )
    a, b = make(config), make(config)
    bulk = random.Random(2).randbytes(1024 * 1024)
    a.send_message(LO, bulk)
    first = a.data_to_send(0.0)
    first_frames = parse(first)
    assert len(first_frames) == 3  # 3 * (16 KiB + 12) fit in 65519 bytes, 4 do not
    assert all(f.channel_id == LO and f.flags == FLAG_MORE for f in first_frames)
    a.send_message(HI, b"urgent")
    second = parse(a.data_to_send(0.0))
    position = next(i for i, f in enumerate(second) if f.channel_id == HI)
    assert position <= 1  # the contract: at most one bulk chunk before it
    assert position == 0  # this implementation: a new batch starts with the urgent frame
    assert second[0] == Frame(FrameKind.MESSAGE, 0, HI, 0, b"urgent")
    assert all(f.channel_id == LO for f in second[1:])
    # The receiver still reassembles the bulk message around the interleaved urgent one.
    b.receive_data(first, 0.0)
    b.receive_data(encode_frame(FrameKind.MESSAGE, 0, HI, 0, b"urgent"), 0.0)
    b.receive_data(b"".join(f.encode() for f in second[1:]), 0.0)
    b.receive_data(drain(a), 0.0)
    assert b.events() == [MessageReceived(HI, b"urgent"), MessageReceived(LO, bulk)]


def test_urgent_queued_mid_batch_sequence_waits_for_one_chunk_at_most() -> None:
    """With a batch of exactly one chunk, the urgent frame is the very next frame."""
    config = CoreConfig(max_frame_payload=1000, max_write_batch=1012, ping_interval=0)
    a = make(config)
    a.send_message(LO, b"b" * 10_000)
    a.send_message(MID, b"m" * 3000)
    sent = [parse(a.data_to_send(0.0))[0] for _ in range(2)]
    assert [f.channel_id for f in sent] == [MID, MID]  # priority among queued data
    a.send_message(HI, b"urgent")
    assert parse(a.data_to_send(0.0))[0].channel_id == HI
    assert parse(a.data_to_send(0.0))[0].channel_id == MID  # finish the MID message
    assert parse(a.data_to_send(0.0))[0].channel_id == LO


def test_round_robin_among_equal_priorities_frame_by_frame() -> None:
    config = CoreConfig(max_frame_payload=100, ping_interval=0, idle_timeout=0)
    core = make(config)
    core.send_message(LO, b"a" * 250)  # 3 frames
    core.send_message(LO, b"b" * 50)  # 1 frame
    core.send_message(LO2, b"c" * 400)  # 4 frames
    frames = parse(drain(core))
    assert [f.channel_id for f in frames] == [LO, LO2, LO, LO2, LO, LO2, LO, LO2]
    assert [f.payload[:1] for f in frames if f.channel_id == LO] == [b"a", b"a", b"a", b"b"]


def test_strict_priority_order_across_levels() -> None:
    config = CoreConfig(max_frame_payload=100, ping_interval=0, idle_timeout=0)
    core = make(config)
    core.send_message(LO, b"l" * 150)
    core.send_message(MID, b"m" * 150)
    core.send_message(HI, b"h" * 150)
    frames = parse(drain(core))
    assert [f.channel_id for f in frames] == [HI, HI, MID, MID, LO, LO]


def test_coalescing_many_small_messages() -> None:
    a, b = make(), make()
    for i in range(200):
        a.send_message(MID, b"%05d" % i + b"." * 60)
    batches = []
    while data := a.data_to_send(0.0):
        batches.append(data)
    assert len(batches) == 1  # 200 * 77 bytes fit in one 65519-byte batch
    assert len(parse(batches[0])) == 200
    small = CoreConfig(max_write_batch=1000, ping_interval=0, idle_timeout=0)
    c = make(small)
    for i in range(200):
        c.send_message(MID, b"%05d" % i + b"." * 60)
    batches = []
    while data := c.data_to_send(0.0):
        batches.append(data)
    assert all(len(x) <= 1000 for x in batches)
    assert len(batches) == math.ceil(200 / (1000 // 77))  # 12 frames per batch, no waste
    for batch in batches:
        b.receive_data(batch, 0.0)
    got = [e.payload[:5] for e in b.events() if isinstance(e, MessageReceived)]
    assert got == [b"%05d" % i for i in range(200)]


def test_frame_larger_than_write_batch_goes_out_alone() -> None:
    config = CoreConfig(max_frame_payload=2000, max_write_batch=500, ping_interval=0)
    core = make(config)
    core.send_message(LO, b"x" * 1500)
    core.send_message(LO, b"y")
    assert len(core.data_to_send(0.0)) == 1512
    assert len(core.data_to_send(0.0)) == 13


# ---------------------------------------------------------------------------------- requests


def test_request_response_out_of_order() -> None:
    a, b = make(), make()
    ids = [a.send_request(MID, b"q%d" % i) for i in range(3)]
    assert len(set(ids)) == 3 and 0 not in ids
    b.receive_data(drain(a), 0.0)
    reqs = b.events()
    assert reqs == [RequestReceived(MID, rid, b"q%d" % i) for i, rid in enumerate(ids)]
    assert b.statistics().channel(MID).inbound_requests_active == 3
    assert a.statistics().outbound_requests_in_flight == 3
    assert b.send_response(MID, ids[2], b"r2")
    assert b.send_error(MID, ids[0], ErrorCode.NOT_FOUND, "no such key")
    assert b.send_response(MID, ids[1], b"r1")
    assert not b.send_response(MID, ids[1], b"again")  # already answered
    a.receive_data(drain(b), 0.0)
    assert a.events() == [
        ResponseReceived(MID, ids[2], b"r2"),
        ErrorReceived(MID, ids[0], ErrorCode.NOT_FOUND, "no such key"),
        ResponseReceived(MID, ids[1], b"r1"),
    ]
    assert a.statistics().outbound_requests_in_flight == 0
    assert b.statistics().inbound_requests_active == 0


def test_send_response_rules() -> None:
    channels = [ChannelParams(1, send_queue_size=1), ChannelParams(2)]
    a, b = make(channels=channels), make(channels=channels)
    r1 = a.send_request(1, b"one")
    r2 = a.send_request(2, b"two")
    pump(a, b)
    b.events()
    assert not b.send_response(1, 12345, b"unknown id")
    assert not b.send_response(2, r1, b"wrong channel")
    with pytest.raises(ChannelError):
        b.send_response(3, r1, b"no channel")
    b.send_message(1, b"fills the queue")
    with pytest.raises(WouldBlock):
        b.send_response(1, r1, b"backpressure applies to responders")
    with pytest.raises(MessageTooLarge):
        b.send_response(2, r2, b"x" * (4 * 1024 * 1024 + 1))
    assert b.statistics().inbound_requests_active == 2  # failed attempts keep them active
    drain(b)
    assert b.send_response(1, r1, b"ok")
    assert b.send_error(2, r2, ErrorCode.INTERNAL, "x" * 5000)  # long text is truncated
    a.receive_data(drain(b), 0.0)
    events = a.events()
    assert events[-2] == ResponseReceived(1, r1, b"ok")
    err = events[-1]
    assert isinstance(err, ErrorReceived) and err.code == ErrorCode.INTERNAL
    assert err.message == "x" * 1024


def test_request_ids_are_not_reused_after_cancel() -> None:
    core = make()
    seen = set()
    for _ in range(50):
        rid = core.send_request(MID, b"q")
        assert rid not in seen
        seen.add(rid)
        core.cancel_request(rid)


def test_request_id_wraps_and_skips_ids_in_flight() -> None:
    core = make()
    first = core.send_request(MID, b"a")
    assert first == 1
    assert core.send_request(MID, b"b") == 2  # the core takes its ids from next_request_id
    in_flight = {first}
    assert next_request_id(0xFFFFFFFF, in_flight) == 0xFFFFFFFF  # the end of the id space
    assert next_request_id(0xFFFFFFFF + 1, in_flight) == 2  # wrapped, skipping 0 and the 1
    assert next_request_id(0xFFFFFFFF + 1, {1, 2, 3}) == 4
    assert next_request_id(0xFFFFFFFF, {0xFFFFFFFF}) == 1


def test_cancel_before_any_byte_was_sent_drops_it_silently() -> None:
    core = make()
    rid = core.send_request(MID, b"never sent")
    core.send_message(MID, b"after")
    core.cancel_request(rid)
    core.cancel_request(rid)  # idempotent
    core.cancel_request(999)  # unknown: no-op
    assert parse(drain(core)) == [Frame(FrameKind.MESSAGE, 0, MID, 0, b"after")]
    assert core.statistics().outbound_requests_in_flight == 0


def test_cancel_after_sending_notifies_peer() -> None:
    a, b = make(), make()
    rid = a.send_request(MID, b"q")
    pump(a, b)
    assert b.events() == [RequestReceived(MID, rid, b"q")]
    a.cancel_request(rid)
    assert parse(drain(a)) == [Frame(FrameKind.CANCEL, 0, MID, rid, b"")]
    a.cancel_request(rid)
    assert a.data_to_send(0.0) == b""  # only one CANCEL
    a.send_request(MID, b"next")  # ensure no id clash later
    b.receive_data(encode_frame(FrameKind.CANCEL, 0, MID, rid, b""), 0.0)
    assert b.events() == [CancelReceived(MID, rid)]
    assert not b.send_response(MID, rid, b"too late")
    assert b.data_to_send(0.0) == b""
    assert b.statistics().inbound_requests_active == 0


def test_late_response_after_cancel_is_dropped_not_a_violation() -> None:
    a, b = make(), make()
    rid = a.send_request(MID, b"q")
    pump(a, b)
    b.events()
    a.cancel_request(rid)
    cancel = drain(a)
    assert b.send_response(MID, rid, b"crossed the cancel")
    a.receive_data(drain(b), 0.0)
    assert a.events() == [MessageDropped(MID, "response to an unknown request id")]
    assert a.statistics().channel(MID).messages_dropped == 1
    b.receive_data(cancel, 0.0)  # the cancel of an answered request is ignored
    assert b.events() == []


def test_cancel_of_partially_sent_request_aborts_it_on_both_sides() -> None:
    config = CoreConfig(max_frame_payload=1000, max_write_batch=2024, ping_interval=0)
    a, b = make(config), make(config)
    rid = a.send_request(LO, b"r" * 10_000)
    first = a.data_to_send(0.0)
    assert [f.flags for f in parse(first)] == [FLAG_MORE, FLAG_MORE]
    b.receive_data(first, 0.0)
    a.cancel_request(rid)
    rest = drain(a)
    assert parse(rest) == [Frame(FrameKind.CANCEL, 0, LO, rid, b"")]  # no more chunks
    assert a.statistics().channel(LO).queue_depth == 0
    b.receive_data(rest, 0.0)
    a.send_message(LO, b"fresh message on the same channel")
    b.receive_data(drain(a), 0.0)
    assert b.events() == [MessageReceived(LO, b"fresh message on the same channel")]


def test_response_to_partially_received_then_cancelled_request_completes() -> None:
    """A response already going out is finished; the requester drops it as unknown."""
    config = CoreConfig(max_frame_payload=1000, max_write_batch=1012, ping_interval=0)
    a, b = make(config), make(config)
    rid = a.send_request(LO, b"q")
    pump(a, b)
    b.events()
    assert b.send_response(LO, rid, b"R" * 3000)
    part = b.data_to_send(0.0)
    a.cancel_request(rid)
    b.receive_data(drain(a), 0.0)
    assert b.events() == []  # answered already: nothing to cancel
    a.receive_data(part + drain(b), 0.0)
    assert a.events() == [MessageDropped(LO, "response to an unknown request id")]


def test_max_outbound_requests() -> None:
    config = CoreConfig(max_outbound_requests=2, ping_interval=0, idle_timeout=0)
    a, b = make(config), make()
    r1 = a.send_request(MID, b"1")
    a.send_request(MID, b"2")
    with pytest.raises(WouldBlock):
        a.send_request(MID, b"3")
    pump(a, b)
    b.events()
    b.send_response(MID, r1, b"done")
    pump(a, b)
    a.send_request(MID, b"3")


def test_concurrency_limit_auto_answers_overloaded() -> None:
    channels = [ChannelParams(1, max_concurrent_inbound=2)]
    a, b = make(channels=channels), make(channels=channels)
    ids = [a.send_request(1, b"%d" % i) for i in range(3)]
    b.receive_data(drain(a), 0.0)
    assert b.events() == [
        RequestReceived(1, ids[0], b"0"),
        RequestReceived(1, ids[1], b"1"),
        RequestRejected(1, ids[2], "max_concurrent_inbound reached"),
    ]
    assert b.statistics().channel(1).requests_rejected == 1
    a.receive_data(drain(b), 0.0)
    [event] = a.events()
    assert isinstance(event, ErrorReceived)
    assert (event.request_id, event.code) == (ids[2], ErrorCode.OVERLOADED)
    assert not b.send_response(1, ids[2], b"rejected ones are not active")
    b.send_response(1, ids[0], b"ok")
    r4 = a.send_request(1, b"4")
    pump(a, b)
    assert RequestReceived(1, r4, b"4") in b.events()


def test_unknown_channel_messages_dropped_requests_get_no_handler() -> None:
    config = CoreConfig(max_frame_payload=100, ping_interval=0, idle_timeout=0)
    a = make(config, [ChannelParams(1), ChannelParams(9)])
    b = make(config, [ChannelParams(1)])
    a.send_message(9, b"nobody listens")
    a.send_message(9, b"big" * 100)  # chunked: discarded while reassembling
    rid = a.send_request(9, b"anyone?")
    a.send_message(1, b"normal")
    b.receive_data(drain(a), 0.0)
    events = b.events()  # (channels 1 and 9 share a priority: their frames interleave)
    assert of_type(events, MessageDropped) == [MessageDropped(9, "unknown channel")] * 3
    assert of_type(events, MessageReceived) == [MessageReceived(1, b"normal")]
    assert b.statistics().unknown_channel_dropped == 3
    a.receive_data(drain(b), 0.0)
    assert a.events() == [ErrorReceived(9, rid, ErrorCode.NO_HANDLER, "")]


def test_duplicate_active_request_id_is_a_violation() -> None:
    b = make()
    req = encode_frame(FrameKind.REQUEST, 0, MID, 7, b"q")
    b.receive_data(req, 0.0)
    with pytest.raises(FrameError, match="duplicate request id 7"):
        b.receive_data(encode_frame(FrameKind.REQUEST, 0, HI, 7, b"q"), 0.0)
    with pytest.raises(FrameError):  # the core stays failed
        b.receive_data(encode_frame(FrameKind.MESSAGE, 0, HI, 0, b"m"), 0.0)


def test_request_id_reusable_once_answered() -> None:
    b = make()
    b.receive_data(encode_frame(FrameKind.REQUEST, 0, MID, 7, b"q"), 0.0)
    b.send_response(MID, 7, b"r")
    b.receive_data(encode_frame(FrameKind.REQUEST, 0, MID, 7, b"q2"), 0.0)
    assert b.events()[-1] == RequestReceived(MID, 7, b"q2")


def test_response_on_another_channel_is_a_violation() -> None:
    a = make()
    rid = a.send_request(MID, b"q")
    drain(a)
    with pytest.raises(FrameError, match="sent on channel"):
        a.receive_data(encode_frame(FrameKind.RESPONSE, 0, LO, rid, b"r"), 0.0)


def test_cancel_rules_on_the_receiving_side() -> None:
    b = make()
    b.receive_data(encode_frame(FrameKind.CANCEL, 0, MID, 42, b""), 0.0)  # unknown: ignored
    assert b.events() == []
    b.receive_data(encode_frame(FrameKind.REQUEST, 0, MID, 5, b"q"), 0.0)
    with pytest.raises(FrameError, match="CANCEL"):
        b.receive_data(encode_frame(FrameKind.CANCEL, 0, LO, 5, b""), 0.0)


def test_malformed_error_payload_is_a_violation() -> None:
    a = make()
    rid = a.send_request(MID, b"q")
    drain(a)
    with pytest.raises(FrameError):
        a.receive_data(encode_frame(FrameKind.ERROR, 0, MID, rid, b"\xff\xff"), 0.0)


def test_interleaved_message_on_same_channel_is_a_violation() -> None:
    b = make()
    b.receive_data(encode_frame(FrameKind.MESSAGE, FLAG_MORE, MID, 0, b"part"), 0.0)
    with pytest.raises(FrameError, match="interleaved"):
        b.receive_data(encode_frame(FrameKind.REQUEST, 0, MID, 1, b"q"), 0.0)


# ---------------------------------------------------------------------------------- compression


def test_compression_round_trip() -> None:
    config = CoreConfig(max_frame_payload=1000, ping_interval=0, idle_timeout=0)
    a, b = make(config, compression=True), make(config, compression=True)
    text = b"the quick brown fox jumps over the lazy dog " * 2000  # 88 KB, compressible
    noise = random.Random(3).randbytes(5000)  # incompressible: sent as is
    a.send_message(LO, text)
    a.send_message(LO, noise)
    a.send_message(LO, b"short " * 10)  # under the threshold
    wire = drain(a)
    frames = parse(wire)
    text_frames = [f for f in frames if f.flags & FLAG_COMPRESSED]
    assert text_frames and all(f.flags & FLAG_COMPRESSED for f in text_frames)
    assert sum(len(f.payload) for f in text_frames) < len(text) // 20
    assert sum(1 for f in frames if not f.flags & FLAG_COMPRESSED) == 5 + 1
    b.receive_data(wire, 0.0)
    assert b.events() == [
        MessageReceived(LO, text),
        MessageReceived(LO, noise),
        MessageReceived(LO, b"short " * 10),
    ]
    assert b.statistics().channel(LO).bytes_received == len(text) + len(noise) + 60
    assert a.compression and not make().compression


def compressed_message(
    data: bytes, *, content_size: bool = True, cut: int = 0, extra: bytes = b""
) -> bytes:
    packed = zstandard.ZstdCompressor(write_content_size=content_size).compress(data)
    packed = packed[: len(packed) - cut] + extra
    return encode_frame(FrameKind.MESSAGE, FLAG_COMPRESSED, MID, 0, packed)


def test_zip_bomb_is_rejected_before_decompressing() -> None:
    b = make(channels=[ChannelParams(MID, max_message_size=1 << 20)], compression=True)
    bomb = compressed_message(bytes(64 << 20))  # 64 MiB of zeros, a few KB on the wire
    assert len(bomb) < 10_000
    with pytest.raises(FrameError, match="declares"):
        b.receive_data(bomb, 0.0)


def test_compressed_without_content_size_or_garbage_is_rejected() -> None:
    for frame in (
        compressed_message(b"abc" * 1000, content_size=False),
        encode_frame(FrameKind.MESSAGE, FLAG_COMPRESSED, MID, 0, b"not zstd at all"),
        compressed_message(b"abc" * 1000, cut=3),  # truncated zstd frame
        compressed_message(b"abc" * 1000, extra=b"trailing"),
    ):
        b = make(compression=True)
        with pytest.raises(FrameError):
            b.receive_data(frame, 0.0)


def test_compressed_frame_without_negotiation_is_rejected() -> None:
    b = make(compression=False)
    with pytest.raises(FrameError, match="without compression"):
        b.receive_data(compressed_message(b"abc" * 1000), 0.0)


# ---------------------------------------------------------------------------------- rate limits


def test_send_rate_paces_whole_frames_with_exact_deadlines() -> None:
    config = CoreConfig(
        max_frame_payload=500, send_rate=1000.0, send_burst=600, ping_interval=0, idle_timeout=0
    )
    core = make(config)
    for _ in range(3):
        core.send_message(LO, b"x" * 500)  # 512-byte frames
    assert len(core.data_to_send(0.0)) == 512  # 600 tokens: one frame, 88 left
    assert core.data_to_send(0.0) == b""
    timer = core.get_timer()
    assert timer is not None and timer == pytest.approx(0.424)  # (512 - 88) / 1000
    assert core.data_to_send(timer - 0.001) == b""
    core.handle_timer(timer)
    assert len(core.data_to_send(timer)) == 512
    assert core.data_to_send(timer) == b""
    timer2 = core.get_timer()
    assert timer2 is not None and timer2 == pytest.approx(timer + 0.512)
    assert len(core.data_to_send(timer2)) == 512
    assert core.data_to_send(timer2) == b""
    assert core.get_timer() is None  # nothing waiting: no send deadline


def test_frame_larger_than_send_burst_goes_out_from_a_full_bucket() -> None:
    config = CoreConfig(
        max_frame_payload=500, send_rate=1000.0, send_burst=100, ping_interval=0, idle_timeout=0
    )
    core = make(config)
    core.send_message(LO, b"x" * 500)
    core.send_message(LO, b"y" * 500)
    assert len(core.data_to_send(0.0)) == 512  # full bucket (100): sent, debt of 412
    assert core.data_to_send(0.0) == b""
    assert core.get_timer() == pytest.approx(0.512)  # until the bucket is full again
    assert core.data_to_send(0.5) == b""
    assert len(core.data_to_send(0.512)) == 512


def test_rate_limit_allows_several_frames_per_batch_when_tokens_suffice() -> None:
    config = CoreConfig(send_rate=100.0, send_burst=70_000, ping_interval=0, idle_timeout=0)
    core = make(config)
    for _ in range(10):
        core.send_message(MID, b"z" * 988)  # 1000-byte frames
    assert len(core.data_to_send(0.0)) == 10_000


def test_receive_pause() -> None:
    config = CoreConfig(recv_rate=1000.0, recv_burst=500, ping_interval=0, idle_timeout=0)
    b = make(config)
    assert b.receive_paused_until(0.0) is None
    data = encode_frame(FrameKind.MESSAGE, 0, MID, 0, b"p" * 1488)  # 1500 bytes
    b.receive_data(data, 0.0)
    assert b.events() == [MessageReceived(MID, b"p" * 1488)]  # data already read is processed
    until = b.receive_paused_until(0.0)
    assert until == pytest.approx(1.001)  # 1000-byte debt plus one byte at 1000 B/s
    assert b.receive_paused_until(1.0) == pytest.approx(1.001)
    assert b.receive_paused_until(1.001) is None


def test_unlimited_by_default() -> None:
    core = make()
    core.receive_data(encode_frame(FrameKind.MESSAGE, 0, MID, 0, b"x" * 60_000), 0.0)
    assert core.receive_paused_until(0.0) is None


# ------------------------------------------------------------------------------ shared entries


def test_a_shared_broadcast_entry_goes_out_whole_from_every_connection() -> None:
    cores = [make(), make(), make()]
    entry = shared_message(b"hello all")
    for core in cores:
        core.send_message(MID, b"before")
        assert core.send_shared(MID, entry)
    outputs = [parse(drain(core)) for core in cores]
    for frames in outputs:
        assert [(f.kind, f.channel_id, f.payload) for f in frames] == [
            (FrameKind.MESSAGE, MID, b"before"), (FrameKind.MESSAGE, MID, b"hello all")]
    assert all(c.statistics().channels[1].messages_sent == 2 for c in cores)
    assert entry.offset == 0  # read only: a later connection still sends all of it


def test_a_shared_entry_respects_queue_limits_and_closing() -> None:
    core = make(channels=[ChannelParams(MID, send_queue_size=1)])
    entry = shared_message(b"x")
    assert core.send_shared(MID, entry)
    with pytest.raises(WouldBlock):
        core.send_shared(MID, entry)
    with pytest.raises(ChannelError):
        core.send_shared(LO, entry)
    core.send_disconnect(DisconnectReason.SHUTDOWN, "", now=0.0)
    assert not core.send_shared(MID, entry)  # nothing queued once closing


def test_a_shared_entry_too_large_for_one_frame_or_compressible_is_queued_per_connection() -> (
    None
):
    small = make(CoreConfig(ping_interval=0, idle_timeout=0, max_frame_payload=64))
    big = shared_message(b"y" * 200)
    assert small.send_shared(MID, big)
    frames = parse(drain(small))
    assert len(frames) > 1 and b"".join(f.payload for f in frames) == b"y" * 200
    packed = make(CoreConfig(ping_interval=0, idle_timeout=0, compression_threshold=100),
                  compression=True)
    assert packed.send_shared(MID, big)
    [frame] = parse(drain(packed))
    assert frame.flags & FLAG_COMPRESSED
    assert big.offset == 0 and big.flags == 0  # the shared entry itself was not touched


# ---------------------------------------------------------------------------------- ping / idle


def test_ping_pong_rtt_and_ewma() -> None:
    config = CoreConfig(ping_interval=10.0, idle_timeout=30.0)
    a, b = make(config), make(config)
    assert a.get_timer() == 10.0
    a.handle_timer(9.9)
    assert a.data_to_send(9.9) == b""  # not due yet
    a.handle_timer(10.0)
    [ping] = parse(a.data_to_send(10.0))
    assert ping.kind == FrameKind.CONTROL and isinstance(decode_control(ping.payload), Ping)
    assert a.get_timer() == 20.0
    b.receive_data(ping.encode(), 10.05)
    [pong] = parse(b.data_to_send(10.05))
    assert decode_control(pong.payload) == Pong(decode_control(ping.payload).nonce)  # type: ignore[union-attr]
    a.receive_data(pong.encode(), 10.2)
    [event] = a.events()
    assert isinstance(event, LatencyMeasured) and event.rtt == pytest.approx(0.2)
    a.handle_timer(20.0)  # the pong arrived at 10.2: quiet only from 20.2
    assert a.data_to_send(20.0) == b"" and a.get_timer() == pytest.approx(20.2)
    a.handle_timer(20.2)
    b.receive_data(drain(a, 20.2), 20.2)
    a.receive_data(drain(b, 20.2), 20.3)
    assert a.events() == [LatencyMeasured(pytest.approx(0.1))]  # type: ignore[arg-type]
    stats = a.statistics()
    assert stats.rtt_last == pytest.approx(0.1)
    assert stats.rtt_ewma == pytest.approx(0.2 + 0.125 * (0.1 - 0.2))
    assert b.events() == []  # pings are answered silently


def test_keep_alive_pings_only_a_quiet_link_and_traffic_rearms_no_timer() -> None:
    config = CoreConfig(ping_interval=10.0, idle_timeout=30.0)
    a = make(config)
    frame = encode_frame(FrameKind.MESSAGE, 0, MID, 0, b"x")
    for t in range(1, 10):  # traffic on every second: the deadline does not move per frame
        a.receive_data(frame, float(t))
        assert a.get_timer() == 10.0
    a.events()
    a.handle_timer(10.0)  # due, but the link carried traffic at 9.0: no ping, checked again at 19
    assert a.data_to_send(10.0) == b"" and a.get_timer() == 19.0
    a.handle_timer(19.0)  # quiet since 9.0
    [ping] = parse(a.data_to_send(19.0))
    assert isinstance(decode_control(ping.payload), Ping)
    assert a.get_timer() == 29.0  # still quiet: the next ping one interval later
    a.handle_timer(29.0)
    [ping2] = parse(a.data_to_send(29.0))
    assert isinstance(decode_control(ping2.payload), Ping)


def test_rtt_counts_from_when_the_ping_is_sent_and_due_pings_do_not_pile_up() -> None:
    config = CoreConfig(ping_interval=10.0, idle_timeout=30.0)
    a, b = make(config), make(config)
    a.handle_timer(10.0)
    a.handle_timer(20.0)  # the writer was stuck: the due ping is replaced, not duplicated
    wire = drain(a, 20.5)
    [ping] = parse(wire)
    assert decode_control(ping.payload) == Ping(2)
    b.receive_data(wire, 20.6)
    a.receive_data(drain(b, 20.6), 20.7)
    [event] = a.events()
    assert isinstance(event, LatencyMeasured) and event.rtt == pytest.approx(0.2)


def test_unsolicited_pong_is_ignored() -> None:
    a = make()
    pong = encode_control(Pong(77))
    a.receive_data(encode_frame(FrameKind.CONTROL, 0, 0, 0, pong), 1.0)
    assert a.events() == [] and a.statistics().rtt_last is None


def test_idle_timeout_once_per_quiet_period() -> None:
    config = CoreConfig(ping_interval=10.0, idle_timeout=30.0)
    a = make(config, now=100.0)
    for t in (110.0, 120.0):
        assert a.get_timer() == t
        a.handle_timer(t)
        assert a.events() == []
    assert a.get_timer() == 130.0  # idle deadline and the next ping coincide
    a.handle_timer(130.0)
    assert a.events() == [IdleTimeout()]
    a.handle_timer(135.0)
    assert a.events() == []
    assert a.get_timer() == 140.0  # only the ping now
    a.receive_data(encode_frame(FrameKind.CONTROL, 0, 0, 0, encode_control(Pong(999))), 150.0)
    a.handle_timer(170.0)
    assert a.events() == []
    a.handle_timer(180.0)
    assert a.events() == [IdleTimeout()]


def test_pings_and_idle_can_be_disabled() -> None:
    core = make(QUIET)
    assert core.get_timer() is None
    core.handle_timer(1e9)
    assert core.events() == [] and core.data_to_send(1e9) == b""


def test_control_queue_cap_drops_pongs_of_a_flooding_peer() -> None:
    config = CoreConfig(max_control_queue=5, ping_interval=0, idle_timeout=0)
    b = make(config)
    ping = encode_frame(FrameKind.CONTROL, 0, 0, 0, encode_control(Ping(1)))
    b.receive_data(ping * 8, 0.0)
    assert b.statistics().control_dropped == 3
    assert b.statistics().control_queue_depth == 5
    assert len(parse(drain(b))) == 5


def test_control_frames_go_before_channel_data() -> None:
    config = CoreConfig(max_frame_payload=1000, ping_interval=1.0, idle_timeout=30.0)
    core = make(config)
    core.send_message(HI, b"h" * 5000)
    core.handle_timer(1.0)
    frames = parse(drain(core, 1.0))
    assert frames[0].kind == FrameKind.CONTROL
    assert all(f.channel_id == HI for f in frames[1:])


# ---------------------------------------------------------------------------------- disconnect


def test_disconnect_is_sent_alone_and_last() -> None:
    a, b = make(), make()
    a.send_message(MID, b"queued but never sent")
    rid = a.send_request(MID, b"r")
    a.send_disconnect(DisconnectReason.SHUTDOWN, "bye", now=0.0)
    a.send_disconnect(DisconnectReason.BANNED, "ignored: first one wins", now=0.0)
    wire = a.data_to_send(0.0)
    [frame] = parse(wire)
    assert decode_control(frame.payload) == Disconnect(DisconnectReason.SHUTDOWN, "bye")
    assert a.data_to_send(0.0) == b""
    assert a.closing and a.has_space(MID)
    with pytest.raises(ConnectionClosed):
        a.send_message(MID, b"x")
    with pytest.raises(ConnectionClosed):
        a.send_request(MID, b"x")
    a.cancel_request(rid)
    assert a.get_timer() == CoreConfig().close_timeout  # the close deadline, nothing else
    b.receive_data(wire + encode_frame(FrameKind.MESSAGE, 0, MID, 0, b"after"), 0.0)
    assert b.events() == [DisconnectReceived(DisconnectReason.SHUTDOWN, "bye")]
    assert b.peer_disconnected
    b.receive_data(b"\xff" * 100, 0.0)  # ignored after the peer's disconnect
    with pytest.raises(LocalProtocolError):
        make().send_disconnect(1 << 31, "not a reason", now=0.0)  # type: ignore[arg-type]


def test_disconnect_fits_a_tiny_frame_limit() -> None:
    config = CoreConfig(max_frame_payload=64, ping_interval=0, idle_timeout=0)
    a, b = make(config), make(config)
    a.send_disconnect(DisconnectReason.IDLE_TIMEOUT, "z" * 1000, now=0.0)
    b.receive_data(a.data_to_send(0.0), 0.0)
    [event] = b.events()
    assert isinstance(event, DisconnectReceived)
    assert event.reason is DisconnectReason.IDLE_TIMEOUT


def test_responses_after_disconnect_return_false() -> None:
    b = make()
    b.receive_data(encode_frame(FrameKind.REQUEST, 0, MID, 3, b"q"), 0.0)
    b.send_disconnect(DisconnectReason.SHUTDOWN, "", now=0.0)
    assert not b.send_response(MID, 3, b"r")
    assert not b.send_error(MID, 3, ErrorCode.CANCELLED, "")


# ----------------------------------------------------------------------------------- lifecycle


def state(core: ConnectionCore) -> ConnectionState:
    """The core's state, read afresh (mypy would narrow ``core.state`` across calls)."""
    return core.state


def test_closing_has_a_deadline_after_which_the_connection_is_aborted() -> None:
    """OPEN -> CLOSING (timer = the close deadline) -> ABORTED when the Disconnect was not
    written in time (a peer that stopped reading); final states have no timer."""
    a = make(CoreConfig(ping_interval=0, idle_timeout=0, close_timeout=2.5))
    assert state(a) is ConnectionState.OPEN and a.get_timer() is None
    a.send_message(MID, b"x" * 100)
    a.send_disconnect(DisconnectReason.BANNED, "banned", now=10.0)
    assert state(a) is ConnectionState.CLOSING and a.get_timer() == 12.5
    assert a.wants_write  # the Disconnect, still to be handed out
    a.handle_timer(12.4)
    assert state(a) is ConnectionState.CLOSING
    a.handle_timer(12.5)
    assert state(a) is ConnectionState.ABORTED
    assert a.get_timer() is None and not a.wants_write and a.data_to_send(12.5) == b""
    a.connection_lost()  # the driver stopping afterwards does not make it a clean close
    assert state(a) is ConnectionState.ABORTED
    a.send_disconnect(DisconnectReason.SHUTDOWN, "", now=13.0)
    assert state(a) is ConnectionState.ABORTED and a.get_timer() is None


def test_idle_connection_closes_within_the_close_timeout() -> None:
    """The idle timeout does not stop the clock on closing: the driver closes on IdleTimeout and
    the close deadline follows, whatever the peer does."""
    a = make(CoreConfig(ping_interval=1.0, idle_timeout=3.0, close_timeout=1.0))
    a.handle_timer(3.0)
    assert a.idle_expired and isinstance(a.next_event(), IdleTimeout)
    a.send_disconnect(DisconnectReason.IDLE_TIMEOUT, "idle timeout", now=3.0)
    assert a.get_timer() == 4.0
    a.handle_timer(4.0)
    assert state(a) is ConnectionState.ABORTED


def test_written_disconnect_or_lost_transport_closes_cleanly() -> None:
    a = make()
    a.send_disconnect(DisconnectReason.SHUTDOWN, "bye", now=0.0)
    wire = a.data_to_send(0.0)
    assert state(a) is ConnectionState.CLOSING  # handed out, not yet written
    a.connection_lost()  # the driver wrote it (or the stream ended)
    assert state(a) is ConnectionState.CLOSED and a.get_timer() is None
    a.handle_timer(100.0)
    assert state(a) is ConnectionState.CLOSED
    b = make()
    b.receive_data(wire, 0.0)
    assert state(b) is ConnectionState.CLOSED  # the peer said goodbye: nothing left to send
    assert b.get_timer() is None and not b.wants_write
    with pytest.raises(ConnectionClosed):
        b.send_message(MID, b"x")
    c = make()
    c.connection_lost()  # end of stream while open
    assert state(c) is ConnectionState.CLOSED


def test_close_timeout_must_be_positive() -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="close_timeout"):
            CoreConfig(close_timeout=bad)


# ---------------------------------------------------------------------------------- statistics


def test_statistics_counters() -> None:
    a, b = make(compression=True), make(compression=True)
    a.send_message(HI, b"x" * 5000)
    rid = a.send_request(MID, b"q")
    pump(a, b)
    b.send_response(MID, rid, b"resp")
    pump(a, b)
    sa, sb = a.statistics(), b.statistics()
    assert [c.channel_id for c in sa.channels] == [HI, MID, LO, LO2]
    hi = sa.channel(HI)
    assert (hi.messages_sent, hi.bytes_sent) == (1, 5000)
    assert (sb.channel(HI).messages_received, sb.channel(HI).bytes_received) == (1, 5000)
    assert sa.channel(MID).messages_received == 1 and sa.channel(MID).bytes_received == 4
    assert sa.bytes_out == sb.bytes_in and sb.bytes_out == sa.bytes_in
    assert sa.frames_out == sb.frames_in == 2
    assert sa.bytes_out < 5000  # compressed
    with pytest.raises(ChannelError):
        sa.channel(99)


# ---------------------------------------------------------------------------------- workload


@pytest.mark.parametrize("seed", range(4))
def test_back_to_back_mixed_workload(seed: int) -> None:
    rng = random.Random(seed)
    compression = seed % 2 == 0
    config = CoreConfig(
        max_frame_payload=rng.choice([64, 700, 4096]),
        max_write_batch=rng.choice([100, 5000, 65_519]),
        compression_threshold=200,
        ping_interval=1.0,
        idle_timeout=5.0,
    )
    channels = [
        ChannelParams(1, priority=2, send_queue_size=8, max_concurrent_inbound=2),
        ChannelParams(2, priority=1, send_queue_size=4, max_message_size=200_000),
        ChannelParams(3, priority=1, send_queue_size=4),
    ]
    a = make(config, channels, compression=compression)
    b = make(config, channels, compression=compression)
    sent: dict[int, list[bytes]] = defaultdict(list)
    received: dict[int, list[bytes]] = defaultdict(list)
    pending: dict[int, bytes] = {}  # request id -> expected response
    answered: dict[int, bytes] = {}
    rejected = cancelled = 0
    deferred: list[RequestReceived] = []
    now = 0.0

    def payload() -> bytes:
        size = rng.choice([0, 10, 300, 5000, 60_000, 150_000])
        if rng.random() < 0.5:
            return bytes([rng.randrange(4)]) * size  # compressible
        return rng.randbytes(size)

    def deliver(src: ConnectionCore, dst: ConnectionCore) -> None:
        budget, parts = rng.randint(1, 300_000), []
        while budget > 0 and (batch := src.data_to_send(now)):
            parts.append(batch)
            budget -= len(batch)
        data = b"".join(parts)
        while data:  # random pieces, as TCP would cut them
            cut = rng.randint(1, len(data))
            dst.receive_data(data[:cut], now)
            data = data[cut:]

    for _step in range(400):
        now += 0.01
        for core in (a, b):
            core.handle_timer(now)
        action = rng.random()
        channel = rng.choice([1, 2, 3])
        try:
            if action < 0.35:
                body = payload()  # at most 150 KB: fits every channel's limit
                a.send_message(channel, body)
                sent[channel].append(body)
            elif action < 0.6:
                body = payload()[:100_000]
                rid = a.send_request(channel, body)
                pending[rid] = body[::-1]
            elif action < 0.65 and pending:
                rid = rng.choice(sorted(pending))
                a.cancel_request(rid)
                del pending[rid]
                cancelled += 1
        except WouldBlock:
            pass
        if rng.random() < 0.7:
            deliver(a, b)
        if rng.random() < 0.7:
            deliver(b, a)
        for event in b.events():
            if isinstance(event, MessageReceived):
                received[event.channel_id].append(event.payload)
            elif isinstance(event, RequestReceived):
                deferred.append(event)  # the application answers later, in random order
            elif isinstance(event, RequestRejected):
                rejected += 1
            elif isinstance(event, CancelReceived):
                deferred = [r for r in deferred if r.request_id != event.request_id]
            else:
                assert isinstance(event, LatencyMeasured), event
        rng.shuffle(deferred)
        while deferred and rng.random() < 0.3:
            request = deferred.pop()
            try:
                answer = request.payload[::-1]
                assert b.send_response(request.channel_id, request.request_id, answer)
            except WouldBlock:
                b.send_error(request.channel_id, request.request_id, ErrorCode.UNAVAILABLE, "")
        for event in a.events():
            if isinstance(event, ResponseReceived):
                assert pending.pop(event.request_id) == event.payload
                answered[event.request_id] = event.payload
            elif isinstance(event, ErrorReceived):
                assert event.code in (ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE)
                pending.pop(event.request_id)
            else:
                assert isinstance(event, MessageDropped | LatencyMeasured), event
    for _ in range(50):  # let everything drain (the receiver answers as requests arrive)
        now += 0.01
        pump(a, b, now)
        for event in b.events():
            if isinstance(event, RequestReceived):
                deferred.append(event)
            elif isinstance(event, MessageReceived):
                received[event.channel_id].append(event.payload)
        while deferred and b.has_space(deferred[-1].channel_id):
            request = deferred.pop()
            b.send_response(request.channel_id, request.request_id, request.payload[::-1])
        for event in a.events():
            if isinstance(event, ResponseReceived):
                assert pending.pop(event.request_id) == event.payload
                answered[event.request_id] = event.payload
            elif isinstance(event, ErrorReceived):
                pending.pop(event.request_id)
    assert pending == {}
    assert dict(received) == {k: v for k, v in sent.items() if v}
    assert len(answered) > 10 and cancelled > 0
    assert rejected == sum(c.requests_rejected for c in b.statistics().channels)
    stats = a.statistics()
    assert stats.outbound_requests_in_flight == 0
    assert all(c.queue_depth == 0 for c in stats.channels)
    assert b.statistics().inbound_requests_active == 0
    # Keep-alive pings only on a quiet link: once the traffic stops for ping_interval, a pings.
    now += config.ping_interval
    a.handle_timer(now)
    b.receive_data(drain(a, now), now)
    a.receive_data(drain(b, now), now)
    assert a.statistics().rtt_last is not None


@pytest.mark.parametrize(("sender_chunk", "receiver_chunk"), [(1024, 65_507), (65_507, 1024)])
def test_different_chunk_sizes_interoperate(sender_chunk: int, receiver_chunk: int) -> None:
    sender = make(CoreConfig(ping_interval=0, idle_timeout=0, max_frame_payload=sender_chunk))
    receiver = make(CoreConfig(ping_interval=0, idle_timeout=0, max_frame_payload=receiver_chunk))
    payload = bytes(range(256)) * 600  # 153600 bytes: many chunks either way
    sender.send_message(LO, payload)
    frames = parse(drain(sender))
    assert max(len(f.payload) for f in frames) == sender_chunk
    receiver.receive_data(b"".join(f.encode() for f in frames), 0.0)
    assert of_type(receiver.events(), MessageReceived) == [MessageReceived(LO, payload)]


def test_frame_payload_setting_is_capped_at_the_wire_maximum() -> None:
    with pytest.raises(LocalProtocolError, match="max_frame_payload"):
        CoreConfig(max_frame_payload=65_508)
