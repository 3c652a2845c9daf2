"""Imports every domain's tables so that the metadata (and Alembic) sees the whole schema."""

from otacm.alerts import models as alerts_models
from otacm.campaigns import models as campaigns_models
from otacm.fleet import models as fleet_models
from otacm.notifications import models as notifications_models
from otacm.security import models as security_models
from otacm.security.tuf import models as tuf_models
from otacm.updates import models as updates_models
from otacm.vehicle_api import models as vehicle_api_models

__all__ = [
    "alerts_models",
    "campaigns_models",
    "fleet_models",
    "notifications_models",
    "security_models",
    "tuf_models",
    "updates_models",
    "vehicle_api_models",
]
