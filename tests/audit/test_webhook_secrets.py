"""Per-tenant webhook secret generations: overlap windows, their parsing, and concurrent rotations."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from audit import db
from audit.webhook_secrets import Generations, generations, parse_overlap, rotate


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    found = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    db.upgrade(found)
    return found


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("90m", 5400), ("2d", 172800), ("300s", 300), ("0", 0), ("1.5h", 5400)],
)
def test_overlaps_parse(text: str, seconds: int) -> None:
    assert parse_overlap(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1h", "24 hours", "31d", "1w"])
def test_bad_overlaps_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_overlap(text)


def test_the_previous_generation_signs_only_during_the_overlap() -> None:
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert Generations(0).signing(now) == [0]
    assert Generations(3, now + timedelta(seconds=1)).signing(now) == [3, 2]
    assert Generations(3, now).signing(now) == [3]
    assert Generations(3, None).signing(now) == [3]


def test_rotations_count_up_and_each_ends_the_overlap_before_it(url: str) -> None:
    now = datetime.now(UTC)
    with db.session_scope(url) as session:
        assert generations(session, "acme") == Generations(0)
        assert rotate(session, "acme", timedelta(hours=2), now) == Generations(1, now + timedelta(hours=2))
    with db.session_scope(url) as session:
        assert generations(session, "acme").signing() == [1, 0]
        assert rotate(session, "acme", timedelta(0)) == Generations(2, None)
    with db.session_scope(url) as session:
        assert generations(session, "acme").signing() == [2]  # generation 0 stopped with this rotation
        assert generations(session, "globex") == Generations(0)
        with pytest.raises(ValueError, match="tenant"):
            rotate(session, "no spaces", timedelta(0))


def test_concurrent_rotations_of_one_tenant_each_get_a_generation(url: str) -> None:
    """Rotations racing on the same tenant (the first one making its row) neither fail nor share a
    generation."""
    got: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def one() -> None:
        try:
            start.wait()
            with db.session_scope(url) as session:
                got.append(rotate(session, "acme", timedelta(hours=1)).current)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(got) == [1, 2, 3, 4]
    with db.session_scope(url) as session:
        assert generations(session, "acme").current == 4
