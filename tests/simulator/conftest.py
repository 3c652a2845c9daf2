"""Fixtures for running the simulated fleet against a real server: the vehicle API's small
fleet over the air (`ota`) and a live socket server."""

from tests.campaigns.conftest import as_role  # noqa: F401  (fixture `ota` needs)
from tests.live_server import live_server  # noqa: F401  (fixture)
from tests.vehicle_api.conftest import ota  # noqa: F401  (fixture)
