"""Target selections against a real database (SQLite and PostgreSQL): each structured field
and each query selector selects exactly the expected vehicles."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, func, select, update

from otacm.config import Settings
from otacm.db import utcnow
from otacm.fleet.importer import run_import
from otacm.fleet.models import Ecu, Vehicle
from otacm.targeting.query_language import QueryError
from otacm.targeting.selection import (
    EcuCondition,
    TargetSelection,
    describe,
    selection_condition,
)
from tests.builders import ecu, jsonl, vehicle, vin

Record = dict[str, Any]

MODELS = ["Aurora", "Borealis", "Cirrus"]
FUELS = ["electric", "hybrid", "petrol", "diesel"]
PLACES = [("EU", "DE", "WXA"), ("EU", "FR", "VXA"), ("UK", "GB", "SXA"), ("NA", "US", "1XA")]
STATUS = {3: "inactive", 4: "scrapped", 11: "inactive"}
REMOVED = {"BCM-26-OLD"}  # an ECU that has left its vehicle


def _vehicle(n: int) -> Record:
    fuel = FUELS[n % 4]
    region, country, wmi = PLACES[(n // 2) % 4]
    ecus = [
        ecu(
            f"BCM-{n}",
            hardware_part_number=["5Q0937084", "5Q0937085"][n % 2],
            hardware_version=["B1", "B2", "C1"][n % 3],
            software_part_number=f"5Q0937084A{n % 2}",
            software_version=["4.1.0", "4.2.0", "4.10.0", "5.0.0-rc1"][n % 4],
            calibration_id=None if n % 5 == 0 else f"CAL-{n % 2}",
        )
    ]
    if fuel in ("electric", "hybrid"):
        ecus.append(ecu(f"BMS-{n}", "BMS", protocol="CAN_FD", software_version="2.0.0"))
    if n % 2:
        ecus.append(ecu(f"GW-{n}", "GATEWAY", protocol="ETHERNET", hardware_version="G1"))
    attributes: Record = {}
    if n % 7:
        attributes["trim"] = "sport" if n % 4 == 0 else "base"
    if n % 3 == 0:
        attributes["seats"] = 5
    if n % 6 == 0:
        attributes["winter_pack"] = True
    return vehicle(
        n,
        vin=vin(n, wmi),
        model=MODELS[n % 3],
        model_year=2019 + n % 6,
        fuel_type=fuel,
        region=region,
        country=country,
        ecus=ecus,
        **attributes,
    )


def _fleet() -> list[Record]:
    records = [_vehicle(n) for n in range(1, 25)]
    # Two BCMs: B1 running 4.1.0 and B2 running 4.2.0.
    records.append(
        vehicle(
            25,
            vin=vin(25, "WXB"),
            ecus=[
                ecu("BCM-25-A", hardware_version="B1", software_version="4.1.0"),
                ecu("BCM-25-B", hardware_version="B2", software_version="4.2.0"),
            ],
        )
    )
    # A removed BCM (Z9) and the fitted one that replaced it.
    records.append(
        vehicle(
            26,
            vin=vin(26, "WXB"),
            ecus=[
                ecu("BCM-26-OLD", hardware_version="Z9", software_version="9.9.9"),
                ecu("BCM-26-NEW", hardware_version="B1", software_version="6.0.0"),
            ],
        )
    )
    # Characters that LIKE and GLOB would read as patterns, and a non-ASCII attribute name.
    records.append(vehicle(27, vin=vin(27, "WXB"), model="Mk_2%", ecus=[], **{"farbe_é": "blau"}))
    records.append(vehicle(28, vin=vin(28, "WXB"), model="MkX2 Sport", ecus=[]))
    records.append(vehicle(29, vin=vin(29, "WXB"), model="Star*Line", ecus=[]))
    records.append(vehicle(30, vin=vin(30, "WXB"), model="[Beta]", ecus=[]))
    return records


FLEET = _fleet()
ALL = {r["vin"] for r in FLEET}


def number(r: Record) -> int:
    return int(r["engine_number"][3:])


def status(r: Record) -> str:
    return STATUS.get(number(r), "active")


def fitted(r: Record, ecu_type: str) -> list[Record]:
    return [e for e in r["ecus"] if e["ecu_type"] == ecu_type and e["serial"] not in REMOVED]


def having(ecu_type: str, test: Callable[[Record], bool] = lambda e: True) -> Callable[..., bool]:
    return lambda r: any(test(e) for e in fitted(r, ecu_type))


def where(test: Callable[[Record], bool]) -> set[str]:
    return {r["vin"] for r in FLEET if test(r)}


@pytest.fixture
def fleet(engine: Engine, settings: Settings) -> Engine:
    report = run_import(engine, io.BytesIO(jsonl(FLEET)), settings=settings, source_name="test")
    assert report.counts.vehicles_created == len(FLEET), report
    with engine.begin() as conn:
        for n, value in STATUS.items():
            vins = [r["vin"] for r in FLEET if number(r) == n]
            conn.execute(update(Vehicle).where(Vehicle.vin.in_(vins)).values(status=value))
        conn.execute(update(Ecu).where(Ecu.serial.in_(REMOVED)).values(removed_at=utcnow()))
    return engine


def selected(engine: Engine, selection: TargetSelection | str) -> set[str]:
    if isinstance(selection, str):
        selection = TargetSelection(query=selection)
    condition = selection_condition(selection, engine.dialect.name)
    with engine.connect() as conn:
        return set(conn.scalars(select(Vehicle.vin).where(condition)))


def check(engine: Engine, cases: list[tuple[Any, Callable[[Record], bool]]]) -> None:
    for selection, test in cases:
        expected = where(test)
        assert selected(engine, selection) == expected, selection


# -- the structured filter ---------------------------------------------------------------------


def test_the_fleet_is_varied_enough() -> None:
    # Guards the other tests against a fleet where a filter trivially selects all or none.
    for test in (
        lambda r: r["model"] == "Aurora",
        lambda r: r["fuel_type"] == "electric",
        lambda r: r["region"] == "EU",
        lambda r: status(r) != "active",
        having("BCM", lambda e: e["hardware_version"] == "B1"),
        lambda r: r.get("trim") is None,
    ):
        assert 0 < len(where(test)) < len(FLEET)


def test_an_empty_selection_is_the_whole_fleet(fleet: Engine) -> None:
    assert selected(fleet, TargetSelection()) == ALL
    assert selected(fleet, TargetSelection(query="  ")) == ALL


def test_vehicle_fields(fleet: Engine) -> None:
    check(
        fleet,
        [
            (TargetSelection(models=["Aurora"]), lambda r: r["model"] == "Aurora"),
            (
                TargetSelection(models=["Aurora", "Cirrus"]),
                lambda r: r["model"] in ("Aurora", "Cirrus"),
            ),
            (TargetSelection(models=["aurora"]), lambda r: False),
            (TargetSelection(model_year_min=2022), lambda r: r["model_year"] >= 2022),
            (TargetSelection(model_year_max=2021), lambda r: r["model_year"] <= 2021),
            (
                TargetSelection(model_year_min=2021, model_year_max=2022),
                lambda r: 2021 <= r["model_year"] <= 2022,
            ),
            (
                TargetSelection(fuel_types=["electric", "Hybrid"]),
                lambda r: r["fuel_type"] in ("electric", "hybrid"),
            ),
            (TargetSelection(regions=["eu"]), lambda r: r["region"] == "EU"),
            (TargetSelection(regions=["UK", "NA"]), lambda r: r["region"] in ("UK", "NA")),
            (TargetSelection(countries=["fr", "US"]), lambda r: r["country"] in ("FR", "US")),
            (TargetSelection(statuses=["active"]), lambda r: status(r) == "active"),
            (
                TargetSelection(statuses=["inactive", "scrapped"]),
                lambda r: status(r) in ("inactive", "scrapped"),
            ),
        ],
    )


def test_attributes(fleet: Engine) -> None:
    check(
        fleet,
        [
            (TargetSelection(attributes={"trim": "sport"}), lambda r: r.get("trim") == "sport"),
            (TargetSelection(attributes={"trim": "Sport"}), lambda r: False),
            # Numbers and booleans compare as they are written in JSON.
            (TargetSelection(attributes={"seats": "5"}), lambda r: r.get("seats") == 5),
            (TargetSelection(attributes={"winter_pack": "true"}), lambda r: "winter_pack" in r),
            (TargetSelection(attributes={"farbe_é": "blau"}), lambda r: "farbe_é" in r),
            (
                TargetSelection(attributes={"trim": "base", "seats": "5"}),
                lambda r: r.get("trim") == "base" and r.get("seats") == 5,
            ),
            (TargetSelection(attributes={"sunroof": "yes"}), lambda r: False),
        ],
    )


def test_ecu_conditions(fleet: Engine) -> None:
    bcm = "BCM"
    check(
        fleet,
        [
            (TargetSelection(ecus=[EcuCondition(ecu_type="bms")]), having("BMS")),
            (
                TargetSelection(
                    ecus=[EcuCondition(ecu_type="BCM", hardware_versions=["B1", "C1"])]
                ),
                having(bcm, lambda e: e["hardware_version"] in ("B1", "C1")),
            ),
            (
                TargetSelection(ecus=[EcuCondition(ecu_type="BCM", software_versions=["4.10.0"])]),
                having(bcm, lambda e: e["software_version"] == "4.10.0"),
            ),
            (
                TargetSelection(
                    ecus=[
                        EcuCondition(
                            ecu_type="BCM",
                            hardware_part_numbers=["5Q0937085"],
                            software_part_numbers=["5Q0937084A1"],
                        )
                    ]
                ),
                having(
                    bcm,
                    lambda e: (
                        e["hardware_part_number"] == "5Q0937085"
                        and e["software_part_number"] == "5Q0937084A1"
                    ),
                ),
            ),
            (
                TargetSelection(ecus=[EcuCondition(ecu_type="GATEWAY", protocols=["ethernet"])]),
                having("GATEWAY"),
            ),
            (
                TargetSelection(ecus=[EcuCondition(ecu_type="GATEWAY", protocols=["CAN"])]),
                lambda r: False,
            ),
            # A removed ECU no longer counts.
            (
                TargetSelection(ecus=[EcuCondition(ecu_type="BCM", hardware_versions=["Z9"])]),
                lambda r: False,
            ),
            (
                TargetSelection(ecus=[EcuCondition(ecu_type="BCM", software_versions=["6.0.0"])]),
                lambda r: number(r) == 26,
            ),
            # Both ECU conditions of one entry hold for one and the same BCM.
            (
                TargetSelection(
                    ecus=[
                        EcuCondition(
                            ecu_type="BCM", hardware_versions=["B1"], software_versions=["4.2.0"]
                        )
                    ]
                ),
                having(
                    bcm,
                    lambda e: e["hardware_version"] == "B1" and e["software_version"] == "4.2.0",
                ),
            ),
            # Two entries may be met by two ECUs: vehicle 25 has a B1 BCM and a 4.2.0 BCM.
            (
                TargetSelection(
                    ecus=[
                        EcuCondition(ecu_type="BCM", hardware_versions=["B1"]),
                        EcuCondition(ecu_type="BCM", software_versions=["4.2.0"]),
                    ]
                ),
                lambda r: (
                    having(bcm, lambda e: e["hardware_version"] == "B1")(r)
                    and having(bcm, lambda e: e["software_version"] == "4.2.0")(r)
                ),
            ),
        ],
    )
    one = TargetSelection(
        ecus=[EcuCondition(ecu_type="BCM", hardware_versions=["B1"], software_versions=["4.2.0"])]
    )
    assert vin(25, "WXB") not in selected(fleet, one)


def test_vin_lists_and_exclusions(fleet: Engine) -> None:
    some = sorted(ALL)[:5]
    check(
        fleet,
        [
            (TargetSelection(vins=some), lambda r: r["vin"] in some),
            (TargetSelection(vins=[v.lower() for v in some]), lambda r: r["vin"] in some),
            (TargetSelection(exclude_vins=some), lambda r: r["vin"] not in some),
            (TargetSelection(vins=some, exclude_vins=some[:2]), lambda r: r["vin"] in some[2:]),
            (TargetSelection(vins=[vin(999, "ZZZ")]), lambda r: False),
        ],
    )


@pytest.mark.parametrize("size", [101, 50_000])
def test_a_long_vin_list_is_one_parameter(fleet: Engine, size: int) -> None:
    half = sorted(ALL)[::2]
    unknown = [vin(n, "ZZZ") for n in range(size - len(half))]
    listed = TargetSelection(vins=[*unknown, *half])
    assert selected(fleet, listed) == set(half)
    assert selected(fleet, TargetSelection(exclude_vins=[*unknown, *half])) == ALL - set(half)
    both = TargetSelection(vins=[*unknown, *half], exclude_vins=[*unknown[:10], *half[:3]])
    assert selected(fleet, both) == set(half[3:])
    condition = selection_condition(listed, fleet.dialect.name)
    compiled = select(Vehicle.id).where(condition).compile(dialect=fleet.dialect)
    assert len(compiled.params) <= 3  # the list, and on PostgreSQL its separator


def test_combined_fields_and_query(fleet: Engine) -> None:
    selection = TargetSelection(
        models=["Aurora", "Borealis"],
        fuel_types=["electric", "hybrid", "petrol"],
        regions=["EU", "UK"],
        statuses=["active"],
        ecus=[EcuCondition(ecu_type="BCM", hardware_versions=["B1", "B2"])],
        exclude_vins=[vin(8, "VXA")],
        query="model_year>=2020;attr.trim!=sport",
    )
    expected = where(
        lambda r: (
            r["model"] in ("Aurora", "Borealis")
            and r["fuel_type"] in ("electric", "hybrid", "petrol")
            and r["region"] in ("EU", "UK")
            and status(r) == "active"
            and having("BCM", lambda e: e["hardware_version"] in ("B1", "B2"))(r)
            and r["vin"] != vin(8, "VXA")
            and r["model_year"] >= 2020
            and r.get("trim") != "sport"
        )
    )
    assert 0 < len(expected) < 10
    assert selected(fleet, selection) == expected


# -- the query language ----------------------------------------------------------------------


def test_every_vehicle_selector(fleet: Engine) -> None:
    first = sorted(ALL)[0]
    check(
        fleet,
        [
            (f"vin=={first.lower()}", lambda r: r["vin"] == first),
            ("vin==WXA*", lambda r: r["vin"].startswith("WXA")),
            ("vin!=WXA*", lambda r: not r["vin"].startswith("WXA")),
            ("vin==*0001*", lambda r: "0001" in r["vin"]),
            (f"vin=in=({first},{vin(999, 'ZZZ')})", lambda r: r["vin"] == first),
            (f"vin=out=({first})", lambda r: r["vin"] != first),
            ("model==Aurora", lambda r: r["model"] == "Aurora"),
            ("model!=Aurora", lambda r: r["model"] != "Aurora"),
            ("model==Aur*", lambda r: r["model"].startswith("Aur")),
            ("model==*is", lambda r: r["model"].endswith("is")),
            ("model==*ore*", lambda r: "ore" in r["model"]),
            ("model==aur*", lambda r: False),  # case-sensitive on both engines
            ("model=in=(Aurora,Cirrus)", lambda r: r["model"] in ("Aurora", "Cirrus")),
            ("model=out=(Aurora,Cirrus)", lambda r: r["model"] not in ("Aurora", "Cirrus")),
            ("model_year==2021", lambda r: r["model_year"] == 2021),
            ("model_year!=2021", lambda r: r["model_year"] != 2021),
            ("model_year=in=(2020,2024)", lambda r: r["model_year"] in (2020, 2024)),
            ("model_year=out=(2020,2024)", lambda r: r["model_year"] not in (2020, 2024)),
            ("model_year=lt=2021", lambda r: r["model_year"] < 2021),
            ("model_year<=2021", lambda r: r["model_year"] <= 2021),
            ("model_year=gt=2021", lambda r: r["model_year"] > 2021),
            ("model_year>=2021", lambda r: r["model_year"] >= 2021),
            ("fuel_type==electric", lambda r: r["fuel_type"] == "electric"),
            (
                "fuel_type=out=(electric,hybrid)",
                lambda r: r["fuel_type"] not in ("electric", "hybrid"),
            ),
            ("region==uk", lambda r: r["region"] == "UK"),
            ("region!=EU", lambda r: r["region"] != "EU"),
            ("country=in=(de,gb)", lambda r: r["country"] in ("DE", "GB")),
            ("status==inactive", lambda r: status(r) == "inactive"),
            ("status!=active", lambda r: status(r) != "active"),
            ("engine_number==CJX000007", lambda r: number(r) == 7),
            ("chassis_number==CH-00001*", lambda r: r["chassis_number"].startswith("CH-00001")),
        ],
    )


def test_wildcards_escape_like_and_glob_characters(fleet: Engine) -> None:
    check(
        fleet,
        [
            ("model==Mk_2*", lambda r: r["model"] == "Mk_2%"),  # _ is no wildcard
            ("model==*2%", lambda r: r["model"] == "Mk_2%"),  # nor is %
            ("model=='Mk_2%'", lambda r: r["model"] == "Mk_2%"),
            (r"model=='Star\*Line'", lambda r: r["model"] == "Star*Line"),
            (r"model=='Star\**'", lambda r: r["model"] == "Star*Line"),
            ("model==[B*", lambda r: r["model"] == "[Beta]"),  # [ is no character class
            ("model==*a]", lambda r: r["model"] == "[Beta]"),
            ("model==*", lambda r: True),
        ],
    )


def test_attribute_selectors(fleet: Engine) -> None:
    check(
        fleet,
        [
            ("attr.trim==sport", lambda r: r.get("trim") == "sport"),
            # The complement includes vehicles without the attribute.
            ("attr.trim!=sport", lambda r: r.get("trim") != "sport"),
            ("attr.trim=in=(sport,base)", lambda r: "trim" in r),
            ("attr.trim=out=(base)", lambda r: r.get("trim") != "base"),
            ("attr.trim==*or*", lambda r: r.get("trim") == "sport"),
            ("attr.trim!=*or*", lambda r: r.get("trim") != "sport"),
            ("attr.seats==5", lambda r: r.get("seats") == 5),
            ("attr.winter_pack==true", lambda r: r.get("winter_pack") is True),
            ("attr.farbe_é==blau", lambda r: "farbe_é" in r),
            ("attr.missing==x", lambda r: False),
            ("attr.missing!=x", lambda r: True),
        ],
    )


def test_every_ecu_selector(fleet: Engine) -> None:
    check(
        fleet,
        [
            (
                "ecu.bcm.hardware_part_number==5Q0937085",
                having("BCM", lambda e: e["hardware_part_number"] == "5Q0937085"),
            ),
            (
                "ecu.BCM.hardware_version=in=(B1,B2)",
                having("BCM", lambda e: e["hardware_version"] in ("B1", "B2")),
            ),
            (
                "ecu.BCM.hardware_version!=B1",
                having("BCM", lambda e: e["hardware_version"] != "B1"),
            ),
            (
                "ecu.BCM.software_version==4.1*",
                having("BCM", lambda e: e["software_version"].startswith("4.1")),
            ),
            (
                "ecu.BCM.software_version=out=(4.1.0,4.2.0)",
                having("BCM", lambda e: e["software_version"] not in ("4.1.0", "4.2.0")),
            ),
            (
                "ecu.BCM.software_part_number==5Q0937084A0",
                having("BCM", lambda e: e["software_part_number"] == "5Q0937084A0"),
            ),
            ("ecu.BMS.protocol==can_fd", having("BMS")),
            ("ecu.GATEWAY.protocol!=ETHERNET", lambda r: False),
            ("ecu.BCM.serial==BCM-1*", having("BCM", lambda e: e["serial"].startswith("BCM-1"))),
            ("ecu.BCM.serial==*", having("BCM")),
            (
                "ecu.BCM.calibration_id==CAL-1",
                having("BCM", lambda e: e.get("calibration_id") == "CAL-1"),
            ),
            # A BCM without a calibration id differs from CAL-1.
            (
                "ecu.BCM.calibration_id!=CAL-1",
                having("BCM", lambda e: e.get("calibration_id") != "CAL-1"),
            ),
            (
                "ecu.BCM.calibration_id=out=(CAL-0,CAL-1)",
                having("BCM", lambda e: e.get("calibration_id") not in ("CAL-0", "CAL-1")),
            ),
            ("ecu.BCM.hardware_version==Z9", lambda r: False),  # removed
            ("ecu.TCU.serial==*", lambda r: False),  # no such ECU fitted
        ],
    )


def test_ecu_comparisons_joined_by_and_are_about_one_ecu(fleet: Engine) -> None:
    both = having(
        "BCM", lambda e: e["hardware_version"] == "B1" and e["software_version"] == "4.2.0"
    )

    def either_bcm(r: Record) -> bool:
        return having("BCM", lambda e: e["hardware_version"] == "B1")(r) and having(
            "BCM", lambda e: e["software_version"] == "4.2.0"
        )(r)

    check(
        fleet,
        [
            ("ecu.BCM.hardware_version==B1;ecu.BCM.software_version==4.2.0", both),
            ("ecu.BCM.hardware_version==B1 and (ecu.BCM.software_version==4.2.0)", both),
            # Across levels, each comparison is its own ECU.
            (
                "ecu.BCM.hardware_version==B1;(ecu.BCM.software_version==4.2.0,model==None)",
                either_bcm,
            ),
            (
                "ecu.BCM.hardware_version==B1,ecu.BCM.software_version==4.2.0",
                having(
                    "BCM",
                    lambda e: e["hardware_version"] == "B1" or e["software_version"] == "4.2.0",
                ),
            ),
        ],
    )
    assert where(both) != where(either_bcm)  # vehicle 25 tells them apart


def test_precedence_against_the_database(fleet: Engine) -> None:
    check(
        fleet,
        [
            (
                "model==Aurora,model==Cirrus;region==EU",
                lambda r: (
                    r["model"] == "Aurora" or (r["model"] == "Cirrus" and r["region"] == "EU")
                ),
            ),
            (
                "(model==Aurora,model==Cirrus);region==EU",
                lambda r: r["model"] in ("Aurora", "Cirrus") and r["region"] == "EU",
            ),
            (
                "fuel_type==electric or region==NA and model_year>=2022",
                lambda r: (
                    r["fuel_type"] == "electric"
                    or (r["region"] == "NA" and r["model_year"] >= 2022)
                ),
            ),
        ],
    )


HOSTILE = [
    "' OR '1'='1",
    "'; DROP TABLE vehicles; --",
    '" OR 1=1 --',
    "x') OR 1=1 --",
    "%",
    "_",
    "\\",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_sql_injection_attempts_are_only_values(fleet: Engine, value: str) -> None:
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for selection in (
        TargetSelection(models=[value]),
        TargetSelection(attributes={"trim": value}),
        TargetSelection(attributes={value: "sport"}),
        TargetSelection(ecus=[EcuCondition(ecu_type="BCM", software_versions=[value])]),
        TargetSelection(query=f"model=={quoted}"),
        TargetSelection(query=f"attr.trim=={quoted}"),
        TargetSelection(query=f"ecu.BCM.hardware_version=in=({quoted},{quoted})"),
        TargetSelection(query=f'engine_number=={quoted[:-1]}*"'),
    ):
        assert selected(fleet, selection) == set(), selection
    assert selected(fleet, f"model!={quoted}") == ALL
    with fleet.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Vehicle)) == len(FLEET)


# -- validation and description ----------------------------------------------------------------


def test_values_are_normalised() -> None:
    selection = TargetSelection(
        fuel_types=["Electric", " HYBRID "],
        regions=["eu"],
        countries=[" de "],
        statuses=["Active"],
        vins=[" wxaab12c0s0000010 ", "WXAAB12C0S0000010"],
        ecus=[{"ecu_type": "bcm", "protocols": ["can_fd"]}],  # type: ignore[list-item]
    )
    assert selection.fuel_types == ["electric", "hybrid"] and selection.regions == ["EU"]
    assert selection.countries == ["DE"] and selection.statuses == ["active"]
    assert selection.vins == ["WXAAB12C0S0000010"]  # duplicates go
    assert selection.ecus[0].ecu_type == "BCM" and selection.ecus[0].protocols == ["CAN_FD"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"vins": ["WXAAB12C0S000001"]}, "vins"),
        ({"exclude_vins": ["WXAAB12C0S00000I0"]}, "exclude_vins"),
        ({"countries": ["DEU"]}, "countries"),
        ({"fuel_types": ["coal"]}, "fuel_types"),
        ({"regions": ["MARS"]}, "regions"),
        ({"statuses": ["sold"]}, "statuses"),
        ({"model_year_min": 1900}, "model_year_min"),
        ({"model_year_min": 2024, "model_year_max": 2020}, ""),
        ({"models": [""]}, "models"),
        ({"attributes": {"": "x"}}, "attributes"),
        ({"ecus": [{"ecu_type": "BCM", "colour": "red"}]}, "ecus"),
        ({"ecus": [{"ecu_type": "B C M"}]}, "ecus"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_selections_are_refused(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TargetSelection.model_validate(data)
    location = caught.value.errors()[0]["loc"]
    assert (location[0] if location else "") == field


def test_an_invalid_query_is_refused_with_its_position() -> None:
    # Not a pydantic error: the API answers with the position and what was expected there.
    with pytest.raises(QueryError) as caught:
        TargetSelection.model_validate_json(
            '{"models": ["Aurora"], "query": "region==EU;fuel_type=electric"}'
        )
    assert caught.value.to_dict()["position"] == 20
    assert caught.value.to_dict()["field"] == "query"


def test_describe() -> None:
    assert describe(TargetSelection()) == "all vehicles"
    selection = TargetSelection(
        models=["Aurora", "Borealis", "Cirrus", "Dorado", "Eos"],
        model_year_min=2020,
        model_year_max=2024,
        fuel_types=["electric", "hybrid"],
        regions=["EU"],
        statuses=["active"],
        attributes={"trim": "sport"},
        ecus=[
            EcuCondition(ecu_type="BCM", hardware_versions=["B1", "B2"]),
            EcuCondition(ecu_type="BMS"),
        ],
        vins=[vin(n) for n in range(1, 1201)],
        exclude_vins=[vin(1)],
        query="model_year!=2022",
    )
    assert describe(selection) == (
        "model Aurora, Borealis, Cirrus, Dorado, … (5 models); model year 2020–2024; "
        "fuel type electric or hybrid; region EU; status active; attribute trim = sport; "
        "a BCM with hardware version B1 or B2; a BMS; 1,200 VINs; excluding 1 VIN; "
        "query model_year!=2022"
    )
    assert describe(TargetSelection(model_year_max=2021)) == "model year ≤ 2021"
