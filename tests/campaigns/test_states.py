"""The deployment state machine: every (state, event) pair, the happy path, terminal states,
cancel and timeout semantics, and properties of random event sequences and populations."""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otacm.campaigns import states
from otacm.campaigns.states import (
    ACTIVE,
    COMMITTED,
    FINAL,
    RETRYABLE_FAILURES,
    SYSTEM_EVENTS,
    TERMINAL,
    TRANSITIONS,
    UNFINISHED,
    VEHICLE_EVENTS,
    DeploymentEvent,
    DeploymentState,
    IllegalTransition,
    apply,
    count_by_state,
    replay,
)
from otacm.errors import OtacmError

S = DeploymentState
E = DeploymentEvent

# --- the expectation table, written out by hand ---------------------------------------------
# A cell is the new state, "." for ignored, "x" for illegal (the legend of the module docstring).

EXPECTED_GRID = """
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
"""

EVENT_COLUMNS = {
    "offer": E.OFFER,
    "acc": E.ACCEPTED,
    "dec": E.DECLINED,
    "pos": E.POSTPONED,
    "dl+": E.DOWNLOAD_STARTED,
    "dl~": E.DOWNLOAD_PROGRESS,
    "dl=": E.DOWNLOAD_FINISHED,
    "in+": E.INSTALL_STARTED,
    "in=": E.INSTALL_FINISHED,
    "fail": E.FAILED,
    "rb": E.ROLLED_BACK,
    "man": E.MANIFEST_CONFIRMED,
    "tmo": E.TIMEOUT,
    "cncl": E.CANCEL,
    "exp": E.EXPIRE,
    "rtry": E.RETRY,
}
STATE_CODES = {
    "PEN": S.PENDING,
    "OFF": S.OFFERED,
    "PST": S.POSTPONED,
    "ACC": S.ACCEPTED,
    "DLG": S.DOWNLOADING,
    "DLD": S.DOWNLOADED,
    "ING": S.INSTALLING,
    "INS": S.INSTALLED,
    "SUC": S.SUCCEEDED,
    "DEC": S.DECLINED,
    "FAI": S.FAILED,
    "TMO": S.TIMED_OUT,
    "RBK": S.ROLLED_BACK,
    "CAN": S.CANCELLED,
    "EXP": S.EXPIRED,
}
IGNORED, ILLEGAL = ".", "x"
Expected = DeploymentState | str  # a new state, IGNORED or ILLEGAL


def parse_grid(lines: list[str]) -> dict[tuple[DeploymentState, DeploymentEvent], Expected]:
    header, *rows = (line.split() for line in lines if line.strip())
    events = [EVENT_COLUMNS[name] for name in header]
    grid: dict[tuple[DeploymentState, DeploymentEvent], Expected] = {}
    for state_name, *cells in rows:
        assert len(cells) == len(events), state_name
        for event, cell in zip(events, cells, strict=True):
            key = (S(state_name), event)
            assert key not in grid, key
            grid[key] = cell if cell in (IGNORED, ILLEGAL) else STATE_CODES[cell]
    return grid


EXPECTED = parse_grid(EXPECTED_GRID.splitlines())
ALL_PAIRS = list(itertools.product(DeploymentState, DeploymentEvent))


def test_the_expectation_table_covers_every_pair_once() -> None:
    assert set(EVENT_COLUMNS.values()) == set(DeploymentEvent)
    assert set(STATE_CODES.values()) == set(DeploymentState)
    assert len(EXPECTED) == len(ALL_PAIRS) == 15 * 16
    assert set(EXPECTED) == set(ALL_PAIRS)


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda x: str(x))
def test_every_pair_has_its_expected_outcome(
    state: DeploymentState, event: DeploymentEvent
) -> None:
    expected = EXPECTED[state, event]
    if expected == ILLEGAL:
        with pytest.raises(IllegalTransition):
            apply(state, event)
        return
    transition = apply(state, event)
    assert (transition.before, transition.event) == (state, event)
    if expected == IGNORED:
        assert transition.ignored and not transition.applied
        assert transition.after is state
    else:
        assert transition.applied and not transition.ignored
        assert transition.after is expected


def test_the_transition_table_is_exactly_the_applied_cells() -> None:
    applied = {pair: cell for pair, cell in EXPECTED.items() if cell not in (IGNORED, ILLEGAL)}
    assert dict(TRANSITIONS) == applied
    assert len(TRANSITIONS) == 53
    assert all(before is not after for (before, _), after in TRANSITIONS.items())


def test_the_docstring_table_is_the_expectation_table() -> None:
    doc = states.__doc__
    assert doc is not None
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["offer", "acc"])
    assert parse_grid(lines[start : start + 1 + len(DeploymentState)]) == EXPECTED


# --- groups -----------------------------------------------------------------------------------


def test_groups() -> None:
    assert {S.ACCEPTED, S.DOWNLOADING, S.DOWNLOADED, S.INSTALLING, S.INSTALLED} == COMMITTED
    assert COMMITTED | {S.OFFERED, S.POSTPONED} == ACTIVE
    assert ACTIVE | {S.PENDING} == UNFINISHED
    assert {
        S.SUCCEEDED,
        S.DECLINED,
        S.FAILED,
        S.TIMED_OUT,
        S.ROLLED_BACK,
        S.CANCELLED,
        S.EXPIRED,
    } == TERMINAL
    assert {S.FAILED, S.TIMED_OUT, S.ROLLED_BACK} == RETRYABLE_FAILURES
    assert {S.SUCCEEDED, S.DECLINED, S.CANCELLED, S.EXPIRED} == FINAL
    assert set(DeploymentState) == UNFINISHED | TERMINAL
    assert not UNFINISHED & TERMINAL


def test_vehicle_and_system_events_split_the_events() -> None:
    assert {
        E.OFFER,
        E.MANIFEST_CONFIRMED,
        E.TIMEOUT,
        E.CANCEL,
        E.EXPIRE,
        E.RETRY,
    } == SYSTEM_EVENTS
    assert set(DeploymentEvent) == VEHICLE_EVENTS | SYSTEM_EVENTS
    assert not VEHICLE_EVENTS & SYSTEM_EVENTS


# --- the happy path and named cases -----------------------------------------------------------

HAPPY_RUN = [
    E.OFFER,
    E.ACCEPTED,
    E.DOWNLOAD_STARTED,
    E.DOWNLOAD_PROGRESS,
    E.DOWNLOAD_PROGRESS,
    E.DOWNLOAD_FINISHED,
    E.INSTALL_STARTED,
    E.INSTALL_FINISHED,
    E.MANIFEST_CONFIRMED,
]


def test_happy_path() -> None:
    assert list(replay(HAPPY_RUN)) == [
        S.OFFERED,
        S.ACCEPTED,
        S.DOWNLOADING,
        S.DOWNLOADING,
        S.DOWNLOADING,
        S.DOWNLOADED,
        S.INSTALLING,
        S.INSTALLED,
        S.SUCCEEDED,
    ]


def test_installed_event_alone_is_not_success() -> None:
    assert list(replay(HAPPY_RUN[:-1]))[-1] is S.INSTALLED
    assert apply(S.INSTALLED, E.INSTALL_FINISHED).ignored


def test_postponed_offer_is_offered_again() -> None:
    run = [E.OFFER, E.POSTPONED, E.OFFER, E.POSTPONED, E.ACCEPTED]
    assert list(replay(run)) == [S.OFFERED, S.POSTPONED, S.OFFERED, S.POSTPONED, S.ACCEPTED]


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.INSTALLING, E.DOWNLOAD_PROGRESS),
        (S.INSTALLING, E.DOWNLOAD_FINISHED),
        (S.SUCCEEDED, E.INSTALL_FINISHED),
        (S.ACCEPTED, E.POSTPONED),
        (S.DOWNLOADING, E.OFFER),
        (S.FAILED, E.INSTALL_FINISHED),
    ],
)
def test_late_events_are_acknowledged_not_applied(
    state: DeploymentState, event: DeploymentEvent
) -> None:
    transition = apply(state, event)
    assert transition.ignored and transition.after is state


def test_illegal_transition_is_a_409_naming_state_and_event() -> None:
    with pytest.raises(IllegalTransition) as caught:
        apply(S.PENDING, E.INSTALL_FINISHED)
    error = caught.value
    assert isinstance(error, OtacmError)
    assert (error.status_code, error.code) == (409, "illegal_transition")
    assert (error.state, error.event) == (S.PENDING, E.INSTALL_FINISHED)
    assert "pending" in error.detail and "install_finished" in error.detail
    assert error.to_dict() == {
        "error": "illegal_transition",
        "detail": error.detail,
        "state": "pending",
        "event": "install_finished",
    }


@pytest.mark.parametrize("event", sorted(VEHICLE_EVENTS))
def test_no_vehicle_event_is_legal_before_the_offer(event: DeploymentEvent) -> None:
    with pytest.raises(IllegalTransition):
        apply(S.PENDING, event)


@pytest.mark.parametrize("state", [S.OFFERED, S.POSTPONED])
def test_no_download_or_install_before_consent(state: DeploymentState) -> None:
    for event in (E.DOWNLOAD_STARTED, E.DOWNLOAD_FINISHED, E.INSTALL_FINISHED, E.ROLLED_BACK):
        with pytest.raises(IllegalTransition):
            apply(state, event)


def test_cancel_before_consent_applies_and_after_consent_lets_the_vehicle_finish() -> None:
    for state in (S.PENDING, S.OFFERED, S.POSTPONED):
        assert apply(state, E.CANCEL).after is S.CANCELLED
        assert apply(state, E.EXPIRE).after is S.EXPIRED
    for state in COMMITTED:
        assert apply(state, E.CANCEL).ignored
        assert apply(state, E.EXPIRE).ignored
    # A cancelled campaign's vehicle mid-install still finishes and reports.
    run = [E.OFFER, E.ACCEPTED, E.INSTALL_STARTED, E.CANCEL, E.INSTALL_FINISHED]
    run += [E.MANIFEST_CONFIRMED]
    assert list(replay(run))[-1] is S.SUCCEEDED


def test_timeout_applies_to_active_deployments_except_a_postponed_one() -> None:
    for state in ACTIVE - {S.POSTPONED}:
        assert apply(state, E.TIMEOUT).after is S.TIMED_OUT
    assert apply(S.POSTPONED, E.TIMEOUT).ignored
    assert apply(S.PENDING, E.TIMEOUT).ignored


def test_a_timed_out_vehicle_still_has_the_last_word() -> None:
    assert apply(S.TIMED_OUT, E.MANIFEST_CONFIRMED).after is S.SUCCEEDED
    assert apply(S.TIMED_OUT, E.FAILED).after is S.FAILED
    assert apply(S.TIMED_OUT, E.ROLLED_BACK).after is S.ROLLED_BACK
    assert apply(S.TIMED_OUT, E.INSTALL_FINISHED).ignored


def test_retry_starts_a_new_attempt_from_pending() -> None:
    for state in RETRYABLE_FAILURES:
        transition = apply(state, E.RETRY)
        assert transition.after is S.PENDING and transition.starts_attempt
    assert not apply(S.PENDING, E.RETRY).starts_attempt
    assert not apply(S.OFFERED, E.ACCEPTED).starts_attempt
    run = [E.OFFER, E.ACCEPTED, E.FAILED, E.RETRY, E.OFFER, E.ACCEPTED, E.INSTALL_FINISHED]
    assert list(replay(run)) == [
        S.OFFERED,
        S.ACCEPTED,
        S.FAILED,
        S.PENDING,
        S.OFFERED,
        S.ACCEPTED,
        S.INSTALLED,
    ]


# --- terminal states --------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_never_move_forward_again(state: DeploymentState) -> None:
    for event in DeploymentEvent:
        try:
            transition = apply(state, event)
        except IllegalTransition:
            assert event is E.RETRY and state in FINAL
            continue
        # Nothing brings a terminal deployment back into flight; retry starts over at pending.
        assert transition.after not in ACTIVE
        if transition.applied and event is not E.RETRY:
            # Only a timed-out deployment takes the vehicle's late final word.
            assert state is S.TIMED_OUT and transition.after in TERMINAL


@pytest.mark.parametrize("state", sorted(FINAL))
def test_final_states_take_nothing(state: DeploymentState) -> None:
    for event in set(DeploymentEvent) - {E.RETRY}:
        assert apply(state, event).ignored
    with pytest.raises(IllegalTransition):
        apply(state, E.RETRY)


# --- properties -------------------------------------------------------------------------------

# The happy path's order, as the test sees it; postponed waits beside offered.
PATH_RANK = {
    S.PENDING: 0,
    S.OFFERED: 1,
    S.POSTPONED: 1,
    S.ACCEPTED: 2,
    S.DOWNLOADING: 3,
    S.DOWNLOADED: 4,
    S.INSTALLING: 5,
    S.INSTALLED: 6,
    S.SUCCEEDED: 7,
}
OUTCOMES = set(DeploymentState) - set(PATH_RANK)

events = st.sampled_from(list(DeploymentEvent))
event_runs = st.lists(events, max_size=40)


def steps(
    run: list[DeploymentEvent],
) -> list[tuple[DeploymentState, DeploymentEvent, DeploymentState]]:
    """(before, event, after) for each event of `run` replayed from pending."""
    befores = [S.PENDING, *replay(run)]
    return list(zip(befores[:-1], run, befores[1:], strict=True))


@given(event_runs)
def test_random_runs_never_move_backwards(run: list[DeploymentEvent]) -> None:
    for before, event, after in steps(run):
        if after is before:
            continue
        if event is E.RETRY:
            assert before in RETRYABLE_FAILURES and after is S.PENDING
        elif before in PATH_RANK and after in PATH_RANK:
            assert PATH_RANK[after] >= PATH_RANK[before]
            assert before is not S.SUCCEEDED
        elif before in OUTCOMES:
            # Off the path only the vehicle's last word after a timeout moves a deployment.
            assert before is S.TIMED_OUT
            assert after in {S.FAILED, S.ROLLED_BACK, S.SUCCEEDED}
        else:
            assert after in OUTCOMES  # leaving the path for an outcome (rolled_back included)


@given(event_runs)
def test_replay_keeps_the_state_on_illegal_events(run: list[DeploymentEvent]) -> None:
    state = S.PENDING
    for event, replayed in zip(run, replay(run), strict=True):
        with contextlib.suppress(IllegalTransition):
            state = apply(state, event).after
        assert replayed is state


@given(event_runs, events)
def test_a_repeated_event_is_idempotent(run: list[DeploymentEvent], event: DeploymentEvent) -> None:
    state = list(replay(run))[-1] if run else S.PENDING
    try:
        first = apply(state, event)
    except IllegalTransition:
        return
    second = apply(first.after, event)
    assert second.ignored and second.after is first.after


@given(st.lists(st.sampled_from(HAPPY_RUN), max_size=len(HAPPY_RUN)), st.data())
def test_duplicated_deliveries_end_where_the_clean_run_ends(
    subset: list[DeploymentEvent], data: st.DataObject
) -> None:
    clean = [event for event in HAPPY_RUN if event in subset]
    repeats = data.draw(st.lists(st.integers(1, 4), min_size=len(clean), max_size=len(clean)))
    noisy = [event for event, n in zip(clean, repeats, strict=True) for _ in range(n)]
    assert list(replay(noisy))[-1:] == list(replay(clean))[-1:]


REPORT_TARGETS = {
    E.DOWNLOAD_STARTED: S.DOWNLOADING,
    E.DOWNLOAD_PROGRESS: S.DOWNLOADING,
    E.DOWNLOAD_FINISHED: S.DOWNLOADED,
    E.INSTALL_STARTED: S.INSTALLING,
    E.INSTALL_FINISHED: S.INSTALLED,
}


@given(st.lists(st.sampled_from(list(REPORT_TARGETS)), min_size=1, max_size=20))
def test_reports_after_consent_in_any_order_reach_the_furthest_step(
    delivered: list[DeploymentEvent],
) -> None:
    consented = [E.OFFER, E.ACCEPTED]
    furthest = max((REPORT_TARGETS[e] for e in delivered), key=PATH_RANK.__getitem__)
    assert list(replay([*consented, *delivered]))[-1] is furthest
    confirmed = [*consented, *delivered, E.MANIFEST_CONFIRMED]
    assert list(replay(confirmed))[-1] is S.SUCCEEDED


@given(st.lists(event_runs, min_size=1, max_size=30))
def test_final_counts_add_up_to_the_population(runs: list[list[DeploymentEvent]]) -> None:
    finals = [list(replay(run))[-1] if run else S.PENDING for run in runs]
    counts = count_by_state(finals)
    assert list(counts) == list(DeploymentState)
    assert sum(counts.values()) == len(runs)
    assert {s: n for s, n in counts.items() if n} == Counter(finals)


@given(
    st.integers(min_value=1, max_value=20).flatmap(
        lambda size: st.tuples(
            st.just(size),
            st.lists(st.tuples(st.integers(0, size - 1), events), max_size=200),
        )
    )
)
def test_counts_kept_per_transition_always_add_up(
    population: tuple[int, list[tuple[int, DeploymentEvent]]],
) -> None:
    """What the campaign's counters do: one down for the old state, one up for the new."""
    size, deliveries = population
    deployments = [S.PENDING] * size
    counts = count_by_state(deployments)
    for index, event in deliveries:
        try:
            transition = apply(deployments[index], event)
        except IllegalTransition:
            continue
        if transition.applied:
            counts[transition.before] -= 1
            counts[transition.after] += 1
            deployments[index] = transition.after
        assert sum(counts.values()) == size
        assert min(counts.values()) >= 0
        assert counts == count_by_state(deployments)
