"""The encrypted stream format, data key wrapping and the server key file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from otacm.security import encryption
from otacm.security.encryption import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MIN_CHUNK_SIZE,
    SERVER_KEY_FILE,
    TAG_SIZE,
    DecryptionFailed,
    InvalidPublicKey,
    KeyFileInvalid,
    KeyUnwrapFailed,
    StreamDecryptor,
    StreamEncryptor,
    decode_vehicle_public_key,
    decrypt_stream,
    encrypt_stream,
    encrypted_size,
    load_or_create_server_key,
    load_server_key,
    new_data_key,
    rewrap_data_key,
    unwrap_data_key,
    unwrap_for_vehicle,
    wrap_data_key,
    wrap_for_vehicle,
)
from otacm.security.keys import KeysNotInitialised

DOC = Path(__file__).parents[2] / "docs" / "security.md"
CHUNK = MIN_CHUNK_SIZE  # small chunks: many of them in a few kilobytes
UNIT = CHUNK + TAG_SIZE  # one whole encrypted chunk
KEY = bytes(range(32))
CONTEXT = b"update:0b5c9a3e"


def encrypt(plaintext: bytes, key: bytes = KEY, chunk_size: int = CHUNK) -> bytes:
    encryptor = StreamEncryptor(key, chunk_size=chunk_size)
    return encryptor.update(plaintext) + encryptor.finalize()


def decrypt(ciphertext: bytes, key: bytes = KEY) -> bytes:
    decryptor = StreamDecryptor(key)
    return decryptor.update(ciphertext) + decryptor.finalize()


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, pos = [], 0
    for size in sizes:
        pieces.append(data[pos : pos + size])
        pos += size
    pieces.append(data[pos:])
    return pieces


def chunks_of(ciphertext: bytes) -> tuple[bytes, list[bytes]]:
    body = ciphertext[HEADER_SIZE:]
    return ciphertext[:HEADER_SIZE], [body[i : i + UNIT] for i in range(0, len(body), UNIT)]


def flip(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


# The stream format


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_exact_length(size: int) -> None:
    plaintext = os.urandom(size)
    ciphertext = encrypt(plaintext)
    assert len(ciphertext) == encrypted_size(size, CHUNK)
    assert decrypt(ciphertext) == plaintext


@settings(max_examples=200, deadline=None)
@given(
    plaintext=st.binary(max_size=4 * CHUNK + 3)
    | st.integers(0, 4).map(lambda n: os.urandom(n * CHUNK)),
    write_sizes=st.lists(st.integers(0, 2 * UNIT + 1), max_size=8),
    read_sizes=st.lists(st.integers(0, 2 * UNIT + 1), max_size=8),
)
def test_round_trip_in_any_pieces(
    plaintext: bytes, write_sizes: list[int], read_sizes: list[int]
) -> None:
    encryptor = StreamEncryptor(KEY, chunk_size=CHUNK)
    outputs = [encryptor.update(piece) for piece in split(plaintext, write_sizes)]
    final = encryptor.finalize()
    assert len(final) <= UNIT  # output comes as soon as it can: one chunk at most is held back
    ciphertext = b"".join(outputs) + final
    assert len(ciphertext) == encrypted_size(len(plaintext), CHUNK)

    decryptor = StreamDecryptor(KEY)
    plain = [decryptor.update(piece) for piece in split(ciphertext, read_sizes)]
    final = decryptor.finalize()
    assert len(final) <= CHUNK
    assert b"".join(plain) + final == plaintext


def test_a_reused_input_buffer_is_copied_not_referenced() -> None:
    # The usual read loop: readinto() the same bytearray, update() with it.
    blocks = [os.urandom(CHUNK) for _ in range(3)]
    buffer = bytearray(CHUNK)
    encryptor = StreamEncryptor(KEY, chunk_size=CHUNK)
    out = b""
    for block in blocks:
        buffer[:] = block
        out += encryptor.update(buffer)
    buffer[:] = bytes(CHUNK)
    out += encryptor.finalize()
    assert decrypt(out) == b"".join(blocks)


def test_memoryview_input_released_by_the_caller() -> None:
    plaintext = os.urandom(2 * CHUNK)
    encryptor = StreamEncryptor(KEY, chunk_size=CHUNK)
    with memoryview(plaintext) as view:
        out = encryptor.update(view)
    assert decrypt(out + encryptor.finalize()) == plaintext


def test_header_layout() -> None:
    header = encrypt(b"x")[:HEADER_SIZE]
    assert header[:8] == MAGIC
    assert header[8] == FORMAT_VERSION
    assert int.from_bytes(header[9:13], "big") == CHUNK
    assert len(header[13:]) == 7


def test_nonces_follow_the_documented_construction() -> None:
    # A second implementation from docs/security.md alone must read our streams.
    plaintext = os.urandom(2 * CHUNK + 5)
    header, chunks = chunks_of(encrypt(plaintext))
    prefix, aead = header[13:20], AESGCM(KEY)
    opened = [
        aead.decrypt(prefix + i.to_bytes(4, "big") + bytes([i == len(chunks) - 1]), c, header)
        for i, c in enumerate(chunks)
    ]
    assert b"".join(opened) == plaintext


def test_empty_plaintext_is_one_final_empty_chunk() -> None:
    ciphertext = encrypt(b"")
    assert len(ciphertext) == HEADER_SIZE + TAG_SIZE
    assert decrypt(ciphertext) == b""


def test_two_streams_under_one_key_differ() -> None:
    assert encrypt(b"same") != encrypt(b"same")


def test_encrypted_size_with_the_default_chunk_size() -> None:
    assert encrypted_size(0) == HEADER_SIZE + TAG_SIZE
    assert encrypted_size(DEFAULT_CHUNK_SIZE) == HEADER_SIZE + DEFAULT_CHUNK_SIZE + TAG_SIZE
    assert encrypted_size(2 * 1024**3) == HEADER_SIZE + 2 * 1024**3 + 2048 * TAG_SIZE


def test_convenience_generators_round_trip_large_pieces() -> None:
    plaintext = os.urandom(5 * CHUNK + 99)
    ciphertext = b"".join(encrypt_stream([plaintext[:10], plaintext[10:]], KEY, chunk_size=CHUNK))
    assert len(ciphertext) == encrypted_size(len(plaintext), CHUNK)
    assert b"".join(decrypt_stream([ciphertext], KEY)) == plaintext


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="chunk size"):
        StreamEncryptor(KEY, chunk_size=CHUNK - 1)
    with pytest.raises(ValueError, match="chunk size"):
        encrypted_size(1, chunk_size=65 * 1024 * 1024)
    with pytest.raises(ValueError, match="data key must be 32 bytes"):
        StreamDecryptor(KEY[:16])
    with pytest.raises(ValueError):
        encrypted_size(-1)


def test_no_use_after_finalize() -> None:
    encryptor = StreamEncryptor(KEY, chunk_size=CHUNK)
    encryptor.finalize()
    with pytest.raises(RuntimeError):
        encryptor.update(b"more")


# Tampering


def fails(ciphertext: bytes, match: str | None = None) -> DecryptionFailed:
    with pytest.raises(DecryptionFailed, match=match) as caught:
        decrypt(ciphertext)
    assert caught.value.status_code == 422
    assert caught.value.code == "decryption_failed"
    return caught.value


THREE_CHUNKS = os.urandom(2 * CHUNK + 100)


def test_final_chunk_dropped() -> None:
    header, chunks = chunks_of(encrypt(THREE_CHUNKS))
    fails(header + b"".join(chunks[:-1]), "ends without its final chunk")


def test_truncated_mid_chunk() -> None:
    ciphertext = encrypt(THREE_CHUNKS)
    fails(ciphertext[:-1])
    fails(ciphertext[: HEADER_SIZE + UNIT + 5])
    fails(ciphertext[: HEADER_SIZE + 3], "final chunk is missing")


def test_truncated_header_or_nothing() -> None:
    fails(encrypt(b"")[: HEADER_SIZE - 1], "inside its header")
    fails(b"", "inside its header")


def test_only_header() -> None:
    fails(encrypt(THREE_CHUNKS)[:HEADER_SIZE], "final chunk is missing")


def test_reordered_chunks() -> None:
    header, chunks = chunks_of(encrypt(THREE_CHUNKS))
    fails(header + chunks[1] + chunks[0] + chunks[2], "chunk 0")


def test_middle_chunk_dropped() -> None:
    header, chunks = chunks_of(encrypt(THREE_CHUNKS))
    fails(header + chunks[0] + chunks[2], "chunk 1")


def test_chunk_from_another_stream() -> None:
    header, chunks = chunks_of(encrypt(THREE_CHUNKS))
    _, others = chunks_of(encrypt(THREE_CHUNKS))
    fails(header + chunks[0] + others[1] + chunks[2], "chunk 1")


def test_trailing_data() -> None:
    ciphertext = encrypt(THREE_CHUNKS)
    fails(ciphertext + b"\x00")
    full = encrypt(os.urandom(2 * CHUNK))
    fails(full + b"\x00", "data after its final chunk")
    fails(full + full[HEADER_SIZE:], "data after its final chunk")


@pytest.mark.parametrize(
    ("where", "bit"),
    [
        ("magic", 0),
        ("version", 8 * 8),
        ("chunk size", 8 * 12),
        ("nonce prefix", 8 * 15),
        ("first chunk", 8 * (HEADER_SIZE + 10)),
        ("first tag", 8 * (HEADER_SIZE + UNIT - 1)),
        ("last chunk", 8 * (HEADER_SIZE + 2 * UNIT + 3)),
        ("last tag", -1),
    ],
)
def test_flipped_bit(where: str, bit: int) -> None:
    ciphertext = encrypt(THREE_CHUNKS)
    fails(flip(ciphertext, bit % (8 * len(ciphertext))))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_is_detected(data: st.DataObject) -> None:
    ciphertext = encrypt(data.draw(st.binary(max_size=2 * CHUNK + 10)))
    bit = data.draw(st.integers(0, 8 * len(ciphertext) - 1))
    fails(flip(ciphertext, bit))


def test_wrong_key() -> None:
    fails(encrypt(THREE_CHUNKS, key=new_data_key()), "chunk 0")
    fails(encrypt(b"", key=new_data_key()), "chunk 0")


def test_header_errors_are_named() -> None:
    ciphertext = bytearray(encrypt(b"abc"))
    fails(b"NOTOTACM" + bytes(ciphertext[8:]), "magic")
    ciphertext[8] = 2
    fails(bytes(ciphertext), "version 2")
    ciphertext[8] = FORMAT_VERSION
    ciphertext[9:13] = (16).to_bytes(4, "big")
    fails(bytes(ciphertext), "chunk size")


def test_decryptor_is_dead_after_a_failure() -> None:
    header, chunks = chunks_of(encrypt(THREE_CHUNKS))
    decryptor = StreamDecryptor(KEY)
    with pytest.raises(DecryptionFailed):
        decryptor.update(header + chunks[1] + chunks[0])
    with pytest.raises(RuntimeError):
        decryptor.update(chunks[2])


def test_decryptor_holds_back_a_whole_chunk_that_may_be_the_last() -> None:
    header, chunks = chunks_of(encrypt(THREE_CHUNKS))
    decryptor = StreamDecryptor(KEY)
    assert decryptor.update(header + chunks[0]) == b""  # held: it might be the final chunk
    assert decryptor.update(chunks[1][:1]) == THREE_CHUNKS[:CHUNK]


# Data keys under the server key


def test_data_keys_are_random() -> None:
    assert len(new_data_key()) == 32
    assert new_data_key() != new_data_key()


def test_wrapped_data_key_round_trip() -> None:
    data_key, server_key = new_data_key(), new_data_key()
    wrapped = wrap_data_key(data_key, server_key, context=CONTEXT)
    assert len(wrapped) == 1 + 12 + 32 + 16
    assert wrapped[0] == 1
    assert data_key not in wrapped
    assert unwrap_data_key(wrapped, server_key, context=CONTEXT) == data_key


def test_wrapped_data_key_is_bound_to_its_context_and_server_key() -> None:
    data_key, server_key = new_data_key(), new_data_key()
    wrapped = wrap_data_key(data_key, server_key, context=CONTEXT)
    with pytest.raises(KeyUnwrapFailed, match="another update"):
        unwrap_data_key(wrapped, server_key, context=b"update:other")
    with pytest.raises(KeyUnwrapFailed):
        unwrap_data_key(wrapped, new_data_key(), context=CONTEXT)
    with pytest.raises(KeyUnwrapFailed):
        unwrap_data_key(flip(wrapped, 8 * 20), server_key, context=CONTEXT)
    with pytest.raises(KeyUnwrapFailed, match="length or version"):
        unwrap_data_key(b"\x02" + wrapped[1:], server_key, context=CONTEXT)
    with pytest.raises(KeyUnwrapFailed, match="length or version"):
        unwrap_data_key(wrapped[:-1], server_key, context=CONTEXT)


def test_rewrap_moves_a_data_key_to_a_new_server_key() -> None:
    data_key, old, new = new_data_key(), new_data_key(), new_data_key()
    wrapped = wrap_data_key(data_key, old, context=CONTEXT)
    moved = rewrap_data_key(wrapped, old_server_key=old, new_server_key=new, context=CONTEXT)
    assert unwrap_data_key(moved, new, context=CONTEXT) == data_key
    with pytest.raises(KeyUnwrapFailed):
        unwrap_data_key(moved, old, context=CONTEXT)


def test_key_errors_never_show_key_material() -> None:
    with pytest.raises(ValueError) as caught:
        wrap_data_key(KEY[:31], KEY, context=CONTEXT)
    assert KEY[:31].hex() not in str(caught.value)
    assert repr(KEY[:31]) not in str(caught.value)


# The server key file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_key_created_private_and_reloaded(tmp_path: Path) -> None:
    keys_dir = tmp_path / "data" / "keys"
    key = load_or_create_server_key(keys_dir)
    assert len(key) == 32
    assert mode(keys_dir / SERVER_KEY_FILE) == 0o600
    assert mode(keys_dir) == 0o700
    assert sorted(p.name for p in keys_dir.iterdir()) == [SERVER_KEY_FILE]  # no temporary left
    assert load_or_create_server_key(keys_dir) == key


def test_server_key_of_wrong_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / SERVER_KEY_FILE
    path.write_bytes(b"x" * 31)
    path.chmod(0o600)
    with pytest.raises(KeyFileInvalid, match="exactly 32 bytes"):
        load_or_create_server_key(tmp_path)
    path.write_bytes(b"x" * 33)
    with pytest.raises(KeyFileInvalid, match="exactly 32 bytes"):
        load_or_create_server_key(tmp_path)


@pytest.mark.parametrize("too_open", [0o640, 0o604, 0o660, 0o644])
def test_server_key_readable_by_others_is_refused(tmp_path: Path, too_open: int) -> None:
    key = load_or_create_server_key(tmp_path)
    (tmp_path / SERVER_KEY_FILE).chmod(too_open)
    with pytest.raises(KeyFileInvalid, match="chmod 600") as caught:
        load_or_create_server_key(tmp_path)
    assert caught.value.code == "key_file_invalid"
    assert key.hex() not in str(caught.value)


def test_server_key_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / SERVER_KEY_FILE).mkdir(mode=0o700)
    with pytest.raises(KeyFileInvalid, match="not a regular file"):
        load_or_create_server_key(tmp_path)


def test_creating_the_server_key_never_replaces_one_created_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes starting at once: the second found no key, but the first created one
    # before the second wrote its own. The second must end up with the first key.
    first = load_or_create_server_key(tmp_path)

    def not_there_yet(keys_dir: Path) -> bytes:
        raise KeysNotInitialised("no server key yet")

    monkeypatch.setattr(encryption, "load_server_key", not_there_yet)
    assert load_or_create_server_key(tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [SERVER_KEY_FILE]


def test_loading_the_server_key_never_creates_one(tmp_path: Path) -> None:
    """Unwrapping needs the key that wrapped: a new one would open nothing."""
    keys_dir = tmp_path / "keys"
    with pytest.raises(KeysNotInitialised, match="otacm keys init") as caught:
        load_server_key(keys_dir)
    assert (caught.value.status_code, caught.value.code) == (409, "keys_not_initialised")
    assert not keys_dir.exists()
    keys_dir.mkdir()
    with pytest.raises(KeysNotInitialised):
        load_server_key(keys_dir)
    assert list(keys_dir.iterdir()) == []
    key = load_or_create_server_key(keys_dir)  # what wrapping does
    assert load_server_key(keys_dir) == key


def test_loading_the_server_key_checks_it_as_creating_does(tmp_path: Path) -> None:
    path = tmp_path / SERVER_KEY_FILE
    path.write_bytes(b"x" * 32)
    path.chmod(0o644)
    with pytest.raises(KeyFileInvalid, match="chmod 600"):
        load_server_key(tmp_path)


# Wrapping for a vehicle


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def test_vehicle_wrap_round_trip() -> None:
    vehicle, data_key = X25519PrivateKey.generate(), new_data_key()
    wrapped = wrap_for_vehicle(data_key, raw_public(vehicle), context=CONTEXT)
    assert wrapped["alg"] == "X25519-HKDF-SHA256-A256GCM"
    assert set(wrapped) == {"alg", "epk", "nonce", "wrapped_key"}
    assert len(base64.b64decode(wrapped["epk"])) == 32
    assert len(base64.b64decode(wrapped["nonce"])) == 12
    assert len(base64.b64decode(wrapped["wrapped_key"])) == 48
    assert unwrap_for_vehicle(wrapped, vehicle, context=CONTEXT) == data_key


def test_vehicle_wrap_uses_a_fresh_ephemeral_key() -> None:
    public = raw_public(X25519PrivateKey.generate())
    first = wrap_for_vehicle(KEY, public, context=CONTEXT)
    assert first["epk"] != wrap_for_vehicle(KEY, public, context=CONTEXT)["epk"]


def test_vehicle_wrap_opens_only_for_its_vehicle_and_context() -> None:
    vehicle = X25519PrivateKey.generate()
    wrapped = wrap_for_vehicle(new_data_key(), raw_public(vehicle), context=CONTEXT)
    with pytest.raises(KeyUnwrapFailed, match="another vehicle"):
        unwrap_for_vehicle(wrapped, X25519PrivateKey.generate(), context=CONTEXT)
    with pytest.raises(KeyUnwrapFailed):
        unwrap_for_vehicle(wrapped, vehicle, context=b"update:other")
    other_epk = base64.b64encode(raw_public(X25519PrivateKey.generate())).decode()
    with pytest.raises(KeyUnwrapFailed):
        unwrap_for_vehicle({**wrapped, "epk": other_epk}, vehicle, context=CONTEXT)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"alg": "RSA-OAEP"}, "algorithm"),
        ({"nonce": "not base64!"}, "nonce"),
        ({"nonce": base64.b64encode(bytes(11)).decode()}, "12 bytes"),
        ({"wrapped_key": ""}, "wrapped_key"),
    ],
)
def test_vehicle_wrap_with_malformed_fields(change: dict[str, str], match: str) -> None:
    vehicle = X25519PrivateKey.generate()
    wrapped = wrap_for_vehicle(KEY, raw_public(vehicle), context=CONTEXT)
    with pytest.raises(KeyUnwrapFailed, match=match):
        unwrap_for_vehicle({**wrapped, **change}, vehicle, context=CONTEXT)
    missing = {k: v for k, v in wrapped.items() if k != "epk"}
    with pytest.raises(KeyUnwrapFailed, match="epk"):
        unwrap_for_vehicle(missing, vehicle, context=CONTEXT)


def test_vehicle_public_key_from_the_fleet_export() -> None:
    vehicle = X25519PrivateKey.generate()
    raw = raw_public(vehicle)
    der = vehicle.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert decode_vehicle_public_key(base64.b64encode(raw).decode()) == raw
    assert decode_vehicle_public_key(base64.b64encode(der).decode() + "\n") == raw


def test_unusable_vehicle_public_keys() -> None:
    ed25519 = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InvalidPublicKey, match="X25519"):
        decode_vehicle_public_key(base64.b64encode(ed25519).decode())
    with pytest.raises(InvalidPublicKey, match="base64"):
        decode_vehicle_public_key("not/base64!")
    with pytest.raises(InvalidPublicKey, match="neither"):
        decode_vehicle_public_key(base64.b64encode(b"short").decode())
    with pytest.raises(InvalidPublicKey) as caught:
        wrap_for_vehicle(KEY, b"short", context=CONTEXT)
    assert caught.value.status_code == 422
    with pytest.raises(InvalidPublicKey):
        wrap_for_vehicle(KEY, bytes(32), context=CONTEXT)  # a low-order point


# The test vectors of docs/security.md, which a vehicle client is written against


def test_stream_test_vector_of_the_docs() -> None:
    header = "4f5441434d454e430100001000a0a1a2a3a4a5a6"
    chunk = "1f042572d72ac0b6660db14ca3eb71625b2b7e36069d516c2f77b06b5fd8"
    assert header in DOC.read_text() and chunk in DOC.read_text()
    assert decrypt(bytes.fromhex(header + chunk)) == b"hello, vehicle"


def test_vehicle_wrapping_test_vector_of_the_docs() -> None:
    wrapped = {
        "alg": "X25519-HKDF-SHA256-A256GCM",
        "epk": "D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA=",
        "nonce": "MzMzMzMzMzMzMzMz",
        "wrapped_key": "UjGpPY0e45PfCNvTocciwhpxwKoYL0HeYvHGOxZc2CS8cgrQXP5WqwvkYd1Ubr1O",
    }
    assert all(value in DOC.read_text() for value in wrapped.values())
    vehicle = X25519PrivateKey.from_private_bytes(bytes([0x11]) * 32)
    ephemeral = X25519PrivateKey.from_private_bytes(bytes([0x22]) * 32)
    assert base64.b64decode(wrapped["epk"]) == raw_public(ephemeral)
    assert raw_public(vehicle).hex() in DOC.read_text()
    data_key = unwrap_for_vehicle(wrapped, vehicle, context=b"otacm-update:42")
    assert data_key == bytes([0x44]) * 32
