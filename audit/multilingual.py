"""Parallel multilingual prompts built offline from the `clip-benchmark` wheel, a resumable result store, and
the evaluation run over them (`emoe-gate eval multilingual`; the scorer is passed in, audit imports no emoe).

Prompts: the wheel's CLIP prompt templates machine-translated into ~90 languages (`nllb_dist13b_prompts.json`,
80 templates per language, in the same order as the English ones) filled with its ImageNet class names in 93
languages (`babel_imagenet.json`). Item k is the same (template, class) pair in every language, so the prompt
sets are parallel, and each item carries its English version (the paper scores quality against English text).

The data files are found with `importlib.util.find_spec`, without importing clip_benchmark (its package
imports torch and torchvision datasets).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from audit.fairness import Records
from policies import (
    DecisionContext,
    FingerprintMismatch,
    Policy,
    PolicyError,
    bundled_policy_path,
    decide,
    effective_action,
    load_policy,
)

# 25 languages from several families and scripts, high- and low-resource (the paper used 25)
DEFAULT_LANGUAGES = tuple(
    "en de fr es it pt nl sv fi pl cs hu ro tr ru uk el ar he hi bn zh ja ko vi".split()  # noqa: SIM905
)
MIN_LANGUAGES = 20
PROMPTS_FILE = "nllb_dist13b_prompts.json"
CLASSES_FILE = "babel_imagenet.json"


class DataNotFound(RuntimeError):
    """The clip-benchmark wheel (or one of its data files) is not installed."""


def data_dir() -> Path:
    """The folder of clip-benchmark's data files, located without importing the package."""
    spec = importlib.util.find_spec("clip_benchmark")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFound(
            "clip-benchmark is not installed: `pip install --no-deps clip-benchmark` (its data files hold "
            "the translated prompts)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets"
    for name in (PROMPTS_FILE, CLASSES_FILE):
        if not (folder / name).is_file():
            raise DataNotFound(f"clip-benchmark is installed but {folder / name} is missing")
    return folder


@dataclass(frozen=True)
class PromptItem:
    """One prompt of the parallel set."""

    id: str  # "<language>:<item>"
    item: int  # the same item number in every language
    language: str  # ISO 639-1, lower case
    prompt: str
    english: str  # the English prompt of the same item (quality is judged against it)
    template: int
    class_index: int


def _fill(template: str, name: str) -> str:
    text = template.replace("{c}", name).replace("{}", name)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([.,:;!?])", r"\1", text)  # the translated templates pad the slot with spaces


def available_languages(folder: Path | None = None) -> list[str]:
    """Languages that have both translated templates and class names."""
    folder = folder or data_dir()
    templates = json.loads((folder / PROMPTS_FILE).read_text(encoding="utf-8"))
    classes = json.loads((folder / CLASSES_FILE).read_text(encoding="utf-8"))
    return sorted(k.lower() for k in set(templates) & set(classes))


def build_prompts(
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    per_language: int = 40,
    *,
    seed: int = 0,
    folder: Path | None = None,
) -> list[PromptItem]:
    """`per_language` parallel prompts per language: the same seeded (template, class) pairs in each."""
    if per_language < 1:
        raise ValueError(f"per_language: must be at least 1, got {per_language}")
    langs = [lang.strip().lower() for lang in languages]
    if len(set(langs)) != len(langs):
        raise ValueError(f"languages: {langs} has duplicates")
    if "en" not in langs:
        langs = ["en", *langs]  # the English text is what quality is judged against
    folder = folder or data_dir()
    templates = json.loads((folder / PROMPTS_FILE).read_text(encoding="utf-8"))
    classes = json.loads((folder / CLASSES_FILE).read_text(encoding="utf-8"))
    missing = [lang for lang in langs if lang.upper() not in templates or lang.upper() not in classes]
    if missing:
        known = ", ".join(available_languages(folder))
        raise ValueError(f"languages: no clip-benchmark data for {missing}; available: {known}")
    # 1. classes named in every chosen language, and templates every language has
    names = {lang: dict(zip(*classes[lang.upper()], strict=True)) for lang in langs}
    shared = sorted(set.intersection(*(set(n) for n in names.values())))
    n_templates = min(len(templates[lang.upper()]) for lang in langs)
    pairs = [(t, c) for t in range(n_templates) for c in shared]
    if per_language > len(pairs):
        raise ValueError(f"per_language: at most {len(pairs)} parallel prompts exist for these languages")
    # 2. the same seeded sample of (template, class) pairs in every language
    chosen = random.Random(seed).sample(pairs, per_language)
    out = []
    for item, (t, c) in enumerate(chosen):
        english = _fill(templates["EN"][t], names["en"][c])
        for lang in langs:
            out.append(
                PromptItem(
                    id=f"{lang}:{item}",
                    item=item,
                    language=lang,
                    prompt=_fill(templates[lang.upper()][t], names[lang][c]),
                    english=english,
                    template=t,
                    class_index=c,
                )
            )
    return out


def prompts_hash(items: Iterable[PromptItem]) -> str:
    """sha256 of the prompt set (a resumed run must be scoring the same prompts)."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(asdict(it), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


# --- resumable results ---


class ResultStore:
    """`run.json` (what is measured) and `scores.jsonl` (one line per scored prompt, appended and flushed).

    Re-running with the same run description skips prompts already scored; a different one is refused, naming
    the field that differs, so a folder never mixes two ensembles or scoring configurations.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.run_path = self.folder / "run.json"
        self.scores_path = self.folder / "scores.jsonl"

    def open(self, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Start or resume; returns the results already stored, by prompt id."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.run_path.is_file():
            stored = json.loads(self.run_path.read_text(encoding="utf-8"))
            for key in sorted(set(run) | set(stored)):
                if stored.get(key) != run.get(key):
                    raise ValueError(
                        f"{self.run_path}: field {key!r} was {stored.get(key)!r}, now {run.get(key)!r}: "
                        "use another --out folder to measure something else"
                    )
        else:
            self.run_path.write_text(json.dumps(run, indent=2, sort_keys=True), encoding="utf-8")
        return self.load()

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if not self.scores_path.is_file():
            return done
        with self.scores_path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run: it is scored again
                done[row["id"]] = row
        return done

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.scores_path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            f.flush()


def records_from_results(rows: Iterable[dict[str, Any]]) -> Records:
    """Fairness records (grouped by language) from stored results."""
    rows = list(rows)
    return Records.from_rows(
        {"group": r["language"], "score": r["score"], "action": r.get("action", "continue"),
         "prompt": r["prompt"], "quality": r.get("quality")}
        for r in rows
    )  # fmt: skip


def knowledge_note(summary: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    """What the report must say when the ensemble cannot know ImageNet words in these languages, or at all."""
    if summary.get("is_random"):
        return (
            f"The ensemble {summary.get('name')!r} has random weights: its experts know no words at all, so "
            "these scores say nothing about languages. Run this with a trained ensemble."
        )
    closed = (
        manifest.get("closed_world") or manifest.get("known_languages") or summary.get("name") == "reference"
    )
    if closed:
        known = manifest.get("known_languages")
        langs = f" (languages: {', '.join(known)})" if known else ""
        return (
            f"The ensemble {summary.get('name')!r} was trained only on its own closed world{langs}, not on "
            "ImageNet classes: every expert is equally ignorant of these words, and disagreement-based "
            "uncertainty cannot rise for what no expert knows. Low or similar scores across languages here "
            "are not evidence of fairness."
        )
    return None


# --- the evaluation run: what it measures, scoring what is left, the report ---


class MeasuredScore(Protocol):
    """What the store keeps of a gate score (`emoe.Score` has these)."""

    score: float
    eu: float
    fingerprint: str
    n_tokens: int
    truncated: bool


# a batch of prompts in; one score and one quality (None without a quality model) per prompt out
ScoreBatch = Callable[[Sequence[PromptItem]], tuple[Sequence[MeasuredScore], Sequence[float | None]]]

SOURCE_NOTE = (
    "Prompts are machine translations of CLIP templates filled with ImageNet class names "
    "(clip-benchmark): parallel across languages, but translation quality varies by language."
)
MISMATCH_NOTE = (
    "The policy in force was calibrated for another scoring configuration: halt and flag "
    "rates here are not meaningful (every prompt counts as 'continue')."
)


def run_description(
    items: Sequence[PromptItem],
    summary: dict[str, Any],
    score_config: dict[str, Any],
    *,
    per_language: int,
    seed: int,
    quality_model: str | None,
) -> dict[str, Any]:
    """The run a results folder holds (`run.json`): what a resumed run must measure the same."""
    return {
        "ensemble": summary["name"],
        "weights_hash": summary["weights_hash"],
        "score_config": {k: v for k, v in score_config.items() if k != "batch_size"},
        "prompts_sha256": prompts_hash(items),
        "per_language": per_language,
        "languages": sorted({it.language for it in items}),
        "seed": seed,
        "quality_model": quality_model,
    }


def eval_policy(policy_path: str | Path | None, dtype: str) -> tuple[Policy | None, str | None]:
    """The policy in force (the bundled one for `dtype` unless a path is set), or (None, why not)."""
    try:
        return load_policy(policy_path or bundled_policy_path(dtype)), None
    except (PolicyError, OSError) as exc:
        return None, f"No policy could be read ({exc}): halt and flag rates are not measured here."


def score_pending(
    todo: Sequence[PromptItem],
    store: ResultStore,
    score_batch: ScoreBatch,
    policy: Policy | None,
    *,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Score `todo` batch by batch, appending each batch to `store` as it finishes (a rerun resumes).

    Each row records what `policy` would do with its score; after the first score the policy refuses (another
    scoring configuration), every row is "continue" with no policy.
    """
    mismatch = False
    policy_id = policy.id if policy is not None else None
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        scores, quality = score_batch(batch)
        rows = []
        for it, sc, q in zip(batch, scores, quality, strict=True):
            action, mismatch = _would_do(sc, it.language, policy, mismatch)
            rows.append({**asdict(it), "score": sc.score, "eu": sc.eu, "fingerprint": sc.fingerprint,
                         "n_tokens": sc.n_tokens, "truncated": sc.truncated, "action": action,
                         "policy": None if mismatch else policy_id, "quality": q})  # fmt: skip
        store.append(rows)
        if on_batch is not None:
            on_batch(len(batch))


def _would_do(sc: MeasuredScore, language: str, policy: Policy | None, mismatch: bool) -> tuple[str, bool]:
    """What the policy would do with this score ("continue" when there is none or it does not apply)."""
    if policy is None or mismatch:
        return "continue", mismatch
    try:
        d = decide(sc, DecisionContext(language=language), policy)
    except FingerprintMismatch:
        return "continue", True
    return effective_action(d), False


def multilingual_report(
    items: Sequence[PromptItem],
    results: dict[str, dict[str, Any]],
    *,
    summary: dict[str, Any],
    manifest: dict[str, Any],
    run: dict[str, Any],
    keywords: Sequence[str] = (),
    quality_metrics: Sequence[str] = (),
    policy_note: str | None = None,
) -> dict[str, Any]:
    """The fairness report (every language against English) of the stored results of `items`."""
    from audit.report import ReportOptions, report_from_records  # sqlalchemy: only when reporting

    rows = [results[it.id] for it in items if it.id in results]
    notes = []
    note = knowledge_note(summary, manifest)
    if note:
        notes.append(note)
    if policy_note or any(r.get("policy") is None for r in rows):
        notes.append(policy_note or MISMATCH_NOTE)
    notes.append(SOURCE_NOTE)
    return report_from_records(
        records_from_results(rows),
        ReportOptions(keywords=tuple(keywords)),
        quality_metrics=list(quality_metrics),
        notes=notes,
        title="emoe-gate multilingual evaluation",
        extra={"ensemble": summary, "run": run},
    )
