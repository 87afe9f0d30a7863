"""Replay: apply a policy to stored scores and count what would change (overall, from→to, per language), and,
for jobs reviewers judged, how many rejected ones it would let through and how many approved ones it stops."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from policies.decision import ACTIONS, DecisionContext, decide, effective_action
from policies.policy import Policy


@dataclass(frozen=True)
class ReplayRecord:
    """One stored decision: its score, the scoring fingerprint, the language, the action taken then, and the
    reviewers' final verdict on the job (`approved`, `rejected`; None if not decided by a reviewer)."""

    score: float
    fingerprint: str
    language: str | None
    action: str
    review: str | None = None


@dataclass
class ReplaySummary:
    """What the policy would have done. `after` counts the would-be action (also in shadow mode)."""

    policy_id: str
    total: int = 0
    replayed: int = 0
    skipped_fingerprint: int = 0
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, dict[str, int]] = field(default_factory=dict)
    by_language: dict[str, dict[str, Any]] = field(default_factory=dict)
    # reviewed jobs: rejected (let through: would continue) and approved (stopped: would halt; held: flag)
    reviewed: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("rejected", "rejected_let_through", "approved", "approved_stopped", "approved_held"), 0
        )
    )

    @property
    def changed(self) -> int:
        return sum(n for a, row in self.transitions.items() for b, n in row.items() if a != b)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def replay(records: Iterable[ReplayRecord], policy: Policy) -> ReplaySummary:
    """Decide every record again under `policy`; records of another fingerprint are counted, not decided."""
    summary = ReplaySummary(policy_id=policy.id)
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    transitions: dict[str, Counter[str]] = defaultdict(Counter)
    languages: dict[str, dict[str, Counter[str]]] = defaultdict(
        lambda: {"before": Counter(), "after": Counter()}
    )
    changed_by_language: Counter[str] = Counter()

    for record in records:
        summary.total += 1
        if record.fingerprint != policy.fingerprint:
            summary.skipped_fingerprint += 1
            continue
        decision = decide(record, DecisionContext(language=record.language), policy)
        new_action = effective_action(decision)
        lang = record.language or "unknown"
        summary.replayed += 1
        before[record.action] += 1
        after[new_action] += 1
        transitions[record.action][new_action] += 1
        languages[lang]["before"][record.action] += 1
        languages[lang]["after"][new_action] += 1
        changed_by_language[lang] += record.action != new_action
        if record.review == "rejected":
            summary.reviewed["rejected"] += 1
            summary.reviewed["rejected_let_through"] += new_action == "continue"
        elif record.review == "approved":
            summary.reviewed["approved"] += 1
            summary.reviewed["approved_stopped"] += new_action == "halt"
            summary.reviewed["approved_held"] += new_action == "flag"

    summary.before = _ordered(before)
    summary.after = _ordered(after)
    summary.transitions = {a: _ordered(transitions[a]) for a in _order(transitions)}
    summary.by_language = {
        lang: {
            "total": sum(languages[lang]["before"].values()),
            "before": _ordered(languages[lang]["before"]),
            "after": _ordered(languages[lang]["after"]),
            "changed": changed_by_language[lang],
        }
        for lang in sorted(languages)
    }
    return summary


def _order(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    return [a for a in ACTIONS if a in keys] + sorted(keys - set(ACTIONS))


def _ordered(counter: Counter[str]) -> dict[str, int]:
    return {a: counter[a] for a in _order(counter)}


def format_summary(summary: ReplaySummary) -> str:
    """The summary as plain-text tables (what `emoe-gate replay` prints)."""
    lines = [
        f"policy {summary.policy_id}: {summary.replayed} of {summary.total} stored decisions replayed, "
        f"{summary.changed} would change"
        + (
            f", {summary.skipped_fingerprint} skipped (scored under another fingerprint)"
            if summary.skipped_fingerprint
            else ""
        ),
        "",
        f"{'action':<10}{'before':>10}{'after':>10}",
    ]
    for action in _order([*summary.before, *summary.after, *ACTIONS]):
        lines.append(f"{action:<10}{summary.before.get(action, 0):>10}{summary.after.get(action, 0):>10}")
    lines += ["", "from \\ to " + "".join(f"{a:>10}" for a in ACTIONS)]
    for source in _order([*summary.transitions, *ACTIONS]):
        row = summary.transitions.get(source, {})
        lines.append(f"{source:<10}" + "".join(f"{row.get(a, 0):>10}" for a in ACTIONS))
    r = summary.reviewed
    if r["rejected"] or r["approved"]:
        lines += [
            "",
            f"reviewed jobs: {r['rejected_let_through']} of {r['rejected']} rejected would be let through "
            f"(continue unreviewed); {r['approved_stopped']} of {r['approved']} approved would be stopped "
            f"(halt), {r['approved_held']} held for review again (flag)",
        ]
    if summary.by_language:
        header = f"{'language':<10}{'total':>7}{'changed':>9}  " + "  ".join(
            f"{a + ' b→a':>14}" for a in ACTIONS
        )
        lines += ["", header]
        for lang, row in summary.by_language.items():
            cells = "  ".join(f"{row['before'].get(a, 0):>6} → {row['after'].get(a, 0):<5}" for a in ACTIONS)
            lines.append(f"{lang:<10}{row['total']:>7}{row['changed']:>9}  {cells}")
    return "\n".join(lines)
