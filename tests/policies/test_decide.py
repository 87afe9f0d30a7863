"""decide(): at, just below and just above each threshold; language overrides; shadow mode; fingerprints."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from policies import DecisionContext, FingerprintMismatch, decide, parse_policy

FP = "cd" * 32


@dataclass
class S:
    score: float
    fingerprint: str = FP


def policy(**changes):
    data = {"name": "p", "version": "1", "fingerprint": FP, "flag_at": 1.0, "halt_at": 2.0}
    return parse_policy({**data, **changes})


@pytest.mark.parametrize(
    ("score", "action", "rule"),
    [
        (0.0, "continue", "below_flag_at"),
        (math.nextafter(1.0, 0), "continue", "below_flag_at"),
        (1.0, "continue", "below_flag_at"),  # at flag_at: fires only strictly above
        (math.nextafter(1.0, 3), "flag", "flag_at"),
        (math.nextafter(2.0, 0), "flag", "flag_at"),
        (2.0, "flag", "flag_at"),  # at halt_at
        (math.nextafter(2.0, 3), "halt", "halt_at"),
        (1e9, "halt", "halt_at"),
    ],
)
def test_thresholds(score: float, action: str, rule: str) -> None:
    decision = decide(S(score), DecisionContext(), policy())
    assert (decision.action, decision.rule, decision.shadow_action) == (action, rule, None)
    assert decision.threshold == (2.0 if action == "halt" else 1.0)
    assert (decision.flag_at, decision.halt_at) == (1.0, 2.0)


def test_decision_names_the_policy() -> None:
    p = policy()
    decision = decide(S(1.5), DecisionContext(), p)
    assert (decision.policy_name, decision.policy_version, decision.policy_hash) == ("p", "1", p.hash)
    assert decision.policy_id == p.id and decision.mode == "enforce"
    assert "1.5 > flag_at 1" in decision.reason


@pytest.mark.parametrize(
    ("language", "score", "action", "rule"),
    [
        ("de", 2.5, "flag", "languages.de.flag_at"),  # de halts only above 3
        ("de", 3.5, "halt", "languages.de.halt_at"),
        ("de-AT", 2.5, "flag", "languages.de.flag_at"),  # falls back to the primary subtag
        ("pt_BR", 1.2, "continue", "languages.pt-br.below_flag_at"),
        ("pt", 1.2, "flag", "flag_at"),  # no override for plain pt
        (None, 2.5, "halt", "halt_at"),
        ("en", 2.5, "halt", "halt_at"),
    ],
)
def test_language_overrides(language: str | None, score: float, action: str, rule: str) -> None:
    p = policy(languages={"de": {"halt_at": 3.0}, "pt-br": {"flag_at": 1.25, "halt_at": 2.5}})
    decision = decide(S(score), DecisionContext(language=language), p)
    assert (decision.action, decision.rule) == (action, rule)


@pytest.mark.parametrize(("score", "would"), [(0.5, "continue"), (1.5, "flag"), (2.5, "halt")])
def test_shadow_mode_always_continues_and_records_what_it_would_do(score: float, would: str) -> None:
    decision = decide(S(score), DecisionContext(), policy(mode="shadow"))
    assert decision.action == "continue"
    assert decision.shadow_action == would
    assert decision.mode == "shadow" and decision.reason.startswith(f"shadow mode, would {would}")


def test_a_score_from_another_scoring_configuration_is_refused() -> None:
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        decide(S(0.1, fingerprint="ee" * 32), DecisionContext(), policy())


def test_a_non_finite_score_is_refused() -> None:
    with pytest.raises(ValueError, match="score: must be a finite number"):
        decide(S(math.nan), DecisionContext(), policy())
