"""Fast and full EMoE generation on the tiny ensemble; the gate must not change the picture, and full EMoE is
the paper's Algorithm 1 (disentangled at the first step only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoe import Score, default_score_config, generate, generation, score, segmoe_adapter
from emoe.pipeline import encode_prompts, initial_noise, step_kwargs
from emoe.routing import routing
from emoe.scoring import make_plan

PROMPT = "a photo of a cat"
# Exact: a path alone and the M paths batched, and diffusers' forward and ours, give bit-equal latents (the
# time embedding multiplies in row pairs and prompts are encoded one at a time, see emoe/unet_passes.py);
# the every-step split moves them by >= 0.14.
LATENT_ATOL = 0.0


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
    assert np.array_equal(pixels(result.images[0]), pixels(plain.images[0]))
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
    assert result.score.score == alone.score
    assert result.score.fingerprint == alone.fingerprint


def test_halted_request_returns_no_image(tiny) -> None:
    result = generate(PROMPT, cfg(tiny), tiny, decide=lambda s: False)
    assert result.halted and result.images == []
    assert "denoise_ms" not in result.timings_ms and result.score.score > 0


def test_full_emoe_gives_one_image_per_path(tiny) -> None:
    result = generate(PROMPT, cfg(tiny, experts=[0, 1, 2]), tiny, mode="full")
    assert not result.halted and len(result.images) == 3 and result.rollout == "moe"
    assert result.latents is not None and result.latents.shape[0] == 3
    arrays = [pixels(im) for im in result.images]
    assert any(not np.array_equal(arrays[0], other) for other in arrays[1:])
    halted = generate(PROMPT, cfg(tiny), tiny, mode="full", decide=lambda s: False)
    assert halted.halted and halted.images == []


@torch.no_grad()
def algorithm_1(ensemble, config, prompt: str, *, forced_every_step: bool = False) -> torch.Tensor:
    """The paper's Algorithm 1 written out one path at a time with diffusers' own UNet forward: step 1 with
    the path's expert forced at the split layers, every later step through the ordinary (routed) MoE."""
    plan = make_plan(config, ensemble)
    embeds, _, _ = encode_prompts(ensemble, [prompt])
    negative, _, _ = encode_prompts(ensemble, [config.negative_prompt])
    encoder_states = torch.cat([negative, embeds])
    z_T, generator = initial_noise(ensemble, plan)
    finals = []
    for expert in plan.experts:
        scheduler = plan.fresh_scheduler()
        gen = torch.Generator("cpu")
        gen.set_state(generator.get_state())
        z = z_T
        for n, t in enumerate(plan.timesteps):
            split = n == 0 or forced_every_step
            forced = torch.tensor([expert, expert]) if split else None
            with routing(
                ensemble.routing, rows_per_group=2, forced_expert=forced, split_layers=plan.split_layers
            ):
                x = scheduler.scale_model_input(torch.cat([z, z]), t)
                uncond, cond = ensemble.unet(x, t, encoder_states).sample.chunk(2)
            eps = uncond + config.guidance * (cond - uncond)
            z = scheduler.step(eps, t, z, **step_kwargs(scheduler, gen)).prev_sample
        finals.append(z)
    return torch.cat(finals)


@pytest.mark.parametrize(
    ("scheduler", "split", "latent"),
    [(None, "attn2", "m_post"), ("dpm", "all", "eps"), ("euler_a", "attn2", "m_post")],
)
def test_full_emoe_is_algorithm_1(tiny, scheduler, split, latent) -> None:
    config = cfg(tiny, scheduler=scheduler, split=split, latent=latent, steps=5)
    result = generate(PROMPT, config, tiny, mode="full")
    expected = algorithm_1(tiny, config, PROMPT)
    assert result.latents is not None
    torch.testing.assert_close(result.latents, expected, atol=LATENT_ATOL, rtol=0)
    # and it is not the every-step split, which stays available as rollout="experts"
    forced = algorithm_1(tiny, config, PROMPT, forced_every_step=True)
    assert (result.latents - forced).abs().max() > 0.1
    experts = generate(PROMPT, config, tiny, mode="full", rollout="experts")
    assert experts.rollout == "experts" and experts.latents is not None
    torch.testing.assert_close(experts.latents, forced, atol=LATENT_ATOL, rtol=0)


@pytest.mark.parametrize("scheduler", [None, "euler_a"])
def test_after_step_1_each_path_is_a_plain_segmoe_rollout(tiny, tiny_folder, monkeypatch, scheduler) -> None:
    """Algorithm 1, line 15: from z_{T-1}^i on, path i is what plain SegMoE makes of that latent."""
    seen: dict[str, object] = {}
    real_denoise = generation.denoise

    def spy(ensemble, plan, latents, encoder_states, forced, *args, **kwargs):
        seen.update(first_latents=latents.clone(), forced=forced)
        return real_denoise(ensemble, plan, latents, encoder_states, forced, *args, **kwargs)

    monkeypatch.setattr(generation, "denoise", spy)
    config = cfg(tiny, scheduler=scheduler, seed=3, experts=[0, 2, 3])
    result = generate(PROMPT, config, tiny, mode="full")
    assert seen["forced"] is None and result.latents is not None
    first = seen["first_latents"]
    assert isinstance(first, torch.Tensor) and first.shape[0] == 3

    raw, _ = segmoe_adapter.load_checkpoint(tiny_folder, device="cpu", dtype=torch.float32)
    if scheduler:  # both are stateless between steps, so plain SegMoE can be restarted from any latent
        raw.scheduler = tiny.make_scheduler(scheduler)
    for i in range(3):

        def start_from_path(pipe, step, t, kwargs, i=i):
            return {"latents": first[i : i + 1]} if step == 0 else {}

        plain = raw(
            PROMPT,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            generator=torch.Generator("cpu").manual_seed(3),
            output_type="latent",
            callback_on_step_end=start_from_path,
        ).images
        torch.testing.assert_close(
            result.latents[i : i + 1], plain, atol=LATENT_ATOL, rtol=0, msg=f"path {i}"
        )


def test_bad_generation_input_names_the_field(tiny) -> None:
    with pytest.raises(ValueError, match=r"^mode:"):
        generate(PROMPT, cfg(tiny), tiny, mode="slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^prompts\[0\]:"):
        generate("  ", cfg(tiny), tiny)
    with pytest.raises(ValueError, match=r"^rollout:"):
        generate(PROMPT, cfg(tiny), tiny, mode="full", rollout="each")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^rollout: 'experts' needs mode 'full'"):
        generate(PROMPT, cfg(tiny), tiny, rollout="experts")


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpm", "pndm", "lms"])
def test_every_scheduler_scores_and_generates(tiny, scheduler: str) -> None:
    config = cfg(tiny, scheduler=scheduler, steps=10 if scheduler == "pndm" else 3)
    result = generate(PROMPT, config, tiny)
    assert result.score.score > 0 and len(result.images) == 1
    assert result.score.scoring["scheduler"].lower().startswith(scheduler.split("_")[0][:3])
    assert score([PROMPT], config, tiny)[0].score == result.score.score


def test_steps_a_scheduler_refuses_name_the_field(tiny) -> None:
    with pytest.raises(ValueError, match=r"^ScoreConfig\.steps: PNDMScheduler"):
        score([PROMPT], cfg(tiny, scheduler="pndm", steps=3), tiny)


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_should_stop_ends_the_render_before_the_next_step(tiny, mode: str) -> None:
    config = default_score_config(tiny).replace(steps=10)
    asked = []

    def stop_at_the_third_question() -> bool:
        asked.append(1)
        return len(asked) == 3

    with pytest.raises(generation.GenerationCancelled):
        generate("a red circle", config, tiny, mode=mode, should_stop=stop_at_the_third_question)
    assert len(asked) == 3  # asked before steps 2, 3 and 4; nothing ran or was decoded after the "stop"
    done = generate("a red circle", config, tiny, mode=mode, should_stop=lambda: False)
    assert len(done.images) == (1 if mode == "fast" else tiny.num_experts)
