"""Encryption of confidential software updates: the chunked stream format and its keys.

A confidential update is stored and delivered encrypted under a data key of its own. The bytes
pass through `StreamEncryptor` / `StreamDecryptor` chunk by chunk (the STREAM construction, as in
age and Tink's streaming AEAD), so a multi-gigabyte image is encrypted or decrypted in one pass
with memory bounded by one chunk. The data key is stored wrapped under the server key
(`keys/server-data-key.bin`) and bound to its update, and it is wrapped again for a vehicle's
X25519 key when instructions go to that vehicle.

`docs/security.md` specifies every byte so that a vehicle client can be written from it alone;
a change to the format here is a change to that contract. Apart from the server key file this
module does no I/O and imports nothing from the web or database layers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, TypeAlias

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from otacm.errors import OtacmError, ValidationFailed
from otacm.files import write_private_file
from otacm.security.keys import KeysNotInitialised

BytesLike: TypeAlias = bytes | bytearray | memoryview

KEY_SIZE = 32  # bytes: AES-256 data keys, the server key, the per-vehicle KEK
NONCE_SIZE = 12  # bytes, AES-GCM
TAG_SIZE = 16  # bytes, AES-GCM

# The stream format (docs/security.md, "Stream format").
MAGIC = b"OTACMENC"
FORMAT_VERSION = 1
NONCE_PREFIX_SIZE = 7  # bytes; the rest of the nonce is the chunk counter and the final flag
DEFAULT_CHUNK_SIZE = 1024 * 1024  # plaintext bytes per chunk
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
_HEADER = struct.Struct(">8sBI7s")  # magic, version, chunk size, nonce prefix
HEADER_SIZE = _HEADER.size
_NONCE_TAIL = struct.Struct(">IB")  # chunk counter, final-chunk flag
_MAX_CHUNKS = 2**32  # the counter is a u32; never reached (16 TiB at the smallest chunk size)

# Data keys wrapped under the server key (docs/security.md, "Data keys").
SERVER_KEY_FILE = "server-data-key.bin"
WRAPPED_KEY_VERSION = 1
WRAPPED_KEY_SIZE = 1 + NONCE_SIZE + KEY_SIZE + TAG_SIZE

# Data keys wrapped for a vehicle (docs/security.md, "Wrapping for a vehicle").
VEHICLE_WRAP_ALG = "X25519-HKDF-SHA256-A256GCM"
VEHICLE_HKDF_INFO = b"otacm data key v1"


class DecryptionFailed(OtacmError):
    """Encrypted bytes that do not authenticate: modified, truncated, reordered or wrong key."""

    status_code = 422
    code = "decryption_failed"


class KeyUnwrapFailed(DecryptionFailed):
    """A wrapped data key that does not open with this key and context."""

    code = "key_unwrap_failed"


class KeyFileInvalid(OtacmError):
    """The server key file exists but cannot be used: wrong size, type or permissions."""

    status_code = 500
    code = "key_file_invalid"


class InvalidPublicKey(ValidationFailed):
    """A vehicle public key that is not a usable X25519 key."""

    code = "invalid_public_key"


def _check_key(key: bytes, what: str) -> None:
    # A caller's mistake, not bad input data: a plain ValueError, and never the key itself.
    if len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes, not {len(key)}")


def _chunk_nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    if counter >= _MAX_CHUNKS:
        raise OverflowError(f"a stream holds at most {_MAX_CHUNKS} chunks")
    return prefix + _NONCE_TAIL.pack(counter, 1 if final else 0)


class _Chunker:
    """Cuts a byte stream, fed in pieces of any size, into whole units of `unit` bytes.

    A full unit is held back until more bytes arrive, because only then is it known not to be
    the last one, which is sealed differently; `rest()` is what remains at the end (at most one
    unit). Units are sliced out of the input without copying where they can be: only a partial
    unit is copied, into one buffer allocated once, so that multi-gigabyte streams pay neither
    repeated copies nor repeated allocations.
    """

    def __init__(self, unit: int) -> None:
        self._unit = unit
        # Written through a memoryview: assigning to a bytearray slice would copy the input twice.
        self._buffer = memoryview(bytearray(unit))
        self._filled = 0
        # A whole unit still inside an immutable input, held by reference instead of copied.
        self._held: memoryview | None = None

    def feed(self, data: BytesLike) -> Iterator[BytesLike]:
        """Every unit that is now known not to be the last; each is valid until the next one."""
        view = memoryview(data).cast("B")
        if not view:
            return
        unit = self._unit
        if self._held is not None:
            yield self._held
            self._held = None
        pos = 0
        if self._filled:
            pos = min(unit - self._filled, len(view))
            self._buffer[self._filled : self._filled + pos] = view[:pos]
            self._filled += pos
            if pos == len(view):
                return
            yield self._buffer
            self._filled = 0
        while len(view) - pos > unit:
            yield view[pos : pos + unit]
            pos += unit
        rest = view[pos:]
        # Only bytes cannot change under us; a caller may refill its bytearray after the call.
        if len(rest) == unit and isinstance(view.obj, bytes) and len(view) <= 2 * unit:
            self._held = rest
        else:
            self._buffer[: len(rest)] = rest
            self._filled = len(rest)

    def rest(self) -> BytesLike:
        if self._held is not None:
            return self._held
        return self._buffer[: self._filled]


def _join(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


class StreamEncryptor:
    """Encrypts one stream: the outputs of `update` calls, then of `finalize`, concatenated."""

    def __init__(self, data_key: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_key(data_key, "data key")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
        self._aead = AESGCM(data_key)
        # Random per stream, so that a data key that ever encrypts a second stream (the same
        # update re-uploaded) does not repeat a nonce: 56 random bits for a handful of streams.
        self._prefix = os.urandom(NONCE_PREFIX_SIZE)
        self._header = _HEADER.pack(MAGIC, FORMAT_VERSION, chunk_size, self._prefix)
        self._header_sent = False
        self._counter = 0
        self._chunker = _Chunker(chunk_size)
        self._finalized = False

    def update(self, data: BytesLike) -> bytes:
        """The header (on the first call) and every chunk that `data` completes.

        Pieces of about the chunk size are cheapest: a much larger piece comes back as one
        large output, joined from its chunks.
        """
        out = self._start()
        for chunk in self._chunker.feed(data):
            out.append(self._seal(chunk, final=False))
        return _join(out)

    def finalize(self) -> bytes:
        """The final chunk (and the header, if nothing was written yet)."""
        out = self._start()
        out.append(self._seal(self._chunker.rest(), final=True))
        self._finalized = True
        return _join(out)

    def _start(self) -> list[bytes]:
        if self._finalized:
            raise RuntimeError("this StreamEncryptor is already finalized")
        if self._header_sent:
            return []
        self._header_sent = True
        return [self._header]

    def _seal(self, chunk: BytesLike, *, final: bool) -> bytes:
        nonce = _chunk_nonce(self._prefix, self._counter, final)
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, self._header)


class StreamDecryptor:
    """Decrypts one stream made by `StreamEncryptor`.

    Each chunk is authenticated before its plaintext is returned, but only `finalize` proves
    that the stream is complete: act on the plaintext (install it, publish it) only after
    `finalize` has returned. Any failure raises `DecryptionFailed` and ends the decryptor.
    """

    def __init__(self, data_key: bytes) -> None:
        _check_key(data_key, "data key")
        self._aead = AESGCM(data_key)
        self._header = bytearray()
        self._aad = b""  # the header, once complete: every chunk's associated data
        self._prefix = b""
        self._counter = 0
        self._chunker: _Chunker | None = (
            None  # cuts whole encrypted chunks, once the header is read
        )
        self._done = False

    def update(self, data: BytesLike) -> bytes:
        """The plaintext of every chunk that `data` completes (and that is not the last)."""
        self._check_open()
        view = memoryview(data).cast("B")
        if self._chunker is None:
            taken = HEADER_SIZE - len(self._header)
            self._header += view[:taken]
            if len(self._header) < HEADER_SIZE:
                return b""
            self._chunker = self._read_header()
            view = view[taken:]
        out = [self._open(chunk, final=False) for chunk in self._chunker.feed(view)]
        return _join(out) if out else b""

    def finalize(self) -> bytes:
        """The plaintext of the final chunk, once the whole stream has authenticated."""
        self._check_open()
        self._done = True
        if self._chunker is None:
            raise DecryptionFailed("the encrypted stream is truncated: it ends inside its header")
        rest = self._chunker.rest()
        if len(rest) < TAG_SIZE:
            raise DecryptionFailed("the encrypted stream is truncated: its final chunk is missing")
        return self._open(rest, final=True)

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError("this StreamDecryptor is finalized or has failed")

    def _read_header(self) -> _Chunker:
        self._done = True  # until the header is known good
        magic, version, chunk_size, prefix = _HEADER.unpack(self._header)
        if magic != MAGIC:
            raise DecryptionFailed("not an otacm encrypted stream (wrong magic bytes)")
        if version != FORMAT_VERSION:
            raise DecryptionFailed(f"unsupported encrypted stream format version {version}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise DecryptionFailed(
                f"the stream header announces an invalid chunk size {chunk_size}"
            )
        self._aad = bytes(self._header)
        self._prefix = prefix
        self._done = False
        return _Chunker(chunk_size + TAG_SIZE)

    def _open(self, chunk: BytesLike, *, final: bool) -> bytes:
        try:
            plaintext = self._aead.decrypt(
                _chunk_nonce(self._prefix, self._counter, final), chunk, self._aad
            )
        except InvalidTag:
            self._done = True
            raise DecryptionFailed(self._diagnose(chunk, final)) from None
        self._counter += 1
        return plaintext

    def _diagnose(self, chunk: BytesLike, final: bool) -> str:
        # A chunk that opens with the other flag tells apart the two structural failures that
        # a plain "does not authenticate" would hide. Its plaintext is never returned.
        try:
            self._aead.decrypt(
                _chunk_nonce(self._prefix, self._counter, not final), chunk, self._aad
            )
        except InvalidTag:
            return (
                f"chunk {self._counter} of the encrypted stream does not authenticate: the stream "
                "was modified, truncated or reordered, or the data key is wrong"
            )
        if final:
            return "the encrypted stream is truncated: it ends without its final chunk"
        return "the encrypted stream has data after its final chunk"


def encrypted_size(plaintext_length: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """The exact length of the encrypted stream of `plaintext_length` bytes."""
    if plaintext_length < 0:
        raise ValueError("plaintext length must not be negative")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    chunks = max(1, -(-plaintext_length // chunk_size))  # an empty stream is one empty chunk
    return HEADER_SIZE + plaintext_length + chunks * TAG_SIZE


class _Stage(Protocol):
    def update(self, data: BytesLike) -> bytes: ...
    def finalize(self) -> bytes: ...


def _pump(stage: _Stage, chunks: Iterable[BytesLike], piece: int) -> Iterator[bytes]:
    # Large inputs go in pieces of about one chunk: one large output would be one large join,
    # and the allocator hands memory that large back to the system, to fault it in again.
    for data in chunks:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), piece):
            out = stage.update(view[start : start + piece])
            if out:
                yield out
    out = stage.finalize()
    if out:
        yield out


def encrypt_stream(
    chunks: Iterable[BytesLike], data_key: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """The encrypted stream of the concatenated `chunks`, as pieces of any size."""
    return _pump(StreamEncryptor(data_key, chunk_size=chunk_size), chunks, chunk_size)


def decrypt_stream(chunks: Iterable[BytesLike], data_key: bytes) -> Iterator[bytes]:
    """The plaintext of an encrypted stream given in pieces of any size.

    Raises `DecryptionFailed` (possibly after yielding some plaintext): whatever was yielded
    must then be discarded.
    """
    return _pump(StreamDecryptor(data_key), chunks, DEFAULT_CHUNK_SIZE)


def new_data_key() -> bytes:
    """A fresh random AES-256 key for one update."""
    return secrets.token_bytes(KEY_SIZE)


def wrap_data_key(data_key: bytes, server_key: bytes, *, context: bytes) -> bytes:
    """`data_key` encrypted under the server key, bound to `context` (the update's id)."""
    _check_key(data_key, "data key")
    _check_key(server_key, "server key")
    version = bytes([WRAPPED_KEY_VERSION])
    nonce = os.urandom(NONCE_SIZE)
    return version + nonce + AESGCM(server_key).encrypt(nonce, data_key, version + context)


def unwrap_data_key(wrapped: bytes, server_key: bytes, *, context: bytes) -> bytes:
    """The data key inside `wrapped`; `KeyUnwrapFailed` unless key and context match."""
    _check_key(server_key, "server key")
    if len(wrapped) != WRAPPED_KEY_SIZE or wrapped[0] != WRAPPED_KEY_VERSION:
        raise KeyUnwrapFailed("not a wrapped data key (wrong length or version)")
    version, nonce, sealed = wrapped[:1], wrapped[1 : 1 + NONCE_SIZE], wrapped[1 + NONCE_SIZE :]
    try:
        return AESGCM(server_key).decrypt(nonce, sealed, version + context)
    except InvalidTag:
        raise KeyUnwrapFailed(
            "the wrapped data key does not open: another server key, or another update's key"
        ) from None


def rewrap_data_key(
    wrapped: bytes, *, old_server_key: bytes, new_server_key: bytes, context: bytes
) -> bytes:
    """`wrapped` moved from one server key to another (server key rotation)."""
    data_key = unwrap_data_key(wrapped, old_server_key, context=context)
    return wrap_data_key(data_key, new_server_key, context=context)


def load_server_key(keys_dir: Path) -> bytes:
    """The server key in `keys_dir/server-data-key.bin`; never creates one. Everything that
    unwraps uses this: a key made now could not open anything wrapped before.

    Raises:
        KeysNotInitialised: there is no key file.
        KeyFileInvalid: the file is not a regular file of 32 bytes readable by its owner only.
    """
    path = keys_dir / SERVER_KEY_FILE
    try:
        return _read_server_key(path)
    except FileNotFoundError:
        raise KeysNotInitialised(
            f"no server key in {keys_dir}: run `otacm keys init` to set up the keys directory "
            f"(or point OTACM_KEYS_DIR at the existing keys, or restore {SERVER_KEY_FILE} from "
            "a backup)"
        ) from None


def load_or_create_server_key(keys_dir: Path) -> bytes:
    """The server key in `keys_dir/server-data-key.bin`, created when missing: for setting up
    the keys directory, and for wrapping a key (never for unwrapping: `load_server_key`).

    Raises:
        KeyFileInvalid: the file is not a regular file of 32 bytes readable by its owner only.
    """
    try:
        return load_server_key(keys_dir)
    except KeysNotInitialised:
        pass
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A link never replaces an existing file: if two processes start at once, both end up
    # with the key that was first, instead of one wrapping data keys under a key then lost.
    with contextlib.suppress(FileExistsError):
        write_private_file(keys_dir / SERVER_KEY_FILE, secrets.token_bytes(KEY_SIZE), replace=False)
    # Read back rather than return the new key: another process may have created the file first.
    return _read_server_key(keys_dir / SERVER_KEY_FILE)


def _read_server_key(path: Path) -> bytes:
    # A raw descriptor, checked before reading: it opens a directory too (refused below), and
    # O_NONBLOCK keeps a FIFO put in the key's place from hanging the start.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileInvalid(f"server key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileInvalid(
                f"server key {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):o}): make it readable by its owner only "
                f"(chmod 600)"
            )
        key = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_SIZE:
        raise KeyFileInvalid(f"server key {path} must hold exactly {KEY_SIZE} bytes")
    return key


def decode_vehicle_public_key(text: str) -> bytes:
    """The raw X25519 key of a fleet export's `vehicle_public_key`.

    Accepts base64 of the 32 raw bytes or of a DER SubjectPublicKeyInfo.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPublicKey("the vehicle public key is not valid base64") from None
    if len(raw) == KEY_SIZE:
        return raw
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidPublicKey(
            "the vehicle public key is neither 32 raw bytes nor a DER public key"
        ) from None
    if not isinstance(key, X25519PublicKey):
        raise InvalidPublicKey(
            f"the vehicle public key is {type(key).__name__}; encryption needs an X25519 key"
        )
    return key.public_bytes_raw()


def _vehicle_kek(shared: bytes, epk: bytes, recipient: bytes, context: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=epk + recipient,
        info=VEHICLE_HKDF_INFO + context,
    )
    return hkdf.derive(shared)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_field(wrapped: Mapping[str, str], name: str, size: int) -> bytes:
    try:
        value = base64.b64decode(wrapped[name], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise KeyUnwrapFailed(f"wrapped key field {name!r} is missing or not base64") from None
    if len(value) != size:
        raise KeyUnwrapFailed(f"wrapped key field {name!r} must decode to {size} bytes")
    return value


def wrap_for_vehicle(
    data_key: bytes, vehicle_public_key: bytes, *, context: bytes
) -> dict[str, str]:
    """`data_key` encrypted to a vehicle's raw X25519 public key, as JSON-ready fields."""
    _check_key(data_key, "data key")
    try:
        recipient = X25519PublicKey.from_public_bytes(vehicle_public_key)
    except ValueError:
        raise InvalidPublicKey("a vehicle public key is 32 raw X25519 bytes") from None
    ephemeral = X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise InvalidPublicKey("the vehicle public key is not a usable X25519 key") from None
    kek = _vehicle_kek(shared, epk, vehicle_public_key, context)
    nonce = os.urandom(NONCE_SIZE)
    return {
        "alg": VEHICLE_WRAP_ALG,
        "epk": _b64(epk),
        "nonce": _b64(nonce),
        "wrapped_key": _b64(AESGCM(kek).encrypt(nonce, data_key, None)),
    }


def unwrap_for_vehicle(
    wrapped: Mapping[str, str], vehicle_private_key: X25519PrivateKey, *, context: bytes
) -> bytes:
    """The data key in `wrapped`, as a vehicle client recovers it with its private key."""
    if wrapped.get("alg") != VEHICLE_WRAP_ALG:
        raise KeyUnwrapFailed(f"unsupported key wrapping algorithm {wrapped.get('alg')!r}")
    epk = _b64_field(wrapped, "epk", KEY_SIZE)
    nonce = _b64_field(wrapped, "nonce", NONCE_SIZE)
    sealed = _b64_field(wrapped, "wrapped_key", KEY_SIZE + TAG_SIZE)
    try:
        shared = vehicle_private_key.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError:
        raise KeyUnwrapFailed("the ephemeral public key is not a usable X25519 key") from None
    recipient = vehicle_private_key.public_key().public_bytes_raw()
    kek = _vehicle_kek(shared, epk, recipient, context)
    try:
        return AESGCM(kek).decrypt(nonce, sealed, None)
    except InvalidTag:
        raise KeyUnwrapFailed(
            "the wrapped data key does not open: another vehicle's key or another context"
        ) from None
