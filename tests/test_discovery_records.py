"""Signed capability records: the golden vector, signing, and every reason to refuse one."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import discovery
from discovery import (
    MAX_ADDRESSES,
    MAX_CAPABILITIES,
    MAX_CLOCK_SKEW,
    MAX_LIFETIME,
    MAX_RECORD_BYTES,
    CapabilityInfo,
    RecordError,
    RecordRejection,
    check_newer,
    next_seq,
    parse_record_address,
    provider_key,
    sign_record,
    valid_attribute_key,
    valid_attribute_value,
    valid_capability_name,
    verify_record,
    verify_signed_record,
)
from discovery._record import signing_input
from overlay.address import NodeAddress
from overlay.errors import LocalProtocolError, RemoteProtocolError
from overlay.identity import NodeId, NodeKey
from proto import discovery_pb2 as pb

NET = "overlay-test"
T0 = 1_700_000_000
KEY = NodeKey.from_seed(bytes(range(32)))
OTHER = NodeKey.from_seed(bytes(32))

GOLDEN_HEX = (
    "0a97010a1456475aa75463474c0285df5dbf2bcab73da65135122003a107bff3"
    "ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b81880d095ff"
    "bc31220c6f7665726c61792d746573742a0f3132372e302e302e313a32363635"
    "362a0b5b3a3a315d3a323636353632080a04626c6f62100132140a026b761002"
    "1a0c0a06726567696f6e120265753880e2cfaa064090fecfaa0612407a51ae8a"
    "929a3ac670e6c49c56a7626f84136ee2687ef121098c0e594355a0f80eaf74c0"
    "f40787f4da9650d08e5f4e792fc5d95113c85aee3faa3fddeb40ac04"
)


def golden() -> discovery.SignedRecord:
    return sign_record(
        KEY,
        network=NET,
        seq=1_700_000_000_000,
        issued_at=T0,
        expires_at=T0 + 3600,
        addresses=["127.0.0.1:26656", "[::1]:26656"],
        capabilities={"kv": CapabilityInfo(2, {"region": "eu"}), "blob": 1},
    )


def raw_payload(key: NodeKey = KEY, **overrides: object) -> pb.CapabilityRecord:
    """A payload message with valid defaults; overrides bypass every local check."""
    fields: dict[str, object] = {
        "node_id": bytes.fromhex(key.node_id),
        "public_key": key.public_key,
        "seq": 5,
        "network": NET,
        "addresses": ["127.0.0.1:7000"],
        "capabilities": [pb.Capability(name="kv", version=1)],
        "issued_at": T0,
        "expires_at": T0 + 3600,
    }
    fields.update(overrides)
    return pb.CapabilityRecord(**fields)  # type: ignore[arg-type]


def envelope(payload: bytes, signer: NodeKey = KEY, *, signature: bytes | None = None) -> bytes:
    sig = signer.sign(signing_input(payload)) if signature is None else signature
    return pb.SignedRecord(payload=payload, signature=sig).SerializeToString(deterministic=True)


def signed_raw(**overrides: object) -> bytes:
    """A correctly signed envelope (by KEY) around a possibly invalid payload."""
    return envelope(raw_payload(KEY, **overrides).SerializeToString(deterministic=True), KEY)


def reason_of(data: bytes, **kw: object) -> RecordRejection:
    args: dict[str, object] = {"network": NET, "now": T0 + 10}
    args.update(kw)
    with pytest.raises(RecordError) as info:
        verify_record(data, **args)  # type: ignore[arg-type]
    assert isinstance(info.value, RemoteProtocolError)
    return info.value.reason


# -- the golden vector ---------------------------------------------------------------------------


def test_golden_vector_is_stable() -> None:
    signed = golden()
    assert signed.data.hex() == GOLDEN_HEX
    record = verify_record(bytes.fromhex(GOLDEN_HEX), network=NET, now=T0 + 10)
    assert record == signed.record
    assert record.node_id == KEY.node_id
    assert record.addresses == ("127.0.0.1:26656", "[::1]:26656")
    assert list(record.capabilities) == ["blob", "kv"]  # canonical order
    assert record.capabilities["kv"] == CapabilityInfo(2, {"region": "eu"})
    assert record.has("kv") and not record.has("dht")
    assert record.dial_addresses() == (
        NodeAddress(KEY.node_id, "tcp", "127.0.0.1", 26656),
        NodeAddress(KEY.node_id, "tcp", "::1", 26656),
    )


def test_golden_signature_covers_the_documented_input() -> None:
    """Recompute the signing input from docs/discovery.md by hand and verify with cryptography."""
    env = pb.SignedRecord.FromString(bytes.fromhex(GOLDEN_HEX))
    domain = b"overlay-capability-record/v1"
    message = (
        struct.pack(">H", len(domain)) + domain + struct.pack(">I", len(env.payload)) + env.payload
    )
    Ed25519PublicKey.from_public_bytes(KEY.public_key).verify(env.signature, message)
    assert hashlib.sha256(KEY.public_key).digest()[:20] == pb.CapabilityRecord.FromString(
        env.payload
    ).node_id


def test_provider_key_matches_its_definition() -> None:
    def by_hand(network: str, cap: str) -> bytes:
        n, c = network.encode(), cap.encode()
        data = b"overlay/provider/v1\x00" + struct.pack(">H", len(n)) + n
        return hashlib.sha256(data + struct.pack(">H", len(c)) + c).digest()[:20]

    assert provider_key(NET, "kv").hex() == "20bcb2e4e593532c05098ba4912ad3985b7b77c5"
    assert provider_key(NET, "kv") == by_hand(NET, "kv")
    assert provider_key("ab", "c") != provider_key("a", "bc")  # length prefixes separate
    assert len(provider_key("n", "x" * 32)) == 20


def test_every_single_bit_flip_is_refused() -> None:
    data = bytes.fromhex(GOLDEN_HEX)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RecordError):
            verify_record(bytes(flipped), network=NET, now=T0 + 10)


def test_signed_record_keeps_its_bytes() -> None:
    data = golden().data
    signed = verify_signed_record(data, network=NET, now=T0, expected_id=KEY.node_id)
    assert signed.data == data and signed.node_id == KEY.node_id
    assert signed.seq == 1_700_000_000_000


# -- every rejection reason ----------------------------------------------------------------------


def test_oversized_is_refused_before_parsing() -> None:
    # Garbage of MAX + 1 bytes would be MALFORMED if it were parsed at all.
    assert reason_of(b"\xff" * (MAX_RECORD_BYTES + 1)) is RecordRejection.OVERSIZED
    # A well-signed record just over the cap (a long network name) is refused the same way.
    big = signed_raw(network="n" * 1000)
    assert len(big) > MAX_RECORD_BYTES
    assert reason_of(big, network="n" * 1000) is RecordRejection.OVERSIZED


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: b"\xff\xff\xff", RecordRejection.MALFORMED),
        (lambda: envelope(b"\x0a\xff"), RecordRejection.MALFORMED),
        (lambda: signed_raw(public_key=b"short"), RecordRejection.MALFORMED),
        (lambda: signed_raw(node_id=b"\x01" * 19), RecordRejection.MALFORMED),
        (
            lambda: signed_raw(capabilities=[pb.Capability(name="Bad", version=1)]),
            RecordRejection.MALFORMED,
        ),
        (
            lambda: signed_raw(
                capabilities=[pb.Capability(name="kv", attributes={f"k{i}": "v" for i in range(5)})]
            ),
            RecordRejection.MALFORMED,
        ),
        (
            lambda: signed_raw(capabilities=[pb.Capability(name="kv", attributes={"k": "v" * 65})]),
            RecordRejection.MALFORMED,
        ),
        (lambda: signed_raw(expires_at=T0), RecordRejection.MALFORMED),
        (lambda: signed_raw(node_id=bytes.fromhex(OTHER.node_id)), RecordRejection.ID_MISMATCH),
        (
            lambda: envelope(raw_payload().SerializeToString(deterministic=True), OTHER),
            RecordRejection.BAD_SIGNATURE,
        ),
        (
            lambda: envelope(raw_payload().SerializeToString(), signature=b""),
            RecordRejection.BAD_SIGNATURE,
        ),
        (lambda: signed_raw(network="other-net"), RecordRejection.WRONG_NETWORK),
        (
            lambda: signed_raw(addresses=[f"127.0.0.{i}:1" for i in range(MAX_ADDRESSES + 1)]),
            RecordRejection.OVERSIZED,
        ),
        (
            lambda: signed_raw(
                capabilities=[pb.Capability(name=f"c{i:02d}") for i in range(MAX_CAPABILITIES + 1)]
            ),
            RecordRejection.OVERSIZED,
        ),
        (lambda: signed_raw(addresses=["0.0.0.0:7000"]), RecordRejection.BAD_ADDRESS),
        (lambda: signed_raw(expires_at=T0 + MAX_LIFETIME + 1), RecordRejection.TOO_LONG_LIVED),
        (lambda: signed_raw(issued_at=T0 + 10 + MAX_CLOCK_SKEW + 1), RecordRejection.FUTURE),
        (lambda: signed_raw(issued_at=T0 - 100, expires_at=T0 + 10), RecordRejection.EXPIRED),
    ],
)
def test_rejection_reason(build: Callable[[], bytes], reason: RecordRejection) -> None:
    assert reason_of(build()) is reason


def test_edges_of_the_time_window_are_accepted() -> None:
    assert verify_record(signed_raw(issued_at=T0 + 10 + MAX_CLOCK_SKEW), network=NET, now=T0 + 10)
    assert verify_record(signed_raw(expires_at=T0 + MAX_LIFETIME), network=NET, now=T0 + 10)
    assert verify_record(signed_raw(expires_at=T0 + 11), network=NET, now=T0 + 10)
    assert reason_of(signed_raw(expires_at=T0 + 10)) is RecordRejection.EXPIRED


def test_expected_id_must_match() -> None:
    data = signed_raw()
    assert reason_of(data, expected_id=OTHER.node_id) is RecordRejection.ID_MISMATCH
    assert verify_record(data, network=NET, now=T0, expected_id=KEY.node_id).seq == 5


def test_stale_seq_is_refused_when_a_newer_one_is_known() -> None:
    data = signed_raw(seq=5)
    assert reason_of(data, newer_than=5) is RecordRejection.STALE_SEQ
    assert reason_of(data, newer_than=9) is RecordRejection.STALE_SEQ
    assert verify_record(data, network=NET, now=T0, newer_than=4).seq == 5
    record = verify_record(data, network=NET, now=T0)
    check_newer(record, None)
    with pytest.raises(RecordError) as info:
        check_newer(record, 5)
    assert info.value.reason is RecordRejection.STALE_SEQ


@pytest.mark.parametrize(
    "payload_overrides",
    [
        # capabilities out of order
        {"capabilities": [pb.Capability(name="zz"), pb.Capability(name="aa")]},
        # the same capability twice
        {"capabilities": [pb.Capability(name="kv"), pb.Capability(name="kv", version=2)]},
    ],
)
def test_non_canonical_payload_is_refused(payload_overrides: dict[str, object]) -> None:
    assert reason_of(signed_raw(**payload_overrides)) is RecordRejection.NOT_CANONICAL


def test_non_canonical_encodings_are_refused() -> None:
    payload = raw_payload().SerializeToString(deterministic=True)
    # An unknown field appended to the payload (still correctly signed).
    assert reason_of(envelope(payload + b"\xf8\x01\x01")) is RecordRejection.NOT_CANONICAL
    # A field repeated (protobuf keeps the last value; the bytes are not canonical).
    assert reason_of(envelope(payload + b"\x18\x05")) is RecordRejection.NOT_CANONICAL
    # The envelope's fields in the other order.
    sig = KEY.sign(signing_input(payload))
    swapped = (
        pb.SignedRecord(signature=sig).SerializeToString()
        + pb.SignedRecord(payload=payload).SerializeToString()
    )
    assert reason_of(swapped) is RecordRejection.NOT_CANONICAL
    # Trailing unknown field on the envelope.
    assert reason_of(envelope(payload) + b"\x18\x01") is RecordRejection.NOT_CANONICAL


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:1",
        "[::]:1",
        "224.0.0.1:1",
        "[ff02::1]:1",
        "255.255.255.255:1",
        "[::ffff:127.0.0.1]:1",
        "[fe80::1%eth0]:1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1",
        "example.com:80",
        "::1:80",
        "[0::1]:80",
        "127.0.0.1:080",
        " 127.0.0.1:80",
        "127.000.0.1:80",
        "abc@127.0.0.1:80",
        "tcp://127.0.0.1:80",
        "",
    ],
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_record_address(address, KEY.node_id)
    assert info.value.reason is RecordRejection.BAD_ADDRESS
    assert reason_of(signed_raw(addresses=[address])) is RecordRejection.BAD_ADDRESS


def test_good_addresses_and_duplicates() -> None:
    for text in ("127.0.0.1:1", "10.1.2.3:65535", "[::1]:7000", "[2001:db8::1]:443"):
        assert str(parse_record_address(text, KEY.node_id)) == f"{KEY.node_id}@{text}"
    dup = signed_raw(addresses=["127.0.0.1:1", "127.0.0.1:1"])
    assert reason_of(dup) is RecordRejection.BAD_ADDRESS
    assert verify_record(signed_raw(addresses=[]), network=NET, now=T0).addresses == ()


def test_non_bytes_input_is_a_record_error() -> None:
    assert reason_of("text") is RecordRejection.MALFORMED  # type: ignore[arg-type]


# -- signing our own record -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"seq": -1}, "seq"),
        ({"seq": 1 << 64}, "seq"),
        ({"issued_at": 1.5}, "issued_at"),
        ({"capabilities": {"kv": 1 << 32}}, "version"),
        ({"capabilities": {"Bad": 1}}, "capability name"),
        ({"addresses": ["0.0.0.0:1"]}, "bad_address"),
        ({"expires_at": T0 + MAX_LIFETIME + 1}, "too_long_lived"),
        ({"expires_at": T0}, "expires before"),
        ({"network": "n" * 1000}, "1024-byte cap"),
    ],
)
def test_sign_refuses_invalid_records(overrides: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "network": NET,
        "seq": 1,
        "issued_at": T0,
        "expires_at": T0 + 60,
    }
    args.update(overrides)
    with pytest.raises(LocalProtocolError, match=match):
        sign_record(KEY, **args)  # type: ignore[arg-type]


def test_largest_legal_record_fits_the_cap() -> None:
    """8 IPv6 addresses and 32 capabilities with short attributes stay under 1024 bytes."""
    caps = {f"cap{i:02d}": CapabilityInfo(i, {"v": "1"}) for i in range(MAX_CAPABILITIES)}
    addresses = [f"[2001:db8::{i}]:65535" for i in range(1, MAX_ADDRESSES + 1)]
    signed = sign_record(
        KEY,
        network="overlay-local",
        seq=(1 << 64) - 1,
        issued_at=T0,
        expires_at=T0 + MAX_LIFETIME,
        addresses=addresses,
        capabilities=caps,
    )
    assert len(signed.data) <= MAX_RECORD_BYTES
    assert verify_record(signed.data, network="overlay-local", now=T0).capabilities == caps


# -- seq rule and names --------------------------------------------------------------------------


def test_next_seq_never_goes_backwards() -> None:
    assert next_seq(None, 1_700_000_000.1234) == 1_700_000_000_123
    assert next_seq(1_700_000_000_123, 1_700_000_000.1234) == 1_700_000_000_124
    # A clock set back (or a restart within the same millisecond) still moves forward.
    assert next_seq(1_800_000_000_000, 1_700_000_000.0) == 1_800_000_000_001
    assert next_seq(5, 1_700_000_000.0) == 1_700_000_000_000


def test_name_grammar() -> None:
    assert valid_capability_name("kv") and valid_capability_name("a" + "b" * 31)
    assert valid_capability_name("blob.v2-x_y")
    for bad in ("", "A", "1kv", "a" * 33, "kv\n", "k v", "é", None, 5):
        assert not valid_capability_name(bad)
    assert valid_attribute_key("region") and not valid_attribute_key("r" * 17)
    assert valid_attribute_value("é" * 32) and not valid_attribute_value("é" * 33)
    assert not valid_attribute_value("\ud800") and not valid_attribute_value(b"x")


def test_record_error_names_the_reason() -> None:
    err = RecordError(RecordRejection.EXPIRED, "old")
    assert str(err) == "expired: old" and err.reason is RecordRejection.EXPIRED
    assert {r.value for r in RecordRejection} == {r.name.lower() for r in RecordRejection}
    assert NodeId(KEY.node_id) == discovery.node_id_from_bytes(discovery.node_id_bytes(KEY.node_id))
