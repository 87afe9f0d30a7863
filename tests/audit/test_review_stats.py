"""The report's human-review sections: exact counts and rates per group from a known log, with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit import db
from audit.db import session_scope
from audit.fairness import IntervalOptions, rate_estimate
from audit.report import build_report, render_html
from audit.review_stats import ReviewRecord, build_review_sections, review_sections
from audit.reviews import record_verdict
from tests.gateway.test_reviews import gated


def test_rates_per_group_are_the_exact_shares_with_wilson_intervals() -> None:
    records = (
        [ReviewRecord("en", "continue", None, None)] * 6
        + [ReviewRecord("en", "flag", "approved", 10.0)] * 3
        + [ReviewRecord("en", "flag", "rejected", 30.0)]
        + [ReviewRecord("en", "flag", "pending", None)] * 2
        + [ReviewRecord("de", "flag", "approved", 5.0)] * 4
        + [ReviewRecord("de", "halt", "approved", 20.0), ReviewRecord("de", "halt", "rejected", 40.0)]
    )
    out = review_sections(records, intervals=IntervalOptions(confidence=0.9, n_boot=200))
    en, de = (next(g for g in out["groups"] if g["group"] == name) for name in ("en", "de"))
    assert (en["n"], en["flagged"], en["in_review"], en["decided"], en["open"]) == (12, 6, 6, 4, 2)
    assert en["sent_to_review"] == rate_estimate(6, 12, 0.9).to_dict()
    assert en["flags_reviewed"]["value"] == 4 / 6 and en["flag_approval_rate"]["value"] == 3 / 4
    assert en["rejection_rate"] == rate_estimate(1, 4, 0.9).to_dict()
    assert en["halt_overturn_rate"]["value"] is None  # no halts in en
    assert en["median_time_to_review_s"]["value"] == 10.0
    assert de["halt_overturn_rate"] == rate_estimate(1, 2, 0.9).to_dict()
    assert de["flag_approval_rate"]["value"] == 1.0 and de["median_time_to_review_s"]["value"] == 5.0
    assert out["all"]["n"] == 18 and out["all"]["rejected"] == 2
    lo, hi = en["median_time_to_review_s"]["ci_low"], en["median_time_to_review_s"]["ci_high"]
    assert lo <= 10.0 <= hi
    assert review_sections([ReviewRecord("en", "continue", None, None)])["available"] is False


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_report_shows_review_sections_from_the_log(backend, request, tmp_path: Path) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    db.upgrade(url)
    approved = [gated(url, tmp_path, "acme", 1.5) for _ in range(3)]
    rejected = gated(url, tmp_path, "acme", 1.6, language="de")
    halted = gated(url, tmp_path, "acme", 2.5, language="de")
    gated(url, tmp_path, "acme", 0.5)
    with session_scope(url) as session:
        for job_id in approved:
            record_verdict(session, job_id, "acme", verdict="approve", reviewer="emg_a")
        record_verdict(session, rejected, "acme", verdict="reject", reviewer="simulated")
        record_verdict(session, halted, "acme", verdict="approve", reviewer="emg_a", note="fine")
    with session_scope(url) as session:
        sections = build_review_sections(session, intervals=IntervalOptions(n_boot=100))
        report = build_report(session, database=url)
    de = next(g for g in sections["groups"] if g["group"] == "de")
    assert (de["flagged"], de["halted"], de["decided"], de["rejected"]) == (1, 1, 2, 1)
    assert de["halt_overturn_rate"]["value"] == 1.0
    en = next(g for g in sections["groups"] if g["group"] == "en")
    assert (en["n"], en["sent_to_review"]["value"], en["flag_approval_rate"]["value"]) == (4, 0.75, 1.0)
    assert any("simulated" in n for n in sections["notes"])
    assert report["reviews"]["all"]["decided"] == 5
    html = render_html(report)
    assert 'id="review-sections"' in html and "halts overturned" in html
    assert json.loads(json.dumps(report["reviews"])) == report["reviews"]
