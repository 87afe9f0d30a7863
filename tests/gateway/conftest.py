"""Gateway fixtures: one migrated PostgreSQL database per module, apps without workers (jobs stay queued)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import create_pg_database, drop_pg_database
from tests.gateway.helpers import make_settings


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database shared by one test module (tests use their own tenants)."""
    from audit.db import upgrade

    url = create_pg_database("emoe_test_gateway")
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def make_client(module_pg_url: str, tmp_path) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient over `create_app`; no worker runs, so submitted jobs stay queued."""
    from gateway.app import create_app

    opened: list[TestClient] = []

    def build(**changes: Any) -> TestClient:
        settings = make_settings(changes.pop("database_url", module_pg_url), tmp_path, **changes)
        client = TestClient(create_app(settings, start_workers=False), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)
