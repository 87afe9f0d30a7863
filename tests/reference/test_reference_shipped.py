"""The shipped reference ensemble: files match the manifest, it loads as the default, the gate works on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from reference import experiments
from reference.ship import ENSEMBLE_DIR, MAX_SHIPPED_BYTES, verify_manifest, write_manifest


def test_shipped_files_match_the_manifest() -> None:
    assert verify_manifest(ENSEMBLE_DIR) == []
    manifest = json.loads((ENSEMBLE_DIR / "manifest.json").read_text())
    assert manifest["total_bytes"] <= MAX_SHIPPED_BYTES
    weights = [name for name in manifest["files"] if name.endswith(".safetensors")]
    assert len(weights) >= 4  # unet, vae, text encoder, clip
    for name in weights:
        with safe_open(str(ENSEMBLE_DIR / name), framework="pt") as handle:
            dtypes = {str(handle.get_slice(k).get_dtype()) for k in handle.keys()}  # noqa: SIM118
        assert dtypes <= {"F16", "I64"}, (name, dtypes)


def test_shipped_description_names_the_default_scoring() -> None:
    from reference.ship import reference_description

    description = json.loads((ENSEMBLE_DIR / "emoe.json").read_text())["description"]
    assert description == reference_description()  # what a rebuild (`reference.ship`) writes
    assert "default scoring: whole expert paths, noise-prediction variance" in description


def test_manifest_check_finds_changed_missing_and_extra_files(tmp_path: Path) -> None:
    folder = tmp_path / "ens"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"\x00\x01")
    write_manifest(folder)
    assert verify_manifest(folder) == []
    (folder / "sub" / "b.bin").write_bytes(b"\x00\x02")
    (folder / "c.txt").write_text("new")
    (folder / "a.json").unlink()
    problems = verify_manifest(folder)
    assert any(p.startswith("sub/b.bin: sha256") for p in problems)
    assert any(p.startswith("a.json: listed") for p in problems)
    assert any(p.startswith("c.txt: present") for p in problems)
    shutil.rmtree(folder)
    assert verify_manifest(folder) != []


@pytest.fixture(scope="module")
def reference():
    from emoe import load_ensemble

    return load_ensemble("default")


def test_default_ensemble_is_the_trained_reference(reference) -> None:
    assert not reference.is_random
    assert reference.name == "reference"
    assert reference.num_experts == 4
    assert (reference.default_height, reference.default_width) == (32, 32)


def test_eval_ood_quick_json_separates_languages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reference
) -> None:
    from cli import reference as commands
    from cli.main import app

    monkeypatch.setattr(experiments, "QUICK_SCENES", 16)
    monkeypatch.setattr(commands, "_load", lambda spec: reference)
    result = CliRunner().invoke(app, ["eval", "ood", "--quick", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    headline = experiments.headline_scenes(quick=True)
    assert data["prompts_per_language"] == len(headline) == (120 - 16 + 3) // 4
    # the headline is measured on scenes the ablation that chose the default never saw
    assert not {s.key for s in headline} & {s.key for s in experiments.choice_scenes()}
    assert data["default"]["choice_scenes"]["auroc"] > 0.8 and "all_scenes" in data["default"]
    assert {"auroc", "ci_low", "ci_high", "scoring"} <= set(data)
    assert data["ci_low"] <= data["auroc"] <= data["ci_high"]
    assert data["scoring"]["fingerprint"] and data["scoring"]["config"]["seed"] == 0
    assert data["paper"]["scoring"]["config"]["split"] == "attn2"
    # the shipped ensemble's claim, on a small sample: few-expert languages score above English
    assert data["auroc"] > 0.8
    assert (tmp_path / "ood.json").is_file() and (tmp_path / "ood.png").is_file()


def test_the_ablation_never_sees_the_headline_scenes() -> None:
    headline = {s.key for s in experiments.headline_scenes()}
    chosen = {s.key for s in experiments.choice_scenes()}
    assert len(headline) == 80 and len(chosen) == 40
    assert not headline & chosen and len(headline | chosen) == len(experiments.all_scenes())


def test_verify_command_exit_codes(tmp_path: Path) -> None:
    from cli.main import app

    runner = CliRunner()
    assert runner.invoke(app, ["reference", "verify"]).exit_code == 0
    (tmp_path / "x.json").write_text("{}")
    write_manifest(tmp_path)
    (tmp_path / "x.json").write_text('{"changed": true}')
    result = runner.invoke(app, ["reference", "verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "x.json: sha256 differs" in result.output
