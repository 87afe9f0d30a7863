"""The app's state (`GatewayState`, set once by `create_app`) and request-scoped dependencies: the settings,
the state and a database session (`SessionDep`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from audit.db import transaction
from settings import Settings

if TYPE_CHECKING:
    from gateway.admission import Admission
    from gateway.auth import KeyCache
    from gateway.metrics import GatewayMetrics
    from workers.dispatch import Dispatcher

T = TypeVar("T")


@dataclass
class GatewayState:
    """Everything the gateway's requests share, made once in `create_app` (it is the app's `app.state`)."""

    settings: Settings
    database_url: str
    sessionmaker: Callable[[], Session]
    key_cache: KeyCache
    dispatcher: Dispatcher
    stage_metrics: Callable[[], dict[Any, dict[str, Any]]]  # workers.stage_metrics.snapshots
    metrics: GatewayMetrics
    admission: Admission


def get_state(request: Request) -> GatewayState:
    return request.app.state


def get_app_settings(request: Request) -> Settings:
    return get_state(request).settings


def get_session(request: Request) -> Iterator[Session]:
    """A session that commits after the endpoint returns normally and rolls back otherwise."""
    with transaction(get_state(request).sessionmaker) as session:
        yield session


async def in_session(request: Request, work: Callable[[Session], T]) -> T:
    """Run `work(session)` in a worker thread with a short session of its own (committed after it returns):
    how an async route reads without holding a connection while it waits."""

    def run() -> T:
        with transaction(get_state(request).sessionmaker) as session:
            return work(session)

    return await anyio.to_thread.run_sync(run)


StateDep = Annotated[GatewayState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
