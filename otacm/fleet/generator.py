"""Synthetic manufacturing exports of a vehicle fleet: deterministic, realistic and fast.

`generate_records` yields one JSON-shaped record per vehicle; `write_export` writes the same
fleet as JSON Lines or CSV (one row per ECU). The same (vehicles, seed, exported_at) always gives
byte-identical output, and the first N vehicles of a larger fleet are the fleet of N vehicles.

The catalogue (models, part numbers, software releases, calibrations) is fixed; the seed only
decides which vehicles are built. Every VIN carries a correct ISO 3779 check digit, and VINs,
engine numbers, chassis numbers and ECU serials are unique within a file: they come from
counters mixed by seed-keyed bijections, never from chance.

Speed: everything that depends only on (model, model year, fuel type, ECU type) is built once
into lookup tables holding preformatted CSV and JSON fragments, so a vehicle costs a few dozen
random draws and string concatenations.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

from otacm.fleet.parser import CSV_HEADER
from otacm.fleet.records import FuelType, Protocol, Region
from otacm.fleet.vin import with_check_digit

__all__ = ["DEFAULT_EXPORTED_AT", "FORMATS", "MAX_VEHICLES", "generate_records", "write_export"]

DEFAULT_EXPORTED_AT = datetime(2026, 1, 15, tzinfo=UTC)
FORMATS = ("jsonl", "csv")
# Bounded by the unique serial spaces: VIN positions 12-17 and 7-digit engine/chassis numbers.
MAX_VEHICLES = 10_000_000
MIN_ECUS, MAX_ECUS = 8, 15
PROGRESS_EVERY = 1000

_T = TypeVar("_T")

# ISO 3779: letters without I, O and Q; model-year codes repeat every 30 years from 1980 (A).
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
_ALNUM = "0123456789" + _LETTERS
_YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY123456789"
_FUEL_INDEX = {fuel: i for i, fuel in enumerate(FuelType)}
_VIN_FUEL_CODE = {
    FuelType.DIESEL: "D",
    FuelType.PETROL: "P",
    FuelType.ELECTRIC: "E",
    FuelType.HYBRID: "H",
    FuelType.PLUG_IN_HYBRID: "K",
    FuelType.HYDROGEN: "F",
    FuelType.CNG: "G",
    FuelType.LPG: "L",
}
_ELECTRIC_DRIVE = frozenset({FuelType.ELECTRIC, FuelType.HYDROGEN})

# Bits of randomness per table lookup: vehicle-level choices and per-ECU variants.
_VEHICLE_BITS = 10
_VARIANT_BITS = 8
_MASK48 = (1 << 48) - 1
# VIN positions 12-17: one alphanumeric then five digits; beyond that block one more letter.
_VIN_BLOCK1 = 33 * 10**5
_VIN_BLOCK2 = 33 * 23 * 10**4
_SERIAL7 = 10**7
# Vehicles are built on two shifts, 06:00-22:00 UTC.
_SHIFT_START, _SHIFT_SECONDS = 6 * 3600, 16 * 3600


def _year_code(year: int) -> str:
    return _YEAR_CODES[(year - 1980) % 30]


# --------------------------------------------------------------------------------------------
# Catalogue: markets, models and ECU types. Names and codes are invented.


@dataclass(frozen=True, slots=True)
class _Market:
    region: Region
    weight: float
    countries: tuple[tuple[str, float], ...]
    # (world manufacturer identifier, plant codes for VIN position 11)
    factories: tuple[tuple[str, str], ...]


_MARKETS = (
    _Market(
        Region.EU,
        24,
        (
            ("DE", 22),
            ("FR", 15),
            ("IT", 14),
            ("ES", 10),
            ("PL", 8),
            ("NL", 6),
            ("BE", 5),
            ("SE", 5),
            ("AT", 4),
            ("CZ", 4),
            ("PT", 3),
            ("IE", 2),
            ("DK", 2),
        ),
        (("WXA", "ABK"), ("WXB", "AK"), ("VR7", "FS"), ("ZH5", "MT")),
    ),
    _Market(
        Region.UK, 7, (("GB", 94), ("IM", 2), ("JE", 2), ("GG", 2)), (("SXL", "CH"), ("SB9", "W"))
    ),
    _Market(
        Region.NA,
        22,
        (("US", 80), ("CA", 14), ("MX", 6)),
        (("1X4", "DN"), ("4XG", "T"), ("5NX", "R"), ("3XV", "J")),
    ),
    _Market(
        Region.LATAM,
        5,
        (("BR", 45), ("AR", 15), ("CL", 12), ("CO", 12), ("PE", 8), ("UY", 4), ("EC", 4)),
        (("9X2", "BP"), ("8AX", "C")),
    ),
    _Market(Region.CN, 15, (("CN", 96), ("HK", 3), ("MO", 1)), (("LX6", "SGH"), ("LV9", "W"))),
    _Market(Region.JP, 6, (("JP", 100),), (("JX3", "KN"), ("JT9", "Y"))),
    _Market(Region.KR, 4, (("KR", 100),), (("KX5", "U"),)),
    _Market(Region.IN, 6, (("IN", 88), ("LK", 5), ("NP", 4), ("BD", 3)), (("MX7", "P"),)),
    _Market(
        Region.APAC,
        7,
        (
            ("AU", 35),
            ("TH", 18),
            ("ID", 14),
            ("MY", 10),
            ("NZ", 8),
            ("PH", 7),
            ("SG", 5),
            ("VN", 3),
        ),
        (("6X4", "G"), ("MPX", "R")),
    ),
    _Market(
        Region.MEA,
        4,
        (("ZA", 25), ("AE", 20), ("SA", 20), ("EG", 10), ("MA", 10), ("IL", 8), ("KE", 7)),
        (("AX9", "E"), ("NMX", "B")),
    ),
)

# How much more (or less) common a fuel type is in a market than in the model's base mix.
_FUEL_MARKET_FACTOR: dict[FuelType, dict[Region, float]] = {
    FuelType.DIESEL: {
        Region.EU: 1.3,
        Region.IN: 1.2,
        Region.NA: 0.3,
        Region.CN: 0.3,
        Region.JP: 0.4,
        Region.KR: 0.7,
    },
    FuelType.ELECTRIC: {
        Region.CN: 1.8,
        Region.EU: 1.3,
        Region.UK: 1.3,
        Region.IN: 0.5,
        Region.LATAM: 0.4,
        Region.MEA: 0.4,
        Region.APAC: 0.8,
    },
    FuelType.HYBRID: {Region.JP: 2.5, Region.KR: 1.3},
    FuelType.PLUG_IN_HYBRID: {Region.EU: 1.3, Region.CN: 1.5, Region.UK: 1.2},
    FuelType.CNG: {
        Region.IN: 3.0,
        Region.LATAM: 2.0,
        Region.EU: 1.2,
        Region.NA: 0.2,
        Region.UK: 0.3,
        Region.JP: 0.3,
        Region.CN: 0.8,
    },
    FuelType.LPG: {
        Region.EU: 1.5,
        Region.KR: 2.0,
        Region.MEA: 1.5,
        Region.NA: 0.1,
        Region.CN: 0.3,
        Region.JP: 0.5,
    },
}
# Electrified drives gain share with every model year, diesel loses it.
_FUEL_YEAR_TREND = {
    FuelType.ELECTRIC: 0.12,
    FuelType.HYBRID: 0.06,
    FuelType.PLUG_IN_HYBRID: 0.08,
    FuelType.DIESEL: -0.05,
}


@dataclass(frozen=True, slots=True)
class _Model:
    name: str
    vin_code: str  # VIN positions 4-5
    platform: str  # first three characters of the model family's part numbers
    chassis_code: str
    first_year: int
    last_year: int
    facelift_year: int
    weight: float
    fuels: tuple[tuple[FuelType, float], ...]
    bodies: tuple[tuple[str, float], ...]  # VIN position 6
    engines: dict[FuelType, tuple[str, ...]]
    can_fd_from: int  # first model year whose chassis ECUs talk CAN FD
    most_until: int  # last model year whose infotainment sits on MOST (0: never)
    flexray: bool  # chassis ECUs (EPS, ABS) on FlexRay
    markets: frozenset[Region] | None = None  # None: sold everywhere
    year_growth: float = 0.12  # production grows by this share per model year


_MODELS = (
    _Model(
        "Nordra",
        "ND",
        "3K0",
        "KA1",
        2019,
        2025,
        2022,
        26,
        (
            (FuelType.PETROL, 45),
            (FuelType.DIESEL, 20),
            (FuelType.HYBRID, 15),
            (FuelType.CNG, 8),
            (FuelType.LPG, 12),
        ),
        (("H", 80), ("W", 20)),
        {
            FuelType.PETROL: ("CZEA", "DKRB"),
            FuelType.DIESEL: ("DFGA",),
            FuelType.HYBRID: ("DGEA",),
            FuelType.CNG: ("CPWA",),
            FuelType.LPG: ("CHZL",),
        },
        can_fd_from=2023,
        most_until=2020,
        flexray=False,
    ),
    _Model(
        "Castellan",
        "CS",
        "5N4",
        "KB3",
        2019,
        2026,
        2023,
        22,
        (
            (FuelType.PETROL, 35),
            (FuelType.DIESEL, 25),
            (FuelType.HYBRID, 20),
            (FuelType.PLUG_IN_HYBRID, 15),
            (FuelType.LPG, 5),
        ),
        (("S", 70), ("W", 30)),
        {
            FuelType.PETROL: ("DNUA", "DPCA"),
            FuelType.DIESEL: ("DTTB", "DFCA"),
            FuelType.HYBRID: ("DHAA",),
            FuelType.PLUG_IN_HYBRID: ("DGXA",),
            FuelType.LPG: ("DNUL",),
        },
        can_fd_from=2022,
        most_until=2021,
        flexray=True,
    ),
    _Model(
        "Haulix",
        "HX",
        "7H2",
        "VC5",
        2019,
        2025,
        2021,
        12,
        (
            (FuelType.DIESEL, 55),
            (FuelType.PETROL, 10),
            (FuelType.CNG, 15),
            (FuelType.ELECTRIC, 15),
            (FuelType.LPG, 5),
        ),
        (("V", 60), ("B", 25), ("C", 15)),
        {
            FuelType.DIESEL: ("CXFA", "DRVB"),
            FuelType.PETROL: ("CJKA",),
            FuelType.CNG: ("CXGG",),
            FuelType.ELECTRIC: ("E3L",),
            FuelType.LPG: ("CJKL",),
        },
        can_fd_from=2024,
        most_until=0,
        flexray=False,
        year_growth=0.05,
    ),
    _Model(
        "Terravo",
        "TV",
        "4M8",
        "SD7",
        2020,
        2026,
        2024,
        20,
        (
            (FuelType.PETROL, 35),
            (FuelType.DIESEL, 27),
            (FuelType.HYBRID, 20),
            (FuelType.PLUG_IN_HYBRID, 18),
        ),
        (("U", 85), ("X", 15)),
        {
            FuelType.PETROL: ("DLZA", "DMSA"),
            FuelType.DIESEL: ("DTPA",),
            FuelType.HYBRID: ("DHMA",),
            FuelType.PLUG_IN_HYBRID: ("DGYA", "DGYB"),
        },
        can_fd_from=2022,
        most_until=2021,
        flexray=True,
    ),
    _Model(
        "Ionelle",
        "EL",
        "8E6",
        "EX2",
        2021,
        2026,
        2024,
        12,
        ((FuelType.ELECTRIC, 100),),
        (("X", 70), ("F", 30)),
        {FuelType.ELECTRIC: ("P2S", "P4D")},
        can_fd_from=2021,
        most_until=0,
        flexray=False,
        year_growth=0.3,
    ),
    _Model(
        "Hydreon",
        "HY",
        "9F1",
        "FC9",
        2022,
        2026,
        2025,
        4,
        ((FuelType.HYDROGEN, 100),),
        (("S", 100),),
        {FuelType.HYDROGEN: ("F1H",)},
        can_fd_from=2022,
        most_until=0,
        flexray=False,
        markets=frozenset({Region.JP, Region.KR, Region.EU, Region.NA, Region.CN}),
    ),
)


@dataclass(frozen=True, slots=True)
class _EcuType:
    name: str
    group: str  # part-number group: digits 4-6 of the hardware part number
    number: int  # base of digits 7-9
    calibrated: bool
    per_fuel: bool  # a different part (and calibration) per fuel type
    releases: tuple[str, ...]  # software releases, oldest first


# In the order a vehicle lists them; the optional ones last, most common first.
_ECU_TYPES = {
    e.name: e
    for e in (
        _EcuType("ECM", "906", 259, True, True, ("6.3.1", "6.4.0", "6.5.2", "6.8.0", "6.10.1")),
        _EcuType("TCM", "927", 158, True, True, ("3.0.4", "3.1.2", "3.2.0", "3.4.1")),
        _EcuType("BMS", "915", 591, True, True, ("2.5.0", "2.7.1", "2.9.0", "2.11.3", "3.0.0")),
        _EcuType("INVERTER", "060", 341, True, True, ("1.8.2", "1.9.0", "2.0.1", "2.1.0")),
        _EcuType("OBC", "050", 712, True, True, ("1.1.0", "1.2.2", "1.3.0")),
        _EcuType("FCCU", "131", 402, True, True, ("0.9.4", "1.0.1", "1.1.0")),
        _EcuType("ABS", "614", 517, True, False, ("2.1.0", "2.1.4", "2.3.0", "2.4.1")),
        _EcuType("EPS", "909", 144, True, False, ("2.0.5", "2.1.0", "2.2.3")),
        _EcuType("AIRBAG", "959", 655, True, False, ("1.4.0", "1.5.2", "1.6.0")),
        _EcuType("BCM", "937", 84, False, False, ("3.8.2", "3.9.0", "3.10.1", "3.12.0", "4.0.2")),
        _EcuType(
            "CLUSTER", "920", 320, False, False, ("5.0.3", "5.2.0", "5.4.1", "6.0.0", "6.1.2")
        ),
        _EcuType(
            "GATEWAY", "907", 530, False, False, ("7.2.0", "7.4.1", "7.10.0", "7.11.2", "8.0.0")
        ),
        _EcuType(
            "TCU", "051", 884, False, False, ("10.1.0", "10.4.2", "11.0.1", "11.2.0", "12.0.0")
        ),
        _EcuType(
            "IVI", "035", 820, False, False, ("21.4.1", "22.1.0", "22.9.3", "23.2.0", "24.1.5")
        ),
        _EcuType("HVAC", "820", 47, True, False, ("1.2.0", "1.3.1", "1.4.0")),
        _EcuType("ADAS", "980", 654, True, False, ("4.1.0", "4.2.3", "4.9.1", "4.10.0", "5.0.2")),
        _EcuType("PAM", "919", 298, False, False, ("3.3.0", "3.4.1", "3.5.0")),
        _EcuType("TPMS", "625", 760, False, False, ("1.0.2", "1.1.0")),
    )
}
_ECU_TYPE_INDEX = {name: i for i, name in enumerate(_ECU_TYPES)}
_ALWAYS = ("ABS", "EPS", "AIRBAG", "BCM", "CLUSTER", "GATEWAY", "TCU")
_COMBUSTION = ("ECM", "TCM")
_POWERTRAIN: dict[FuelType, tuple[str, ...]] = {
    FuelType.DIESEL: _COMBUSTION,
    FuelType.PETROL: _COMBUSTION,
    FuelType.CNG: _COMBUSTION,
    FuelType.LPG: _COMBUSTION,
    FuelType.HYBRID: (*_COMBUSTION, "BMS", "INVERTER"),
    FuelType.PLUG_IN_HYBRID: (*_COMBUSTION, "BMS", "INVERTER", "OBC"),
    FuelType.ELECTRIC: ("BMS", "INVERTER", "OBC"),
    FuelType.HYDROGEN: ("BMS", "INVERTER", "FCCU"),
}
_OPTIONAL = ("IVI", "HVAC", "ADAS", "PAM", "TPMS")
# Hardware revisions of a part, oldest first; a part uses one of these ladders.
_REVISION_LADDERS = (
    ("A1", "B1"),
    ("A1", "A2", "B1"),
    ("A1", "B1", "B2", "C1"),
    ("B1", "B2", "C1"),
    ("A2", "B1", "C1", "C2"),
    ("A1", "A2"),
)
_FIRST_RELEASE_YEAR, _LAST_RELEASE_YEAR = 2019, 2026


def _optional_share(ecu: str, model: _Model, year: int) -> float:
    """The share of this model year's vehicles fitted with the optional ECU `ecu`."""
    commercial = model.name == "Haulix"
    if ecu == "IVI":
        return 0.6 if commercial else 0.92
    if ecu == "HVAC":
        return 0.8 if commercial else 0.96
    if ecu == "ADAS":
        electric = model.fuels[0][0] in _ELECTRIC_DRIVE
        return min(0.95, 0.2 + 0.08 * (year - 2019) + (0.15 if electric else 0.0))
    if ecu == "PAM":
        return 0.15 if commercial else 0.3
    return 0.2  # TPMS


def _protocol(ecu: str, model: _Model, year: int) -> Protocol:
    if ecu in ("GATEWAY", "TCU", "ADAS"):
        return Protocol.ETHERNET
    if ecu == "IVI":
        return Protocol.MOST if year <= model.most_until else Protocol.ETHERNET
    if ecu in ("HVAC", "TPMS"):
        return Protocol.LIN
    if ecu in ("BMS", "INVERTER", "FCCU"):
        return Protocol.CAN_FD
    if ecu == "OBC":
        return Protocol.CAN
    if ecu in ("EPS", "ABS") and model.flexray:
        return Protocol.FLEXRAY
    return Protocol.CAN_FD if year >= model.can_fd_from else Protocol.CAN


# --------------------------------------------------------------------------------------------
# Lookup tables.


def _table(weighted: Sequence[tuple[_T, float]], bits: int) -> list[_T]:
    """A list of 2**bits entries where each item with a positive weight fills its share.

    Indexing it with `getrandbits(bits)` draws an item; every item gets at least one entry.
    """
    items = [(item, float(w)) for item, w in weighted if w > 0]
    size = 1 << bits
    if not items or len(items) > size:
        raise ValueError(f"cannot spread {len(items)} items over {size} entries")
    total = sum(w for _, w in items)
    exact = [w * size / total for _, w in items]
    counts = [max(1, int(e)) for e in exact]
    while sum(counts) > size:
        counts[counts.index(max(counts))] -= 1
    by_remainder = sorted(range(len(items)), key=lambda i: (counts[i] - exact[i], i))
    missing = size - sum(counts)
    for i in by_remainder[:missing]:
        counts[i] += 1
    table: list[_T] = []
    for (item, _), count in zip(items, counts, strict=True):
        table.extend([item] * count)
    return table


@dataclass(frozen=True, slots=True)
class _Variant:
    """One way an ECU type is fitted: its part, revisions, protocol, software and calibration."""

    ecu_type: str
    serial_prefix: str
    hardware_part_number: str
    hardware_version: str
    protocol: str
    software_part_number: str
    software_version: str
    calibration_id: str | None
    csv_head: str  # "ecu_type,ecu_serial prefix"; the row goes on with the serial digits
    csv_tail: str  # ",hardware_part_number,...,calibration_id\n"
    json_head: str
    json_tail: str


def _variant(
    ecu: str,
    hw_pn: str,
    hw_version: str,
    protocol: str,
    sw_pn: str,
    sw_version: str,
    calibration: str | None,
) -> _Variant:
    prefix = f"{ecu}-"
    json_calibration = "null" if calibration is None else f'"{calibration}"'
    return _Variant(
        ecu,
        prefix,
        hw_pn,
        hw_version,
        protocol,
        sw_pn,
        sw_version,
        calibration,
        csv_head=f"{ecu},{prefix}",
        csv_tail=f",{hw_pn},{hw_version},{protocol},{sw_pn},{sw_version},{calibration or ''}\n",
        json_head=f'{{"ecu_type":"{ecu}","serial":"{prefix}',
        json_tail=(
            f'","hardware_part_number":"{hw_pn}","hardware_version":"{hw_version}",'
            f'"protocol":"{protocol}","software_part_number":"{sw_pn}",'
            f'"software_version":"{sw_version}","calibration_id":{json_calibration}}}'
        ),
    )


def _newest_weighted(intros: Sequence[int], year: int, keep: int) -> list[tuple[int, float]]:
    """(index, weight) of the items introduced by `year`: the newest `keep`, newer ones likelier."""
    eligible = [i for i, intro in enumerate(intros) if intro <= year] or [0]
    eligible = eligible[-keep:]
    return [(i, float(2**rank)) for rank, i in enumerate(eligible)]


def _variant_table(ecu_name: str, model_index: int, year: int, fuel: FuelType) -> list[_Variant]:
    ecu = _ECU_TYPES[ecu_name]
    model = _MODELS[model_index]
    facelift = year >= model.facelift_year
    fuel_index = _FUEL_INDEX[fuel] if ecu.per_fuel else 0
    number = ecu.number + 4 * fuel_index + int(facelift)
    hw_pn = f"{model.platform}{ecu.group}{number:03d}"
    # The part is built from its first model year to its last; its revisions follow in between.
    start = model.facelift_year if facelift else model.first_year
    end = model.last_year if facelift else model.facelift_year - 1
    ladder = _REVISION_LADDERS[zlib.crc32(hw_pn.encode()) % len(_REVISION_LADDERS)]
    span = end - start + 1
    revision_intros = [start + i * span // len(ladder) for i in range(len(ladder))]
    revisions = _newest_weighted(revision_intros, year, keep=3)
    releases = ecu.releases
    release_span = _LAST_RELEASE_YEAR - _FIRST_RELEASE_YEAR + 1
    release_intros = [
        _FIRST_RELEASE_YEAR + i * release_span // len(releases) for i in range(len(releases))
    ]
    softwares = _newest_weighted(release_intros, year, keep=3)
    protocol = _protocol(ecu_name, model, year).value
    weighted: list[tuple[_Variant, float]] = []
    for revision, revision_weight in revisions:
        for release, release_weight in softwares:
            sw_pn = hw_pn + _LETTERS[int(facelift)] + _LETTERS[release]
            calibration = None
            if ecu.calibrated:
                serial = (
                    (
                        (model_index * len(_FUEL_INDEX) + fuel_index) * len(_ECU_TYPES)
                        + _ECU_TYPE_INDEX[ecu_name]
                    )
                    * 8
                    + release
                    + 1
                )
                calibration = f"CAL-{serial:04d}"
            variant = _variant(
                ecu_name, hw_pn, ladder[revision], protocol, sw_pn, releases[release], calibration
            )
            weighted.append((variant, revision_weight * release_weight))
    return _table(weighted, _VARIANT_BITS)


@dataclass(frozen=True, slots=True)
class _Profile:
    """The ECUs of one (model, model year, fuel type): fitted always, or with some share."""

    fitted: tuple[list[_Variant], ...]
    optional: tuple[tuple[float, list[_Variant]], ...]


_PROFILES: dict[tuple[int, int, FuelType], _Profile] = {}


def _profile(model_index: int, year: int, fuel: FuelType) -> _Profile:
    key = (model_index, year, fuel)
    profile = _PROFILES.get(key)
    if profile is None:
        model = _MODELS[model_index]
        fitted_names = set(_ALWAYS) | set(_POWERTRAIN[fuel])
        fitted = tuple(
            _variant_table(name, model_index, year, fuel)
            for name in _ECU_TYPES
            if name in fitted_names
        )
        if not MIN_ECUS <= len(fitted) <= MAX_ECUS:
            raise AssertionError(f"{len(fitted)} ECUs always fitted to {key}")
        optional = tuple(
            (_optional_share(name, model, year), _variant_table(name, model_index, year, fuel))
            for name in _OPTIONAL
        )
        profile = _PROFILES[key] = _Profile(fitted, optional)
    return profile


@dataclass(slots=True)
class _Plan:
    """The vehicle-level lookup tables for one export time."""

    exported_at: str
    regions: list[_Market]
    countries: dict[Region, list[str]]
    factories: dict[Region, list[tuple[str, str]]]
    models: dict[Region, list[int]]
    # Per model: model year and the start (epoch seconds) and length in days of its production.
    years: dict[int, list[tuple[int, int, int]]]
    bodies: dict[int, list[str]]
    fuels: dict[tuple[int, int, Region], list[FuelType]] = field(default_factory=dict)

    def fuel_table(self, model_index: int, year: int, region: Region) -> list[FuelType]:
        key = (model_index, year, region)
        table = self.fuels.get(key)
        if table is None:
            model = _MODELS[model_index]
            weighted = [
                (
                    fuel,
                    weight
                    * _FUEL_MARKET_FACTOR.get(fuel, {}).get(region, 1.0)
                    * max(0.1, 1 + _FUEL_YEAR_TREND.get(fuel, 0.0) * (year - 2019)),
                )
                for fuel, weight in model.fuels
            ]
            table = self.fuels[key] = _table(weighted, _VEHICLE_BITS)
        return table


def _plan(exported_at: datetime) -> _Plan:
    """Model year m is built from 1 July of m-1 to 30 June of m, up to the day before export."""
    last_day = datetime(exported_at.year, exported_at.month, exported_at.day, tzinfo=UTC)
    years: dict[int, list[tuple[int, int, int]]] = {}
    model_weight: dict[int, float] = {}
    for index, model in enumerate(_MODELS):
        weighted: list[tuple[tuple[int, int, int], float]] = []
        for year in range(model.first_year, model.last_year + 1):
            start = datetime(year - 1, 7, 1, tzinfo=UTC)
            end = min(datetime(year, 7, 1, tzinfo=UTC), last_day)
            days = (end - start).days
            if days <= 0:
                continue
            full = (datetime(year, 7, 1, tzinfo=UTC) - start).days
            share = (1 + model.year_growth * (year - model.first_year)) * days / full
            weighted.append(((year, int(start.timestamp()), days), share))
        if weighted:
            years[index] = _table(weighted, _VEHICLE_BITS)
            model_weight[index] = model.weight
    if not years:
        raise ValueError(
            f"exported_at {exported_at.isoformat()} is before any model was built (mid 2018)"
        )
    markets = [
        m
        for m in _MARKETS
        if any(_MODELS[i].markets is None or m.region in (_MODELS[i].markets or ()) for i in years)
    ]
    return _Plan(
        exported_at=exported_at.isoformat(),
        regions=_table([(m, m.weight) for m in markets], _VEHICLE_BITS),
        countries={m.region: _table(m.countries, _VEHICLE_BITS) for m in markets},
        factories={
            m.region: _table(
                [((wmi, plant), 1.0) for wmi, plants in m.factories for plant in plants],
                _VEHICLE_BITS,
            )
            for m in markets
        },
        models={
            m.region: _table(
                [
                    (i, w)
                    for i, w in model_weight.items()
                    if _MODELS[i].markets is None or m.region in (_MODELS[i].markets or ())
                ],
                _VEHICLE_BITS,
            )
            for m in markets
        },
        years=years,
        bodies={i: _table(_MODELS[i].bodies, _VEHICLE_BITS) for i in years},
    )


def _export_time(exported_at: datetime | None) -> datetime:
    if exported_at is None:
        return DEFAULT_EXPORTED_AT
    if exported_at.tzinfo is None or exported_at.utcoffset() is None:
        raise ValueError("exported_at must carry a time zone (e.g. tzinfo=UTC)")
    return exported_at.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# Unique numbers: a counter through a bijection keyed by the seed.


def _coprime_multiplier(rng: random.Random, modulus: int) -> int:
    while True:
        candidate = rng.getrandbits(modulus.bit_length() + 8) % modulus
        if candidate > 1 and _gcd(candidate, modulus) == 1:
            return candidate


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# (vehicle fields in VEHICLE_FIELDS order with model_year as text, model year, ECU variants,
#  ECU serial suffixes)
_Vehicle = tuple[list[str], int, list[_Variant], list[str]]


def _vehicles(vehicles: int, seed: int, exported_at: datetime | None) -> Iterator[_Vehicle]:
    if isinstance(vehicles, bool) or not isinstance(vehicles, int):
        raise TypeError("vehicles must be an int")
    if not 0 <= vehicles <= MAX_VEHICLES:
        raise ValueError(f"vehicles must be between 0 and {MAX_VEHICLES}, not {vehicles}")
    plan = _plan(_export_time(exported_at))
    return _build(plan, vehicles, random.Random(seed))


def _build(plan: _Plan, vehicles: int, rng: random.Random) -> Iterator[_Vehicle]:
    bits = rng.getrandbits
    draw = rng.random
    # Seed-keyed bijections for the unique numbers.
    vin_a1, vin_b1 = _coprime_multiplier(rng, _VIN_BLOCK1), bits(32) % _VIN_BLOCK1
    vin_a2, vin_b2 = _coprime_multiplier(rng, _VIN_BLOCK2), bits(32) % _VIN_BLOCK2
    engine_a, engine_b = _coprime_multiplier(rng, _SERIAL7), bits(32) % _SERIAL7
    chassis_a, chassis_b = _coprime_multiplier(rng, _SERIAL7), bits(32) % _SERIAL7
    serial_a, serial_b, serial_c = bits(48) | 1, bits(48), bits(48) | 1
    exported = plan.exported_at
    regions, countries, factories = plan.regions, plan.countries, plan.factories
    models, years, bodies, fuel_table = plan.models, plan.years, plan.bodies, plan.fuel_table
    fromtimestamp = datetime.fromtimestamp
    mask, vbits = _MASK48, _VEHICLE_BITS
    ecu_counter = 0
    for n in range(vehicles):
        market = regions[bits(vbits)]
        region = market.region
        country = countries[region][bits(vbits)]
        wmi, plant = factories[region][bits(vbits)]
        model_index = models[region][bits(vbits)]
        model = _MODELS[model_index]
        year, start, days = years[model_index][bits(vbits)]
        fuel = fuel_table(model_index, year, region)[bits(vbits)]
        body = bodies[model_index][bits(vbits)]
        engines = model.engines[fuel]
        engine_code = engines[int(draw() * len(engines))]
        built = start + int(draw() * days) * 86400 + _SHIFT_START + int(draw() * _SHIFT_SECONDS)

        if n < _VIN_BLOCK1:
            x = (n * vin_a1 + vin_b1) % _VIN_BLOCK1
            sequence = f"{_ALNUM[x // 100000]}{x % 100000:05d}"
        else:
            x = ((n - _VIN_BLOCK1) * vin_a2 + vin_b2) % _VIN_BLOCK2
            y = x % 230000
            sequence = f"{_ALNUM[x // 230000]}{_LETTERS[y // 10000]}{y % 10000:04d}"
        restraint = "B" if year >= model.facelift_year else "A"
        vin = with_check_digit(
            f"{wmi}{model.vin_code}{body}{_VIN_FUEL_CODE[fuel]}{restraint}0"
            f"{_year_code(year)}{plant}{sequence}"
        )
        engine_serial = (n * engine_a + engine_b) % _SERIAL7
        if fuel in _ELECTRIC_DRIVE:
            engine_number = f"EM{engine_code}{engine_serial:07d}"
        else:
            engine_number = f"{engine_code}{engine_serial:07d}"
        chassis_number = f"{model.chassis_code}{body}-{(n * chassis_a + chassis_b) % _SERIAL7:07d}"

        profile = _profile(model_index, year, fuel)
        variants = [table[bits(_VARIANT_BITS)] for table in profile.fitted]
        for share, table in profile.optional:
            if draw() < share:
                variants.append(table[bits(_VARIANT_BITS)])
                if len(variants) == MAX_ECUS:
                    break
        serials = []
        for _ in variants:
            x = (ecu_counter * serial_a + serial_b) & mask
            ecu_counter += 1
            x ^= x >> 23
            x = (x * serial_c) & mask
            x ^= x >> 19
            serials.append(f"{x:012X}")
        fields = [
            vin,
            engine_number,
            chassis_number,
            model.name,
            str(year),
            fuel.value,
            region.value,
            country,
            fromtimestamp(built, UTC).isoformat(),
            exported,
        ]
        yield fields, year, variants, serials


# --------------------------------------------------------------------------------------------
# Public interface.


def generate_records(
    vehicles: int, seed: int, exported_at: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """One JSON-shaped manufacturing export record per vehicle; deterministic in its arguments.

    exported_at defaults to DEFAULT_EXPORTED_AT and must carry a time zone.
    """
    for fields, year, variants, serials in _vehicles(vehicles, seed, exported_at):
        vin, engine, chassis, model, _, fuel, region, country, built, exported = fields
        yield {
            "vin": vin,
            "engine_number": engine,
            "chassis_number": chassis,
            "model": model,
            "model_year": year,
            "fuel_type": fuel,
            "region": region,
            "country": country,
            "manufactured_at": built,
            "exported_at": exported,
            "ecus": [
                {
                    "ecu_type": v.ecu_type,
                    "serial": v.serial_prefix + serial,
                    "hardware_part_number": v.hardware_part_number,
                    "hardware_version": v.hardware_version,
                    "protocol": v.protocol,
                    "software_part_number": v.software_part_number,
                    "software_version": v.software_version,
                    "calibration_id": v.calibration_id,
                }
                for v, serial in zip(variants, serials, strict=True)
            ],
        }


def write_export(
    out: IO[str],
    vehicles: int,
    seed: int,
    fmt: str,
    exported_at: datetime | None = None,
    on_vehicle: Callable[[int], None] | None = None,
) -> int:
    """Write the fleet of `generate_records` to `out` as "jsonl" or "csv"; return the ECU count.

    JSON Lines holds one `json.dumps(record, separators=(",", ":"))` per line; CSV has the
    header `CSV_HEADER` and one row per ECU with the vehicle's columns repeated. `on_vehicle`
    gets the number of vehicles written every 1000 vehicles and once at the end.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, not {fmt!r}")
    records = _vehicles(vehicles, seed, exported_at)
    if fmt == "csv":
        out.write(",".join(CSV_HEADER) + "\n")
    buffer: list[str] = []
    append = buffer.append
    rows = 0
    done = 0
    reported = -1
    csv = fmt == "csv"
    for fields, _, variants, serials in records:
        if csv:
            prefix = ",".join(fields) + ","
            for v, serial in zip(variants, serials, strict=True):
                append(prefix + v.csv_head + serial + v.csv_tail)
        else:
            vin, engine, chassis, model, year, fuel, region, country, built, exported = fields
            append(
                f'{{"vin":"{vin}","engine_number":"{engine}","chassis_number":"{chassis}",'
                f'"model":"{model}","model_year":{year},"fuel_type":"{fuel}",'
                f'"region":"{region}","country":"{country}","manufactured_at":"{built}",'
                f'"exported_at":"{exported}","ecus":['
                + ",".join(
                    [v.json_head + s + v.json_tail for v, s in zip(variants, serials, strict=True)]
                )
                + "]}\n"
            )
        rows += len(variants)
        done += 1
        if done % PROGRESS_EVERY == 0:
            out.write("".join(buffer))
            buffer.clear()
            if on_vehicle is not None:
                on_vehicle(done)
                reported = done
    if buffer:
        out.write("".join(buffer))
    if on_vehicle is not None and reported != done:
        on_vehicle(done)
    return rows
