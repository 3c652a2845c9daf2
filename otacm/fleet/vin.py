"""Vehicle identification numbers (ISO 3779): normalisation, alphabet and check digit."""

from __future__ import annotations

import re

from otacm.config import VinCheckDigitPolicy

VIN_LENGTH = 17
# ISO 3779 leaves out I, O and Q, which read too much like 1 and 0.
_VIN_PATTERN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_TRANSLITERATION = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


class InvalidVin(ValueError):
    pass


def check_digit(vin: str) -> str:
    """The check digit position 9 must hold for this VIN (the 9th character itself is ignored)."""
    total = sum(_TRANSLITERATION[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
    remainder = total % 11
    return "X" if remainder == 10 else str(remainder)


def is_north_american(vin: str) -> bool:
    return vin[0] in "12345"


def normalise_vin(raw: str, policy: VinCheckDigitPolicy) -> str:
    """Trim and upper-case `raw`, then check it; raises InvalidVin naming what is wrong."""
    vin = raw.strip()
    # Upper-casing non-ASCII text can change its length ("ß" becomes "SS"): refuse it first.
    if not vin.isascii():
        raise InvalidVin(f"{vin[:40]!r} has characters outside the ISO 3779 alphabet")
    vin = vin.upper()
    if len(vin) != VIN_LENGTH:
        raise InvalidVin(f"a VIN has 17 characters, {vin!r} has {len(vin)}")
    if not _VIN_PATTERN.fullmatch(vin):
        bad = sorted({c for c in vin if c not in _TRANSLITERATION})
        raise InvalidVin(f"{vin!r} has characters outside the ISO 3779 alphabet: {''.join(bad)}")
    enforce = policy is VinCheckDigitPolicy.ALWAYS or (
        policy is VinCheckDigitPolicy.NORTH_AMERICA and is_north_american(vin)
    )
    if enforce and vin[8] != (expected := check_digit(vin)):
        raise InvalidVin(f"{vin!r} has check digit {vin[8]!r} where {expected!r} is expected")
    return vin


def with_check_digit(vin: str) -> str:
    """`vin` with position 9 set to its correct check digit."""
    return vin[:8] + check_digit(vin) + vin[9:]
