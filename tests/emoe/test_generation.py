"""Fast and full EMoE generation on the tiny ensemble; the gate must not change the picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoe import Score, default_score_config, generate, score, segmoe_adapter

PROMPT = "a photo of a cat"


def cfg(ensemble, **changes):
    return default_score_config(ensemble).replace(**{"steps": 4, **changes})


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("scheduler", [None, "euler_a"])
def test_fast_emoe_image_equals_plain_segmoe_image(tiny, tiny_folder, scheduler) -> None:
    raw, _ = segmoe_adapter.load_checkpoint(tiny_folder, device="cpu", dtype=torch.float32)
    if scheduler:
        raw.scheduler = tiny.make_scheduler(scheduler)
    plain = raw(
        PROMPT, num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(3)
    )
    result = generate(PROMPT, cfg(tiny, seed=3, scheduler=scheduler), tiny)
    assert not result.halted and len(result.images) == 1
    assert result.images[0].size == (tiny.default_width, tiny.default_height)
    assert np.abs(pixels(result.images[0]) - pixels(plain.images[0])).max() <= 1
    assert pixels(result.images[0]).std() > 0


def test_gate_settings_do_not_change_the_picture(tiny) -> None:
    a = generate(PROMPT, cfg(tiny), tiny)
    b = generate(PROMPT, cfg(tiny, split="all", latent="eps", experts=[1, 3]), tiny)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert a.score.fingerprint != b.score.fingerprint


def test_generation_score_equals_score(tiny) -> None:
    seen: list[Score] = []
    result = generate(PROMPT, cfg(tiny), tiny, decide=lambda s: seen.append(s) or True)
    alone = score([PROMPT], cfg(tiny), tiny)[0]
    assert seen == [result.score]
    assert result.score.score == pytest.approx(alone.score, rel=1e-5)
    assert result.score.fingerprint == alone.fingerprint


def test_halted_request_returns_no_image(tiny) -> None:
    result = generate(PROMPT, cfg(tiny), tiny, decide=lambda s: False)
    assert result.halted and result.images == []
    assert "denoise_ms" not in result.timings_ms and result.score.score > 0


def test_full_emoe_gives_one_image_per_path(tiny) -> None:
    result = generate(PROMPT, cfg(tiny, experts=[0, 1, 2]), tiny, mode="full")
    assert not result.halted and len(result.images) == 3
    arrays = [pixels(im) for im in result.images]
    assert any(not np.array_equal(arrays[0], other) for other in arrays[1:])
    halted = generate(PROMPT, cfg(tiny), tiny, mode="full", decide=lambda s: False)
    assert halted.halted and halted.images == []


def test_bad_generation_input_names_the_field(tiny) -> None:
    with pytest.raises(ValueError, match=r"^mode:"):
        generate(PROMPT, cfg(tiny), tiny, mode="slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^prompts\[0\]:"):
        generate("  ", cfg(tiny), tiny)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpm", "pndm", "lms"])
def test_every_scheduler_scores_and_generates(tiny, scheduler: str) -> None:
    config = cfg(tiny, scheduler=scheduler, steps=10 if scheduler == "pndm" else 3)
    result = generate(PROMPT, config, tiny)
    assert result.score.score > 0 and len(result.images) == 1
    assert result.score.scoring["scheduler"].lower().startswith(scheduler.split("_")[0][:3])
    assert score([PROMPT], config, tiny)[0].score == pytest.approx(result.score.score, rel=1e-5)


def test_steps_a_scheduler_refuses_name_the_field(tiny) -> None:
    with pytest.raises(ValueError, match=r"^ScoreConfig\.steps: PNDMScheduler"):
        score([PROMPT], cfg(tiny, scheduler="pndm", steps=3), tiny)
