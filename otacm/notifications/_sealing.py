"""Webhook secrets at rest: wrapped under the server key and bound to their endpoint.

A secret (`webhooks.generate_secret`) is 43 URL-safe characters, the unpadded base64url form of
32 random bytes; those bytes are wrapped with `encryption.wrap_data_key` exactly as an update's
data key is, under the installation's server key (`keys/server-data-key.bin`). The context
binds a wrapped secret to its endpoint: copied onto another endpoint's row it does not open.
"""

from __future__ import annotations

import base64
import binascii

from otacm.config import Settings
from otacm.security import encryption
from otacm.security.keys import KeysNotInitialised, KeyStore


def _context(endpoint_id: int) -> bytes:
    return b"otacm webhook secret of endpoint %d" % endpoint_id


def has_server_key(settings: Settings) -> bool:
    """Whether this installation's keys directory holds a server key (valid or not)."""
    return (settings.resolved_keys_dir() / encryption.SERVER_KEY_FILE).exists()


def server_key(settings: Settings, *, create: bool = False) -> bytes:
    """The server key. With `create`, it is made on first use, as for confidential updates,
    but only in a keys directory that `otacm keys init` has set up.

    Raises:
        KeysNotInitialised: no server key (and `create` is off, or no keys were initialised).
        KeyFileInvalid: the key file exists but is not a usable key.
    """
    keys_dir = settings.resolved_keys_dir()
    if not has_server_key(settings) and not (create and KeyStore(keys_dir).initialised()):
        raise KeysNotInitialised(
            f"no server key in {keys_dir} to encrypt webhook secrets with: "
            "run `otacm keys init` first (or point OTACM_KEYS_DIR at the existing keys)"
        )
    if create:
        return encryption.load_or_create_server_key(keys_dir)
    return encryption.load_server_key(keys_dir)  # unwrapping: never a new key


def seal(secret: bytes, key: bytes, endpoint_id: int) -> bytes:
    """`secret` (43 URL-safe characters) wrapped under `key` for `endpoint_id`."""
    try:
        raw = base64.urlsafe_b64decode(secret + b"=")
    except binascii.Error:
        raise ValueError("a webhook secret is 43 URL-safe base64 characters") from None
    if len(raw) != encryption.KEY_SIZE or base64.urlsafe_b64encode(raw).rstrip(b"=") != secret:
        raise ValueError("a webhook secret is 43 URL-safe base64 characters")
    return encryption.wrap_data_key(raw, key, context=_context(endpoint_id))


def unseal(wrapped: bytes, key: bytes, endpoint_id: int) -> bytes:
    """The secret as its 43 ASCII characters, the HMAC key receivers hold.

    Raises:
        KeyUnwrapFailed: another server key, or a wrapped secret of another endpoint.
    """
    raw = encryption.unwrap_data_key(wrapped, key, context=_context(endpoint_id))
    return base64.urlsafe_b64encode(raw).rstrip(b"=")
