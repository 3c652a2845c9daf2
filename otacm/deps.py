"""FastAPI dependencies shared by every domain: settings, engine and the request's session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.db import unit_of_work
from otacm.updates.storage import ArtifactStorage


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_storage(request: Request) -> ArtifactStorage:
    storage: ArtifactStorage = request.app.state.storage
    return storage


def get_write_session(request: Request) -> Iterator[Session]:
    """A unit of work for handlers that read, then write: on SQLite it takes the write lock at
    BEGIN, so no other writer can come between its reads and its writes."""
    with unit_of_work(request.app.state.write_session_factory) as session:
        yield session


def get_session(request: Request) -> Iterator[Session]:
    """The request's unit of work: committed when the handler returns, rolled back on error."""
    with unit_of_work(request.app.state.session_factory) as session:
        yield session


# Declare sessions through these: `scope="function"` commits when the handler returns, before
# the answer is sent. The default ("request") would commit after the client already has its
# answer (a write reported done could still fail) and would hold the connection and its
# transaction open for as long as a streamed answer takes.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
