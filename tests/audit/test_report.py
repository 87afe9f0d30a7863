"""The fairness report built from a real database: numbers, notes, and the HTML agreeing with the JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from audit import db
from audit.report import (
    NO_QUALITY,
    ReportOptions,
    build_report,
    fmt,
    render_csv,
    render_html,
    render_json,
)
from audit.report_queries import parse_since
from tests.audit.report_seed import seed


def make_db(url: str) -> None:
    if db.is_sqlite(url):
        db.ensure_schema(url)
    else:
        db.upgrade(url)


ROWS = [
    *(
        {"language": "en", "score": s, "action": a, "prompt": p, "minutes": i * 60}
        for i, (s, a, p) in enumerate(
            [
                (0.1, "continue", "a pizza on a table"),
                (0.2, "flag", "a dog"),
                (0.3, "halt", "two cats"),
                (0.4, "continue", "pizza"),
            ]
        )
    ),
    {"language": "fi", "score": 0.9, "action": "halt", "prompt": "pizzaa", "minutes": 300},
    *(
        {"language": "zz", "score": 0.0, "action": "continue", "prompt": "x", "minutes": 400 + i}
        for i in range(3)
    ),
]


@pytest.fixture
def sqlite_db(sqlite_url: str) -> str:
    make_db(sqlite_url)
    seed(db.get_engine(sqlite_url), ROWS)
    yield sqlite_url
    db.dispose_engine(sqlite_url)


def build(url: str, **kw) -> dict:
    with db.session_scope(url) as session:
        return build_report(session, ReportOptions(**kw), database="test")


def test_report_numbers_from_the_database(sqlite_db: str) -> None:
    rep = build(sqlite_db, keywords=("pizza",), min_group_size=3)
    assert rep["n_decisions"] == 8 and rep["n_shadow"] == 0
    groups = {g["group"]: g for g in rep["fairness"]["groups"]}
    assert groups["en"]["n"] == 4 and groups["en"]["mean_score"]["value"] == pytest.approx(0.25)
    assert groups["en"]["halt_rate"]["value"] == 0.25 and groups["fi"]["halts"] == 1
    assert groups["zz"]["mean_score"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "method": "bootstrap"}
    assert groups["fi"]["disparity"]["halt_rate_difference"]["value"] == pytest.approx(0.75)
    # prompt lengths come from the jobs table: en Q1 = "a pizza on a table" (18 chars, 5 words)
    en_q = rep["quartiles"]["groups"]["en"]
    assert en_q[0]["n"] == 1 and en_q[0]["mean_chars"]["value"] == 18 and en_q[0]["mean_words"]["value"] == 5
    assert "fi" not in rep["quartiles"]["groups"]  # fewer than 4 decisions
    (kw,) = rep["keywords"]
    en_kw = next(s for s in kw["groups"] if s["group"] == "en")
    assert (en_kw["n_keyword"], en_kw["n_keyword_q1"]) == (2, 1)
    # no artifacts with quality: said plainly, nothing invented
    assert rep["quality"] == {"available": False, "n": 0, "metrics": [], "note": NO_QUALITY}
    assert rep["correlation"]["r"]["value"] is None
    assert all(g["mean_quality"]["value"] is None for g in rep["fairness"]["groups"])
    assert rep["over_time"]["bucket"] == "hour"
    assert sum(r["continue"] + r["flag"] + r["halt"] for r in rep["over_time"]["rows"]) == 8
    assert rep["over_time"]["rows"][0] == {"t": "2026-01-01T00:00", "continue": 1, "flag": 0, "halt": 0}
    assert rep["policies"][0]["decisions"] == 8
    json.loads(render_json(rep))  # strict JSON: no NaN


def test_every_estimate_has_its_interval_beside_it(sqlite_db: str) -> None:
    rep = build(sqlite_db)

    def walk(node) -> int:
        found = 0
        if isinstance(node, dict):
            if "value" in node and "method" in node:
                assert "ci_low" in node and "ci_high" in node
                return 1
            return sum(walk(v) for v in node.values())
        if isinstance(node, list):
            return sum(walk(v) for v in node)
        return found

    assert walk(rep) > 50


def test_since_and_label_grouping_and_shadow(sqlite_url: str) -> None:
    make_db(sqlite_url)
    rows = [
        {"language": "en", "score": 1.0, "action": "continue", "labels": {"region": "north"}, "minutes": 0},
        {
            "language": "en",
            "score": 2.0,
            "action": "continue",
            "labels": {"region": "south"},
            "minutes": 60 * 24 * 10,
            "policy_mode": "shadow",
            "shadow_action": "halt",
        },
        {"language": "de", "score": 3.0, "action": "halt", "labels": {}, "minutes": 60 * 24 * 20},
    ]
    seed(db.get_engine(sqlite_url), rows)
    rep = build(sqlite_url, group_by="region", reference="north")
    groups = {g["group"]: g for g in rep["fairness"]["groups"]}
    assert set(groups) == {"north", "south", "unknown"}
    assert groups["south"]["halts"] == 1  # shadow decision counts what it would have done
    assert rep["n_shadow"] == 1 and any("shadow mode" in n for n in rep["notes"])
    assert rep["over_time"]["bucket"] == "day"
    seed(
        db.get_engine(sqlite_url),
        [{"language": "en", "score": 1.0, "action": "flag", "minutes": 60 * 24 * 400}],
    )
    months = build(sqlite_url)["over_time"]
    assert months["bucket"] == "month" and [r["t"] for r in months["rows"]] == ["2026-01", "2027-02"]
    later = build(sqlite_url, since=parse_since("2026-01-05"), group_by="region")
    assert later["n_decisions"] == 3
    assert sum(r["halt"] for r in later["over_time"]["rows"]) == 2
    db.dispose_engine(sqlite_url)


def test_parse_since_and_bad_group_by() -> None:
    assert parse_since("2026-02-03") == datetime(2026, 2, 3, tzinfo=UTC)
    assert parse_since("2026-02-03T04:05") == datetime(2026, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="since"):
        parse_since("last tuesday")
    from audit.report_queries import check_group_by

    with pytest.raises(ValueError, match="group_by"):
        check_group_by("x'; drop table")


class _Tables(HTMLParser):
    """Collects the text of each <td> per <tr> of the table with a given id, and the embedded JSON."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell, self.in_cell = table_id, False, [], None, False
        self.in_warn, self.in_data, self.data = False, False, ""

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self.in_cell, self.cell = True, ""
        elif self.inside and tag == "div":
            self.in_warn = True
        elif tag == "script" and attrs.get("id") == "report-data":
            self.in_data = True

    def handle_endtag(self, tag) -> None:
        if tag == "table":
            self.inside = False
        elif self.inside and tag == "td":
            self.rows[-1].append(self.cell.strip())
            self.in_cell = False
        elif tag == "div":
            self.in_warn = False
        elif tag == "script":
            self.in_data = False

    def handle_data(self, data) -> None:
        if self.in_cell and not self.in_warn:
            self.cell += data
        if self.in_data:
            self.data += data


def _pct(est: dict) -> str:
    """A rate as the report prints it, computed here independently: '25.0 %[4.6, 69.9]'."""
    if est["value"] is None:
        return "–"
    ci = (
        "no interval" if est["ci_low"] is None else f"[{100 * est['ci_low']:.1f}, {100 * est['ci_high']:.1f}]"
    )
    return f"{100 * est['value']:.1f} %{ci}"


def _pp(est: dict | None) -> str:
    if est is None or est["value"] is None:
        return "–"
    lo, hi = (f"{100 * est[k]:+.1f}".replace("-", "\u2212") for k in ("ci_low", "ci_high"))
    return f"{100 * est['value']:+.1f} pp".replace("-", "\u2212") + f"[{lo}, {hi}]"


def _ratio(est: dict | None) -> str:
    if est is None or est["value"] is None:
        return "–"
    return f"{est['value']:.2f}[{est['ci_low']:.2f}, {est['ci_high']:.2f}]"


def test_html_agrees_with_json(sqlite_db: str) -> None:
    rep = build(sqlite_db, keywords=("pizza",))
    html = render_html(rep)
    parser = _Tables("disparity")
    parser.feed(html)
    assert json.loads(parser.data) == rep  # the embedded data is the report itself
    rows = [r for r in parser.rows if r]
    assert len(rows) == len(rep["fairness"]["groups"])
    for cells, g in zip(rows, rep["fairness"]["groups"], strict=True):
        d = g["disparity"] or {}
        name = g["group"] + (" (reference)" if g["is_reference"] else "")
        expected = [name, fmt(g["n"])]
        for key in ("halt", "flag"):
            expected += [_pct(g[f"{key}_rate"]), _pp(d.get(f"{key}_rate_difference"))]
            expected.append(_ratio(d.get(f"{key}_rate_ratio")))
        assert cells == expected
    # fi halts 1 of 1 and en 1 of 4: ratio 4; zz halts none: its ratio is 0, and the '–'s say why
    zz = next(g for g in rep["fairness"]["groups"] if g["group"] == "zz")
    assert zz["disparity"]["halt_rate_ratio"]["value"] == 0.0
    assert 'title="this is the reference group"' in html
    # the full table, behind its toggle, has every estimate of every group
    full = _Tables("fairness")
    full.feed(html)
    rows = [r for r in full.rows if r]
    for cells, g in zip(rows, rep["fairness"]["groups"], strict=True):
        assert (
            cells[0] == g["group"] and cells[4] == _pct(g["halt_rate"]) and cells[5] == _pct(g["flag_rate"])
        )
        assert cells[2] == fmt(g["mean_score"]["value"]) + (
            f"[{fmt(g['mean_score']['ci_low'])}, {fmt(g['mean_score']['ci_high'])}]"
            if g["mean_score"]["ci_low"] is not None
            else "no interval"
        )
    assert '<details id="full-table">' in html
    parity = rep["fairness"]["parity"]
    assert parity["halt"]["difference"]["value"] == 1.0  # fi 100 %, zz 0 %
    assert parity["halt"]["highest"] == "fi" and parity["halt"]["lowest"] == "zz"
    q = _Tables("quartiles-all")
    q.feed(html)
    assert [r[1] for r in q.rows if r] == [fmt(r["n"]) for r in rep["quartiles"]["all"]]
    assert NO_QUALITY in html
    assert html.count("data:image/png;base64,") == 3  # distribution, rates, over time: no quality plots
    assert "<link" not in html and 'src="http' not in html  # self-contained


def test_report_with_quality_draws_quality_plots(sqlite_url: str) -> None:
    make_db(sqlite_url)
    rows = []
    for i, (lang, base, q) in enumerate([("en", 0.2, 31), ("fi", 0.5, 16), ("de", 0.3, 28), ("ja", 0.6, 12)]):
        rows += [
            {
                "language": lang,
                "score": base + 0.01 * k,
                "action": "continue",
                "quality": q + k,
                "minutes": i * 100 + k,
            }
            for k in range(6)
        ]
    seed(db.get_engine(sqlite_url), rows)
    rep = build(sqlite_url)
    assert rep["quality"]["available"] and rep["quality"]["metrics"] == ["clip_score"]
    assert rep["quality"]["note"] is None
    en = next(g for g in rep["fairness"]["groups"] if g["group"] == "en")
    assert en["mean_quality"]["value"] == pytest.approx(33.5) and en["quality_n"] == 6
    r = rep["correlation"]["r"]
    assert r["value"] < -0.9 and r["ci_low"] <= r["value"] <= r["ci_high"]
    html = render_html(rep)
    assert html.count("data:image/png;base64,") == 5
    assert NO_QUALITY not in html
    db.dispose_engine(sqlite_url)


def test_csv_has_one_row_per_group_with_intervals(sqlite_db: str) -> None:
    rep = build(sqlite_db)
    rows = list(csv.DictReader(io.StringIO(render_csv(rep))))
    assert [r["group"] for r in rows] == ["en", "fi", "zz"]
    en = rows[0]
    assert float(en["mean_score"]) == pytest.approx(0.25)
    assert float(en["halt_rate.ci_low"]) < 0.25 < float(en["halt_rate.ci_high"])
    assert rows[1]["mean_score.ci_low"] == ""  # group of one: no interval, not a made-up one
    assert "too few" in rows[1]["warnings"]


def test_empty_database_report(sqlite_url: str) -> None:
    make_db(sqlite_url)
    rep = build(sqlite_url)
    assert rep["n_decisions"] == 0 and "No decisions match these filters." in rep["notes"]
    assert "data:image/png" not in render_html(rep)
    db.dispose_engine(sqlite_url)


@pytest.mark.postgres
def test_report_on_postgresql(pg_url: str) -> None:
    make_db(pg_url)
    seed(db.get_engine(pg_url), ROWS)
    rep = build(pg_url, keywords=("pizza",))
    assert rep["n_decisions"] == 8
    assert build(pg_url, since=parse_since("2026-01-01T04:00"), tenant="t")["n_decisions"] == 4
    assert build(pg_url, tenant="nobody")["n_decisions"] == 0
    seed(
        db.get_engine(pg_url),
        [{"language": "de", "score": 2.0, "action": "halt", "labels": {"region": "eu"}}],
    )
    by_region = {g["group"]: g["n"] for g in build(pg_url, group_by="region")["fairness"]["groups"]}
    assert by_region == {"eu": 1, "unknown": 8}
    assert rep["over_time"]["rows"][0] == {"t": "2026-01-01T00:00", "continue": 1, "flag": 0, "halt": 0}
    lite = {g["group"]: g["mean_score"]["value"] for g in rep["fairness"]["groups"]}
    assert lite == pytest.approx({"en": 0.25, "fi": 0.9, "zz": 0.0})
