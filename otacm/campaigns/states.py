"""The deployment state machine: one vehicle in one campaign, from offer to confirmed software.

Pure: no database, no web. The vehicle API, the manifest handler and the rollout engine each
turn what happened into a `DeploymentEvent`, call `apply(state, event)` and store what it says.
Every (state, event) pair has exactly one of three outcomes:

- **applied** — the deployment moves to a new state (`TRANSITIONS`, the only table of moves);
- **ignored** — acknowledged, nothing changes: a duplicate, a late or out-of-order report whose
  step is already reflected, or news that arrives after the outcome is settled;
- **illegal** — `IllegalTransition` (409, `illegal_transition`) naming the state and the event:
  the event claims a step this deployment cannot have reached. The caller logs it; the state
  stays as it was.

A deployment never moves backwards. The two ways back are explicit: `retry` (a retryable
failure becomes `pending` again, as a new attempt) and `rolled_back` (the vehicle fell back to
its previous software).

## States

| state | meaning | group |
|---|---|---|
| pending | materialised in its wave, not yet sent to the vehicle | unfinished |
| offered | the vehicle can see the offer (`GET /vehicle/v1/updates`) | active |
| postponed | the owner said "later"; the engine offers again at the next chance | active |
| accepted | consent is on record (the owner's, or the campaign's rule) | active, committed |
| downloading, downloaded | fetching the images; all fetched and verified | active, committed |
| installing, installed | writing the images; written, not yet confirmed | active, committed |
| succeeded | the vehicle's version manifest shows the new software | terminal, final |
| declined | the owner refused: final for this campaign (see below) | terminal, final |
| cancelled, expired | the campaign was cancelled, or ended, before consent | terminal, final |
| failed | the vehicle reported a failure (with a code, stored beside) | terminal, retryable |
| rolled_back | the install failed; the vehicle is back on its old software | terminal, retryable |
| timed_out | the server stopped waiting on an active deployment | terminal, retryable |

`ACTIVE` (offered … installed, postponed included) is "in flight for its ECUs": the vehicle holds
the offer or is working on it, so no other campaign's deployment for the same ECU may be
offered. `UNFINISHED` is `pending` plus `ACTIVE`. `TERMINAL` is everything else: no report from
the vehicle brings one of them back into flight. `RETRYABLE_FAILURES` leave only by `retry`,
which the engine sends when the campaign's retry policy (attempts, failure kinds, backoff) says
so; when it does not, they stay as they are and count as failures. `timed_out` alone still takes
the vehicle's final word (`failed`, `rolled_back`, a confirming manifest): the timeout was the
server's guess, the report is the truth. `declined` is not retryable: the owner's "no" is
consent withheld, and an automatic retry would nag; asking again is an operator's decision, a
retry-failed child campaign with new deployments. `rolled_back` is: the vehicle is back on
working software, exactly where a new attempt starts; the retry policy decides by failure kind.

## Events

From the vehicle (`POST /vehicle/v1/deployments/{id}/events`, `VEHICLE_EVENTS`): `accepted`,
`declined`, `postponed`, `download_started`, `download_progress`, `download_finished`,
`install_started`, `install_finished`, `failed`, `rolled_back`. From the server
(`SYSTEM_EVENTS`, never accepted from a vehicle): `offer`, `manifest_confirmed` (the manifest
handler: the new image is installed), `timeout`, `cancel`, `expire`, `retry`.

## The table

Rows are states, columns events. A cell is the new state, `.` for ignored, `x` for illegal.

    events:  offer  acc accepted  dec declined  pos postponed  fail failed  rb rolled_back
             dl+ dl~ dl= download_started, download_progress, download_finished
             in+ in= install_started, install_finished  man manifest_confirmed
             tmo timeout  cncl cancel  exp expire  rtry retry
    states:  PEN pending  OFF offered  PST postponed  ACC accepted  DLG downloading
             DLD downloaded  ING installing  INS installed  SUC succeeded  DEC declined
             FAI failed  TMO timed_out  RBK rolled_back  CAN cancelled  EXP expired

                 offer acc  dec  pos  dl+  dl~  dl=  in+  in=  fail rb   man  tmo  cncl exp  rtry
    pending      OFF   x    x    x    x    x    x    x    x    x    x    x    .    CAN  EXP  .
    offered      .     ACC  DEC  PST  x    x    x    x    x    FAI  x    x    TMO  CAN  EXP  .
    postponed    OFF   ACC  DEC  .    x    x    x    x    x    FAI  x    x    .    CAN  EXP  .
    accepted     .     .    x    .    DLG  DLG  DLD  ING  INS  FAI  RBK  SUC  TMO  .    .    .
    downloading  .     .    x    .    .    .    DLD  ING  INS  FAI  RBK  SUC  TMO  .    .    .
    downloaded   .     .    x    .    .    .    .    ING  INS  FAI  RBK  SUC  TMO  .    .    .
    installing   .     .    x    .    .    .    .    .    INS  FAI  RBK  SUC  TMO  .    .    .
    installed    .     .    x    .    .    .    .    .    .    FAI  RBK  SUC  TMO  .    .    .
    succeeded    .     .    .    .    .    .    .    .    .    .    .    .    .    .    .    x
    declined     .     .    .    .    .    .    .    .    .    .    .    .    .    .    .    x
    failed       .     .    .    .    .    .    .    .    .    .    .    .    .    .    .    PEN
    timed_out    .     .    .    .    .    .    .    .    .    FAI  RBK  SUC  .    .    .    PEN
    rolled_back  .     .    .    .    .    .    .    .    .    .    .    .    .    .    .    PEN
    cancelled    .     .    .    .    .    .    .    .    .    .    .    .    .    .    .    x
    expired      .     .    .    .    .    .    .    .    .    .    .    .    .    .    .    x

## The rule for late versus illegal

`RANK` orders the happy path: pending 0, offered and postponed 1, accepted 2, downloading 3,
downloaded 4, installing 5, installed 6, succeeded 7. A *path event* pushes along it and has a
target there (`PATH_TARGETS`: offer → offered, postponed → postponed, accepted → accepted,
download_started and download_progress → downloading, download_finished → downloaded,
install_started → installing, install_finished → installed, manifest_confirmed → succeeded).
`apply` decides in this order:

1. The pair is in `TRANSITIONS`: applied.
2. The state is terminal: `retry` of a final state is illegal; anything else is ignored — news
   that arrives after the outcome (`install_finished` after `succeeded`, `cancel` after `failed`)
   is acknowledged and never applied.
3. A path event whose target ranks at or behind the current state is ignored: a duplicate or a
   late report (`download_progress` while installing, `postponed` after `accepted`). One whose
   target ranks ahead but is not in the table is illegal: it skips a step the deployment must
   see first — the offer (any vehicle event while pending) or consent (a download or install
   while offered or postponed: the vehicle sends `accepted`, and has it acknowledged, before it
   downloads, even when the campaign needs no owner consent). After consent, a later report
   stands for the earlier ones it implies, so a lost or overtaken `download_finished` does not
   stall a vehicle that reports `install_started`.
4. Standing no-ops, ignored: `cancel` and `expire` after consent (the vehicle finishes and
   reports, issue 6: a half-written ECU is worse than a finished update), `timeout` while pending
   or postponed (no clock runs: nothing was offered yet, or the owner chose to wait; the end time
   expires it), `retry` while unfinished (it is already running again). Anything else is illegal:
   `declined` after consent (to abort, the vehicle reports `failed` with a code), `failed` or any
   vehicle event while pending, `rolled_back` before consent.

The machine sees one attempt. Events carry the attempt they belong to, and the service drops
those of an earlier attempt before calling `apply`. A rollback campaign does not rewrite its
parent's deployments: they did succeed; the child campaign's own deployments record the way back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from otacm.errors import Conflict


class DeploymentState(StrEnum):
    PENDING = "pending"
    OFFERED = "offered"
    POSTPONED = "postponed"
    ACCEPTED = "accepted"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class DeploymentEvent(StrEnum):
    # From the vehicle.
    ACCEPTED = "accepted"
    DECLINED = "declined"
    POSTPONED = "postponed"
    DOWNLOAD_STARTED = "download_started"
    DOWNLOAD_PROGRESS = "download_progress"
    DOWNLOAD_FINISHED = "download_finished"
    INSTALL_STARTED = "install_started"
    INSTALL_FINISHED = "install_finished"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    # From the server.
    OFFER = "offer"
    MANIFEST_CONFIRMED = "manifest_confirmed"
    TIMEOUT = "timeout"
    CANCEL = "cancel"
    EXPIRE = "expire"
    RETRY = "retry"


_S = DeploymentState
_E = DeploymentEvent

VEHICLE_EVENTS = frozenset(
    {
        _E.ACCEPTED,
        _E.DECLINED,
        _E.POSTPONED,
        _E.DOWNLOAD_STARTED,
        _E.DOWNLOAD_PROGRESS,
        _E.DOWNLOAD_FINISHED,
        _E.INSTALL_STARTED,
        _E.INSTALL_FINISHED,
        _E.FAILED,
        _E.ROLLED_BACK,
    }
)
SYSTEM_EVENTS = frozenset(DeploymentEvent) - VEHICLE_EVENTS

# After consent: the vehicle is working and finishes on its own; cancel and expire leave it be.
COMMITTED = frozenset({_S.ACCEPTED, _S.DOWNLOADING, _S.DOWNLOADED, _S.INSTALLING, _S.INSTALLED})
# In flight for its ECUs: no other deployment for the same ECU may be offered meanwhile.
ACTIVE = frozenset({_S.OFFERED, _S.POSTPONED}) | COMMITTED
UNFINISHED = frozenset({_S.PENDING}) | ACTIVE
TERMINAL = frozenset(DeploymentState) - UNFINISHED
RETRYABLE_FAILURES = frozenset({_S.FAILED, _S.TIMED_OUT, _S.ROLLED_BACK})
# Nothing leaves these, not even retry.
FINAL = TERMINAL - RETRYABLE_FAILURES

RANK: Mapping[DeploymentState, int] = {
    _S.PENDING: 0,
    _S.OFFERED: 1,
    _S.POSTPONED: 1,
    _S.ACCEPTED: 2,
    _S.DOWNLOADING: 3,
    _S.DOWNLOADED: 4,
    _S.INSTALLING: 5,
    _S.INSTALLED: 6,
    _S.SUCCEEDED: 7,
}
PATH_TARGETS: Mapping[DeploymentEvent, DeploymentState] = {
    _E.OFFER: _S.OFFERED,
    _E.POSTPONED: _S.POSTPONED,
    _E.ACCEPTED: _S.ACCEPTED,
    _E.DOWNLOAD_STARTED: _S.DOWNLOADING,
    _E.DOWNLOAD_PROGRESS: _S.DOWNLOADING,
    _E.DOWNLOAD_FINISHED: _S.DOWNLOADED,
    _E.INSTALL_STARTED: _S.INSTALLING,
    _E.INSTALL_FINISHED: _S.INSTALLED,
    _E.MANIFEST_CONFIRMED: _S.SUCCEEDED,
}

# Every move there is; the table in the module docstring, row by row.
TRANSITIONS: Mapping[tuple[DeploymentState, DeploymentEvent], DeploymentState] = {
    (_S.PENDING, _E.OFFER): _S.OFFERED,
    (_S.PENDING, _E.CANCEL): _S.CANCELLED,
    (_S.PENDING, _E.EXPIRE): _S.EXPIRED,
    #
    (_S.OFFERED, _E.ACCEPTED): _S.ACCEPTED,
    (_S.OFFERED, _E.DECLINED): _S.DECLINED,
    (_S.OFFERED, _E.POSTPONED): _S.POSTPONED,
    (_S.OFFERED, _E.FAILED): _S.FAILED,
    (_S.OFFERED, _E.TIMEOUT): _S.TIMED_OUT,
    (_S.OFFERED, _E.CANCEL): _S.CANCELLED,
    (_S.OFFERED, _E.EXPIRE): _S.EXPIRED,
    #
    (_S.POSTPONED, _E.OFFER): _S.OFFERED,
    (_S.POSTPONED, _E.ACCEPTED): _S.ACCEPTED,
    (_S.POSTPONED, _E.DECLINED): _S.DECLINED,
    (_S.POSTPONED, _E.FAILED): _S.FAILED,
    (_S.POSTPONED, _E.CANCEL): _S.CANCELLED,
    (_S.POSTPONED, _E.EXPIRE): _S.EXPIRED,
    # After consent a later report stands for the earlier ones it implies.
    (_S.ACCEPTED, _E.DOWNLOAD_STARTED): _S.DOWNLOADING,
    (_S.ACCEPTED, _E.DOWNLOAD_PROGRESS): _S.DOWNLOADING,
    (_S.ACCEPTED, _E.DOWNLOAD_FINISHED): _S.DOWNLOADED,
    (_S.ACCEPTED, _E.INSTALL_STARTED): _S.INSTALLING,
    (_S.ACCEPTED, _E.INSTALL_FINISHED): _S.INSTALLED,
    (_S.ACCEPTED, _E.MANIFEST_CONFIRMED): _S.SUCCEEDED,
    (_S.ACCEPTED, _E.FAILED): _S.FAILED,
    (_S.ACCEPTED, _E.ROLLED_BACK): _S.ROLLED_BACK,
    (_S.ACCEPTED, _E.TIMEOUT): _S.TIMED_OUT,
    #
    (_S.DOWNLOADING, _E.DOWNLOAD_FINISHED): _S.DOWNLOADED,
    (_S.DOWNLOADING, _E.INSTALL_STARTED): _S.INSTALLING,
    (_S.DOWNLOADING, _E.INSTALL_FINISHED): _S.INSTALLED,
    (_S.DOWNLOADING, _E.MANIFEST_CONFIRMED): _S.SUCCEEDED,
    (_S.DOWNLOADING, _E.FAILED): _S.FAILED,
    (_S.DOWNLOADING, _E.ROLLED_BACK): _S.ROLLED_BACK,
    (_S.DOWNLOADING, _E.TIMEOUT): _S.TIMED_OUT,
    #
    (_S.DOWNLOADED, _E.INSTALL_STARTED): _S.INSTALLING,
    (_S.DOWNLOADED, _E.INSTALL_FINISHED): _S.INSTALLED,
    (_S.DOWNLOADED, _E.MANIFEST_CONFIRMED): _S.SUCCEEDED,
    (_S.DOWNLOADED, _E.FAILED): _S.FAILED,
    (_S.DOWNLOADED, _E.ROLLED_BACK): _S.ROLLED_BACK,
    (_S.DOWNLOADED, _E.TIMEOUT): _S.TIMED_OUT,
    #
    (_S.INSTALLING, _E.INSTALL_FINISHED): _S.INSTALLED,
    (_S.INSTALLING, _E.MANIFEST_CONFIRMED): _S.SUCCEEDED,
    (_S.INSTALLING, _E.FAILED): _S.FAILED,
    (_S.INSTALLING, _E.ROLLED_BACK): _S.ROLLED_BACK,
    (_S.INSTALLING, _E.TIMEOUT): _S.TIMED_OUT,
    # Succeeded only on the manifest's word, never on the vehicle's "installed" alone.
    (_S.INSTALLED, _E.MANIFEST_CONFIRMED): _S.SUCCEEDED,
    (_S.INSTALLED, _E.FAILED): _S.FAILED,
    (_S.INSTALLED, _E.ROLLED_BACK): _S.ROLLED_BACK,
    (_S.INSTALLED, _E.TIMEOUT): _S.TIMED_OUT,
    # The vehicle's final word overrules the server's guess.
    (_S.TIMED_OUT, _E.FAILED): _S.FAILED,
    (_S.TIMED_OUT, _E.ROLLED_BACK): _S.ROLLED_BACK,
    (_S.TIMED_OUT, _E.MANIFEST_CONFIRMED): _S.SUCCEEDED,
    #
    (_S.FAILED, _E.RETRY): _S.PENDING,
    (_S.TIMED_OUT, _E.RETRY): _S.PENDING,
    (_S.ROLLED_BACK, _E.RETRY): _S.PENDING,
}

# Rule 4 of the module docstring: events that are no news for these unfinished states.
_STANDING_NO_OPS: Mapping[DeploymentEvent, frozenset[DeploymentState]] = {
    _E.CANCEL: COMMITTED,
    _E.EXPIRE: COMMITTED,
    _E.TIMEOUT: frozenset({_S.PENDING, _S.POSTPONED}),
    _E.RETRY: UNFINISHED,
}


class IllegalTransition(Conflict):
    code = "illegal_transition"

    def __init__(self, state: DeploymentState, event: DeploymentEvent) -> None:
        super().__init__(
            f"deployment event {event.value!r} is not allowed while the deployment is "
            f"{state.value!r}",
            state=state.value,
            event=event.value,
        )
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True)
class Transition:
    """What `apply` decided: `after` is the new state, or `before` when the event is ignored."""

    before: DeploymentState
    event: DeploymentEvent
    after: DeploymentState
    applied: bool

    @property
    def ignored(self) -> bool:
        return not self.applied

    @property
    def starts_attempt(self) -> bool:
        """The service counts attempts with this: a retry that took effect."""
        return self.applied and self.event is _E.RETRY


def _decide(state: DeploymentState, event: DeploymentEvent) -> DeploymentState | None:
    """The new state, `state` itself when ignored, None when illegal: rules 1-4, in order."""
    target = TRANSITIONS.get((state, event))
    if target is not None:
        return target
    if state in TERMINAL:
        return None if event is _E.RETRY else state
    path_target = PATH_TARGETS.get(event)
    if path_target is not None:
        return state if RANK[path_target] <= RANK[state] else None
    return state if state in _STANDING_NO_OPS.get(event, frozenset()) else None


def apply(state: DeploymentState, event: DeploymentEvent) -> Transition:
    """Decide what `event` does to a deployment in `state` (see the module docstring).

    Raises:
        IllegalTransition: the event claims a step this deployment cannot have reached.
    """
    after = _decide(state, event)
    if after is None:
        raise IllegalTransition(state, event)
    return Transition(before=state, event=event, after=after, applied=after is not state)


def replay(
    events: Iterable[DeploymentEvent], start: DeploymentState = DeploymentState.PENDING
) -> Iterator[DeploymentState]:
    """The state after each event, as the service keeps it: an illegal event is refused (and
    logged there) and leaves the state where it was."""
    state = start
    for event in events:
        after = _decide(state, event)
        if after is not None:
            state = after
        yield state


def count_by_state(states: Iterable[DeploymentState]) -> dict[DeploymentState, int]:
    """Deployments per state, every state present (zero included), in the enum's order."""
    counts = dict.fromkeys(DeploymentState, 0)
    for state in states:
        counts[state] += 1
    return counts


def moved_by(event: DeploymentEvent) -> frozenset[DeploymentState]:
    """The states `event` moves a deployment out of (the rows of its column in the table)."""
    return frozenset(state for state, e in TRANSITIONS if e is event)
