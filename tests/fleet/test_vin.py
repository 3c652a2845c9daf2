"""ISO 3779 VINs: normalisation, alphabet, check digit and the check-digit policy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otacm.config import VinCheckDigitPolicy
from otacm.fleet.vin import VIN_LENGTH, InvalidVin, check_digit, normalise_vin, with_check_digit

ALWAYS = VinCheckDigitPolicy.ALWAYS
NEVER = VinCheckDigitPolicy.NEVER
NORTH_AMERICA = VinCheckDigitPolicy.NORTH_AMERICA

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
CHECK_VALUES = "0123456789X"

# Real-world VINs whose 9th character is a correct ISO 3779 check digit.
KNOWN_VALID = [
    "1M8GDM9AXKP042788",  # the textbook example, check digit X
    "11111111111111111",
    "1HGCM82633A004352",
    "JH4KA7561PC008269",
]

vin_bodies = st.text(alphabet=VIN_ALPHABET, min_size=VIN_LENGTH, max_size=VIN_LENGTH)


# --- check digit on known examples ------------------------------------------------------------


@pytest.mark.parametrize("vin", KNOWN_VALID)
def test_known_valid_vins_have_the_right_check_digit(vin: str) -> None:
    assert check_digit(vin) == vin[8]
    for policy in VinCheckDigitPolicy:
        assert normalise_vin(vin, policy) == vin


def test_check_digit_x_for_remainder_ten() -> None:
    assert check_digit("1M8GDM9AXKP042788") == "X"


def test_check_digit_ignores_the_ninth_character() -> None:
    assert check_digit("1M8GDM9A0KP042788") == check_digit("1M8GDM9AXKP042788") == "X"


@pytest.mark.parametrize(
    "vin", ["1M8GDM9A0KP042788", "11111111211111111", "1HGCM82643A004352", "JH4KA7562PC008269"]
)
def test_wrong_check_digit_is_rejected_when_enforced(vin: str) -> None:
    with pytest.raises(InvalidVin, match="check digit"):
        normalise_vin(vin, ALWAYS)
    assert normalise_vin(vin, NEVER) == vin


# --- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "1m8gdm9axkp042788",
        "  1M8GDM9AXKP042788",
        "1M8GDM9AXKP042788\n",
        "\t1m8GdM9aXkP042788  ",
    ],
)
def test_normalisation_trims_and_upper_cases(raw: str) -> None:
    assert normalise_vin(raw, ALWAYS) == "1M8GDM9AXKP042788"


@pytest.mark.parametrize(
    "raw", ["", "1M8GDM9AXKP04278", "1M8GDM9AXKP0427881", "1M8 GDM9AXKP042788"]
)
def test_wrong_length_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidVin, match="17 characters"):
        normalise_vin(raw, NEVER)


def test_length_is_counted_after_trimming() -> None:
    with pytest.raises(InvalidVin, match="has 16"):
        normalise_vin("  1M8GDM9AXKP04278  ", NEVER)


@pytest.mark.parametrize("letter", ["I", "O", "Q", "i", "o", "q"])
def test_forbidden_letters_are_rejected(letter: str) -> None:
    raw = "1M8GDM9AXKP04278" + letter
    with pytest.raises(InvalidVin, match="outside the ISO 3779 alphabet") as exc:
        normalise_vin(raw, NEVER)
    assert letter.upper() in str(exc.value)


@pytest.mark.parametrize("char", ["-", "_", "*", "é", "\x00", "Ä"])
def test_other_characters_are_rejected(char: str) -> None:
    with pytest.raises(InvalidVin, match="outside the ISO 3779 alphabet"):
        normalise_vin("1M8GDM9AXKP04278" + char, NEVER)


@pytest.mark.parametrize("raw", ["WVWZZZ1KZ6W0000ß", "WVWZZZ1KZ6W00000ſ"])
def test_non_ascii_letters_are_not_folded_into_a_vin(raw: str) -> None:
    with pytest.raises(InvalidVin):
        normalise_vin(raw, NEVER)


# --- policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("first", "12345")
def test_north_america_enforces_for_first_character_1_to_5(first: str) -> None:
    good = with_check_digit(first + "M8GDM9A0KP042788")
    assert normalise_vin(good, NORTH_AMERICA) == good
    wrong = good[:8] + next(c for c in CHECK_VALUES if c != good[8]) + good[9:]
    with pytest.raises(InvalidVin, match="check digit"):
        normalise_vin(wrong, NORTH_AMERICA)


@pytest.mark.parametrize("first", "06789ABJKLSWYZ")
def test_north_america_does_not_enforce_elsewhere(first: str) -> None:
    body = first + "M8GDM9A0KP042788"
    wrong = body[:8] + next(c for c in CHECK_VALUES if c != check_digit(body)) + body[9:]
    assert normalise_vin(wrong, NORTH_AMERICA) == wrong
    with pytest.raises(InvalidVin, match="check digit"):
        normalise_vin(wrong, ALWAYS)


def test_european_vin_with_filler_in_position_nine() -> None:
    # The PRODUCT example: European makers often put a filler letter where the check digit is.
    vin = "WVWZZZ1KZ6W000001"
    assert normalise_vin(vin, NORTH_AMERICA) == vin
    assert normalise_vin(vin, NEVER) == vin
    with pytest.raises(InvalidVin, match="check digit 'Z' where '1' is expected"):
        normalise_vin(vin, ALWAYS)


def test_never_skips_the_check_digit_but_not_the_alphabet() -> None:
    assert normalise_vin("1M8GDM9A0KP042788", NEVER) == "1M8GDM9A0KP042788"
    with pytest.raises(InvalidVin):
        normalise_vin("1M8GDM9A0KP04278O", NEVER)
    with pytest.raises(InvalidVin):
        normalise_vin("1M8GDM9A0KP04278", NEVER)


def test_always_enforces_for_every_region() -> None:
    with pytest.raises(InvalidVin, match="check digit"):
        normalise_vin("JH4KA7560PC008269", ALWAYS)
    assert normalise_vin("JH4KA7560PC008269", NORTH_AMERICA) == "JH4KA7560PC008269"


# --- with_check_digit ---------------------------------------------------------------------


@pytest.mark.parametrize("vin", KNOWN_VALID)
def test_with_check_digit_round_trip(vin: str) -> None:
    assert with_check_digit(vin) == vin
    broken = vin[:8] + ("0" if vin[8] != "0" else "1") + vin[9:]
    assert with_check_digit(broken) == vin


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(vin_bodies)
def test_with_check_digit_always_yields_a_valid_vin(body: str) -> None:
    vin = with_check_digit(body)
    assert len(vin) == VIN_LENGTH
    assert vin[:8] == body[:8] and vin[9:] == body[9:]
    assert vin[8] in CHECK_VALUES
    for policy in VinCheckDigitPolicy:
        assert normalise_vin(vin, policy) == vin
    assert normalise_vin(f"  {vin.lower()} ", ALWAYS) == vin
    assert with_check_digit(vin) == vin


@settings(max_examples=300, deadline=None)
@given(vin_bodies, st.sampled_from(VIN_ALPHABET))
def test_any_other_ninth_character_fails_under_always(body: str, replacement: str) -> None:
    vin = with_check_digit(body)
    if replacement == vin[8]:
        replacement = next(c for c in VIN_ALPHABET if c != vin[8])
    changed = vin[:8] + replacement + vin[9:]
    with pytest.raises(InvalidVin, match="check digit"):
        normalise_vin(changed, ALWAYS)
    assert normalise_vin(changed, NEVER) == changed
    if vin[0] in "12345":
        with pytest.raises(InvalidVin):
            normalise_vin(changed, NORTH_AMERICA)
    else:
        assert normalise_vin(changed, NORTH_AMERICA) == changed


@settings(max_examples=500, deadline=None)
@given(st.text(), st.sampled_from(list(VinCheckDigitPolicy)))
def test_arbitrary_text_normalises_or_raises_invalid_vin(
    raw: str, policy: VinCheckDigitPolicy
) -> None:
    try:
        vin = normalise_vin(raw, policy)
    except InvalidVin as exc:
        assert str(exc)
        return
    assert len(vin) == VIN_LENGTH
    assert set(vin) <= set(VIN_ALPHABET)
    assert normalise_vin(vin, policy) == vin


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=VIN_ALPHABET + VIN_ALPHABET.lower() + "IOQioq -", min_size=15, max_size=19),
    st.sampled_from(list(VinCheckDigitPolicy)),
)
def test_near_vins_normalise_or_raise_invalid_vin(raw: str, policy: VinCheckDigitPolicy) -> None:
    try:
        vin = normalise_vin(raw, policy)
    except InvalidVin:
        return
    assert vin == raw.strip().upper()
    assert not set(vin) & set("IOQ")
