"""The dashboard's pages as an auditor reads them (issue 17): the overview's review backlog, audit chain state
and time range; the job browser's columns, filters and CSV export; the job page's labels, hash and chart."""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from audit.db import get_engine, session_scope
from audit.models import Decision
from tests.audit.report_seed import seed
from tests.gateway.helpers import make_settings, new_key
from tests.gateway.test_dashboard import client, seed_tenant  # noqa: F401 (the fixture)
from tests.gateway.test_dashboard_security import held_job

pytestmark = pytest.mark.postgres

MICROSECONDS = re.compile(r"\d{2}:\d{2}:\d{2}\.\d")


def _tamper(url: str, statement: str) -> None:
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete")
        conn.exec_driver_sql(statement)
        conn.exec_driver_sql("ALTER TABLE decisions ENABLE TRIGGER decisions_no_update_delete")


def _decision_ids(url: str) -> list[int]:
    with session_scope(url) as session:
        return list(session.scalars(select(Decision.id).order_by(Decision.id)))


@pytest.fixture
def fresh(migrated_pg_url: str, tmp_path: Path):
    """A gateway over its own database, whose decisions all come through the real chain (no seeded rows)."""
    from gateway.app import create_app

    with TestClient(create_app(make_settings(migrated_pg_url, tmp_path), start_workers=False)) as c:
        yield c


def test_overview_counts_the_review_backlog_of_the_tenant_only(fresh, migrated_pg_url: str, tmp_path) -> None:
    url = migrated_pg_url
    tenant, read = new_key(url, role="read")
    _, review = new_key(url, tenant, "review")
    held_job(url, tmp_path, tenant, 1.5)
    held_job(url, tmp_path, tenant, 1.2)
    held_job(url, tmp_path, tenant, 2.5)  # halted, sent to review
    held_job(url, tmp_path, tenant, 0.2)  # completed: nothing to review
    held_job(url, tmp_path, "someone-else", 1.5)

    page = fresh.get("/dashboard", headers=read).text
    awaiting = re.search(r'<div id="awaiting">(.*?)</div>', page, re.S).group(1)
    assert 'id="awaiting-n">3<' in awaiting and "2 flagged and held, 1 halted" in awaiting
    assert 'id="awaiting-link"' not in awaiting  # a read key cannot review
    as_reviewer = fresh.get("/dashboard", headers=review).text
    assert '<a href="/dashboard/review" id="awaiting-link">' in as_reviewer


def test_overview_shows_the_chain_verified_incrementally_and_where_it_breaks(
    fresh, migrated_pg_url: str, tmp_path, monkeypatch, caplog
) -> None:
    from gateway.dashboard import overview

    url = migrated_pg_url
    tenant, read = new_key(url, role="read")
    for score in (0.1, 0.2, 0.3):
        held_job(url, tmp_path, tenant, score)
    monkeypatch.setattr(overview, "CHAIN_ROWS_PER_VIEW", 2)
    ids = _decision_ids(url)

    first = fresh.get("/dashboard", headers=read).text
    assert 'Audit chain intact: <span id="chain-rows">2</span>' in first and "more to verify" in first
    assert f'id="chain-last">{ids[1]}<' in first
    second = fresh.get("/dashboard", headers=read).text  # goes on from row 2, not from the start
    assert 'id="chain-rows">3<' in second and f'id="chain-last">{ids[2]}<' in second
    assert "more to verify" not in second

    held_job(url, tmp_path, tenant, 0.4)
    _tamper(url, f"UPDATE decisions SET score = 9.5 WHERE id = {_decision_ids(url)[-1]}")
    broken = fresh.get("/dashboard", headers=read).text
    assert f'BROKEN at decision #<span id="chain-bad">{_decision_ids(url)[-1]}</span>' in broken
    assert "altered" in broken and "(3 decisions verified before it)" in broken
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="gateway.dashboard.overview"):
        again = fresh.get("/dashboard", headers=read).text
    assert 'id="chain-bad">' in again and not caplog.records  # the break was logged once, not at each view

    _tamper(url, f"UPDATE decisions SET row_hash = '{'a' * 64}' WHERE id = {ids[2]}")
    rewritten = fresh.get("/dashboard", headers=read).text  # the last row it verified is checked again
    assert f'id="chain-bad">{ids[2]}<' in rewritten and "rewritten" in rewritten


def test_overview_has_a_time_range_utc_times_and_no_server_paths(
    client: TestClient,  # noqa: F811
    module_pg_url: str,
    tmp_path,
) -> None:
    tenant, headers = new_key(module_pg_url, role="read")
    seed_tenant(module_pg_url, tenant, tmp_path)  # decisions from 2024
    recent = datetime.now(UTC) - timedelta(hours=2, microseconds=123456)
    seed(get_engine(module_pg_url), [{"tenant": tenant, "language": "en", "score": 0.9, "action": "halt",
                                      "created_at": recent}])  # fmt: skip

    def counts(html: str) -> dict[str, str]:
        return dict(re.findall(r'<span class="tag (\w+)">\w+</span></td><td>(\d+)</td>', html))

    everything = client.get("/dashboard", headers=headers).text
    assert counts(everything) == {"continue": "8", "flag": "2", "halt": "4"}
    day = client.get("/dashboard?period=24h", headers=headers).text
    assert counts(day) == {"continue": "0", "flag": "0", "halt": "1"}
    assert '<option value="24h" selected>' in day and 'id="period-since"' in day
    bad = client.get("/dashboard?period=forever", headers=headers)
    assert bad.status_code == 422 and "period" in bad.text

    assert str(tmp_path) not in everything and "policy.yaml" not in everything  # the policy file's path
    assert "times in UTC" in everything
    assert not MICROSECONDS.search(everything)  # the replay's and the policies' times
    assert recent.strftime("%Y-%m-%d %H:%M:%S") in everything  # the last decision of the policy, in UTC


def test_an_unreadable_policy_names_no_path(module_pg_url: str, tmp_path) -> None:
    from gateway.app import create_app

    missing = tmp_path / "secret-folder" / "policy.yaml"
    settings = make_settings(module_pg_url, tmp_path, policy_path=missing)
    _, headers = new_key(module_pg_url, role="read")
    with TestClient(create_app(settings, start_workers=False)) as c:
        page = c.get("/dashboard", headers=headers).text
    policy = re.search(r'<div id="policy">(.*?)</div>', page, re.S).group(1)
    assert "cannot be read" in policy and "secret-folder" not in page and str(tmp_path) not in page


def _seed_browsable(url: str, tenant: str) -> None:
    base = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    seed(get_engine(url), [
        {"tenant": tenant, "language": "en", "score": 0.1, "action": "continue", "prompt": "A Red Cat",
         "labels": {"team": "ads", "region": "eu"}, "created_at": base},
        {"tenant": tenant, "language": "en", "score": 0.9, "action": "halt", "prompt": "100% red_dog",
         "labels": {"team": "web"}, "created_at": base + timedelta(days=1)},
        {"tenant": tenant, "language": "fi", "score": 0.2, "action": "continue", "prompt": "1000 red dogs",
         "created_at": base + timedelta(days=2, hours=11, minutes=59)},
        {"tenant": tenant, "language": "en", "score": 0.3, "action": "continue", "rule": "-2+3",
         "prompt": "=cmd|' /C calc'!A0", "labels": {"team": "@SUM(1)"},
         "created_at": base + timedelta(days=3)},
        {"tenant": "someone-else", "language": "en", "score": 0.5, "action": "continue",
         "prompt": "a red cat of someone else", "created_at": base + timedelta(days=1)},
    ])  # fmt: skip


def _prompts(html: str) -> list[str]:
    return re.findall(r'<td class="l prompt-cell">(.*?)</td>', html)


def test_jobs_show_status_and_labels_and_filter_by_dates_and_prompt(
    client: TestClient,  # noqa: F811
    module_pg_url: str,
) -> None:
    tenant, headers = new_key(module_pg_url, role="read")
    _seed_browsable(module_pg_url, tenant)

    every = client.get("/dashboard/jobs", headers=headers).text
    assert re.findall(r'data-status="(\w+)"', every) == ["completed", "completed", "halted", "completed"]
    assert '<span class="label">region=eu</span> <span class="label">team=ads</span>' in every
    assert "someone else" not in every

    def prompts(query: str) -> list[str]:
        r = client.get(f"/dashboard/jobs?{query}", headers=headers)
        assert r.status_code == 200, r.text
        return _prompts(r.text)

    assert prompts("prompt=red+CAT") == ["A Red Cat"]  # case-insensitive, this tenant's only
    assert prompts("prompt=100%25") == ["100% red_dog"]  # % is a character, not a wildcard ...
    assert prompts("prompt=1_0") == []  # ... and so is _ (as a wildcard it would match 100 and 1000)
    assert prompts("prompt=red_") == ["100% red_dog"]
    assert prompts("date_from=2025-03-11&date_to=2025-03-12") == ["1000 red dogs", "100% red_dog"]
    assert prompts("date_to=2025-03-10") == ["A Red Cat"]  # the whole day, in UTC
    assert prompts("status=halted") == ["100% red_dog"]
    for query, field in (("date_from=10.3.2025", "date_from"), ("date_to=2025-02-30", "date_to"),
                         ("date_from=2025-03-12&date_to=2025-03-11", "date_to"), ("status=lost", "status"),
                         ("prompt=" + "x" * 201, "prompt")):  # fmt: skip
        r = client.get(f"/dashboard/jobs?{query}", headers=headers)
        assert r.status_code == 422 and field in r.text, (query, r.text)


def test_the_csv_export_has_the_same_filters_and_guards_formulas(
    client: TestClient,  # noqa: F811
    module_pg_url: str,
) -> None:
    tenant, headers = new_key(module_pg_url, role="read")
    _seed_browsable(module_pg_url, tenant)
    page = client.get("/dashboard/jobs?prompt=red&date_from=2025-03-11", headers=headers).text
    link = re.search(r'<a href="([^"]+)" id="csv">', page).group(1).replace("&amp;", "&")
    assert link == "/dashboard/jobs.csv?date_from=2025-03-11&prompt=red"
    r = client.get(link, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["prompt"] for row in rows] == ["1000 red dogs", "100% red_dog"]
    assert rows[1]["labels"] == "team=web" and rows[1]["status"] == "halted"
    assert rows[1]["time_utc"] == "2025-03-11 12:00:00"

    everything = list(csv.DictReader(io.StringIO(client.get("/dashboard/jobs.csv", headers=headers).text)))
    assert len(everything) == 4 and all("someone else" not in row["prompt"] for row in everything)
    formula = everything[0]
    assert formula["prompt"] == "'=cmd|' /C calc'!A0" and formula["labels"] == "team=@SUM(1)"
    assert formula["rule"] == "'-2+3"  # a text cell starting with - is guarded too
    assert float(formula["score"]) == 0.3  # numbers are not text cells
    assert client.get("/dashboard/jobs.csv", follow_redirects=False).status_code == 401
    assert client.get("/dashboard/jobs.csv?action=boom", headers=headers).status_code == 422


def test_the_job_page_shows_labels_hash_deviations_and_large_images(
    fresh, migrated_pg_url: str, tmp_path
) -> None:
    url = migrated_pg_url
    tenant, review = new_key(url, role="review")
    job_id = held_job(url, tmp_path, tenant, 1.5, labels={"team": "ads", "region": "eu"})
    with session_scope(url) as session:
        row_hash = session.query(Decision.row_hash).filter(Decision.job_id == job_id).scalar()
    page = fresh.get(f"/dashboard/jobs/{job_id}", headers=review).text
    labels = re.search(r'<td class="l" id="labels">(.*?)</td>', page).group(1)
    assert labels == '<span class="label">region=eu</span> <span class="label">team=ads</span>'
    assert f'id="row-hash">{row_hash}</td>' in page
    chart = re.search(r'<svg class="bars"[^>]*id="deviations".*?</svg>', page, re.S).group(0)
    assert chart.count("<rect") == 4 and ">0.4<" in chart  # FakeScore's four deviations; the longest bar:
    assert 'width="360.0"' in chart
    assert re.search(r'<img class="art" width="256" height="256"', page)
    css = fresh.get("/dashboard/static/dashboard.css").text
    rule = re.search(r"img\.art \{([^}]*)\}", css).group(1)
    assert "image-rendering: pixelated" in rule and "width: 256px" in rule and "height: 256px" in rule
    assert not MICROSECONDS.search(page) and " UTC" in page
