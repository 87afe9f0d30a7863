"""EMoE scores on the tiny seeded random ensemble (random weights: only properties are tested, not values)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from emoe import ScoreConfig, default_score_config, score, unet_passes
from emoe.routing import routing
from emoe.scoring import encode_prompts, first_step, initial_noise, make_plan
from tests.emoe.conftest import make_experts_identical

PROMPTS = ["a photo of a cat", "un chat noir sur un toit", "a city street at night", "ein roter Apfel"]
SPLIT_ATTN2 = [f"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_{p}" for p in "kqv"]


def cfg(ensemble, **changes) -> ScoreConfig:
    return default_score_config(ensemble).replace(**{"steps": 5, **changes})


def mid_dims(ensemble) -> int:
    """d of the mid-block output: channels x (latent size / down-sampling)^2."""
    unet = ensemble.unet
    side = ensemble.default_height // ensemble.vae_scale_factor // 2 ** (len(unet.down_blocks) - 1)
    return unet.config.block_out_channels[-1] * side * side


def segmoe_layer_count(ensemble) -> int:
    """How many MoE layers segmoe makes of the ensemble's config: with `moe_layers: attn`, to_q, to_k and to_v
    of attn1 and attn2 in every transformer block of down_blocks[down_idx_start:down_idx_end] and
    up_blocks[up_idx_start:up_idx_end]."""
    config, unet = ensemble.segmoe_config, ensemble.unet
    assert config["moe_layers"] == "attn"
    blocks = [
        *unet.down_blocks[config["down_idx_start"] : config["down_idx_end"]],
        *unet.up_blocks[config["up_idx_start"] : config["up_idx_end"]],
    ]
    transformer_blocks = sum(
        len(attention.transformer_blocks)
        for block in blocks
        for attention in getattr(block, "attentions", [])
    )
    return transformer_blocks * 2 * 3


def first_timestep(scheduler_config, kind: str, steps: int) -> int:
    """The first timestep by diffusers' formula for `leading` spacing, which SD 1.x schedulers use: DDPM takes
    (T // steps) * (steps - 1), DPM-Solver (T // (steps + 1)) * steps; both add steps_offset."""
    assert scheduler_config["timestep_spacing"] == "leading"
    T, offset = scheduler_config["num_train_timesteps"], scheduler_config["steps_offset"]
    if kind == "ddpm":
        return (T // steps) * (steps - 1) + offset
    return (T // (steps + 1)) * steps + offset  # DPM-Solver: no lambda clipping in this config


def test_different_experts_score_above_zero(tiny) -> None:
    scores = score(PROMPTS, cfg(tiny), tiny)
    assert [s.prompt for s in scores] == PROMPTS
    for s in scores:
        assert s.score > 0 and s.eu > 0
        assert s.score == math.sqrt(mid_dims(tiny)) * s.eu
        assert s.num_experts == 4 and s.experts == [0, 1, 2, 3]
        assert len(s.expert_deviation) == 4 and all(v > 0 for v in s.expert_deviation)
        assert sum(s.expert_deviation) / 4 == pytest.approx(s.eu, rel=1e-9)
        assert s.latent == "m_post" and s.split == "attn2" and s.is_random
        assert s.scoring["split"] == SPLIT_ATTN2
    assert len({s.score for s in scores}) == len(PROMPTS)  # the prompt matters


def test_identical_experts_score_exactly_zero(fresh_tiny) -> None:
    make_experts_identical(fresh_tiny)
    for split in ("attn2", "attn1", "all"):
        for latent in ("m_post", "eps"):
            for s in score(PROMPTS[:2], cfg(fresh_tiny, split=split, latent=latent), fresh_tiny):
                assert s.score == 0.0 and s.eu == 0.0, (split, latent)
                assert s.expert_deviation == [0.0] * 4


def test_experts_identical_only_at_the_split_layer_score_zero(fresh_tiny) -> None:
    make_experts_identical(fresh_tiny, SPLIT_ATTN2)
    at_split = score(PROMPTS, cfg(fresh_tiny), fresh_tiny)
    assert all(s.score == 0.0 for s in at_split)
    # the experts still differ elsewhere: splitting at attn1 (or everywhere) sees it
    assert all(s.score > 0 for s in score(PROMPTS, cfg(fresh_tiny, split="attn1"), fresh_tiny))
    assert all(s.score > 0 for s in score(PROMPTS, cfg(fresh_tiny, split="all"), fresh_tiny))


def test_batched_equals_unbatched(tiny) -> None:
    together = score(PROMPTS, cfg(tiny, batch_size=4), tiny)
    pairs = score(PROMPTS, cfg(tiny, batch_size=3), tiny)
    for i, prompt in enumerate(PROMPTS):
        alone = score([prompt], cfg(tiny, batch_size=1), tiny)[0]
        for other in (together[i], pairs[i]):
            assert other.score == alone.score and other.eu == alone.eu
            assert other.expert_deviation == alone.expert_deviation
            assert other.fingerprint == alone.fingerprint


def test_same_seed_same_score_other_seed_other_score(tiny) -> None:
    a = score(PROMPTS[:2], cfg(tiny, seed=7), tiny)
    b = score(PROMPTS[:2], cfg(tiny, seed=7), tiny)
    c = score(PROMPTS[:2], cfg(tiny, seed=8), tiny)
    assert [s.score for s in a] == [s.score for s in b]
    assert a[0].fingerprint == b[0].fingerprint != c[0].fingerprint
    assert a[0].score != c[0].score


@torch.no_grad()
def test_early_exit_latent_equals_the_full_pass(tiny) -> None:
    """m_post read after the mid block equals the mid-block output inside diffusers' own full UNet forward."""
    plan = make_plan(cfg(tiny), tiny)
    embeds, _, _ = encode_prompts(tiny, PROMPTS[:2])
    negative, _, _ = encode_prompts(tiny, [""])
    latents, gen = initial_noise(tiny, plan)
    latents = latents.expand(2, -1, -1, -1)
    step = first_step(tiny, plan, embeds, negative, latents, [gen.get_state()] * 2, ordinary=False)
    captured = {}
    hook = tiny.unet.mid_block.register_forward_hook(lambda m, i, o: captured.update(out=o, inp=i[0]))
    try:
        rows = step.rows
        x = plan.scheduler.scale_model_input(rows.latents, plan.timesteps[0])
        with routing(
            tiny.routing, rows_per_group=2, forced_expert=rows.forced, split_layers=plan.split_layers
        ):
            full = tiny.unet(x, plan.timesteps[0], rows.encoder_states).sample
            ours = unet_passes.full(tiny.unet, x, plan.timesteps[0], rows.encoder_states)
    finally:
        hook.remove()
    assert torch.equal(captured["out"], step.state.sample)
    assert torch.equal(captured["inp"], step.state.mid_in)
    assert torch.equal(full, ours)


def test_latent_options_and_expert_subsets(tiny) -> None:
    base = score(PROMPTS[:2], cfg(tiny), tiny)
    for latent in ("m_pre", "z_prev", "eps"):
        other = score(PROMPTS[:2], cfg(tiny, latent=latent), tiny)
        assert all(s.score > 0 and s.latent == latent for s in other)
        assert other[0].fingerprint != base[0].fingerprint
    for subset in ([0, 1], [1, 2, 3]):
        sub = score(PROMPTS[:2], cfg(tiny, experts=subset), tiny)
        assert all(s.num_experts == len(subset) and s.experts == subset for s in sub)
        assert len(sub[0].expert_deviation) == len(subset)


def test_split_options(tiny) -> None:
    deeper = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2"]
    results = {}
    for split in ("attn2", "attn1", "all", deeper, SPLIT_ATTN2[:1]):
        s = score(PROMPTS[:1], cfg(tiny, split=split), tiny)[0]
        assert s.score > 0
        results[json.dumps(s.scoring["split"])] = s.fingerprint
    assert len(set(results.values())) == 5
    all_layers = score(PROMPTS[:1], cfg(tiny, split="all"), tiny)[0].scoring["split"]
    assert len(all_layers) == segmoe_layer_count(tiny) == len(tiny.moe_layers)
    named = score(PROMPTS[:1], cfg(tiny, split=deeper), tiny)[0]
    assert named.scoring["split"] == [f"{deeper[0]}.to_{p}" for p in "kqv"]
    assert named.split == deeper


def test_fingerprint_covers_the_scoring_configuration(tiny) -> None:
    base = score(PROMPTS[:1], cfg(tiny), tiny)[0]
    keys = set(base.scoring)
    assert {
        "weights_hash",
        "scheduler",
        "first_timestep",
        "steps",
        "guidance",
        "negative_prompt",
        "height",
        "width",
        "seed",
        "latent",
        "split",
    } <= keys
    assert base.scoring["weights_hash"] == tiny.weights_hash
    for change in (
        {"negative_prompt": "dog"},
        {"guidance": 1.0},
        {"steps": 6},
        {"scheduler": "dpm"},
        {"height": 48},
        {"seed": 1},
        {"latent": "m_pre"},
        {"split": "attn1"},
    ):
        other = score(PROMPTS[:1], cfg(tiny, **change), tiny)[0]
        assert other.fingerprint != base.fingerprint, change
    assert score(PROMPTS[:1], cfg(tiny, batch_size=2), tiny)[0].fingerprint == base.fingerprint
    assert json.loads(json.dumps(base.to_dict()))["fingerprint"] == base.fingerprint


def test_first_timestep_depends_on_the_scheduler(tiny) -> None:
    ddpm = score(PROMPTS[:1], cfg(tiny, steps=25), tiny)[0]
    dpm = score(PROMPTS[:1], cfg(tiny, steps=25, scheduler="dpm"), tiny)[0]
    config = tiny.pipe.scheduler.config
    assert type(tiny.pipe.scheduler).__name__ == "DDPMScheduler"
    assert ddpm.scoring["first_timestep"] == first_timestep(config, "ddpm", 25)  # 40 * 24 + 1 = 961
    # DPM-Solver's leading spacing divides by steps + 1, so it starts lower: 38 * 25 + 1 = 951
    assert dpm.scoring["first_timestep"] == first_timestep(config, "dpm", 25)
    assert not config.get("lambda_min_clipped")  # unset: -inf for DPM-Solver, so no timestep is clipped
    assert ddpm.score != dpm.score


def test_long_prompt_is_truncated_and_reported(tiny) -> None:
    long_prompt = " ".join(["cat"] * 120)
    s = score([long_prompt, "a cat"], cfg(tiny), tiny)
    assert s[0].truncated and s[0].n_tokens == 120 and tiny.max_prompt_tokens == 75
    assert not s[1].truncated and s[1].n_tokens == 2


@pytest.mark.parametrize(
    ("prompts", "field"),
    [([""], "prompts[0]"), (["ok", "   \n"], "prompts[1]"), ([], "prompts"), ([3], "prompts[0]")],
)
def test_bad_prompts_name_the_field(tiny, prompts, field) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field) + ":"):
        score(prompts, cfg(tiny), tiny)


def test_config_checked_against_the_ensemble(tiny) -> None:
    with pytest.raises(ValueError, match=r"ScoreConfig\.experts"):
        score(["a cat"], cfg(tiny, experts=[0, 7]), tiny)
    with pytest.raises(ValueError, match=r"ScoreConfig\.height"):
        score(["a cat"], cfg(tiny, height=36), tiny)
    with pytest.raises(ValueError, match=r"ScoreConfig\.split.*not_a_layer"):
        score(["a cat"], cfg(tiny, split=["down_blocks.0.not_a_layer"]), tiny)


def test_later_step_score_is_measured_on_the_ordinary_trajectory(tiny) -> None:
    from emoe.generation import denoise

    first = score(PROMPTS[:2], cfg(tiny, latent="eps", split="all"), tiny)
    later = score(PROMPTS[:2], cfg(tiny, latent="eps", split="all", at_step=3), tiny)
    assert [s.score for s in later] != [s.score for s in first]
    assert "at_step" not in first[0].scoring  # first-step fingerprints are what they always were
    assert later[0].scoring["at_step"] == 3 and later[0].fingerprint != first[0].fingerprint
    # the same number by hand: 3 ordinary SegMoE steps, then the gate's measurement at the fourth timestep
    config = cfg(tiny, latent="eps", split="all", at_step=3)
    plan = make_plan(config, tiny)
    embeds, _, _ = encode_prompts(tiny, PROMPTS[:1])
    negative, _, _ = encode_prompts(tiny, [""])
    latents, generator = initial_noise(tiny, plan)
    state = generator.get_state()
    gen = torch.Generator("cpu")
    gen.set_state(state)
    rows = torch.stack([negative[0], embeds[0]])
    stepped = denoise(
        tiny, plan, latents.clone(), rows, None, [plan.fresh_scheduler()], [gen], first=0, last=3
    )
    step = first_step(tiny, plan, embeds, negative, stepped, [gen.get_state()], ordinary=False)
    assert math.sqrt(step.dims) * float(step.eu[0]) == later[0].score


def test_generation_refuses_a_later_step_gate(tiny) -> None:
    from emoe import generate

    with pytest.raises(ValueError, match="at_step"):
        generate(PROMPTS[0], cfg(tiny, at_step=1), tiny)
    with pytest.raises(ValueError, match=r"ScoreConfig\.at_step"):
        cfg(tiny, at_step=5)  # steps=5: the last index is 4


@pytest.mark.parametrize("latent", ["m_post", "m_pre", "eps"])
def test_whole_path_scores_skip_the_negative_rows_with_the_same_numbers(tiny, latent) -> None:
    config = cfg(tiny, split="all", latent=latent)
    plan = make_plan(config, tiny)
    embeds, _, _ = encode_prompts(tiny, PROMPTS)
    negative, _, _ = encode_prompts(tiny, [""])
    latents, generator = initial_noise(tiny, plan)
    states = [generator.get_state()] * len(PROMPTS)
    start = latents.expand(len(PROMPTS), -1, -1, -1)
    full = first_step(tiny, plan, embeds, negative, start, states, ordinary=False)
    fast = first_step(tiny, plan, embeds, negative, start, states, ordinary=False, score_only=True)
    assert fast.rows.latents.shape[0] * 2 == full.rows.latents.shape[0]  # the negative rows were skipped
    assert torch.equal(fast.eu, full.eu)
    assert [s.eu for s in score(PROMPTS, config, tiny)] == full.eu.tolist()
    # with a split that leaves layers routed, the rows of a request route together: nothing is skipped
    partial = first_step(
        tiny,
        make_plan(cfg(tiny, latent=latent), tiny),
        embeds,
        negative,
        start,
        states,
        ordinary=False,
        score_only=True,
    )
    assert partial.rows.latents.shape[0] == full.rows.latents.shape[0]
