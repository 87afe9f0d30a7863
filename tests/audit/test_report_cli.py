"""`emoe-gate report`: writes each format from a real database and names bad options."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from audit import db
from cli.main import app
from tests.audit.report_seed import seed

runner = CliRunner()


def test_report_command_writes_each_format(sqlite_url: str, tmp_path) -> None:
    db.ensure_schema(sqlite_url)
    rows = [
        {
            "language": lang,
            "score": 0.1 * i,
            "action": "halt" if i % 3 == 0 else "continue",
            "prompt": "a pizza",
        }
        for i in range(12)
        for lang in ("en", "fi")
    ]
    seed(db.get_engine(sqlite_url), rows)
    for fmt in ("json", "csv", "html"):
        out = tmp_path / f"report.{fmt}"
        res = runner.invoke(
            app, ["report", "--db", sqlite_url, "--format", fmt, "--out", str(out), "--keyword", "pizza"]
        )
        assert res.exit_code == 0, res.output
        assert "24 decisions in 2 groups" in res.output and "no quality scores" in res.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["n_decisions"] == 24 and data["keywords"][0]["keyword"] == "pizza"
    assert (tmp_path / "report.csv").read_text().count("\n") == 3
    assert '<table id="fairness">' in (tmp_path / "report.html").read_text()
    db.dispose_engine(sqlite_url)


def test_report_command_names_bad_options(sqlite_url: str, tmp_path) -> None:
    out = str(tmp_path / "r")
    res = runner.invoke(app, ["report", "--db", sqlite_url, "--format", "pdf", "--out", out])
    assert res.exit_code == 2 and "--format" in res.output
    res = runner.invoke(app, ["report", "--db", sqlite_url, "--since", "yesterday", "--out", out])
    assert res.exit_code == 2 and "since" in res.output
    res = runner.invoke(app, ["report", "--db", sqlite_url, "--group-by", "a b", "--out", out])
    assert res.exit_code == 2 and "group_by" in res.output
    db.dispose_engine(sqlite_url)


def test_report_reference_is_a_group_that_exists(sqlite_url: str, tmp_path) -> None:
    db.ensure_schema(sqlite_url)
    rows = [
        {
            "language": lang,
            "score": 0.1 * i,
            "action": "halt" if i % 2 else "continue",
            "labels": {"region": r},
        }
        for i, (lang, r) in enumerate([("en", "eu"), ("fi", "eu"), ("fi", "eu"), ("en", "us")])
    ]
    seed(db.get_engine(sqlite_url), rows)
    out = tmp_path / "r.json"
    base = ["report", "--db", sqlite_url, "--format", "json", "--out", str(out)]
    res = runner.invoke(app, [*base, "--reference", "sv"])
    assert res.exit_code == 2 and "no language group 'sv'" in res.output and "groups: en, fi" in res.output
    assert not out.exists()
    # grouped by a label, the default reference `en` is no value: the largest group is, and the report says so
    res = runner.invoke(app, [*base, "--group-by", "region"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["settings"]["reference"] == "eu" and data["settings"]["reference_requested"] is None
    assert data["fairness"]["reference_present"]
    assert (
        "Reference group: 'en' is not one of these groups: compared with 'eu', the largest group."
        in data["notes"]
    )
    res = runner.invoke(app, [*base, "--group-by", "region", "--reference", "us"])
    assert res.exit_code == 0 and json.loads(out.read_text())["settings"]["reference"] == "us"
    db.dispose_engine(sqlite_url)
