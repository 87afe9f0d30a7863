"""`eval multilingual`: parallel prompts from the clip-benchmark wheel, the resumable store, the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from audit.multilingual import (
    DEFAULT_LANGUAGES,
    ResultStore,
    build_prompts,
    knowledge_note,
    records_from_results,
)

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
