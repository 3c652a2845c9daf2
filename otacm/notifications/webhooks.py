"""Outbound webhooks: the message format, its HMAC signature, one delivery attempt, and when to
try again.

A message is one JSON object (`WebhookMessage`), serialised canonically so that the signature
covers exactly the bytes sent. Each attempt POSTs it with an `Otacm-Signature` header (Stripe's
scheme: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, one `v1` per active
secret while a secret is rotated) and an `Otacm-Delivery` header holding the message id, which
stays the same across retries so a receiver can drop duplicates.

`deliver` makes one attempt and classifies it as delivered, retry or give up; `schedule_retry`
turns that into the time of the next attempt (exponential backoff with jitter, Retry-After
honoured) or None once `GIVE_UP_AFTER` or `MAX_ATTEMPTS` is reached. Keeping messages in a
durable outbox and calling these on a schedule is the caller's job.

`docs/webhooks.md` is the contract for receivers, with a test vector that the tests check
against this module. Secrets are arguments only: nothing here stores, logs or returns them.
"""

from __future__ import annotations

import email.utils
import enum
import hashlib
import hmac
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from secrets import token_urlsafe
from typing import Any

import httpx

from otacm import __version__
from otacm.errors import OtacmError, ValidationFailed

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Otacm-Signature"
DELIVERY_HEADER = "Otacm-Delivery"  # the message id: the same on every attempt
EVENT_HEADER = "Otacm-Event"  # the message type, for routing; the signed body is authoritative
USER_AGENT = f"otacm/{__version__}"

SIGNATURE_SCHEME = "v1"  # HMAC-SHA256 over "<t>.<body>"
MIN_SECRET_LENGTH = 16  # bytes
DEFAULT_TOLERANCE = timedelta(minutes=5)  # a signature's t may be this far from the receiver's now
_MAX_HEADER_LENGTH = 4096  # characters; room for dozens of v1 values

DEFAULT_TIMEOUT = timedelta(seconds=10)  # for each of connect, write and read
SNIPPET_CHARS = 500  # of the response body kept in a DeliveryResult
_SNIPPET_BYTES = 4 * SNIPPET_CHARS  # read at most this much of a response (UTF-8: ≤ 4 per char)

# The retry schedule (docs/webhooks.md, "Retries"): attempt n+1 waits base·2^(n-1), at most cap,
# shortened by up to `jitter` of itself; no attempt later than GIVE_UP_AFTER after the first.
BASE_DELAY = timedelta(seconds=30)
MAX_DELAY = timedelta(hours=6)
DEFAULT_JITTER = 0.2  # fraction of each delay
GIVE_UP_AFTER = timedelta(hours=24)  # from the first attempt; 13 attempts without jitter
MAX_ATTEMPTS = 16  # a bound on attempts that only very large jitter ever reaches

MAX_URL_LENGTH = 2048
DEV_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})  # the only hosts allowed over http

_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")  # e.g. campaign.paused
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_HOST = re.compile(r"[a-z0-9_.-]+|[0-9a-f:.]+")  # a name (IDNA-encoded) or an IPv6 address


class WebhookSignatureError(OtacmError):
    """A request that is not proven to come from otacm. Receivers answer it with a 4xx."""

    status_code = 400
    code = "webhook_signature_invalid"


class SignatureMalformed(WebhookSignatureError):
    """The signature header is missing parts or is not `t=<digits>,v1=<64 hex>[,v1=...]`."""

    code = "webhook_signature_malformed"


class SignatureExpired(WebhookSignatureError):
    """The signed timestamp is outside the tolerance: an old (replayed) or post-dated request."""

    code = "webhook_signature_expired"


class SignatureMismatch(WebhookSignatureError):
    """No v1 value matches: another secret, or the body or timestamp was changed."""

    code = "webhook_signature_mismatch"


class InvalidWebhookUrl(ValidationFailed):
    code = "invalid_webhook_url"


def _require_utc(now: datetime) -> None:
    # A caller's mistake rather than bad input: a plain ValueError.
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"a webhook secret must be at least {MIN_SECRET_LENGTH} bytes")


# --- Messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookMessage:
    """One notification; `body()` is the exact bytes sent, on every attempt."""

    id: uuid.UUID
    type: str  # lower-case dotted, e.g. "campaign.paused", "deployment.completed"
    created_at: datetime  # timezone-aware; sent in UTC with millisecond precision
    data: Mapping[str, Any]  # JSON values only

    def __post_init__(self) -> None:
        if not _TYPE.fullmatch(self.type):
            raise ValueError(f"message type {self.type!r} is not lower-case dotted words")
        _require_utc(self.created_at)

    @classmethod
    def new(cls, type: str, data: Mapping[str, Any], *, now: datetime) -> WebhookMessage:
        return cls(id=uuid.uuid4(), type=type, created_at=now, data=data)

    def to_dict(self) -> dict[str, Any]:
        created = self.created_at.astimezone(UTC).isoformat(timespec="milliseconds")
        return {
            "id": str(self.id),
            "type": self.type,
            "created_at": created.replace("+00:00", "Z"),
            "data": dict(self.data),
        }

    def body(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, UTF-8, no NaN or Infinity."""
        return canonical_json(self.to_dict())


def canonical_json(value: Any) -> bytes:
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


# --- Signatures -----------------------------------------------------------------------------


def generate_secret() -> bytes:
    """A new endpoint secret: 43 URL-safe characters (256 bits). The HMAC key is these ASCII
    bytes exactly as shown to the operator."""
    return token_urlsafe(32).encode("ascii")


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: Sequence[bytes], now: datetime) -> str:
    """The `Otacm-Signature` value for `body` at `now`: one v1 value per secret, in order."""
    _require_utc(now)
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    for secret in secrets:
        _check_secret(secret)
    timestamp = int(now.timestamp())
    values = [f"v1={_digest(secret, timestamp, body)}" for secret in secrets]
    return ",".join([f"t={timestamp}", *values])


def parse_signature(header: str) -> tuple[int, list[str]]:
    """The timestamp and the v1 digests of a signature header. Other schemes are ignored, so
    that a later scheme can be sent beside v1.

    Raises:
        SignatureMalformed: not `t=<digits>` once and `v1=<64 hex>` at least once.
    """
    if len(header) > _MAX_HEADER_LENGTH:
        raise SignatureMalformed(f"the {SIGNATURE_HEADER} header is too long")
    timestamp: int | None = None
    digests: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureMalformed(f"{SIGNATURE_HEADER}: {item.strip()[:20]!r} is not key=value")
        if key == "t":
            if timestamp is not None:
                raise SignatureMalformed(f"{SIGNATURE_HEADER}: more than one t=")
            if not (value.isascii() and value.isdigit()) or len(value) > 12:
                raise SignatureMalformed(f"{SIGNATURE_HEADER}: t= must be unix seconds")
            timestamp = int(value)
        elif key == SIGNATURE_SCHEME:
            if not _HEX_DIGEST.fullmatch(value.lower()):
                raise SignatureMalformed(f"{SIGNATURE_HEADER}: v1= must be 64 hex digits")
            digests.append(value.lower())
    if timestamp is None:
        raise SignatureMalformed(f"{SIGNATURE_HEADER}: no t= timestamp")
    if not digests:
        raise SignatureMalformed(f"{SIGNATURE_HEADER}: no v1= signature")
    return timestamp, digests


def verify(
    body: bytes,
    header: str,
    secret: bytes,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Check a received request: `body` as received (raw bytes, before any JSON parsing) and the
    `Otacm-Signature` header, against the receiver's secret at the receiver's `now`.

    Raises:
        SignatureMalformed: the header does not parse.
        SignatureExpired: its timestamp is more than `tolerance` before or after `now`.
        SignatureMismatch: no v1 value is the HMAC of this body and timestamp with `secret`.
    """
    _require_utc(now)
    _check_secret(secret)
    if tolerance <= timedelta(0):
        raise ValueError("the tolerance must be positive")
    timestamp, digests = parse_signature(header)
    age = now.timestamp() - timestamp
    if age > tolerance.total_seconds():
        raise SignatureExpired(
            f"signed {int(age)} s ago, more than the {int(tolerance.total_seconds())} s allowed"
        )
    if -age > tolerance.total_seconds():
        raise SignatureExpired(f"signed {int(-age)} s in the future: check the clocks")
    expected = _digest(secret, timestamp, body)
    # Compare with every value, without stopping early, so timing tells nothing.
    matches = [hmac.compare_digest(expected, digest) for digest in digests]
    if not any(matches):
        raise SignatureMismatch("no signature matches this body with this secret")


# --- Delivery -------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # try again later (schedule_retry says when)
    GIVE_UP = "give_up"  # the receiver rejected it for good: never send it again


@dataclass(frozen=True)
class DeliveryResult:
    """What one attempt did; holds nothing secret, safe to store and show to operators."""

    outcome: Outcome
    status_code: int | None  # None when no response came (network error, timeout)
    elapsed: timedelta  # from sending to the end of reading the snippet
    response_snippet: str = ""  # the first SNIPPET_CHARS characters of the response body
    error: str | None = None  # why it was not delivered, when the status code does not say
    retry_after: datetime | None = None  # the receiver's Retry-After, as an absolute time


def _classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 425, 429) or status >= 500:
        return Outcome.RETRY
    if 400 <= status < 500:
        return Outcome.GIVE_UP
    # 3xx (never followed, see deliver) and anything unexpected: retried until GIVE_UP_AFTER,
    # which leaves an operator time to correct the endpoint's URL.
    return Outcome.RETRY


def parse_retry_after(value: str | None, now: datetime) -> datetime | None:
    """Retry-After as delta-seconds or an HTTP-date; None when absent or unreadable. A time in
    the past means now."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return now + timedelta(seconds=min(int(value), 10**9))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322 for "UTC, source unknown"
        when = when.replace(tzinfo=UTC)
    return max(when, now)


def _read_snippet(response: httpx.Response, deadline: float) -> str:
    received = bytearray()
    for chunk in response.iter_bytes():
        received += chunk
        if len(received) >= _SNIPPET_BYTES or time.monotonic() > deadline:
            break
    return bytes(received[:_SNIPPET_BYTES]).decode("utf-8", "replace")[:SNIPPET_CHARS]


def deliver(
    url: str,
    message: WebhookMessage,
    secrets: Sequence[bytes],
    *,
    client: httpx.Client,
    timeout: timedelta = DEFAULT_TIMEOUT,
    now: datetime,
) -> DeliveryResult:
    """One attempt to POST `message` to `url`, signed with every secret in `secrets`.

    Redirects are never followed, whatever `client` is configured to do: a 3xx is recorded
    and retried (docs/webhooks.md). Exceptions from the network are turned into results; only
    a caller's mistake (no secret, a naive `now`) raises.
    """
    body = message.body()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(body, secrets, now),
        DELIVERY_HEADER: str(message.id),
        EVENT_HEADER: message.type,
    }
    started = time.monotonic()
    try:
        target = validate_webhook_url(url)
    except InvalidWebhookUrl as error:
        return _finish(
            message, url, DeliveryResult(Outcome.GIVE_UP, None, timedelta(0), error=error.detail)
        )
    seconds = timeout.total_seconds()
    request = client.build_request(
        "POST", target, content=body, headers=headers, timeout=httpx.Timeout(seconds)
    )
    try:
        response = client.send(request, stream=True, follow_redirects=False)
    except httpx.TimeoutException as error:
        result = _failed(f"timed out ({type(error).__name__})", started)
    except httpx.TransportError as error:  # refused, reset, DNS, TLS, protocol errors
        result = _failed(f"{type(error).__name__}: {error}"[:300], started)
    else:
        result = _answered(response, started, deadline=started + seconds, now=now)
    return _finish(message, url, result)


def _answered(
    response: httpx.Response, started: float, *, deadline: float, now: datetime
) -> DeliveryResult:
    try:
        snippet = _read_snippet(response, deadline)
    except httpx.HTTPError:
        snippet = ""  # the status is what counts; a broken body only loses the snippet
    finally:
        response.close()
    status = response.status_code
    outcome = _classify(status)
    error = None
    if 300 <= status < 400:
        error = f"redirect to {response.headers.get('location', '')[:200]!r} not followed"
    retry_after = None
    if outcome is Outcome.RETRY:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    elapsed = timedelta(seconds=time.monotonic() - started)
    return DeliveryResult(outcome, status, elapsed, snippet, error, retry_after)


def _failed(error: str, started: float) -> DeliveryResult:
    elapsed = timedelta(seconds=time.monotonic() - started)
    return DeliveryResult(Outcome.RETRY, None, elapsed, error=error)


def _finish(message: WebhookMessage, url: str, result: DeliveryResult) -> DeliveryResult:
    level = logging.DEBUG if result.outcome is Outcome.DELIVERED else logging.INFO
    if result.outcome is Outcome.GIVE_UP:
        level = logging.WARNING
    log.log(
        level,
        "webhook %s (%s) to %s: %s, status %s, %.3f s%s",
        message.id,
        message.type,
        origin(url),
        result.outcome,
        result.status_code,
        result.elapsed.total_seconds(),
        f", {result.error}" if result.error else "",
    )
    return result


# --- Retries --------------------------------------------------------------------------------


def next_attempt_at(
    attempt: int,
    now: datetime,
    *,
    base: timedelta = BASE_DELAY,
    cap: timedelta = MAX_DELAY,
    jitter: float = DEFAULT_JITTER,
    rng: random.Random | None = None,
) -> datetime:
    """When to make attempt `attempt + 1`, after `attempt` attempts (≥ 1) have failed:
    `now + min(cap, base·2^(attempt-1))`, shortened by a random share of up to `jitter`
    (0 ≤ jitter ≤ 1) so that endpoints recovering together are not hit in lockstep."""
    if attempt < 1:
        raise ValueError("attempt counts the attempts made so far, from 1")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter is a fraction between 0 and 1")
    delay = min(cap.total_seconds(), base.total_seconds() * 2.0 ** min(attempt - 1, 64))
    delay *= 1.0 - jitter * (rng.random() if rng is not None else random.random())
    return now + timedelta(seconds=delay)


def schedule_retry(
    result: DeliveryResult,
    *,
    attempt: int,
    first_attempt_at: datetime,
    now: datetime,
    jitter: float = DEFAULT_JITTER,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try again after `result` (the outcome of attempt number `attempt`), or None to
    stop: delivered, given up by the receiver, `MAX_ATTEMPTS` made, or the next attempt would
    come later than `GIVE_UP_AFTER` after the first. A Retry-After is honoured (never earlier)
    up to `MAX_DELAY` from now."""
    if result.outcome is not Outcome.RETRY or attempt >= MAX_ATTEMPTS:
        return None
    when = next_attempt_at(attempt, now, jitter=jitter, rng=rng)
    if result.retry_after is not None:
        when = max(when, min(result.retry_after, now + MAX_DELAY))
    if when > first_attempt_at + GIVE_UP_AFTER:
        return None
    return when


# --- Configuration --------------------------------------------------------------------------


def origin(url: str) -> str:
    """Scheme, host and port of `url`: all that audit entries and logs show of a webhook URL,
    whose path or query often carries a receiver's token."""
    try:
        parsed = httpx.URL(url)
        return f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}"
    except (httpx.InvalidURL, TypeError, UnicodeError):
        return "(an invalid URL)"


def validate_webhook_url(url: str, *, field: str = "url") -> str:
    """`url` if it may receive webhooks: https, or http to localhost / 127.0.0.1 / [::1] for
    development; a host, no user name or password, no fragment, at most 2048 characters.
    It is parsed as httpx parses it, so what is checked is what is connected to.

    Raises:
        InvalidWebhookUrl: naming `field` and what is wrong.
    """

    def invalid(reason: str) -> InvalidWebhookUrl:
        return InvalidWebhookUrl(f"{field}: {reason}", field=field)

    if not isinstance(url, str) or not url:
        raise invalid("a webhook URL is required")
    if len(url) > MAX_URL_LENGTH:
        raise invalid(f"longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        raise invalid("contains spaces, control characters or backslashes")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
        host = parsed.raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, UnicodeError) as error:
        raise invalid(f"not a URL ({error})") from None
    if parsed.scheme not in ("https", "http"):
        raise invalid("must start with https://")
    if not host or not _HOST.fullmatch(host):
        raise invalid("has no valid host name")
    if parsed.userinfo:
        raise invalid("must not contain a user name or password; the signature authenticates")
    if parsed.fragment:
        raise invalid("must not contain a #fragment")
    if port is not None and not 0 < port < 65536:
        raise invalid("has a port outside 1-65535")
    if parsed.scheme == "http" and host not in DEV_HOSTS:
        raise invalid("must use https (plain http only to localhost, for development)")
    return url
