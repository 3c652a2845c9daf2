"""The reference vehicle client: one vehicle's telematics unit speaking docs/vehicle-api.md.

A Tier-1 building a client for otacm reads this module next to that page. It is the whole
protocol in one loop, with the simulated car (`vehicle.py`) where a real one has hardware.

## What it is given

A provisioning record (`records.ProvisioningRecord`: VIN, bearer credential, ECUs as built,
the Ed25519 signing key and the X25519 encryption key), the server's base URL, a work
directory (the vehicle's persistent storage) and the trusted roots of both TUF repositories
(`provisioning.TrustedRoots`, fetched once by `provisioning.provision_roots`).

## The loop (`VehicleClient.run`)

1. At start-up it sends its version manifest (`send_manifest`).
2. It polls `GET /vehicle/v1/updates` with `If-None-Match` (the last ETag): 204 nothing, 304
   the offers it already has, 200 new offers. It waits as long as `Poll-After` says (times the
   simulation's `time_scale`) before the next poll, or polls again at once after acting on an
   offer, since acting changes what the server shows.
3. For each offer, in order, by the server's `state` and what this vehicle last did for that
   deployment attempt (kept in `VehicleState.outcomes`, so a restart neither repeats a
   decision nor forgets a job):

   | server state | our last word | action |
   |---|---|---|
   | `offered` | none, or postponed | ask the owner (or accept, when no consent is needed) |
   | `offered`, `accepted` … `installing` | none, or accepted | work on it (below) |
   | `installed` | installed | send the manifest once more: it is what confirms |
   | `postponed`, or anything else | — | nothing: the server moves next |

4. Working on an offer (`_work`):
   - **verify** (Uptane full verification, `uptane.verify_offer`): refresh the director
     repository, then the image repository, with python-tuf in a thread; the director targets
     must name this VIN; every step must have a director target for its ECU and deployment
     that agrees with the image repository's (path, length, hashes), hardware that is the
     ECU's own and accepted by the image, a release counter not below the installed one;
   - **download** each file from `/tuf/image/targets/<dir>/<sha256>.<name>`, resuming with
     `Range` after a broken connection (`download.download_resumable`), then check its length
     and hashes against the signed target, unwrap the data key of a confidential image
     (context `otacm-update:<update_id>`), decrypt it and check the plaintext's SHA-256
     (`images.check_image`);
   - **wait** until the preconditions hold (parked, ignition off, battery, charger), up to the
     maintenance window's end and `precondition_patience_s`; else `failed` with code
     `precondition_timeout`;
   - **install**: write each image to the ECU's inactive bank, switch, health-check. A failed
     health check falls every switched ECU back to its previous bank and reports
     `rolled_back` (code `health_check_failed`); otherwise `install_finished`. Either way the
     next manifest follows at once: only a manifest showing the new version makes the
     deployment succeed.

   Every step is reported as a deployment event with a fresh UUID `event_id` and the offer's
   `attempt`. An answer of `stale_attempt`, or a deployment the server has settled otherwise
   (cancelled, expired, …), ends the work on that attempt.

Any verification failure is reported as `failed` with code `verification_failed` and the
reason as `detail`, and the attack is listed in the next manifest's `attacks_detected`
(kept in the vehicle's state until a manifest carrying it is accepted).

## The manifest

`{"signed": {vin, report_counter, ecus: [serial, software_version, image_sha256],
attacks_detected}, "signature": base64 Ed25519 over encode_canonical(signed)}`. The counter is
kept in the vehicle's state and increases with every manifest; if the server has accepted a
higher one (409 `manifest_replayed`, e.g. a vehicle restored from an old backup) the client
continues above the server's `last_accepted`. `image_sha256` is the SHA-256 of the image as the
image repository signed it (the delivered file); for software as built it is null.

## Failures

Network errors, 5xx and 429 answers are retried with exponential backoff and jitter
(`backoff.BackoffPolicy`) for as long as it takes: a server restart or a tunnel costs time,
never state. An answer can also be lost after the server acted on the request (the
link's `lost_answers`): the client cannot tell, sends the same body again, and the event's id
(or the manifest's counter) makes the second copy harmless; `SentEvent` records how often each
event left the vehicle and what the server answered.
A 401 stops the vehicle (`Phase.LOCKED_OUT`): its credential was revoked. Answers
the client cannot read are counted as errors and the loop goes on.

## Concurrency

The client is asyncio; many share one event loop (`fleet.py`). python-tuf is synchronous and
its signature checks, like hashing and decrypting, are CPU work: they run in threads, at most
as many at once as the shared `cpu_slots` semaphore allows. A fleet may also share
`work_slots`: vehicles that act on an offer wait for one first. Real vehicles each have their
own network; simulated ones share one connection pool, and thousands answering a new wave at
once would queue every later step of every vehicle behind the first step of all the others.

## Ground truth

`VehicleClient.state` is what the vehicle really runs (per ECU: active and fallback bank) and
`tally` counts what happened (installs, rollbacks, failures, retries, events, …); `report()`
returns both for a test or the demo to compare with what the server believes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from tuf.api import exceptions as tuf_errors

from otacm.simulator.backoff import Backoff, BackoffPolicy
from otacm.simulator.download import (
    RETRYABLE_STATUSES,
    DownloadFailed,
    WrongLength,
    download_resumable,
)
from otacm.simulator.images import NoDataKey, check_image
from otacm.simulator.link import NetworkLink
from otacm.simulator.manifest import MAX_ATTACK_TEXT, MAX_ATTACKS, EcuReport, manifest_body
from otacm.simulator.provisioning import TrustedRoots, make_http, make_tuf_http
from otacm.simulator.records import ProvisioningRecord
from otacm.simulator.repositories import HttpxFetcher, TrustedRepository
from otacm.simulator.uptane import (
    AttackKind,
    EcuFacts,
    VerificationFailed,
    VerifiedImage,
    verify_offer,
)
from otacm.simulator.vehicle import (
    ConditionModel,
    Consent,
    DrivingPattern,
    Image,
    InstallBehaviour,
    OwnerBehaviour,
    VehicleState,
    unmet,
)
from otacm.simulator.wire import (
    INSTALLED,
    OFFERED,
    SETTLED,
    WORKING,
    Event,
    EventKind,
    MalformedAnswer,
    Offer,
    parse_offers,
    parse_poll_after,
)

# Our last word on a deployment attempt (`VehicleState.outcomes`).
ACCEPTED, POSTPONED = Consent.ACCEPT.value, Consent.POSTPONE.value
FAILED, ROLLED_BACK, DONE, ABANDONED = "failed", "rolled_back", "installed", "abandoned"
# Settled states that end our work; `timed_out` does not: the server still takes our outcome.
_GIVE_UP_ON = SETTLED - {"timed_out"}


class Phase(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    QUEUED = "waiting for a work slot"  # the simulated fleet's limit, not the server's
    DECIDING = "deciding"
    VERIFYING = "verifying"
    DOWNLOADING = "downloading"
    WAITING = "waiting for conditions"
    INSTALLING = "installing"
    OFFLINE = "offline"
    LOCKED_OUT = "locked out"
    STOPPED = "stopped"


@dataclass(slots=True)
class Tally:
    """What happened to one vehicle, counted by the vehicle."""

    polls: int = 0
    not_modified: int = 0  # polls answered 304: the offers known already
    accepted: int = 0
    postponed: int = 0
    declined: int = 0
    downloads: int = 0  # files downloaded and verified
    resumed_downloads: int = 0  # requests that continued a partial file
    installs: int = 0  # ECU images installed and running
    rollbacks: int = 0  # deployments whose install fell back
    failures: int = 0  # deployments reported `failed` (verification failures included)
    verification_failures: int = 0
    events_sent: int = 0  # events the server acknowledged
    events_resent: int = 0  # sends of an event that had left the vehicle before
    duplicates_acknowledged: int = 0  # events the server answered it already had
    manifests_sent: int = 0
    retries: int = 0  # requests tried again after a network or server error
    answers_lost: int = 0  # answers the simulated network dropped after the server had them
    errors: int = 0  # answers the client could not use
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How the simulated vehicle behaves and how patient its client is."""

    owner: OwnerBehaviour = OwnerBehaviour()
    install: InstallBehaviour = InstallBehaviour()
    driving: DrivingPattern = DrivingPattern()
    time_scale: float = 1.0  # real seconds per simulated second (0.01: an hour in 36 s)
    backoff: BackoffPolicy = BackoffPolicy(initial=1.0, maximum=60.0)  # real seconds
    default_poll_s: float = 300.0  # simulated seconds, for an answer without Poll-After
    condition_check_s: float = 60.0  # simulated seconds between looks at the preconditions
    precondition_patience_s: float = 6 * 3600.0  # simulated seconds before giving up
    interruption_rate: float = 0.0  # share of downloads whose connection breaks once midway
    download_tries: int = 50
    progress_events: int = 3  # download_progress events per deployment (at 1/4, 2/4, 3/4)
    language: str | None = None  # Accept-Language of the owner's screen
    min_pause_s: float = 0.005  # real seconds: a time-scaled loop never spins

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if not 0 <= self.interruption_rate <= 1:
            raise ValueError("interruption_rate is a probability between 0 and 1")


@dataclass(slots=True)
class SentEvent:
    """One deployment event as the vehicle knows it: how often it left the vehicle and
    whether an answer came back, so that a test can hold the server to exactly once."""

    deployment_id: int
    event_id: str
    event: str
    attempt: int
    sends: int = 0  # requests carrying it that left the vehicle (after a lost answer: > 1)
    acknowledged: bool = False  # the server answered 200 for it
    outcome: str = ""  # the server's word on it in that answer (applied, duplicate, …)


@dataclass(frozen=True, slots=True)
class VehicleReport:
    """One vehicle's ground truth and tally, at the moment it was asked for."""

    vin: str
    phase: str
    installed: dict[str, str]  # serial -> version the ECU runs
    images: dict[str, str | None]  # serial -> SHA-256 of the image it runs (None: as built)
    tally: Tally
    # Our last word per deployment attempt, "deployment_id/attempt" -> outcome (accept,
    # decline, installed, failed, rolled_back, abandoned, …): what the server should record.
    outcomes: dict[str, str] = field(default_factory=dict)
    events: tuple[SentEvent, ...] = ()  # every event sent, in order


class CredentialRefused(Exception):
    """The server refused the vehicle's credential (401): revoked or never issued."""


class _Stopped(Exception):
    """The simulation is stopping: unwind at the next wait."""


class _Abandon(Exception):
    """The server no longer wants this attempt worked on."""


class _JobFailed(Exception):
    """A failure that is not an attack: reported as `failed` with `code`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _attempt_key(offer: Offer) -> str:
    return f"{offer.deployment_id}/{offer.attempt}"


class VehicleClient:
    """One vehicle. `run()` until the `stop` event is set; `report()` at any time."""

    def __init__(
        self,
        record: ProvisioningRecord,
        *,
        base_url: str,
        work_dir: Path,
        roots: TrustedRoots,
        options: ClientOptions | None = None,
        http: httpx.AsyncClient | None = None,
        tuf_http: httpx.Client | None = None,
        download_http: httpx.AsyncClient | None = None,
        cpu_slots: asyncio.Semaphore | None = None,
        work_slots: asyncio.Semaphore | None = None,
        link: NetworkLink | None = None,
        rng: random.Random | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.record = record
        self.base_url = base_url.rstrip("/")
        self.work_dir = work_dir
        self.options = options or ClientOptions()
        # One stream of chance per behaviour, each seeded from `rng`: how often the client
        # happens to poll or retry (timing) never changes what the owner answers or whether
        # an install fails, so a seed gives the same fleet run after run.
        seeds = rng or random.Random()
        self._owner_rng, self._install_rng, self._road_rng, self._network_rng = (
            random.Random(seeds.getrandbits(64)) for _ in range(4)
        )
        self.link = link
        self.stop = stop or asyncio.Event()
        self.phase = Phase.STARTING
        self.tally = Tally()
        self._own_http = http is None
        self._http = http or make_http()
        self._own_tuf_http = tuf_http is None
        self._tuf_http = tuf_http or make_tuf_http()
        # Files come over their own connections: a download holds one while it reports its
        # progress through `_http`, and must never wait for a connection it is itself holding.
        self._own_download_http = download_http is None
        self._download_http = download_http or make_http()
        self._cpu = cpu_slots or asyncio.Semaphore(1)
        # Shared by a simulated fleet: how many of its vehicles act on an offer at once.
        self._work_slots = work_slots
        self._backoff = Backoff(self.options.backoff, self._network_rng)
        self._state_file = work_dir / "state.json"
        self.state = VehicleState.load(self._state_file, record)
        self._conditions = ConditionModel(self._road_rng, self.options.driving)
        self._conditions_at = time.monotonic()
        self._director = TrustedRepository(
            work_dir / "tuf" / "director",
            f"{self.base_url}/tuf/director/{record.vin}/",
            roots.director,
            HttpxFetcher(self._tuf_http, token=record.token, link=link),
        )
        self._image = TrustedRepository(
            work_dir / "tuf" / "image",
            f"{self.base_url}/tuf/image/",
            roots.image,
            HttpxFetcher(self._tuf_http, link=link),
        )
        self._etag: str | None = None
        self._offers: list[Offer] = []
        self._nudged: set[str] = set()  # attempts whose manifest was sent once more
        self._phase_before_outage = Phase.IDLE
        self.sent_events: list[SentEvent] = []

    # The loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Manifest, then poll and act until `stop` is set or the credential is refused."""
        try:
            await self.send_manifest()
            while True:
                self.phase = Phase.IDLE
                try:
                    wait = await self.poll_once()
                except (MalformedAnswer, ValueError) as exc:  # JSON we cannot read
                    self._error(f"unreadable answer: {exc}")
                    wait = self._backoff.next_delay()
                self.phase = Phase.IDLE
                await self._pause(wait)
        except _Stopped:
            self.phase = Phase.STOPPED
        except CredentialRefused as exc:
            self.phase = Phase.LOCKED_OUT
            self._error(str(exc))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()
        if self._own_tuf_http:
            self._tuf_http.close()
        if self._own_download_http:
            await self._download_http.aclose()

    async def poll_once(self) -> float:
        """One poll and the work it brings; the real seconds to wait before the next."""
        headers = {"If-None-Match": self._etag} if self._etag else {}
        if self.options.language:
            headers["Accept-Language"] = self.options.language
        answer = await self._request("GET", "/vehicle/v1/updates", headers=headers)
        self.tally.polls += 1
        self._advance_conditions()
        wait = parse_poll_after(answer.headers.get("poll-after"), self.options.default_poll_s)
        if answer.status_code == 204:
            self._offers, self._etag = [], None
        elif answer.status_code == 200:
            self._offers = parse_offers(answer.json())
            self._etag = answer.headers.get("etag")
        elif answer.status_code == 304:
            self.tally.not_modified += 1
        else:
            self._error(f"GET /vehicle/v1/updates: HTTP {answer.status_code}")
            return self._scaled(wait)
        for offer in self._offers:
            if await self._act_on(offer):
                return self.options.min_pause_s  # the offers have moved on: look again now
        return self._scaled(wait)

    async def _act_on(self, offer: Offer) -> bool:
        """Whatever this offer calls for now (the table in the module docstring); whether
        anything was done."""
        key = _attempt_key(offer)
        done = self.state.outcomes.get(key)
        action: Callable[[], Awaitable[None]]
        if offer.state == OFFERED and done in (None, POSTPONED):
            action = lambda: self._decide(offer)  # noqa: E731
        elif (offer.state == OFFERED or offer.state in WORKING) and done in (None, ACCEPTED):
            action = lambda: self._work(offer)  # noqa: E731
        elif offer.state == INSTALLED and done == DONE and key not in self._nudged:
            self._nudged.add(key)
            action = self.send_manifest
        elif offer.state == INSTALLED and done in (None, ACCEPTED):
            action = lambda: self._work(offer)  # noqa: E731  (a restart lost the job)
        else:
            return False
        try:
            if self._work_slots is None:
                await action()
            else:
                self.phase = Phase.QUEUED
                async with self._work_slots:
                    await action()
        except _Abandon as exc:
            self._record(key, ABANDONED)
            self.tally.last_error = f"deployment {offer.deployment_id}: {exc}"
            shutil.rmtree(self._downloads(offer), ignore_errors=True)
        return True

    async def _decide(self, offer: Offer) -> None:
        self.phase = Phase.DECIDING
        owner = self.options.owner
        choice = owner.decide(self._owner_rng) if offer.consent_required else Consent.ACCEPT
        # A "no" settles the deployment: that answer is expected, not a reason to give up.
        final = choice is Consent.DECLINE
        await self._report(offer, Event(EventKind(choice.value), offer.attempt), final=final)
        self._record(_attempt_key(offer), choice.value)
        if choice is Consent.ACCEPT:
            self.tally.accepted += 1
            await self._work(offer)
        elif choice is Consent.POSTPONE:
            self.tally.postponed += 1
        else:
            self.tally.declined += 1

    async def _work(self, offer: Offer) -> None:
        try:
            images = await self._verify(offer)
            self.phase = Phase.DOWNLOADING
            await self._report(offer, Event(EventKind.DOWNLOAD_STARTED, offer.attempt))
            total = sum(i.target.length for i in images)
            steps = self.options.progress_events
            # Progress of the whole deployment (all its files), reported at even fractions.
            marks = [total * (k + 1) // (steps + 1) for k in range(steps)]
            before = 0
            for image in images:
                await self._fetch(offer, image, before, total, marks)
                before += image.target.length
            await self._report(offer, Event(EventKind.DOWNLOAD_FINISHED, offer.attempt))
            await self._wait_for_conditions(offer)
            await self._install(offer, images)
        except VerificationFailed as refused:
            self.tally.verification_failures += 1
            attack = f"{refused.kind}: deployment {offer.deployment_id}: {refused.reason}"
            self.state.attacks.append(attack[:MAX_ATTACK_TEXT])
            await self._fail(offer, "verification_failed", refused.reason)
            await self.send_manifest()
        except _JobFailed as failure:
            await self._fail(offer, failure.code, failure.detail)
        shutil.rmtree(self._downloads(offer), ignore_errors=True)

    # Verification and download ---------------------------------------------------------

    async def _verify(self, offer: Offer) -> list[VerifiedImage]:
        """Both repositories refreshed (network errors retried), then `uptane.verify_offer`."""
        self.phase = Phase.VERIFYING
        paths = [step.target for step in offer.steps]
        while True:
            try:
                async with self._cpu:
                    director = await asyncio.to_thread(self._director.director_targets)
                    images = await asyncio.to_thread(self._image.image_targets, paths)
                break
            except (tuf_errors.RepositoryError, tuf_errors.DownloadLengthMismatchError) as exc:
                raise VerificationFailed(
                    AttackKind.INVALID_METADATA, f"{type(exc).__name__}: {exc}"
                ) from None
            except tuf_errors.DownloadError as exc:
                if isinstance(exc, tuf_errors.DownloadHTTPError) and exc.status_code == 401:
                    raise CredentialRefused(
                        "the director repository refused the credential"
                    ) from None
                self.tally.retries += 1
                self.tally.last_error = f"TUF refresh: {exc}"
                await self._pause(self._backoff.next_delay())
        self._backoff.reset()
        ecus = {
            serial: EcuFacts(serial, e.ecu_type, e.hardware_id, e.active.release_counter)
            for serial, e in self.state.ecus.items()
        }
        return verify_offer(
            offer, vin=self.record.vin, director=director, image_targets=images, ecus=ecus
        )

    async def _fetch(
        self, offer: Offer, image: VerifiedImage, before: int, total: int, marks: list[int]
    ) -> None:
        """Download one image (resumable), check it and open it if it is confidential.
        `before` bytes of the deployment's `total` came before this file; a
        `download_progress` event goes out as the bytes pass each of `marks`."""
        directory, _, name = image.target.path.rpartition("/")
        hashed = f"{directory}/{image.sha256}.{name}" if directory else f"{image.sha256}.{name}"
        destination = self._downloads(offer) / f"{image.sha256}.{name}"
        length = image.target.length
        interrupted = self._network_rng.random() < self.options.interruption_rate
        if self.link is not None and length > 1 and interrupted:
            self.link.cut_next_transfer(self._network_rng.randrange(1, length))

        async def progress(held: int) -> None:
            if marks and before + held >= marks[0]:
                while marks and before + held >= marks[0]:
                    marks.pop(0)
                detail = f"{before + held}/{total}"
                await self._report(
                    offer, Event(EventKind.DOWNLOAD_PROGRESS, offer.attempt, detail=detail)
                )

        try:
            stats = await download_resumable(
                self._download_http,
                f"{self.base_url}/tuf/image/targets/{hashed}",
                destination,
                length=length,
                backoff=Backoff(self.options.backoff, self._network_rng),
                max_tries=self.options.download_tries,
                link=self.link,
                on_progress=progress,
                sleep=self._pause,
            )
        except WrongLength as exc:
            raise VerificationFailed(AttackKind.TAMPERED_IMAGE, str(exc)) from None
        except DownloadFailed as exc:
            raise _JobFailed("download_failed", str(exc)) from None
        self.tally.resumed_downloads += stats.resumed
        self.tally.retries += stats.retries
        try:
            async with self._cpu:
                key = self.record.encryption_key
                await asyncio.to_thread(check_image, image, destination, key)
        except NoDataKey as exc:
            raise _JobFailed("no_decryption_key", str(exc)) from None
        finally:
            destination.unlink(missing_ok=True)  # checked or refused: a next try starts afresh
        self.tally.downloads += 1

    # Installing ------------------------------------------------------------------------

    def _advance_conditions(self) -> None:
        """Let the simulated car live for the simulated time since we last looked."""
        now = time.monotonic()
        elapsed = (now - self._conditions_at) / self.options.time_scale
        self._conditions_at = now
        self._conditions.advance(elapsed)

    async def _wait_for_conditions(self, offer: Offer) -> None:
        self.phase = Phase.WAITING
        started = time.monotonic()
        self._advance_conditions()
        while missing := unmet(offer.preconditions, self._conditions.now):
            waited = (time.monotonic() - started) / self.options.time_scale
            closes = offer.window_closes_at
            if closes is not None and datetime.now(UTC) >= closes:
                raise _JobFailed(
                    "precondition_timeout",
                    f"the maintenance window closed first: {', '.join(missing)}",
                )
            if waited >= self.options.precondition_patience_s:
                raise _JobFailed(
                    "precondition_timeout",
                    f"waited {waited / 60:.0f} min: {', '.join(missing)}",
                )
            await self._pause(self._scaled(self.options.condition_check_s))
            self._advance_conditions()

    async def _install(self, offer: Offer, images: list[VerifiedImage]) -> None:
        """Write to the inactive banks, switch, health-check; fall back on a failure."""
        self.phase = Phase.INSTALLING
        key = _attempt_key(offer)
        await self._report(offer, Event(EventKind.INSTALL_STARTED, offer.attempt))
        low, high = self.options.install.duration_s
        for _ in images:
            await self._pause(self._scaled(self._install_rng.uniform(low, high)))
        first_per_ecu = {i.step.ecu_serial: i for i in reversed(images)}
        switched = []
        for serial, image in first_per_ecu.items():
            ecu = self.state.ecus[serial]
            ecu.switch_to(Image(image.version, image.sha256, image.release_counter))
            switched.append(ecu)
        if self._install_rng.random() < self.options.install.failure_rate:
            broken = self._install_rng.choice(switched)
            detail = (
                f"ECU {broken.serial} did not come up on {broken.active.version}; "
                f"{len(switched)} ECU(s) fell back to their previous software"
            )
            for ecu in switched:
                ecu.fall_back()
            self._record(key, ROLLED_BACK)
            self.tally.rollbacks += 1
            event = Event(EventKind.ROLLED_BACK, offer.attempt, "health_check_failed", detail)
        else:
            self._record(key, DONE)
            self.tally.installs += len(switched)
            event = Event(EventKind.INSTALL_FINISHED, offer.attempt)
        await self._report(offer, event, final=True)
        await self.send_manifest()

    # Talking to the server ---------------------------------------------------------------

    async def send_manifest(self) -> None:
        """Report what every ECU runs, with the attacks not yet reported."""
        for _ in range(2):  # once more above the server's counter after a 409
            attacks = self.state.attacks[:MAX_ATTACKS]
            self.state.report_counter += 1
            self._save()  # a counter once used is never used again, even after a crash
            body = manifest_body(
                vin=self.record.vin,
                report_counter=self.state.report_counter,
                ecus=[
                    EcuReport(e.serial, e.active.version, e.active.sha256)
                    for e in self.state.ecus.values()
                ],
                attacks_detected=attacks,
                signing_key=self.record.signing_key,
            )
            answer = await self._request("PUT", "/vehicle/v1/manifest", json=body)
            if answer.status_code == 200:
                del self.state.attacks[: len(attacks)]
                self._save()
                self.tally.manifests_sent += 1
                return
            last = _json(answer).get("last_accepted")
            if answer.status_code != 409 or not isinstance(last, int):
                break
            self.state.report_counter = max(self.state.report_counter, last)
        self._error(f"manifest refused: HTTP {answer.status_code} {answer.text[:300]}")

    async def _report(self, offer: Offer, event: Event, *, final: bool = False) -> None:
        """Send one event. Raises _Abandon when the server says the attempt is over (unless
        this event is the one that ends it: `final`)."""
        path = f"/vehicle/v1/deployments/{offer.deployment_id}/events"
        sent = SentEvent(offer.deployment_id, event.event_id, event.event.value, event.attempt)
        self.sent_events.append(sent)

        def leaving() -> None:
            sent.sends += 1
            if sent.sends > 1:
                self.tally.events_resent += 1

        answer = await self._request(
            "POST", path, json={"events": [event.as_json()]}, on_send=leaving
        )
        if answer.status_code == 404:
            raise _Abandon("the server no longer knows the deployment")
        if answer.status_code != 200:
            self._error(f"{event.event} refused: HTTP {answer.status_code} {answer.text[:300]}")
            raise _Abandon(f"events refused with HTTP {answer.status_code}")
        self.tally.events_sent += 1
        sent.acknowledged = True
        body = _json(answer)
        for result in body.get("results", []):
            if result.get("event_id") == event.event_id:
                sent.outcome = str(result.get("outcome", ""))
            if result.get("outcome") == "duplicate":
                self.tally.duplicates_acknowledged += 1
            if result.get("outcome") == "stale_attempt":
                raise _Abandon(f"attempt {offer.attempt} is stale")
            if result.get("outcome") == "refused":
                self._error(f"{event.event} refused in state {result.get('state')}")
        if not final and body.get("state") in _GIVE_UP_ON:
            raise _Abandon(f"the deployment is {body.get('state')}")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """One request to the vehicle API, tried again (backoff) after network errors, 5xx
        and 429 until it gets another answer. Raises CredentialRefused on 401.

        `on_send` is called each time the request leaves the vehicle (not while offline):
        a try after a lost answer reaches a server that may have acted on it already."""
        auth = {"Authorization": f"Bearer {self.record.token}", **(headers or {})}
        while True:
            wait = 0.0
            try:
                if self.link is not None:
                    self.link.require()
                if on_send is not None:
                    on_send()
                answer = await self._http.request(
                    method, self.base_url + path, json=json, headers=auth
                )
                if self.link is not None and self.link.loses_answer():
                    self.tally.answers_lost += 1
                    raise httpx.ReadError("answer lost on the way back (simulated)")
            except httpx.TransportError as exc:
                if self.phase is not Phase.OFFLINE:
                    self._phase_before_outage, self.phase = self.phase, Phase.OFFLINE
                self.tally.last_error = f"{method} {path}: {type(exc).__name__}: {exc}"
            else:
                if self.phase is Phase.OFFLINE:
                    self.phase = self._phase_before_outage
                if answer.status_code == 401:
                    raise CredentialRefused(f"{method} {path}: the credential was refused")
                if answer.status_code not in RETRYABLE_STATUSES:
                    self._backoff.reset()
                    return answer
                self.tally.last_error = f"{method} {path}: HTTP {answer.status_code}"
                wait = parse_poll_after(answer.headers.get("retry-after"), 0.0)
            self.tally.retries += 1
            await self._pause(max(wait, self._backoff.next_delay()))

    # Small helpers -----------------------------------------------------------------------

    async def _fail(self, offer: Offer, code: str, detail: str) -> None:
        self.tally.failures += 1
        self._record(_attempt_key(offer), FAILED)
        event = Event(EventKind.FAILED, offer.attempt, code, detail[:2000])
        await self._report(offer, event, final=True)

    def _record(self, key: str, outcome: str) -> None:
        self.state.outcomes[key] = outcome
        self._save()

    def _save(self) -> None:
        self.state.save(self._state_file)

    def _downloads(self, offer: Offer) -> Path:
        return self.work_dir / "downloads" / f"{offer.deployment_id}-{offer.attempt}"

    def _error(self, message: str) -> None:
        self.tally.errors += 1
        self.tally.last_error = message

    def _scaled(self, simulated_seconds: float) -> float:
        return simulated_seconds * self.options.time_scale

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` (real), or raise _Stopped as soon as `stop` is set."""
        if self.stop.is_set():
            raise _Stopped
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(seconds, self.options.min_pause_s))
        if self.stop.is_set():
            raise _Stopped

    def report(self) -> VehicleReport:
        return VehicleReport(
            vin=self.record.vin,
            phase=self.phase.value,
            installed=self.state.installed(),
            images={serial: e.active.sha256 for serial, e in self.state.ecus.items()},
            tally=replace(self.tally),
            outcomes=dict(self.state.outcomes),
            events=tuple(replace(e) for e in self.sent_events),
        )


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


__all__ = [
    "ClientOptions",
    "CredentialRefused",
    "Phase",
    "SentEvent",
    "Tally",
    "VehicleClient",
    "VehicleReport",
]
