"""The training code runs end to end (a seconds-long smoke plan: CI never trains a real model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from emoe.segmoe_adapter import read_segmoe_yaml
from reference import parts
from reference.training import EXPERTS, TrainPlan, build_all, train_unet


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference-smoke")
    build_all(out, TrainPlan.smoke(), show=False)
    return out


def test_smoke_build_writes_every_part(smoke_build: Path) -> None:
    for folder in ["base", *(f"experts/{s.name}" for s in EXPERTS)]:
        assert (smoke_build / folder / "model_index.json").is_file()
        assert (smoke_build / folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (smoke_build / "clip" / "config.json").is_file()
    config = read_segmoe_yaml(smoke_build / "segmoe.yaml")
    assert config["type"] == "sd" and config["moe_layers"] == "all"
    assert [e["source_model"] for e in config["experts"]] == [f"experts/{s.name}" for s in EXPERTS]


def test_experts_differ_from_the_base_only_where_segmoe_takes_expert_weights(smoke_build: Path) -> None:
    base = UNet2DConditionModel.from_pretrained(smoke_build / "base" / "unet").state_dict()
    folder = smoke_build / "experts" / EXPERTS[0].name
    expert = UNet2DConditionModel.from_pretrained(folder / "unet").state_dict()
    moe = set(parts.moe_parameter_names(parts.make_unet(0)))
    changed = {name for name in base if not torch.equal(base[name], expert[name])}
    assert changed, "fine-tuning moved nothing"
    assert changed <= moe


def test_held_out_language_cannot_be_trained_on() -> None:
    with pytest.raises(ValueError, match="held out"):
        train_unet(parts.make_unet(0), None, {"nl": 1.0}, 1, TrainPlan.smoke(), seed=0)  # type: ignore[arg-type]
    assert all("nl" not in spec.languages for spec in EXPERTS)


def test_parallel_expert_jobs_give_the_same_experts(smoke_build: Path, tmp_path: Path) -> None:
    """Experts fine-tuned two at a time in worker processes equal the sequential build (each is seeded)."""
    import shutil

    for part in ("vae", "clip", "base"):
        shutil.copytree(smoke_build / part, tmp_path / part)
    build_all(tmp_path, TrainPlan.smoke(), show=False, resume=True, jobs=2)
    assert (tmp_path / "segmoe.yaml").read_text() == (smoke_build / "segmoe.yaml").read_text()
    for spec in EXPERTS:
        ours = UNet2DConditionModel.from_pretrained(tmp_path / "experts" / spec.name / "unet").state_dict()
        theirs = UNet2DConditionModel.from_pretrained(
            smoke_build / "experts" / spec.name / "unet"
        ).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), spec.name


def test_rare_languages_caption_a_seeded_sample_of_scenes() -> None:
    import random

    from reference.training import ExpertSpec, draw_caption
    from reference.world import all_scenes

    spec = ExpertSpec("x", {"en": 1.0, "fr": 5.0}, seed=7, scene_share={"fr": 0.25})
    other = ExpertSpec("y", {"en": 1.0, "fr": 5.0}, seed=8, scene_share={"fr": 0.25})
    subsets = spec.scenes()
    assert len(subsets["en"]) == len(all_scenes()) and len(subsets["fr"]) == len(all_scenes()) // 4
    assert spec.scenes() == subsets  # drawn from the expert's seed
    assert other.scenes()["fr"] != subsets["fr"]  # another expert, another sample
    rng = random.Random(0)
    for scene in all_scenes():
        captions = {draw_caption(scene, spec.languages, subsets, rng) for _ in range(20)}
        if scene.key not in subsets["fr"]:
            assert captions == {scene.caption("en")}
        else:
            assert scene.caption("fr") in captions


def test_ship_merges_records_the_scoring_and_keeps_no_build_paths(smoke_build: Path, tmp_path: Path) -> None:
    from emoe import default_score_config, load_ensemble
    from reference.ship import REFERENCE_SCORE_CONFIG, ship, verify_manifest

    dest = tmp_path / "ship"
    manifest = ship(smoke_build, dest)
    assert verify_manifest(dest) == [] and manifest["files"]
    for path in dest.rglob("*.json"):
        assert str(smoke_build.resolve()) not in path.read_text(encoding="utf-8"), path.name
    ensemble = load_ensemble(str(dest), device="cpu", dtype="float32")
    assert ensemble.num_experts == len(EXPERTS)
    assert default_score_config(ensemble).to_dict() == {**REFERENCE_SCORE_CONFIG, "at_step": 0}


def test_train_command_with_shifted_expert_seeds(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(
        app, ["reference", "train", "--smoke", "--out", str(tmp_path), "--expert-seed-offset", "5"]
    )
    assert result.exit_code == 0, result.output
    assert f"built {tmp_path}" in result.output
    plan = json.loads((tmp_path / "train_summary.json").read_text())["plan"]
    assert [e["seed"] for e in plan["experts"]] == [s.seed + 5 for s in EXPERTS]
    assert all((tmp_path / "experts" / s.name / "model_index.json").is_file() for s in EXPERTS)
