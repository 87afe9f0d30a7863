"""`eval multilingual`: parallel prompts from the clip-benchmark wheel, the resumable store, the command."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from audit.multilingual import (
    DEFAULT_LANGUAGES,
    MISMATCH_NOTE,
    SOURCE_NOTE,
    ResultStore,
    build_prompts,
    eval_policy,
    knowledge_note,
    multilingual_report,
    records_from_results,
    run_description,
    score_pending,
)
from policies import Policy, bundled_policy_path, load_policy, parse_policy

LANGS_20 = DEFAULT_LANGUAGES[:20]


def test_prompts_are_parallel_across_at_least_20_languages() -> None:
    items = build_prompts(per_language=3, seed=1)
    langs = {it.language for it in items}
    assert len(langs) >= 20 and len(items) == 3 * len(langs)
    for item in range(3):
        same = [it for it in items if it.item == item]
        assert len({(it.template, it.class_index, it.english) for it in same}) == 1  # one pair, 25 languages
        assert len({it.prompt for it in same}) > 15  # ... in different words
        en = next(it for it in same if it.language == "en")
        assert en.prompt == en.english and "{" not in en.prompt and "  " not in en.prompt
    fi = next(it for it in items if it.language == "fi")
    assert fi.prompt != fi.english
    assert build_prompts(per_language=3, seed=1) == items
    assert build_prompts(per_language=3, seed=2) != items


def test_prompt_options_are_checked() -> None:
    with pytest.raises(ValueError, match="languages: no clip-benchmark data for \\['xx'\\]"):
        build_prompts(["en", "xx"], 2)
    with pytest.raises(ValueError, match="per_language"):
        build_prompts(["en", "fi"], 0)
    assert {it.language for it in build_prompts(["fi", "de"], 1)} == {"en", "fi", "de"}  # English is added


def test_data_files_are_found_without_importing_clip_benchmark() -> None:
    code = (
        "import sys; from audit.multilingual import build_prompts; build_prompts(per_language=1); "
        "assert 'clip_benchmark' not in sys.modules and 'torch' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_store_resumes_and_refuses_another_run(tmp_path) -> None:
    store = ResultStore(tmp_path)
    run = {"ensemble": "a", "weights_hash": "1", "per_language": 2}
    assert store.open(run) == {}
    store.append([{"id": "en:0", "language": "en", "prompt": "p", "score": 0.5}])
    with store.scores_path.open("a") as f:
        f.write('{"id": "en:1", "langu')  # a line cut short by a killed run
    assert set(ResultStore(tmp_path).open(run)) == {"en:0"}
    with pytest.raises(ValueError, match="field 'weights_hash' was '1', now '2'"):
        ResultStore(tmp_path).open({**run, "weights_hash": "2"})
    rec = records_from_results(ResultStore(tmp_path).load().values())
    assert rec.group.tolist() == ["en"] and rec.action.tolist() == ["continue"]


def test_knowledge_note() -> None:
    assert "random weights" in knowledge_note({"name": "tiny", "is_random": True}, {})
    ref = knowledge_note({"name": "reference", "is_random": False}, {"known_languages": ["en", "fi"]})
    assert "closed world (languages: en, fi)" in ref and "equally ignorant" in ref
    assert knowledge_note({"name": "sd15-moe", "is_random": False}, {}) is None


@dataclass(frozen=True)
class Measured:
    """A gate score with what `score_pending` stores of it (the fields of `emoe.Score` it keeps)."""

    score: float
    fingerprint: str
    eu: float = 0.001
    n_tokens: int = 3
    truncated: bool = False


def a_policy(fingerprint: str, *, flag_at: float, halt_at: float) -> Policy:
    return parse_policy(
        {"name": "t", "version": "1", "fingerprint": fingerprint, "flag_at": flag_at, "halt_at": halt_at}
    )


def test_score_pending_stores_what_the_policy_would_do_and_resumes(tmp_path) -> None:
    items = build_prompts(["en", "fi"], 3, seed=0)  # en:0, fi:0, en:1, fi:1, en:2, fi:2
    values = dict(zip([it.id for it in items], [0.1, 0.6, 0.9, 0.2, 0.7, 0.95], strict=True))
    policy = a_policy("a" * 64, flag_at=0.5, halt_at=0.8)
    asked: list[list[str]] = []

    def score_batch(batch):
        asked.append([it.id for it in batch])
        return [Measured(values[it.id], "a" * 64) for it in batch], [50.0] * len(batch)

    summary = {"name": "x", "weights_hash": "w", "is_random": False}
    run = run_description(items, summary, {"seed": 0, "batch_size": 8}, per_language=3, seed=0,
                          quality_model=None)  # fmt: skip
    assert run["score_config"] == {"seed": 0} and run["languages"] == ["en", "fi"]
    store = ResultStore(tmp_path)
    store.open(run)
    seen: list[int] = []
    score_pending(items[:4], store, score_batch, policy, batch_size=3, on_batch=seen.append)
    assert seen == [3, 1] and asked == [["en:0", "fi:0", "en:1"], ["fi:1"]]
    # a rerun scores only what is not stored yet
    done = ResultStore(tmp_path).open(run)
    score_pending([it for it in items if it.id not in done], store, score_batch, policy, batch_size=3)
    assert asked[-1] == ["en:2", "fi:2"]
    results = store.load()
    actions = [results[it.id]["action"] for it in items]
    assert actions == ["continue", "flag", "halt", "continue", "flag", "halt"]
    first = results["fi:0"]
    assert first["policy"] == policy.id and first["english"] == items[0].prompt and first["quality"] == 50.0
    assert (first["score"], first["eu"], first["n_tokens"]) == (0.6, 0.001, 3)

    report = multilingual_report(items, results, summary=summary, manifest={}, run=run, quality_metrics=["q"])
    assert report["n_decisions"] == 6 and report["run"] == run and report["quality"]["metrics"] == ["q"]
    assert SOURCE_NOTE in report["notes"] and MISMATCH_NOTE not in report["notes"]


def test_a_policy_for_another_scoring_configuration_decides_nothing(tmp_path) -> None:
    items = build_prompts(["en", "fi"], 1, seed=0)
    other = a_policy("b" * 64, flag_at=0.0, halt_at=0.1)
    store = ResultStore(tmp_path)
    score_pending(items, store, lambda b: ([Measured(0.9, "a" * 64) for _ in b], [None] * len(b)), other,
                  batch_size=8)  # fmt: skip
    results = store.load()
    assert {(r["action"], r["policy"]) for r in results.values()} == {("continue", None)}
    report = multilingual_report(items, results, summary={"name": "x"}, manifest={}, run={})
    assert MISMATCH_NOTE in report["notes"]


def test_eval_policy_is_the_bundled_one_unless_a_path_is_set(tmp_path) -> None:
    assert eval_policy(None, "float16") == (load_policy(bundled_policy_path("float16")), None)
    policy, note = eval_policy(tmp_path / "missing.yaml", "float32")
    assert policy is None and "No policy could be read" in note and "missing.yaml" in note


@pytest.mark.slow
def test_eval_multilingual_command_scores_resumes_and_reports(tmp_path, monkeypatch) -> None:
    from cli.main import app

    out = tmp_path / "ml"
    args = ["eval", "multilingual", "--ensemble", "tiny", "--per-language", "1", "--out", str(out),
            "--languages", ",".join(LANGS_20), "--no-progress"]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "20 prompts in 20 languages; 0 already scored, 20 to score" in first.output
    lines = (out / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 20
    # an interrupted run: keep 5 results; the rerun scores only the other 15, with the same numbers
    (out / "scores.jsonl").write_text("\n".join(lines[:5]) + "\n")
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "5 already scored, 15 to score" in second.output
    again = {
        json.loads(x)["id"]: json.loads(x)["score"] for x in (out / "scores.jsonl").read_text().splitlines()
    }
    assert again == pytest.approx({json.loads(x)["id"]: json.loads(x)["score"] for x in lines}, rel=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["n_decisions"] == 20 and len(report["fairness"]["groups"]) == 20
    assert any("random weights" in n for n in report["notes"])  # the tiny ensemble cannot know any word
    assert "random weights" in (out / "report.html").read_text()
    # a different measurement into the same folder is refused, naming what differs
    third = runner.invoke(app, [*args[:5], "2", *args[6:]])
    flat = "".join(c for c in third.output if c not in "│ \n")  # rich wraps the message in a box
    assert third.exit_code == 2 and "field'per_language'was1,now2" in flat
