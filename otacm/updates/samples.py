"""A complete example software update definition, for the demo, benchmarks and documentation."""

from __future__ import annotations

from typing import Any


def sample_update(**overrides: Any) -> dict[str, Any]:
    """The body of `POST /api/v1/updates` for a BCM update that is ready to release once it
    has a file; `overrides` replace top-level fields."""
    data: dict[str, Any] = {
        "name": "BCM interior light timeout fix",
        "version": "4.2.0",
        "ecu_type": "BCM",
        "software_part_number": "5Q0937084AC",
        "protocol": "CAN",
        "category": "bug_fix",
        "compatible_models": ["Nordra", "Castellan"],
        "model_year_min": 2022,
        "model_year_max": 2026,
        "fuel_types": ["electric", "petrol", "diesel", "hybrid"],
        "hardware_part_numbers": ["5Q0937084"],
        "hardware_versions": ["B1", "B2"],
        "applicable_version_min": "4.0.0",
        "applicable_version_max": "4.1.9",
        "dependencies": [{"ecu_type": "GATEWAY", "min_version": "3.2.0"}],
        "release_notes": "Fixes the interior light staying on after the doors lock.",
        "support": {
            "contact": "bcm-software@example.com",
            "documentation_url": "https://docs.example.com/bcm/4.2.0",
            "end_of_support": "2031-12-31",
        },
        "estimated_install_minutes": 12,
        "preconditions": {"parked": True, "min_battery_percent": 40, "ignition_off": True},
        "install_order": 10,
        "rollback_version": "4.1.0",
        "regulatory": {
            "purpose": "Correct the interior light timeout.",
            "affected_systems": ["interior lighting"],
            "type_approval_affected": False,
            "execution_conditions": "Parked, ignition off, battery at least 40 %.",
            "safety_confirmed": True,
            "verification_reference": "VV-BCM-2026-042",
        },
    }
    data.update(overrides)
    return data
