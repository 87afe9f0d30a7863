"""The service commands: `keys create` (key on the last line), `worker` refusing embedded mode, and `demo`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_keys_create_prints_a_working_key_on_its_last_line(tmp_path, monkeypatch) -> None:
    from audit.db import session_scope
    from audit.keys import find_key

    url = f"sqlite:///{tmp_path / 'keys.db'}"  # a fresh embedded database: the command migrates it itself
    result = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--role", "read", "--db", url])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    with session_scope(url) as session:
        row = find_key(session, key)
        assert (row.tenant, row.role) == ("acme", "read")
    bad = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--role", "admin", "--db", url])
    assert bad.exit_code == 2 and "role must be one of" in bad.output
    bad = runner.invoke(app, ["keys", "create", "--tenant", "no spaces", "--db", url])
    assert bad.exit_code == 2 and "tenant" in bad.output


def test_worker_needs_a_broker(monkeypatch) -> None:
    from settings import get_settings

    monkeypatch.delenv("EMOE_BROKER_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["worker"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "EMOE_BROKER_URL" in result.output


def test_keys_list_and_revoke(tmp_path) -> None:
    from audit.db import session_scope
    from audit.keys import find_key

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    made = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--db", url])
    key = made.output.strip().splitlines()[-1]
    other = runner.invoke(app, ["keys", "create", "--tenant", "globex", "--role", "read", "--db", url])
    listed = runner.invoke(app, ["keys", "list", "--tenant", "acme", "--db", url])
    assert listed.exit_code == 0, listed.output
    assert key[:12] in listed.output and "globex" not in listed.output and key not in listed.output
    revoked = runner.invoke(app, ["keys", "revoke", key[:12], "--db", url])
    assert revoked.exit_code == 0 and "revoked 1 key" in revoked.output
    with session_scope(url) as session:
        assert find_key(session, key) is None  # the revoked key no longer authenticates
        assert find_key(session, other.output.strip().splitlines()[-1]) is not None
    again = runner.invoke(app, ["keys", "revoke", key[:12], "--db", url])
    assert again.exit_code == 1 and "no live key" in again.output
    everything = runner.invoke(app, ["keys", "list", "--db", url])
    assert "globex" in everything.output and everything.output.count("emg_") == 2


@pytest.mark.slow
def test_demo_runs_the_whole_path_and_writes_the_report(tmp_path, monkeypatch, tiny_runtime) -> None:
    import workers.runtime

    # the session's tiny ensemble and test policy, instead of loading them again
    monkeypatch.setattr(workers.runtime, "load_runtime", lambda settings: tiny_runtime)
    out = tmp_path / "demo-out"
    result = runner.invoke(app, ["demo", "--limit", "8", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs"] == 8 and summary["audit_chain_ok"] is True
    assert sum(summary["by_action"].values()) == 8
    # the first 8 bundled prompts: one scene in each of the reference world's 7 languages, then English again
    assert set(summary["by_language"]) == {"en", "es", "fi", "de", "fr", "it", "nl"}
    rendered = [r for r in summary["results"] if r["status"] == "completed"]
    assert summary["images"] == len(rendered) > 0
    assert all(len(r["images"]) == 1 for r in rendered)
    assert all(r["images"] == [] for r in summary["results"] if r["status"] == "halted")
    assert "decisions by language" in result.output


@pytest.mark.slow
def test_demo_on_the_reference_ensemble_scores_quality_against_english(tmp_path, monkeypatch) -> None:
    from sqlalchemy import select

    from audit.db import session_scope
    from audit.models import Artifact, Job

    monkeypatch.setenv("EMOE_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo-out"
    result = runner.invoke(app, ["demo", "--limit", "8", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Reference ensemble" in result.output and "reference world's CLIP" in result.output
    with session_scope(f"sqlite:///{out / 'emoe-demo.db'}") as session:
        artifacts = session.scalars(select(Artifact)).all()
        assert artifacts
        assert all(a.quality_metric == "clip_score" and a.quality is not None for a in artifacts)
        fi = session.scalars(select(Job).where(Job.language == "fi")).one()
        assert fi.labels["reference_text"] == "a small red circle on the left"  # the English of its scene
    report = json.loads((out / "summary.json").read_text())
    assert report["images"] == len(artifacts)
    # what is not the paper is said where the scores are shown: console, summary.json, the HTML report
    named = "scoring: whole expert paths, noise-prediction variance \u2014 not the paper's split and latent"
    assert named in result.output and report["scoring"].startswith(named)
    assert named in (out / "report.html").read_text(encoding="utf-8")
