"""Loading ensembles: segmoe YAML (local folders), merged checkpoints, the default, and clear errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from emoe import EnsembleConfigError, ScoreConfig, default_score_config, load_ensemble, save_ensemble, score
from emoe import ensemble as ensemble_module
from emoe import tiny as tiny_module
from emoe.tiny import write_tiny_sources

PROMPTS = ["a photo of a cat", "une maison bleue"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small sources (2 experts, 16x16 px) and their segmoe YAML; tests copy the YAML before changing it."""
    return write_tiny_sources(tmp_path_factory.mktemp("sources"), num_experts=2, top_k=1, sample_size=8)


def edited_yaml(sources: Path, tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(sources.read_text())
    config["base_model"] = str(sources.parent / config["base_model"])
    for expert in config["experts"]:
        expert["source_model"] = str(sources.parent / expert["source_model"])
    edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_yaml_build_is_deterministic_and_scores(sources: Path) -> None:
    first = load_ensemble(sources)
    second = load_ensemble(sources)
    assert first.weights_hash == second.weights_hash
    assert first.num_experts == 2 and first.top_k == 1 and not first.is_random
    config = default_score_config(first).replace(steps=3)
    a, b = score(PROMPTS, config, first), score(PROMPTS, config, second)
    assert [s.score for s in a] == [s.score for s in b]
    assert all(s.score > 0 for s in a)


def test_checkpoint_round_trip_without_source_pipelines(tiny, tmp_path: Path, monkeypatch) -> None:
    folder = save_ensemble(tiny, tmp_path / "ckpt", extra={"trained_on": "nothing"})
    from diffusers import StableDiffusionPipeline

    calls: list[str] = []
    original = StableDiffusionPipeline.from_pretrained

    def counting(cls, path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(counting))
    loaded = load_ensemble(folder)
    assert calls == [str(folder)]  # the merged checkpoint only: no base or expert pipeline was built
    assert loaded.weights_hash == tiny.weights_hash
    assert loaded.name == "tiny" and loaded.is_random
    assert json.loads((folder / "emoe.json").read_text())["trained_on"] == "nothing"
    config = default_score_config(tiny).replace(steps=3)
    assert [s.score for s in score(PROMPTS, config, loaded)] == [
        s.score for s in score(PROMPTS, config, tiny)
    ]


def test_fp16_checkpoint_loads(tiny, tmp_path: Path) -> None:
    folder = save_ensemble(tiny, tmp_path / "half", fp16=True)
    from safetensors.torch import load_file

    assert all(
        t.dtype == torch.float16
        for t in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").values()
    )
    loaded = load_ensemble(folder, dtype="float32")
    assert loaded.weights_hash != tiny.weights_hash
    config = default_score_config(tiny).replace(steps=3)
    ours, theirs = score(PROMPTS, config, loaded), score(PROMPTS, config, tiny)
    for a, b in zip(ours, theirs, strict=True):
        assert a.score == pytest.approx(b.score, rel=0.05)


def test_default_falls_back_to_tiny_with_a_notice(
    tiny_folder: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(ensemble_module, "REFERENCE_DIR", tmp_path / "absent")
    monkeypatch.setattr(tiny_module, "tiny_checkpoint", lambda: tiny_folder)
    with caplog.at_level(logging.WARNING):
        loaded = load_ensemble("default")
    assert loaded.name == "tiny" and loaded.is_random and "RANDOM WEIGHTS" in loaded.description
    assert "no reference ensemble" in caplog.text


def test_default_loads_the_reference_checkpoint_when_present(tiny, tmp_path: Path, monkeypatch) -> None:
    reference = tmp_path / "reference"
    save_ensemble(tiny, reference)
    manifest = json.loads((reference / "emoe.json").read_text())
    manifest.update(name="reference", is_random=False, description="trained reference")
    (reference / "emoe.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(ensemble_module, "REFERENCE_DIR", reference)
    loaded = load_ensemble("default")
    assert loaded.name == "reference" and not loaded.is_random and loaded.source == str(reference)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(base_model="/nonexistent/base"), r"base_model: path not found"),
        (
            lambda c: c["experts"][1].update(source_model="./no/such/expert"),
            r"experts\[1\]\.source_model: path not found",
        ),
        (lambda c: c.update(flavour="vanilla"), r"unknown key\(s\) \['flavour'\]"),
        (lambda c: c.pop("moe_layers"), r"missing key\(s\) \['moe_layers'\]"),
        (
            lambda c: c["experts"][0].pop("positive_prompt"),
            r"experts\[0\]: missing key\(s\) \['positive_prompt'\]",
        ),
        (lambda c: c.update(type="sdxl"), r"type: 'sdxl' is not supported"),
        (lambda c: c.update(num_experts_per_tok=5), r"num_experts_per_tok"),
        (lambda c: c.update(experts=c["experts"][:1]), r"experts: need a list of at least 2"),
        (
            lambda c: c.update(base_model="runwayml/stable-diffusion-v1-5"),
            r"base_model: .* network access is off",
        ),
    ],
)
def test_bad_yaml_names_the_key(sources: Path, tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(EnsembleConfigError, match=message):
        load_ensemble(edited_yaml(sources, tmp_path, edit))


def test_experts_with_different_architectures_are_refused(sources: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd_expert"
    shutil.copytree(sources.parent / "expert_1", odd)
    unet_config = json.loads((odd / "unet" / "config.json").read_text())
    unet_config["block_out_channels"] = [8, 16, 16]
    (odd / "unet" / "config.json").write_text(json.dumps(unet_config))
    path = edited_yaml(sources, tmp_path, lambda c: c["experts"][1].update(source_model=str(odd)))
    with pytest.raises(
        EnsembleConfigError, match=r"experts\[1\]\.source_model: architecture differs.*block_out_channels"
    ):
        load_ensemble(path)


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(EnsembleConfigError, match="path not found"):
        load_ensemble(tmp_path / "missing")
    with pytest.raises(EnsembleConfigError, match="file not found"):
        load_ensemble(tmp_path / "missing.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnsembleConfigError, match="not a SegMoE checkpoint"):
        load_ensemble(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"^dtype:"):
        load_ensemble("tiny", dtype="float8")


def test_score_config_rejects_m_below_two_on_a_real_ensemble(tiny) -> None:
    with pytest.raises(ValueError, match=r"ScoreConfig\.experts"):
        ScoreConfig(experts=[2])


class _Captured(Exception):
    pass


@pytest.mark.parametrize("allow_network", [False, True])
def test_segmoe_gets_explicit_device_dtype_and_no_network_unless_allowed(
    sources: Path, tmp_path: Path, monkeypatch, allow_network: bool
) -> None:
    """segmoe is replaced by a recorder (the hub cannot be reached here): what would it have been asked?"""
    import segmoe

    from emoe import segmoe_adapter

    seen: dict = {}

    def recorder(config_path, **kwargs):
        seen["config"] = yaml.safe_load(Path(config_path).read_text())
        seen["kwargs"] = kwargs
        raise _Captured

    monkeypatch.setattr(segmoe, "SegMoEPipeline", recorder)
    hub = "someone/sd-finetune"
    path = edited_yaml(sources, tmp_path, lambda c: c["experts"][1].update(source_model=hub))
    if not allow_network:
        with pytest.raises(EnsembleConfigError, match=r"experts\[1\]\.source_model: 'someone/sd-finetune'"):
            segmoe_adapter.build_from_yaml(path, device="cpu", dtype=torch.float32, allow_network=False)
        path = edited_yaml(sources, tmp_path, lambda c: None)
    with pytest.raises(_Captured):
        segmoe_adapter.build_from_yaml(path, device="cpu", dtype=torch.float32, allow_network=allow_network)
    kwargs = seen["kwargs"]
    assert kwargs["device"] == "cpu" and kwargs["torch_dtype"] is torch.float32 and kwargs["variant"] is None
    assert kwargs.get("local_files_only", False) is (not allow_network)
    assert Path(seen["config"]["base_model"]).is_absolute()
    assert seen["config"]["experts"][1]["source_model"] == (
        hub if allow_network else str(sources.parent / "expert_1")
    )


def test_default_score_config_is_the_one_the_checkpoint_records(tiny, tmp_path: Path) -> None:
    paper = default_score_config(tiny)
    assert (paper.split, paper.latent) == ("attn2", "m_post")  # no recorded choice: the paper's settings
    chosen = paper.replace(split="all", latent="eps").to_dict()
    folder = save_ensemble(tiny, tmp_path / "ckpt", extra={"score_config": chosen})
    loaded = load_ensemble(folder)
    config = default_score_config(loaded)
    assert config.to_dict() == chosen
    assert score(["a red circle"], config, loaded)[0].scoring["latent"] == "eps"
