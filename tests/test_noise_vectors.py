"""Cacophony test vectors for the Noise core (every 25519/ChaChaPoly/SHA256 pattern in the file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overlay.errors import HandshakeError, LocalProtocolError, MessageTooLarge, OverlayError
from overlay.wire._noise import (
    PATTERNS,
    CipherState,
    HandshakeState,
    KeyPair,
    SymmetricState,
    parse_protocol_name,
)

_DATA = Path(__file__).parent / "data" / "cacophony-25519-chachapoly-sha256.json"
_VECTORS: list[dict[str, Any]] = json.loads(_DATA.read_text())["vectors"]


def _opt(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return bytes.fromhex(value) if value is not None else None


def _build(vector: dict[str, Any]) -> tuple[HandshakeState, HandshakeState]:
    pattern = parse_protocol_name(vector["protocol_name"])
    init = HandshakeState(
        pattern,
        True,
        prologue=bytes.fromhex(vector["init_prologue"]),
        s=_opt(vector, "init_static"),
        e=_opt(vector, "init_ephemeral"),
        rs=_opt(vector, "init_remote_static"),
    )
    resp = HandshakeState(
        pattern,
        False,
        prologue=bytes.fromhex(vector["resp_prologue"]),
        s=_opt(vector, "resp_static"),
        e=_opt(vector, "resp_ephemeral"),
        rs=_opt(vector, "resp_remote_static"),
    )
    return init, resp


def test_every_vector_is_supported() -> None:
    names = {parse_protocol_name(v["protocol_name"]).name for v in _VECTORS}
    assert len(_VECTORS) == 38
    assert {"XX", "NN", "NX"} <= names
    assert names <= set(PATTERNS)


@pytest.mark.parametrize("vector", _VECTORS, ids=[v["protocol_name"] for v in _VECTORS])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    init, resp = _build(vector)
    pattern = init.pattern
    messages = vector["messages"]
    n_handshake = len(pattern.messages)
    assert len(messages) > n_handshake
    for index, message in enumerate(messages[:n_handshake]):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        sender, receiver = (init, resp) if index % 2 == 0 else (resp, init)
        assert sender.is_our_turn and not receiver.is_our_turn
        assert sender.write_message(payload) == expected
        assert receiver.read_message(expected) == payload
    assert init.is_complete and resp.is_complete
    expected_hash = bytes.fromhex(vector["handshake_hash"])
    assert init.handshake_hash == expected_hash
    assert resp.handshake_hash == expected_hash
    init_send, init_recv = init.transport_ciphers()
    resp_send, resp_recv = resp.transport_ciphers()
    directions_seen = set()
    for index, message in enumerate(messages[n_handshake:], start=n_handshake):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        from_initiator = pattern.one_way or index % 2 == 0
        directions_seen.add(from_initiator)
        send, recv = (init_send, resp_recv) if from_initiator else (resp_send, init_recv)
        assert send.encrypt_with_ad(b"", payload) == expected
        assert recv.decrypt_with_ad(b"", expected) == payload
    assert directions_seen == ({True} if pattern.one_way else {True, False})


def test_tampered_handshake_message_raises_handshake_error() -> None:
    vector = next(v for v in _VECTORS if v["protocol_name"] == "Noise_XX_25519_ChaChaPoly_SHA256")
    init, resp = _build(vector)
    resp.read_message(init.write_message(b"hello"))
    msg2 = bytearray(resp.write_message(b"world"))
    msg2[40] ^= 1
    with pytest.raises(HandshakeError):
        init.read_message(bytes(msg2))


@pytest.mark.parametrize("length", [0, 31, 32 + 47, 32 + 48 + 15])
def test_short_handshake_messages_raise(length: int) -> None:
    init = HandshakeState("XX", True)
    resp = HandshakeState("XX", False)
    resp.read_message(init.write_message())
    msg2 = resp.write_message()
    with pytest.raises(HandshakeError):
        init.read_message(msg2[:length])


def test_low_order_ephemeral_is_rejected() -> None:
    resp = HandshakeState("NN", False)
    resp.read_message(bytes(32))
    with pytest.raises(HandshakeError):
        resp.write_message()


def test_oversized_messages() -> None:
    init = HandshakeState("NN", True)
    with pytest.raises(HandshakeError):
        HandshakeState("NN", False).read_message(bytes(65536))
    with pytest.raises(MessageTooLarge):
        init.write_message(bytes(65535 - 31))


def test_out_of_turn_and_misuse_are_local_errors() -> None:
    init = HandshakeState("XX", True)
    resp = HandshakeState("XX", False)
    with pytest.raises(LocalProtocolError):
        resp.write_message()
    with pytest.raises(LocalProtocolError):
        init.read_message(bytes(32))
    with pytest.raises(LocalProtocolError):
        init.split()
    with pytest.raises(LocalProtocolError):
        HandshakeState("NK", True)  # rs missing
    with pytest.raises(LocalProtocolError):
        HandshakeState("Noise_XX_448_AESGCM_BLAKE2b", True)
    with pytest.raises(LocalProtocolError):
        HandshakeState("ZZ", True)


def test_generated_keys_roundtrip_xx() -> None:
    init = HandshakeState("XX", True, prologue=b"p")
    resp = HandshakeState("XX", False, prologue=b"p")
    assert init.s is not None and resp.s is not None
    assert resp.read_message(init.write_message(b"a")) == b"a"
    assert init.read_message(resp.write_message(b"b")) == b"b"
    assert resp.read_message(init.write_message(b"c")) == b"c"
    assert init.remote_static == resp.s.public
    assert resp.remote_static == init.s.public
    assert init.handshake_hash == resp.handshake_hash
    with pytest.raises(LocalProtocolError):
        init.write_message()
    c1, c2 = init.split()
    assert init.split() == (c1, c2)
    r1, r2 = resp.split()
    assert r1.decrypt_with_ad(None, c1.encrypt_with_ad(None, b"x")) == b"x"
    assert c2.decrypt_with_ad(None, r2.encrypt_with_ad(None, b"y")) == b"y"


def test_prologue_mismatch_fails() -> None:
    init = HandshakeState("XX", True, prologue=b"a")
    resp = HandshakeState("XX", False, prologue=b"b")
    resp.read_message(init.write_message())
    with pytest.raises(HandshakeError):
        init.read_message(resp.write_message())


def test_cipher_state_nonce_rules() -> None:
    key = bytes(range(32))
    enc, dec = CipherState(key), CipherState(key)
    ct = enc.encrypt_with_ad(b"ad", b"data")
    assert enc.n == 1
    with pytest.raises(HandshakeError):
        dec.decrypt_with_ad(b"other", ct)
    assert dec.n == 0  # failed decryption does not advance the nonce
    assert dec.decrypt_with_ad(b"ad", ct) == b"data"
    with pytest.raises(HandshakeError):
        dec.decrypt_with_ad(b"ad", ct)  # replay: wrong nonce
    enc.n = dec.n = 2**64 - 1
    with pytest.raises(OverlayError):
        enc.encrypt_with_ad(None, b"x")
    with pytest.raises(HandshakeError):
        dec.decrypt_with_ad(None, bytes(16))
    assert CipherState().encrypt_with_ad(b"", b"plain") == b"plain"
    with pytest.raises(LocalProtocolError):
        CipherState(b"short")


def test_symmetric_state_long_name_is_hashed() -> None:
    short = SymmetricState(b"Noise_NN_25519_ChaChaPoly_SHA256")
    assert short.h == b"Noise_NN_25519_ChaChaPoly_SHA256"
    long_state = SymmetricState(b"Noise_XXfallback_25519_ChaChaPoly_SHA256")
    assert len(long_state.h) == 32 and long_state.ck == long_state.h
    long_state.mix_key_and_hash(b"psk")
    assert long_state.cipher.has_key()


def test_keypair_validation() -> None:
    with pytest.raises(LocalProtocolError):
        KeyPair.from_private_bytes(b"x")
    pair = KeyPair.generate()
    assert KeyPair.from_private_bytes(pair.private_bytes()).public == pair.public
