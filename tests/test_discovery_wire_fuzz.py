"""Property tests of every discovery decoder: a parsed value or a RemoteProtocolError, never a
crash; valid messages round-trip; the size cap comes before any signature work."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery import (
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_MESSAGE,
    CapabilityRecord,
    DhtAck,
    DhtAddProvider,
    DhtError,
    DhtErrorCode,
    DhtFindNode,
    DhtGetProviders,
    DhtNodes,
    DhtPing,
    DhtProviders,
    PexRequest,
    PexResponse,
    RecordError,
    RecordRejection,
    RecordUpdate,
    decode_dht_request,
    decode_dht_response,
    decode_pex_request,
    decode_pex_response,
    decode_record_update,
    encode_dht_request,
    encode_dht_response,
    encode_pex_request,
    encode_pex_response,
    encode_record_update,
    sign_record,
    verify_record,
)
from overlay.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from overlay.identity import NodeKey
from proto import discovery_pb2 as pb

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)
NET = "overlay-test"
T0 = 1_700_000_000
KEY = NodeKey.from_seed(b"\x07" * 32)
VALID = sign_record(
    KEY,
    network=NET,
    seq=3,
    issued_at=T0,
    expires_at=T0 + 600,
    addresses=["127.0.0.1:7000"],
    capabilities={"kv": 1},
).data

DECODERS: list[Callable[[bytes], object]] = [
    decode_pex_request,
    decode_pex_response,
    decode_dht_request,
    decode_dht_response,
    decode_record_update,
]


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Bytes near ``data``: cut, extended, or with a few bytes overwritten."""
    positions = st.integers(0, max(0, len(data) - 1))
    return st.one_of(
        st.integers(0, len(data)).map(lambda n: data[:n]),
        st.binary(max_size=16).map(lambda tail: data + tail),
        st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=4).map(
            lambda edits: _edit(data, edits)
        ),
    )


def _edit(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


def check_verify(data: bytes) -> None:
    try:
        record = verify_record(data, network=NET, now=T0 + 1)
    except RecordError as exc:
        assert isinstance(exc.reason, RecordRejection)
    else:
        assert isinstance(record, CapabilityRecord)


@FAST
@given(st.binary(max_size=MAX_RECORD_BYTES + 64))
def test_verify_record_on_garbage(data: bytes) -> None:
    check_verify(data)


@FAST
@given(mutations(VALID))
def test_verify_record_on_near_misses(data: bytes) -> None:
    check_verify(data)
    if data != VALID:
        # The encoding is canonical and signed: no other byte string is the same valid record.
        with pytest.raises(RecordError):
            verify_record(data, network=NET, now=T0 + 1)


def _unknown_field(size: int) -> bytes:
    """An unknown length-delimited field (number 15) carrying ``size`` bytes (< 2**14)."""
    return bytes([0x7A, 0x80 | (size & 0x7F), size >> 7]) + b"p" * size


def test_size_cap_comes_before_signature_verification() -> None:
    """Padding a valid record with an unknown field makes it NOT_CANONICAL; padding it past the
    cap makes it OVERSIZED: the cap is checked on the raw bytes before anything else."""
    small = VALID + _unknown_field(200)
    with pytest.raises(RecordError) as info:
        verify_record(small, network=NET, now=T0 + 1)
    assert info.value.reason is RecordRejection.NOT_CANONICAL
    big = VALID + _unknown_field(MAX_RECORD_BYTES)
    assert len(big) > MAX_RECORD_BYTES
    with pytest.raises(RecordError) as info:
        verify_record(big, network=NET, now=T0 + 1)
    assert info.value.reason is RecordRejection.OVERSIZED


def check_decoder(decoder: Callable[[bytes], object], data: bytes) -> None:
    try:
        decoder(data)
    except DecodeError as exc:
        assert isinstance(exc, RemoteProtocolError)


@FAST
@given(st.sampled_from(DECODERS), st.binary(max_size=512))
def test_decoders_on_garbage(decoder: Callable[[bytes], object], data: bytes) -> None:
    check_decoder(decoder, data)


keys = st.binary(min_size=20, max_size=20)
records = st.lists(st.binary(max_size=64), max_size=8).map(tuple)
dht_requests = st.one_of(
    keys.map(DhtFindNode),
    keys.map(DhtGetProviders),
    st.builds(DhtAddProvider, keys, st.binary(max_size=64)),
    st.just(DhtPing()),
)
dht_responses = st.one_of(
    records.map(DhtNodes),
    st.builds(DhtProviders, records, records),
    st.just(DhtAck()),
    st.builds(DhtError, st.sampled_from(DhtErrorCode), st.text(max_size=40)),
)
names = st.from_regex(r"[a-z][a-z0-9_.-]{0,31}", fullmatch=True)
pex_requests = st.builds(
    PexRequest, st.integers(0, 2**32 - 1), st.lists(names, max_size=4).map(tuple)
)


@FAST
@given(dht_requests, st.data())
def test_dht_requests_round_trip_and_survive_mutation(message: object, data: st.DataObject) -> None:
    encoded = encode_dht_request(message)  # type: ignore[arg-type]
    assert decode_dht_request(encoded) == message
    check_decoder(decode_dht_request, data.draw(mutations(encoded)))


@FAST
@given(dht_responses, st.data())
def test_dht_responses_round_trip_and_survive_mutation(
    message: object, data: st.DataObject
) -> None:
    encoded = encode_dht_response(message)  # type: ignore[arg-type]
    assert decode_dht_response(encoded) == message
    check_decoder(decode_dht_response, data.draw(mutations(encoded)))


@FAST
@given(pex_requests, records, st.data())
def test_pex_round_trip_and_survive_mutation(
    request: PexRequest, recs: tuple[bytes, ...], data: st.DataObject
) -> None:
    assert decode_pex_request(encode_pex_request(request)) == request
    assert decode_pex_response(encode_pex_response(PexResponse(recs))) == PexResponse(recs)
    update = RecordUpdate(VALID)
    assert decode_record_update(encode_record_update(update)) == update
    check_decoder(decode_pex_request, data.draw(mutations(encode_pex_request(request))))
    response = encode_pex_response(PexResponse(recs))
    check_decoder(decode_pex_response, data.draw(mutations(response)))


def test_structural_limits_of_the_decoders() -> None:
    with pytest.raises(DecodeError, match="20 bytes"):
        decode_dht_request(
            pb.DhtRequest(find_node=pb.DhtRequest.FindNode(target=b"x")).SerializeToString()
        )
    with pytest.raises(DecodeError, match="no request"):
        decode_dht_request(b"")
    with pytest.raises(DecodeError, match="no response"):
        decode_dht_response(b"")
    too_many = [b"r"] * (MAX_RECORDS_PER_MESSAGE + 1)
    with pytest.raises(DecodeError, match="records"):
        decode_pex_response(pb.PexResponse(records=too_many).SerializeToString())
    with pytest.raises(DecodeError, match="capability name"):
        decode_pex_request(pb.PexRequest(wanted_capabilities=["Bad"]).SerializeToString())
    with pytest.raises(DecodeError):
        decode_pex_request("text")  # type: ignore[arg-type]
    error = pb.DhtResponse.Error(code=99, message="m")  # type: ignore[arg-type]
    unknown = pb.DhtResponse(error=error).SerializeToString()
    assert decode_dht_response(unknown) == DhtError(DhtErrorCode.UNSPECIFIED, "m")
    with pytest.raises(LocalProtocolError):
        encode_dht_request(DhtFindNode(b"short"))
