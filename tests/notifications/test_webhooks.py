"""Outbound webhooks: the message bytes, signatures, one delivery attempt against a real HTTP
receiver on a local socket, the retry schedule, and webhook URL rules."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from otacm import __version__
from otacm.notifications import webhooks
from otacm.notifications.webhooks import (
    GIVE_UP_AFTER,
    MAX_ATTEMPTS,
    DeliveryResult,
    InvalidWebhookUrl,
    Outcome,
    SignatureExpired,
    SignatureMalformed,
    SignatureMismatch,
    WebhookMessage,
    deliver,
    next_attempt_at,
    parse_retry_after,
    schedule_retry,
    sign,
    validate_webhook_url,
    verify,
)
from tests.live_server import LiveServer, live_server  # noqa: F401  (fixture)

DOC = Path(__file__).parent.parent.parent / "docs" / "webhooks.md"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SECRET = b"Zs3kQ9v1b8hLr2pXw7nT5yCj0aEfGdHu"
OLD_SECRET = b"old-secret-7f3a9c2e5b1d4a6f"
OTHER_SECRET = b"someone-elses-secret-000"


def message(**data: Any) -> WebhookMessage:
    return WebhookMessage.new("campaign.paused", data or {"campaign_id": 7}, now=NOW)


# --- Messages -------------------------------------------------------------------------------


def test_body_is_canonical_json_in_utf8() -> None:
    msg = WebhookMessage(
        uuid.UUID("0b7c6c1e-5d0a-4c3e-9a55-2f1d3c4b5a69"),
        "deployment.completed",
        datetime(2025, 3, 1, 13, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))),
        {"z": [1, 2.5, None, True], "a": {"y": "Größe", "b": ""}},
    )
    assert (
        msg.body()
        == (
            '{"created_at":"2025-03-01T12:00:00.123Z",'
            '"data":{"a":{"b":"","y":"Größe"},"z":[1,2.5,null,true]},'
            '"id":"0b7c6c1e-5d0a-4c3e-9a55-2f1d3c4b5a69","type":"deployment.completed"}'
        ).encode()
    )


@pytest.mark.parametrize("kind", ["", "paused", "Campaign.Paused", "campaign.", "campaign paused"])
def test_message_type_is_lower_case_dotted(kind: str) -> None:
    with pytest.raises(ValueError, match="type"):
        WebhookMessage.new(kind, {}, now=NOW)


def test_message_needs_an_aware_time_and_json_values() -> None:
    with pytest.raises(ValueError, match="timezone"):
        WebhookMessage.new("campaign.paused", {}, now=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        WebhookMessage.new("campaign.paused", {"share": float("nan")}, now=NOW).body()
    with pytest.raises(TypeError):
        WebhookMessage.new("campaign.paused", {"at": NOW}, now=NOW).body()


# --- Signatures -----------------------------------------------------------------------------


def test_signature_round_trip() -> None:
    body = message().body()
    header = sign(body, [SECRET], NOW)
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert header.startswith(f"t={int(NOW.timestamp())},")
    verify(body, header, SECRET, NOW)


def test_several_secrets_during_rotation() -> None:
    body = message().body()
    header = sign(body, [SECRET, OLD_SECRET], NOW)
    assert header.count("v1=") == 2
    verify(body, header, SECRET, NOW)
    verify(body, header, OLD_SECRET, NOW)
    with pytest.raises(SignatureMismatch):
        verify(body, header, OTHER_SECRET, NOW)
    # Each v1 is the one a single secret gives, in the order of the secrets.
    assert header == ",".join(
        [sign(body, [SECRET], NOW), sign(body, [OLD_SECRET], NOW).split(",")[1]]
    )


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=1740830400",
        f"v1={'a' * 64}",
        f"t=,v1={'a' * 64}",
        f"t=-5,v1={'a' * 64}",
        f"t=1740830400.5,v1={'a' * 64}",
        f"t=1740830400,t=1740830400,v1={'a' * 64}",
        "t=1740830400,v1=abc",
        f"t=1740830400,v1={'g' * 64}",
        f"t=1740830400,v1={'a' * 64},junk",
        f"t=1740830400,v0={'a' * 64}",
        "t=1740830400," + ",".join([f"v1={'a' * 64}"] * 100),
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(SignatureMalformed) as raised:
        verify(b"{}", header, SECRET, NOW)
    assert raised.value.code == "webhook_signature_malformed"


def test_unknown_schemes_and_spaces_and_upper_case_hex_are_accepted() -> None:
    body = message().body()
    t, v1 = sign(body, [SECRET], NOW).split(",")
    verify(
        body, f" {t} , v0=whatever, v2={'0' * 64} , {v1.upper().replace('V1=', 'v1=')}", SECRET, NOW
    )


def test_old_and_post_dated_signatures_are_refused() -> None:
    body = message().body()
    header = sign(body, [SECRET], NOW)
    verify(body, header, SECRET, NOW + timedelta(minutes=5))  # the edge of the window
    verify(body, header, SECRET, NOW - timedelta(minutes=5))
    with pytest.raises(SignatureExpired, match="ago"):
        verify(body, header, SECRET, NOW + timedelta(minutes=5, seconds=1))
    with pytest.raises(SignatureExpired, match="future"):
        verify(body, header, SECRET, NOW - timedelta(minutes=5, seconds=1))
    verify(body, header, SECRET, NOW + timedelta(hours=1), tolerance=timedelta(hours=2))


def test_any_change_to_body_or_timestamp_breaks_the_signature() -> None:
    body = message().body()
    header = sign(body, [SECRET], NOW)
    with pytest.raises(SignatureMismatch):
        verify(body.replace(b"7", b"8"), header, SECRET, NOW)
    with pytest.raises(SignatureMismatch):
        verify(body + b" ", header, SECRET, NOW)
    t = int(NOW.timestamp())
    with pytest.raises(SignatureMismatch):
        verify(body, header.replace(f"t={t}", f"t={t + 1}"), SECRET, NOW)
    with pytest.raises(SignatureMismatch):
        verify(body, header, OTHER_SECRET, NOW)


def test_caller_mistakes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        sign(b"{}", [], NOW)
    with pytest.raises(ValueError, match="16 bytes"):
        sign(b"{}", [SECRET, b"short"], NOW)
    with pytest.raises(ValueError, match="timezone"):
        sign(b"{}", [SECRET], datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="16 bytes"):
        verify(b"{}", sign(b"{}", [SECRET], NOW), b"", NOW)
    with pytest.raises(ValueError, match="positive"):
        verify(b"{}", sign(b"{}", [SECRET], NOW), SECRET, NOW, tolerance=timedelta(0))


def test_generated_secrets_are_long_random_ascii() -> None:
    first, second = webhooks.generate_secret(), webhooks.generate_secret()
    assert len(first) == 43 and first.isascii() and first != second
    sign(b"{}", [first], NOW)


def test_the_documented_test_vector() -> None:
    doc = DOC.read_text()
    body = doc.split("Otacm-Signature: ")[1].split("\n\n", 1)[1].split("\n", 1)[0].encode()
    header = doc.split("the header is\n`", 1)[1].split("`", 1)[0]
    assert header == sign(body, [SECRET, OLD_SECRET], datetime.fromtimestamp(1731622400, UTC))
    msg = WebhookMessage(
        uuid.UUID("0b7c6c1e-5d0a-4c3e-9a55-2f1d3c4b5a69"),
        "campaign.paused",
        datetime.fromtimestamp(1731622400, UTC),
        {"campaign_id": 42, "reason": "failure threshold crossed", "failed_share": 0.12},
    )
    assert msg.body() == body
    assert f"Otacm-Signature: {header.split(',v1=')[0]},v1={header.split(',v1=')[1]}\n" in doc


def test_the_documented_receiver_accepts_what_otacm_signs() -> None:
    code = DOC.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    check = namespace["check"]
    body = message().body()
    now = datetime.now(UTC)
    check(body, sign(body, [OLD_SECRET, SECRET], now), SECRET)
    for header in [
        sign(body + b" ", [SECRET], now),
        sign(body, [SECRET], now - timedelta(hours=1)),
    ]:
        with pytest.raises(ValueError):
            check(body, header, SECRET)


# --- Delivery against a real receiver -------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0  # seconds before answering


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver as an ASGI app: records every request, answers with the reply
    configured for its path (200 by default)."""

    def __init__(self, **replies: Reply) -> None:
        self.replies = {f"/{name}": reply for name, reply in replies.items()}
        self.received: list[Received] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, body))
        reply = self.replies.get(scope["path"], Reply())
        await asyncio.sleep(reply.delay)
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(k.encode(), v.encode()) for k, v in reply.headers],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})


class Serve(Protocol):
    def __call__(self, receiver: Receiver) -> str: ...


@pytest.fixture
def serve(live_server: LiveServer) -> Iterator[Serve]:  # noqa: F811
    with ExitStack() as stack:

        def mount(receiver: Receiver) -> str:
            url: str = stack.enter_context(live_server.mount(receiver))
            return url

        yield mount


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def post(url: str, msg: WebhookMessage, client: httpx.Client, **kw: Any) -> DeliveryResult:
    return deliver(url, msg, [SECRET, OLD_SECRET], client=client, now=NOW, **kw)


@pytest.mark.parametrize("status", [200, 202, 204])
def test_delivered_with_the_exact_signed_bytes(
    serve: Serve, client: httpx.Client, status: int
) -> None:
    receiver = Receiver(hook=Reply(status, body=b"" if status == 204 else b"thanks"))
    url = serve(receiver)
    msg = message(campaign_id=7, note="Größe ✓")

    result = post(f"{url}/hook?token=abc", msg, client)

    assert result.outcome is Outcome.DELIVERED
    assert result.status_code == status
    assert result.response_snippet == ("" if status == 204 else "thanks")
    assert result.error is None and result.retry_after is None
    assert result.elapsed >= timedelta(0)
    [got] = receiver.received
    assert got.body == msg.body()
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == f"otacm/{__version__}"
    assert got.headers["otacm-delivery"] == str(msg.id)
    assert got.headers["otacm-event"] == "campaign.paused"
    assert got.headers["otacm-signature"] == sign(msg.body(), [SECRET, OLD_SECRET], NOW)
    verify(got.body, got.headers["otacm-signature"], SECRET, NOW)
    verify(got.body, got.headers["otacm-signature"], OLD_SECRET, NOW)


def test_a_retry_sends_the_same_body_and_id_with_a_fresh_signature(
    serve: Serve, client: httpx.Client
) -> None:
    receiver = Receiver()
    url = serve(receiver)
    msg = message()
    later = NOW + timedelta(minutes=10)
    deliver(f"{url}/hook", msg, [SECRET], client=client, now=NOW)
    deliver(f"{url}/hook", msg, [SECRET], client=client, now=later)
    first, second = receiver.received
    assert first.body == second.body == msg.body()
    assert first.headers["otacm-delivery"] == second.headers["otacm-delivery"] == str(msg.id)
    verify(second.body, second.headers["otacm-signature"], SECRET, later)
    with pytest.raises(SignatureExpired):
        verify(first.body, first.headers["otacm-signature"], SECRET, later)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("follow", [False, True])
def test_redirects_are_not_followed_and_retried(serve: Serve, status: int, follow: bool) -> None:
    receiver = Receiver()
    url = serve(receiver)
    port = url.rsplit(":", 1)[1]
    elsewhere = f"http://localhost:{port}/landed"  # another host name, the same server
    receiver.replies["/hook"] = Reply(status, [("Location", elsewhere)])
    receiver.replies["/same"] = Reply(status, [("Location", "/landed")])

    with httpx.Client(follow_redirects=follow) as client:
        moved = post(f"{url}/hook", message(), client)
        moved_here = post(f"{url}/same", message(), client)

    assert [r.path for r in receiver.received] == ["/hook", "/same"]
    for result in (moved, moved_here):
        assert result.outcome is Outcome.RETRY
        assert result.status_code == status
    assert moved.error == f"redirect to {elsewhere!r} not followed"
    assert moved_here.error == "redirect to '/landed' not followed"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
def test_other_client_errors_give_up(serve: Serve, client: httpx.Client, status: int) -> None:
    url = serve(Receiver(hook=Reply(status, body=b'{"error":"unknown campaign"}')))
    result = post(f"{url}/hook", message(), client)
    assert result.outcome is Outcome.GIVE_UP
    assert result.status_code == status
    assert result.response_snippet == '{"error":"unknown campaign"}'


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_temporary_failures_are_retried(serve: Serve, client: httpx.Client, status: int) -> None:
    url = serve(Receiver(hook=Reply(status, body=b"busy")))
    result = post(f"{url}/hook", message(), client)
    assert (result.outcome, result.status_code, result.response_snippet) == (
        Outcome.RETRY,
        status,
        "busy",
    )
    assert result.retry_after is None


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "120", NOW + timedelta(seconds=120)),
        (429, format_datetime(NOW + timedelta(hours=1), usegmt=True), NOW + timedelta(hours=1)),
        (503, "0", NOW),
        (503, format_datetime(NOW + timedelta(minutes=3), usegmt=True), NOW + timedelta(minutes=3)),
        (503, format_datetime(NOW - timedelta(days=1), usegmt=True), NOW),
        (429, "soon", None),
    ],
)
def test_retry_after_in_seconds_or_as_a_date(
    serve: Serve, client: httpx.Client, status: int, retry_after: str, expected: datetime | None
) -> None:
    url = serve(Receiver(hook=Reply(status, [("Retry-After", retry_after)])))
    result = post(f"{url}/hook", message(), client)
    assert result.outcome is Outcome.RETRY
    assert result.retry_after == expected


def test_retry_after_on_a_rejection_is_ignored(serve: Serve, client: httpx.Client) -> None:
    url = serve(Receiver(hook=Reply(400, [("Retry-After", "60")])))
    assert post(f"{url}/hook", message(), client).retry_after is None


def test_only_the_start_of_a_long_answer_is_kept(serve: Serve, client: httpx.Client) -> None:
    url = serve(Receiver(hook=Reply(500, body="é".encode() * 3_000_000)))
    result = post(f"{url}/hook", message(), client)
    assert result.response_snippet == "é" * webhooks.SNIPPET_CHARS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused_is_retried(client: httpx.Client) -> None:
    result = post(f"http://127.0.0.1:{free_port()}/hook", message(), client)
    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("ConnectError")


def test_no_answer_in_time_is_retried(client: httpx.Client) -> None:
    # A listening socket that never accepts: the connection and the request go through (into
    # the kernel's backlog), the answer never comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = post(
            f"http://127.0.0.1:{port}/hook", message(), client, timeout=timedelta(seconds=0.2)
        )
    assert result.outcome is Outcome.RETRY
    assert result.status_code is None
    assert result.error == "timed out (ReadTimeout)"
    assert result.elapsed >= timedelta(seconds=0.2)


def test_a_slow_receiver_times_out(serve: Serve, client: httpx.Client) -> None:
    url = serve(Receiver(hook=Reply(200, delay=0.6)))
    result = post(f"{url}/hook", message(), client, timeout=timedelta(seconds=0.1))
    assert (result.outcome, result.error) == (Outcome.RETRY, "timed out (ReadTimeout)")


def test_an_invalid_url_is_given_up_without_a_request(client: httpx.Client) -> None:
    result = post("http://example.com/hook", message(), client)
    assert result.outcome is Outcome.GIVE_UP
    assert result.status_code is None
    assert result.error is not None and "https" in result.error


def test_secrets_and_url_paths_stay_out_of_results_and_logs(
    serve: Serve, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url = serve(Receiver(hook=Reply(410, body=b"gone")))
    caplog.set_level(logging.DEBUG, logger="otacm.notifications")
    results = [
        post(f"{url}/hook?token=s3cr3t-token", message(), client),
        post(f"{url}/ok?token=s3cr3t-token", message(), client),
        post(f"http://127.0.0.1:{free_port()}/x?token=s3cr3t-token", message(), client),
    ]
    shown = caplog.text + repr(results)
    assert len(caplog.records) == 3
    assert url.removeprefix("http://") in caplog.text
    for secret in (SECRET, OLD_SECRET):
        assert secret.decode() not in shown
    assert "s3cr3t-token" not in caplog.text
    assert [r.levelname for r in caplog.records] == ["WARNING", "DEBUG", "INFO"]


# --- Retries --------------------------------------------------------------------------------


class Always(webhooks.random.Random):
    """A 'random' source that always returns the same number."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_backoff_doubles_from_30_seconds_up_to_6_hours() -> None:
    delays = [next_attempt_at(n, NOW, jitter=0) - NOW for n in range(1, 15)]
    assert [d.total_seconds() for d in delays] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3840,
        7680,
        15360,
        21600,
        21600,
        21600,
        21600,
    ]
    assert next_attempt_at(10_000, NOW, jitter=0) == NOW + timedelta(hours=6)
    custom = next_attempt_at(3, NOW, base=timedelta(seconds=1), cap=timedelta(seconds=3), jitter=0)
    assert custom == NOW + timedelta(seconds=3)


def test_jitter_only_shortens_and_by_at_most_its_share() -> None:
    rng = webhooks.random.Random(7)
    for attempt in range(1, 20):
        full = next_attempt_at(attempt, NOW, jitter=0) - NOW
        jittered = next_attempt_at(attempt, NOW, jitter=0.2, rng=rng) - NOW
        assert full * 0.8 <= jittered <= full
    assert next_attempt_at(4, NOW, jitter=0.5, rng=Always(1.0)) == NOW + timedelta(seconds=120)
    assert next_attempt_at(4, NOW, jitter=0.5, rng=Always(0.0)) == NOW + timedelta(seconds=240)
    first = [next_attempt_at(5, NOW, rng=webhooks.random.Random(1)) for _ in range(2)]
    assert first[0] == first[1]


@pytest.mark.parametrize(("attempt", "jitter"), [(0, 0.1), (-1, 0.1), (1, -0.1), (1, 1.5)])
def test_backoff_arguments_are_checked(attempt: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        next_attempt_at(attempt, NOW, jitter=jitter)


RETRY = DeliveryResult(Outcome.RETRY, 503, timedelta(seconds=1))


def attempt_times(jitter: float, rng: webhooks.random.Random | None = None) -> list[timedelta]:
    """When each attempt of a message that always fails is made, relative to the first."""
    times, now, attempt = [timedelta(0)], NOW, 1
    while when := schedule_retry(
        RETRY, attempt=attempt, first_attempt_at=NOW, now=now, jitter=jitter, rng=rng
    ):
        times.append(when - NOW)
        now, attempt = when, attempt + 1
    return times


def test_the_schedule_gives_up_after_24_hours() -> None:
    times = attempt_times(jitter=0)
    assert len(times) == 13
    assert times[-1] == timedelta(hours=20, minutes=31, seconds=30)
    assert times[-1] + timedelta(hours=6) > GIVE_UP_AFTER
    # The table in the documentation is this schedule.
    doc = DOC.read_text()
    for number, at in enumerate(times, start=1):
        hours, rest = divmod(int(at.total_seconds()), 3600)
        assert f"| {number} | {hours}:{rest // 60:02}:{rest % 60:02} |\n" in doc
    # With the largest default jitter, more attempts fit, as the documentation says.
    assert len(attempt_times(jitter=0.2, rng=Always(1.0))) == 14
    assert "up to 14 fit in the 24 hours" in doc
    # With extreme jitter only MAX_ATTEMPTS stops it.
    assert len(attempt_times(jitter=1.0, rng=Always(0.999))) == MAX_ATTEMPTS


def test_no_retry_after_delivery_or_rejection() -> None:
    for outcome in (Outcome.DELIVERED, Outcome.GIVE_UP):
        result = DeliveryResult(outcome, 200, timedelta(0))
        assert schedule_retry(result, attempt=1, first_attempt_at=NOW, now=NOW) is None


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    def after(retry_after: timedelta) -> datetime | None:
        result = DeliveryResult(Outcome.RETRY, 429, timedelta(0), retry_after=NOW + retry_after)
        return schedule_retry(result, attempt=1, first_attempt_at=NOW, now=NOW, jitter=0)

    assert after(timedelta(seconds=5)) == NOW + timedelta(seconds=30)  # backoff is later
    assert after(timedelta(minutes=10)) == NOW + timedelta(minutes=10)
    assert after(timedelta(days=3)) == NOW + timedelta(hours=6)
    late = DeliveryResult(Outcome.RETRY, 429, timedelta(0), retry_after=NOW + timedelta(hours=5))
    first = NOW - timedelta(hours=20)
    assert schedule_retry(late, attempt=5, first_attempt_at=first, now=NOW) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after(" 30 ", NOW) == NOW + timedelta(seconds=30)
    assert parse_retry_after("Sat, 01 Mar 2025 12:01:00 GMT", NOW) == NOW + timedelta(minutes=1)
    assert parse_retry_after("Sat, 01 Mar 2025 12:01:00 -0000", NOW) == NOW + timedelta(minutes=1)
    for junk in ["", "-5", "1.5", "tomorrow", "Sat, 99 Foo 2025"]:
        assert parse_retry_after(junk, NOW) is None


# --- Webhook URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com/hooks/otacm",
        "https://crm.example.com:8443/hooks?tenant=4",
        "https://bücher.example/hook",
        "https://203.0.113.9/hook",
        "http://localhost:8080/hook",
        "http://127.0.0.1/hook",
        "http://[::1]:9000/hook",
        "HTTPS://CRM.EXAMPLE.COM/",
    ],
)
def test_acceptable_webhook_urls(url: str) -> None:
    assert validate_webhook_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "required"),
        ("http://crm.example.com/hook", "must use https"),
        ("http://127.0.0.2/hook", "must use https"),
        ("http://localhost.evil.com/hook", "must use https"),
        ("ftp://crm.example.com/hook", "https://"),
        ("crm.example.com/hook", "https://"),
        ("https://user:pw@crm.example.com/hook", "user name or password"),
        ("https://token@crm.example.com/hook", "user name or password"),
        ("https://crm.example.com\\@evil.com/", "backslashes"),
        ("https://crm.example.com/a b", "spaces"),
        ("https://crm.example.com/\x00", "control"),
        ("https:///hook", "host"),
        ("https://crm.example.com:99999/", "port"),
        ("https://crm.example.com/hook#frag", "fragment"),
        ("https://crm.example.com/" + "a" * 2048, "2048"),
    ],
)
def test_unacceptable_webhook_urls_name_the_field(url: str, reason: str) -> None:
    with pytest.raises(InvalidWebhookUrl, match=re.escape(reason)) as raised:
        validate_webhook_url(url, field="endpoints[2].url")
    error = raised.value
    assert error.detail.startswith("endpoints[2].url: ")
    assert error.to_dict()["field"] == "endpoints[2].url"
    assert (error.status_code, error.code) == (422, "invalid_webhook_url")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://crm.example.com/hooks/T0KEN?key=abc", "https://crm.example.com"),
        ("http://127.0.0.1:8080/x?token=t", "http://127.0.0.1:8080"),
        ("https://[::1]:9000/hook", "https://[::1]:9000"),
        ("https://[::1/hook", "(an invalid URL)"),
        (None, "(an invalid URL)"),
    ],
)
def test_origin_shows_scheme_host_and_port_only(url: Any, shown: str) -> None:
    assert webhooks.origin(url) == shown
