"""The director repository (Uptane): per vehicle, the signed list of what its ECUs install.

Every vehicle has its own TUF repository at `/tuf/director/{vin}/`, in the layout python-tuf's
`ngclient.Updater` reads. Its root is shared: the `director` repository's root, signed by the
offline root key and naming the online director key, is every vehicle's director root, so
rotating the director key is one new root, not a million. Timestamp, snapshot and targets are
the vehicle's own (`tuf_metadata` rows of the repository `director/<VIN>`), signed by the
director key.

The targets list the images of the vehicle's deployments in flight (`assignment.steps_for`),
under the image repository's paths with the same length and hash, and custom fields that bind
each to an ECU: `ecu_identifier` (serial), `hardware_id`, `release_counter`, `deployment_id`.
The targets' `signed.custom` names the VIN and the deployments, also when there is nothing to
install: another vehicle's metadata never verifies as this one's.

Metadata is made when a vehicle asks for its timestamp and what it should say has changed (the
assignment, an expiry coming due, a rotated key): `sync` signs a new targets version and the
snapshot and timestamp above it. Every version is kept, so the client's rollback checks see
increasing versions, and an old targets replayed is refused by `ngclient`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from otacm.campaigns.models import Deployment
from otacm.campaigns.offers import updates_by_campaign
from otacm.campaigns.states import ACTIVE
from otacm.config import Settings
from otacm.db import is_postgresql
from otacm.security.keys import ROOT, KeyStore
from otacm.security.tuf.models import TufRepository
from otacm.security.tuf.repository import MetadataRepository, TargetSpec, _clock
from otacm.vehicle_api.assignment import Step, steps_for

DIRECTOR = "director"
DIRECTOR_KEY = "director"
DIRECTOR_KEY_ROLES = {
    "root": ROOT,
    "targets": DIRECTOR_KEY,
    "snapshot": DIRECTOR_KEY,
    "timestamp": DIRECTOR_KEY,
}
ONLINE = ("targets", "snapshot", "timestamp")


class DirectorRoot(MetadataRepository):
    """The `director` repository: its root is the director root of every vehicle."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(DIRECTOR, DIRECTOR_KEY_ROLES, settings)


def repository_name(vin: str) -> str:
    return f"{DIRECTOR}/{vin}"


def _custom(vin: str, steps: Sequence[Step]) -> dict[str, Any]:
    return {"vin": vin, "deployments": sorted({s.deployment_id for s in steps})}


def desired_targets(steps: Sequence[Step]) -> dict[str, TargetFile]:
    """Target files by path. Two ECUs installing the same file share one entry, which lists
    both under `ecus` (the first is also `ecu_identifier`, as single-ECU clients expect)."""
    by_path: dict[str, list[Step]] = {}
    for step in steps:
        by_path.setdefault(step.target, []).append(step)
    targets: dict[str, TargetFile] = {}
    for path, sharing in by_path.items():
        first = sharing[0]
        custom = {
            "ecu_identifier": first.ecu_serial,
            "hardware_id": first.hardware_id,
            "ecus": [
                {"ecu_identifier": s.ecu_serial, "hardware_id": s.hardware_id} for s in sharing
            ],
            "release_counter": first.release_counter,
            "deployment_id": first.deployment_id,
            "update_id": first.update_id,
            "ecu_type": first.ecu_type,
        }
        spec = TargetSpec(path=path, length=first.length, sha256=first.sha256, custom=custom)
        targets[path] = spec.target_file()
    return targets


class VehicleDirector(MetadataRepository):
    """One vehicle's director repository."""

    def __init__(self, vin: str, settings: Settings) -> None:
        super().__init__(repository_name(vin), DIRECTOR_KEY_ROLES, settings)
        self.vin = vin
        self.root_repository = DirectorRoot(settings)

    def metadata_bytes(
        self, session: Session, role: str, version: int | None = None
    ) -> bytes | None:
        if role == "root":
            return self.root_repository.metadata_bytes(session, role, version)
        return super().metadata_bytes(session, role, version)

    def assignment(self, session: Session, vehicle_id: int) -> list[Step]:
        """The steps of the vehicle's deployments in flight, in their install order."""
        deployments = list(
            session.scalars(
                select(Deployment)
                .where(
                    Deployment.vehicle_id == vehicle_id,
                    Deployment.state.in_([s.value for s in ACTIVE]),
                )
                .order_by(Deployment.id)
            )
        )
        updates = updates_by_campaign(session, sorted({d.campaign_id for d in deployments}))
        by_deployment = steps_for(session, [(d, updates[d.campaign_id]) for d in deployments])
        return [step for d in deployments for step in by_deployment[d.id]]

    def current(self, session: Session, steps: Sequence[Step], now: datetime | None = None) -> bool:
        """Whether the metadata already says `steps` and is fresh: `sync` would sign nothing.
        A read, so that a vehicle's refresh takes no write lock when nothing changed."""
        return not self._stale(
            session, desired_targets(steps), _custom(self.vin, steps), _clock(now)
        )

    def sync(
        self, session: Session, keys: KeyStore, steps: Sequence[Step], now: datetime | None = None
    ) -> list[str]:
        """Sign what must be signed for the metadata to say `steps` and be fresh; returns the
        roles signed (none when it already does).

        Raises:
            RepositoryNotInitialised: the shared director root does not exist (`keys init`).
        """
        now = _clock(now)
        wanted = desired_targets(steps)
        custom = _custom(self.vin, steps)
        if not self._stale(session, wanted, custom, now):
            return []
        self._create_row(session, now)
        self._lock(session)
        root: Root = self._latest(session, "root").signed
        if self.metadata_bytes(session, "targets") is None:
            self._first_versions(session, keys, root, wanted, custom, now)
            return list(ONLINE)
        roles = self._stale(session, wanted, custom, now)  # again, under the lock
        if not roles:
            return []
        targets: Metadata[Targets] = self._latest(session, "targets")
        targets.signed.targets = wanted
        targets.signed.unrecognized_fields["custom"] = custom
        return self._sign_chain(session, keys, roles - {"targets"}, now, targets=targets)

    # Internals -----------------------------------------------------------------------------

    def _stale(
        self, session: Session, wanted: dict[str, TargetFile], custom: dict[str, Any], now: datetime
    ) -> set[str]:
        """The roles to sign again: targets when its content differs; any role signed by a key
        the root no longer lists, or whose expiry is coming due."""
        content = self.metadata_bytes(session, "targets")
        if content is None:
            return set(ONLINE)
        root: Root = self._latest(session, "root").signed
        stale: set[str] = set()
        for role in ONLINE:
            metadata: Metadata[Any] = (
                Metadata.from_bytes(content) if role == "targets" else self._latest(session, role)
            )
            listed = set(root.roles[role].keyids)
            if not set(metadata.signatures) <= listed or self._due(role, metadata.signed, now):
                stale.add(role)
            if role == "targets":
                signed: Targets = metadata.signed
                if signed.targets != wanted or signed.unrecognized_fields.get("custom") != custom:
                    stale.add(role)
        return stale

    def _create_row(self, session: Session, now: datetime) -> None:
        """The repository's row, once; two processes creating it at the same moment agree."""
        values = {"name": self.name, "created_at": now, "updated_at": now}
        if is_postgresql(session.get_bind().dialect):
            session.execute(
                postgresql.insert(TufRepository).values(values).on_conflict_do_nothing()
            )
        else:
            session.execute(sqlite.insert(TufRepository).values(values).on_conflict_do_nothing())

    def _first_versions(
        self,
        session: Session,
        keys: KeyStore,
        root: Root,
        wanted: dict[str, TargetFile],
        custom: dict[str, Any],
        now: datetime,
    ) -> None:
        targets = Targets(
            version=1,
            expires=now + self.lifetimes["targets"],
            targets=wanted,
            unrecognized_fields={"custom": custom},
        )
        self._store(session, Metadata(targets), self._signers(keys, root, "targets"), now)
        snapshot = Snapshot(
            version=1, expires=now + self.lifetimes["snapshot"], meta={"targets.json": MetaFile(1)}
        )
        self._store(session, Metadata(snapshot), self._signers(keys, root, "snapshot"), now)
        timestamp = Timestamp(
            version=1, expires=now + self.lifetimes["timestamp"], snapshot_meta=MetaFile(1)
        )
        self._store(session, Metadata(timestamp), self._signers(keys, root, "timestamp"), now)
