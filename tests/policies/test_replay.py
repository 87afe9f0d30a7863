"""Replay of a fixed log under a new policy: counts per action, from→to, per language, other fingerprints."""

from __future__ import annotations

from policies import parse_policy
from policies.replay import ReplayRecord, format_summary, replay

FP, OTHER = "1a" * 32, "2b" * 32

LOG = [
    ReplayRecord(0.5, FP, "en", "continue"),
    ReplayRecord(1.5, FP, "en", "continue"),  # old policy flagged above 2: now flag
    ReplayRecord(2.5, FP, "en", "flag"),  # now halt
    ReplayRecord(3.5, FP, "en", "halt"),
    ReplayRecord(1.5, FP, "de", "continue"),  # de override: flag only above 1.8 -> stays continue
    ReplayRecord(2.5, FP, "de", "flag"),  # de: 1.8 < 2.5 <= 3.0 -> flag
    ReplayRecord(9.0, FP, None, "halt"),
    ReplayRecord(9.0, OTHER, "en", "continue"),  # scored under another configuration: not replayed
]


def new_policy(mode: str = "enforce"):
    return parse_policy(
        {
            "name": "new",
            "version": "2",
            "fingerprint": FP,
            "mode": mode,
            "flag_at": 1.0,
            "halt_at": 2.0,
            "languages": {"de": {"flag_at": 1.8, "halt_at": 3.0}},
        }
    )


def test_replay_counts() -> None:
    summary = replay(LOG, new_policy())
    assert (summary.total, summary.replayed, summary.skipped_fingerprint) == (8, 7, 1)
    assert summary.before == {"continue": 3, "flag": 2, "halt": 2}
    assert summary.after == {"continue": 2, "flag": 2, "halt": 3}
    assert summary.transitions == {
        "continue": {"continue": 2, "flag": 1},
        "flag": {"flag": 1, "halt": 1},
        "halt": {"halt": 2},
    }
    assert summary.changed == 2
    assert summary.by_language["de"] == {
        "total": 2,
        "before": {"continue": 1, "flag": 1},
        "after": {"continue": 1, "flag": 1},
        "changed": 0,
    }
    assert summary.by_language["en"]["changed"] == 2
    assert summary.by_language["unknown"]["after"] == {"halt": 1}


def test_shadow_policy_replays_what_it_would_do() -> None:
    assert replay(LOG, new_policy("shadow")).after == replay(LOG, new_policy()).after


def test_format_summary_prints_the_tables() -> None:
    text = format_summary(replay(LOG, new_policy()))
    assert "7 of 8 stored decisions replayed, 2 would change, 1 skipped" in text
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("continue") and len(line.split()) == 4)
    assert row.split() == ["continue", "2", "1", "0"]  # the from→to row of continue
    assert any(line.startswith("de ") for line in lines)
