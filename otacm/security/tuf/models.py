"""Tables of the TUF repositories: one row per repository, one per metadata version.

Metadata is kept as the exact bytes that were signed and served: re-serialising could change
them, and clients compare what they download with the versions (and hashes) they were told of.
Nothing is deleted, so every version any vehicle ever saw can be shown again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from otacm.db import Base, UTCDateTime


class TufRepository(Base):
    """A repository ("image", later one director repository per vehicle). Writers lock its
    row, so that two server processes never sign the same version of a role."""

    __tablename__ = "tuf_repositories"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When metadata was last signed.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TufMetadata(Base):
    """One signed version of one role's metadata (root, targets, snapshot, timestamp)."""

    __tablename__ = "tuf_metadata"

    repository: Mapped[str] = mapped_column(
        String(100), ForeignKey("tuf_repositories.name"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
