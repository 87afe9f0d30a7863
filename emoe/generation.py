"""Generation with the EMoE gate: Fast EMoE (score, then one ordinary MoE image) and full EMoE (M images).

Fast EMoE: at the first step the ordinary MoE path rides in the same batch as the M gate paths through the
down and mid blocks; the score is read there, the decision callback runs, and only then does the ordinary path
go on through the up blocks. A halted request spends down+mid of one step and returns no image.
The gate does not change the picture: the ordinary path is routed exactly as plain SegMoE routes it.

Full EMoE (paper appendix A, Algorithm 1): the experts are disentangled at the first step only, giving M
latents z_{T-1}^i; every later step passes each of them through the ordinary MoE without disentangling (line
15), so the M images differ by what the first step made of them. `rollout="experts"` (not the paper) keeps the
paths forced at the split layers at every step instead: with split `all` each image is one expert's own
picture.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from emoe import unet_passes
from emoe.config import ScoreConfig
from emoe.ensemble import Ensemble
from emoe.routing import routing
from emoe.scoring import (
    Plan,
    Score,
    check_prompts,
    encode_prompts,
    first_step,
    guided,
    initial_noise,
    make_plan,
    make_score,
    seeded_generators,
    step_kwargs,
)

Decide = Callable[[Score], bool]
StopCheck = Callable[[], bool]


class GenerationCancelled(RuntimeError):
    """`should_stop` said stop before a denoising step: nothing was decoded."""


Rollout = Literal["moe", "experts"]
ROLLOUTS: tuple[Rollout, ...] = ("moe", "experts")


@dataclass
class Generation:
    """The score, whether the request was halted, and the images (1 fast, M full, none when halted)."""

    score: Score
    halted: bool
    images: list[Any] = field(default_factory=list)  # PIL.Image.Image
    timings_ms: dict[str, float] = field(default_factory=dict)
    mode: str = "fast"
    rollout: str | None = None  # full mode only: "moe" (Algorithm 1) or "experts"
    latents: torch.Tensor | None = None  # the final latents the images were decoded from, one row per image


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


@torch.no_grad()
def decode(ensemble: Ensemble, latents: torch.Tensor) -> list[Any]:
    """VAE decode and post-process to PIL images, as diffusers' StableDiffusionPipeline does."""
    vae = ensemble.pipe.vae
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return ensemble.pipe.image_processor.postprocess(
        image, output_type="pil", do_denormalize=[True] * len(image)
    )


@torch.no_grad()
def denoise(
    ensemble: Ensemble,
    plan: Plan,
    latents: torch.Tensor,
    encoder_states: torch.Tensor,
    forced: torch.Tensor | None,
    schedulers: list[Any],
    generators: list[torch.Generator],
    first: int,
    last: int | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Steps first..last-1 (default: to the end) for a batch of trajectories (one per scheduler), each its
    own routing group. `should_stop` is asked before each step; True raises `GenerationCancelled`."""
    g = plan.rows_per_group
    for t in plan.timesteps[first:last]:
        if should_stop is not None and should_stop():
            raise GenerationCancelled(f"stopped before timestep {int(t)}")
        x = schedulers[0].scale_model_input(latents.repeat_interleave(g, dim=0), t)
        with routing(
            ensemble.routing, rows_per_group=g, forced_expert=forced, split_layers=plan.split_layers
        ):
            noise = unet_passes.full(ensemble.unet, x, t, encoder_states)
        eps = guided(noise, plan)
        latents = torch.cat(
            [
                sched.step(eps[i : i + 1], t, latents[i : i + 1], **step_kwargs(sched, gen)).prev_sample
                for i, (sched, gen) in enumerate(zip(schedulers, generators, strict=True))
            ]
        ).to(ensemble.dtype)
    return latents


def generate(
    prompt: str,
    config: ScoreConfig,
    ensemble: Ensemble,
    *,
    mode: Literal["fast", "full"] = "fast",
    decide: Decide | None = None,
    rollout: Rollout = "moe",
    should_stop: StopCheck | None = None,
) -> Generation:
    """Score `prompt` at the first step, ask `decide` (True: continue; None: always), then generate.

    `rollout` (full mode): after the first step each path continues through the ordinary MoE ("moe", the
    paper's Algorithm 1) or stays forced to its expert at the split layers ("experts", not the paper).
    `should_stop` (e.g. "was the job cancelled?") is asked before each later denoising step; True raises
    `GenerationCancelled`.
    """
    with ensemble.lock:
        return _generate(
            prompt, config, ensemble, mode=mode, decide=decide, rollout=rollout, should_stop=should_stop
        )


@torch.no_grad()
def _generate(
    prompt: str,
    config: ScoreConfig,
    ensemble: Ensemble,
    *,
    mode: str,
    decide: Decide | None,
    rollout: Rollout,
    should_stop: StopCheck | None = None,
) -> Generation:
    # 1. check inputs
    if mode not in ("fast", "full"):
        raise ValueError(f"mode: must be 'fast' or 'full', got {mode!r}")
    if rollout not in ROLLOUTS:
        raise ValueError(f"rollout: must be one of {ROLLOUTS}, got {rollout!r}")
    if mode == "fast" and rollout != "moe":
        raise ValueError(f"rollout: {rollout!r} needs mode 'full' (Fast EMoE renders the ordinary path only)")
    rollout_of = rollout if mode == "full" else None
    (prompt,) = check_prompts([prompt])
    if config.at_step:
        raise ValueError(
            f"ScoreConfig.at_step: generation gates at the first step (0), got {config.at_step}; "
            "later steps are for scoring studies (emoe.score)"
        )
    plan = make_plan(config, ensemble)
    t_start = time.perf_counter()

    # 2. encode prompt and negative prompt; 3. prepare latents from the seed
    embeds, n_tokens, truncated = encode_prompts(ensemble, [prompt])
    negative, _, _ = encode_prompts(ensemble, [config.negative_prompt])
    latents, generator = initial_noise(ensemble, plan)
    generator_state = generator.get_state()
    t_encoded = time.perf_counter()

    # 4. first step: gate paths (+ the ordinary path in fast mode) through down+mid, then the score
    step = first_step(ensemble, plan, embeds, negative, latents, [generator_state], ordinary=mode == "fast")
    timings = {"encode_ms": round((t_encoded - t_start) * 1000.0, 3), "gate_ms": _ms(t_encoded)}
    score = make_score(ensemble, plan, prompt, step, 0, n_tokens[0], truncated[0], dict(timings))

    # 5. the decision
    t_decide = time.perf_counter()
    go_on = True if decide is None else bool(decide(score))
    timings["decide_ms"] = _ms(t_decide)
    if not go_on:
        timings["total_ms"] = _ms(t_start)
        return Generation(
            score=score, halted=True, images=[], timings_ms=timings, mode=mode, rollout=rollout_of
        )

    # 6. finish the first step: the ordinary path (fast) or the M disentangled paths (full)
    t_denoise = time.perf_counter()
    rows, g, t0 = step.rows, plan.rows_per_group, plan.timesteps[0]
    if mode == "fast":
        idx = (rows.forced < 0).nonzero(as_tuple=True)[0]
        encoder_states = rows.encoder_states[idx]
        with routing(ensemble.routing, rows_per_group=g, forced_expert=None, split_layers=frozenset()):
            noise = unet_passes.up(ensemble.unet, step.state.rows(idx), encoder_states)
        forced = None
        trajectories = 1
    else:
        idx = (rows.forced >= 0).nonzero(as_tuple=True)[0]
        encoder_states = rows.encoder_states[idx]
        forced = rows.forced[idx]
        noise = step.gate_noise
        if noise is None:
            with routing(
                ensemble.routing, rows_per_group=g, forced_expert=forced, split_layers=plan.split_layers
            ):
                noise = unet_passes.up(ensemble.unet, step.state.rows(idx), encoder_states)
        trajectories = len(plan.experts)
    schedulers = [plan.fresh_scheduler() for _ in range(trajectories)]
    generators = seeded_generators(generator_state, trajectories)
    eps = guided(noise, plan)
    latents = torch.cat(
        [
            sched.step(eps[i : i + 1], t0, latents, **step_kwargs(sched, gen)).prev_sample
            for i, (sched, gen) in enumerate(zip(schedulers, generators, strict=True))
        ]
    ).to(ensemble.dtype)

    # 7. denoise the rest: each trajectory through the ordinary MoE (Algorithm 1, line 15), or still forced
    later_forced = forced if rollout == "experts" else None
    latents = denoise(
        ensemble,
        plan,
        latents,
        encoder_states,
        later_forced,
        schedulers,
        generators,
        first=1,
        should_stop=should_stop,
    )
    timings["denoise_ms"] = _ms(t_denoise)

    # 8. decode
    t_decode = time.perf_counter()
    images = decode(ensemble, latents)
    timings["decode_ms"] = _ms(t_decode)
    timings["total_ms"] = _ms(t_start)
    return Generation(
        score=score,
        halted=False,
        images=images,
        timings_ms=timings,
        mode=mode,
        rollout=rollout_of,
        latents=latents,
    )
