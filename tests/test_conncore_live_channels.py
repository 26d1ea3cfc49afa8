"""ConnectionCore with channels that change while the connection is up, and the node-info updates
that announce them: sequencing, replays, pacing, floods and bad updates (sans-IO, float clock)."""

from __future__ import annotations

import pytest

from overlay.connection._core import (
    CancelReceived,
    ChannelParams,
    ConnectionCore,
    CoreConfig,
    ErrorReceived,
    MessageDropped,
    MessageReceived,
    PeerInfoReceived,
    RequestReceived,
    ResponseReceived,
)
from overlay.connection._infosync import (
    INFO_UPDATE_BURST,
    INFO_UPDATE_RATE,
    INFO_UPDATE_RECEIVE_BURST,
)
from overlay.errors import (
    ChannelError,
    ErrorCode,
    FrameError,
    LocalProtocolError,
    RemoteProtocolError,
)
from overlay.wire._frames import FrameDecoder, FrameKind
from overlay.wire._messages import (
    MAX_INFO_UPDATE_BYTES,
    InfoUpdate,
    decode_control,
    encode_control,
)
from overlay.wire._nodeinfo import NodeInfo, encode_info_update, encode_node_info
from proto import overlay_pb2 as pb

QUIET = CoreConfig(ping_interval=0, idle_timeout=0)
NET = "testnet"
HELLO = NodeInfo(network=NET, channels=(1,))


def make(channels: tuple[int, ...] = (1,), *, now: float = 0.0, **kwargs: int) -> ConnectionCore:
    params = [ChannelParams(c, **kwargs) for c in channels]
    return ConnectionCore(QUIET, params, now=now, peer_info=HELLO)


def drain(core: ConnectionCore, now: float = 0.0) -> bytes:
    out = []
    while data := core.data_to_send(now):
        out.append(data)
    return b"".join(out)


def pump(a: ConnectionCore, b: ConnectionCore, now: float = 0.0) -> None:
    while True:
        ab, ba = drain(a, now), drain(b, now)
        if not ab and not ba:
            return
        if ab:
            b.receive_data(ab, now)
        if ba:
            a.receive_data(ba, now)


def control_frame(payload: bytes) -> bytes:
    return (len(payload) + 8).to_bytes(4, "big") + bytes([FrameKind.CONTROL, 0, 0, 0, 0, 0, 0, 0]) \
        + payload


def update(seq: int, **fields: object) -> bytes:
    info = NodeInfo(**{"network": NET, "channels": (1,)} | fields)  # type: ignore[arg-type]
    return control_frame(encode_info_update(seq, info))


def info_events(core: ConnectionCore) -> list[PeerInfoReceived]:
    return [e for e in core.events() if isinstance(e, PeerInfoReceived)]


# ------------------------------------------------------------------------------ wire codec


def test_info_update_round_trips_and_refuses_what_it_cannot_carry() -> None:
    info = NodeInfo(network=NET, channels=(1, 7), capability_record=b"\x01signed")
    msg = decode_control(encode_info_update(3, info))
    assert isinstance(msg, InfoUpdate) and msg.info_seq == 3
    assert msg.node_info == encode_node_info(info)
    with pytest.raises(LocalProtocolError):
        encode_info_update(0, info)  # the hello is 0
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode_info_update(1, NodeInfo(network=NET, capability_record=bytes(MAX_INFO_UPDATE_BYTES)))
    with pytest.raises(LocalProtocolError):
        encode_control(InfoUpdate(1, b"\xff\xff"))  # not an encoded NodeInfo


@pytest.mark.parametrize(
    "payload",
    [
        pb.Control(node_info_update=pb.NodeInfoUpdate(info_seq=0, node_info=pb.NodeInfo(
            network=NET))).SerializeToString(),
        pb.Control(node_info_update=pb.NodeInfoUpdate(info_seq=1)).SerializeToString(),
        pb.Control(node_info_update=pb.NodeInfoUpdate(info_seq=1, node_info=pb.NodeInfo(
            network=NET, software_version="x" * MAX_INFO_UPDATE_BYTES))).SerializeToString(),
    ],
    ids=["seq 0", "no NodeInfo", "oversized"],
)
def test_bad_update_payloads_are_frame_errors(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode_control(payload)
    core = make()
    with pytest.raises(FrameError):
        core.receive_data(control_frame(payload), 0.0)


# ------------------------------------------------------------------------- receiving updates


def test_update_replaces_peer_info_and_replays_are_ignored() -> None:
    core = make()
    assert core.peer_info == HELLO and core.peer_info_seq == 0
    core.receive_data(update(2, channels=(1, 7), capability_record=b"rec"), 0.0)
    [event] = info_events(core)
    assert event.info_seq == 2 and event.info.channels == (1, 7)
    assert core.peer_info == event.info and core.peer_info.capability_record == b"rec"
    core.receive_data(update(2, channels=(1,)) + update(1, channels=(1, 9)), 0.0)  # replays
    assert info_events(core) == [] and core.peer_info == event.info
    assert core.info_updates_ignored == 2
    core.receive_data(update(5, channels=(1, 9)), 0.0)  # gaps are fine
    assert [e.info_seq for e in info_events(core)] == [5] and core.peer_info_seq == 5


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"network": "othernet"}, "network"),
        ({"protocol_version": 2000}, "protocol version"),
        ({"protocol_version": 1001}, "protocol version"),
    ],
)
def test_update_changing_what_the_hello_fixed_is_a_violation(
    fields: dict[str, object], match: str
) -> None:
    core = make()
    with pytest.raises(RemoteProtocolError, match=match):
        core.receive_data(update(1, **fields), 0.0)
    with pytest.raises(RemoteProtocolError):  # the core stays failed
        core.receive_data(update(2), 0.0)


def test_update_with_a_malformed_node_info_is_a_frame_error() -> None:
    payload = pb.Control(node_info_update=pb.NodeInfoUpdate(
        info_seq=1, node_info=pb.NodeInfo(network=NET, channels=[0]))).SerializeToString()
    with pytest.raises(FrameError, match="channel id"):
        make().receive_data(control_frame(payload), 0.0)


def test_update_flood_is_a_violation_but_the_allowed_rate_is_not() -> None:
    core = make()
    burst = b"".join(update(seq) for seq in range(1, INFO_UPDATE_RECEIVE_BURST + 1))
    core.receive_data(burst, 0.0)
    assert len(info_events(core)) == INFO_UPDATE_RECEIVE_BURST
    now = 0.0
    for seq in range(INFO_UPDATE_RECEIVE_BURST + 1, INFO_UPDATE_RECEIVE_BURST + 50):
        now += 1 / INFO_UPDATE_RATE  # sustained at the rate: fine
        core.receive_data(update(seq), now)
    with pytest.raises(RemoteProtocolError, match="flood"):
        core.receive_data(update(1000) + update(1001), now)
    flooded = make()
    replays = update(1) * (INFO_UPDATE_RECEIVE_BURST + 1)  # replays count against the rate too
    with pytest.raises(RemoteProtocolError, match="flood"):
        flooded.receive_data(replays, 0.0)


# --------------------------------------------------------------------------- sending updates


def sent_updates(core: ConnectionCore, now: float) -> list[int]:
    decoder = FrameDecoder(1 << 20)
    decoder.feed(drain(core, now))
    seqs = []
    for frame in decoder:
        msg = decode_control(frame.payload)
        assert isinstance(msg, InfoUpdate)
        seqs.append(msg.info_seq)
    return seqs


def test_updates_are_paced_and_coalesced_to_the_newest() -> None:
    core = make()
    info = NodeInfo(network=NET, channels=(1,))
    for seq in range(1, INFO_UPDATE_BURST + 1):
        core.send_info_update(seq, encode_info_update(seq, info), 0.0)
    assert sent_updates(core, 0.0) == list(range(1, INFO_UPDATE_BURST + 1))
    assert core.get_timer() is None
    for seq in range(INFO_UPDATE_BURST + 1, INFO_UPDATE_BURST + 40):  # a burst beyond the limit
        core.send_info_update(seq, encode_info_update(seq, info), 0.0)
    assert sent_updates(core, 0.0) == []  # held back, only the newest kept
    due = core.get_timer()
    assert due is not None and due == pytest.approx(1 / INFO_UPDATE_RATE)
    core.handle_timer(due)
    assert sent_updates(core, due) == [INFO_UPDATE_BURST + 39]
    core.send_info_update(3, encode_info_update(3, info), due)  # older than what was sent
    assert sent_updates(core, 10.0) == [] and core.get_timer() is None


def test_paced_sender_never_trips_the_receivers_flood_check() -> None:
    a, b = make(), make()
    now = 0.0
    info = NodeInfo(network=NET, channels=(1,))
    for seq in range(1, 200):
        a.send_info_update(seq, encode_info_update(seq, info), now)
        due = a.get_timer()
        if due is not None and seq % 3 == 0:
            now = due
            a.handle_timer(now)
        pump(a, b, now)
    now += 60.0  # the last update, held back by the pacing, goes out
    a.handle_timer(now)
    pump(a, b, now)
    assert b.peer_info_seq == 199 and b.info_updates_ignored == 0


# ------------------------------------------------------------------- adding/removing channels


def test_channel_added_later_carries_traffic_both_ways() -> None:
    a, b = make(), make()
    with pytest.raises(ChannelError):
        a.send_message(7, b"early")
    a.add_channel(ChannelParams(7, priority=3))
    b.add_channel(ChannelParams(7))
    with pytest.raises(ChannelError):
        a.add_channel(ChannelParams(7))
    assert a.channel_ids() == [1, 7]
    a.send_message(7, b"hi")
    rid = b.send_request(7, b"q")
    pump(a, b)
    assert MessageReceived(7, b"hi") in b.events()
    assert RequestReceived(7, rid, b"q") in a.events()
    a.send_response(7, rid, b"a")
    pump(a, b)
    assert ResponseReceived(7, rid, b"a") in b.events()


def test_removing_a_channel_fails_our_requests_and_answers_the_peers() -> None:
    a, b = make((1, 7)), make((1, 7))
    ours = a.send_request(7, b"ours")
    theirs = b.send_request(7, b"theirs")
    answered = b.send_request(7, b"answered")
    pump(a, b)
    a.events()
    b.events()
    a.send_response(7, answered, b"queued, not sent")
    a.send_message(7, b"dropped")
    assert a.remove_channel(7) == [ours]
    with pytest.raises(ChannelError):
        a.remove_channel(7)
    with pytest.raises(ChannelError):
        a.send_message(7, b"gone")
    pump(a, b)
    events = b.events()
    assert ErrorReceived(7, theirs, ErrorCode.NO_HANDLER, "channel closed") in events
    assert ErrorReceived(7, answered, ErrorCode.NO_HANDLER, "channel closed") in events
    assert not [e for e in events if isinstance(e, MessageReceived | RequestReceived)]
    assert CancelReceived(7, ours) in events  # ours had gone out: b is told to drop it
    # the CANCEL of ours reached b; a late answer to it is dropped by a, not a violation
    b.send_response(7, ours, b"late")
    pump(a, b)
    assert a.statistics().outbound_requests_in_flight == 0
    # now unknown to a: the peer's new requests get NO_HANDLER, its messages are dropped
    again = b.send_request(7, b"again")
    b.send_message(7, b"msg")
    pump(a, b)
    assert MessageDropped(7, "unknown channel") in a.events()
    assert ErrorReceived(7, again, ErrorCode.NO_HANDLER, "") in b.events()


def test_a_partly_sent_message_is_finished_before_a_reopened_channel_sends() -> None:
    config = CoreConfig(ping_interval=0, idle_timeout=0, max_frame_payload=64, max_write_batch=1)
    a = ConnectionCore(config,
                       [ChannelParams(1), ChannelParams(7)], now=0.0, peer_info=HELLO)
    b = make((1, 7))
    a.send_message(7, b"x" * 200)  # four frames of 64 bytes at most
    first = a.data_to_send(0.0)  # one frame: the message is partly sent
    assert len(first) == 12 + 64
    a.remove_channel(7)
    a.add_channel(ChannelParams(7, priority=5))
    a.send_message(7, b"after")
    b.receive_data(first, 0.0)
    pump(a, b)
    assert [e for e in b.events() if isinstance(e, MessageReceived)] == [
        MessageReceived(7, b"x" * 200), MessageReceived(7, b"after"),
    ]



def test_a_large_message_on_a_just_removed_channel_is_dropped_not_a_violation() -> None:
    """Messages on channels we do not carry are discarded up to the largest limit we ever had:
    a peer that has not heard yet that we closed a channel allowing 8 MiB may still send that."""
    big = 8 * 1024 * 1024
    a = make((1,))
    b = make((1,))
    a.add_channel(ChannelParams(7, max_message_size=big))
    b.add_channel(ChannelParams(7, max_message_size=big))
    b.send_message(7, b"m" * (6 * 1024 * 1024))  # above the 4 MiB default limit
    a.remove_channel(7)
    pump(a, b)
    assert a.events() == [MessageDropped(7, "unknown channel")]
    b.send_message(1, b"still fine")
    pump(a, b)
    assert a.events() == [MessageReceived(1, b"still fine")]
