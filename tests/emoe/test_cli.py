"""`emoe-gate score` and `emoe-gate generate` on the tiny ensemble."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_score_json(tiny_folder: Path) -> None:
    result = runner.invoke(
        app, ["score", "a cat", "ein Hund", "--json", "--ensemble", str(tiny_folder), "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["prompt"] for r in rows] == ["a cat", "ein Hund"]
    assert all({"prompt", "score", "eu", "fingerprint"} <= set(r) and r["score"] > 0 for r in rows)
    assert "random weights" in result.stderr


def test_score_text_and_bad_prompt(tiny_folder: Path) -> None:
    result = runner.invoke(app, ["score", "a cat", "--ensemble", str(tiny_folder), "--steps", "3"])
    assert result.exit_code == 0 and "RANDOM WEIGHTS" in result.stdout
    bad = runner.invoke(app, ["score", "   ", "--ensemble", str(tiny_folder)])
    assert bad.exit_code == 2 and "prompts[0]: empty" in bad.stderr


def test_generate_writes_image_and_score(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["generate", "a cat", "--out", str(out), "--ensemble", str(tiny_folder), "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "image.png").is_file()
    record = json.loads((out / "score.json").read_text())
    assert record["halted"] is False and record["ensemble"]["is_random"] is True and record["score"] > 0
    halted = runner.invoke(
        app,
        [
            "generate",
            "a cat",
            "--out",
            str(tmp_path / "h"),
            "--ensemble",
            str(tiny_folder),
            "--halt-above",
            "0",
        ],
    )
    assert halted.exit_code == 0 and "halted" in halted.stdout
    assert not (tmp_path / "h" / "image.png").exists()
