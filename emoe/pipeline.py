"""The steps EMoE scoring and generation share, in the order a diffusers pipeline runs them.

`Plan` is a ScoreConfig resolved against an ensemble (`emoe.scoring.make_plan` makes one). Then: 1. check the
prompts, 2. encode them, 3. prepare the latents and the per-trajectory generators from the seed, 4. denoise
(classifier-free guidance, one scheduler step per trajectory), 5. decode to images. A batch is a stack of
trajectories, each its own routing group of CFG rows, so a trajectory routes as it would alone.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from emoe import unet_passes
from emoe.config import ScoreConfig
from emoe.ensemble import Ensemble
from emoe.routing import routing

StopCheck = Callable[[], bool]


class GenerationCancelled(RuntimeError):
    """`should_stop` said stop before a denoising step: nothing was decoded. `step` and `latents`: where the
    trajectories stood (a batch goes on from there without the requests that stopped)."""

    def __init__(self, message: str, step: int | None = None, latents: torch.Tensor | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.latents = latents


@dataclass
class Plan:
    """A ScoreConfig checked against an ensemble: size, scheduler and timesteps, split layers, experts."""

    config: ScoreConfig
    height: int
    width: int
    scheduler: Any  # with timesteps set
    timesteps: torch.Tensor
    split_layers: frozenset[str]
    experts: list[int]
    cfg: bool
    scoring: dict[str, Any]
    fingerprint: str

    @property
    def rows_per_group(self) -> int:
        return 2 if self.cfg else 1

    def fresh_scheduler(self) -> Any:
        return copy.deepcopy(self.scheduler)


# 1. check inputs
def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list; a ValueError naming `prompts[i]` for an empty or non-string one."""
    if isinstance(prompts, str):
        raise TypeError("prompts: expected a list of strings, got a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: at least one prompt is needed")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompts[{i}]: must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError(f"prompts[{i}]: empty or whitespace-only prompt")
    return prompts


# 2. encode the prompts
@torch.no_grad()
def encode_prompts(ensemble: Ensemble, prompts: list[str]) -> tuple[torch.Tensor, list[int], list[bool]]:
    """CLIP embeddings as StableDiffusionPipeline makes them, plus token counts and truncation flags.

    One prompt at a time: the text encoder's kernels (vectorised loops and their tails) depend on the batch,
    so a prompt encoded among others would not be bit-equal to the same prompt encoded alone."""
    tokenizer = ensemble.tokenizer
    limit = ensemble.max_prompt_tokens
    n_tokens = [len(tokenizer(p, truncation=False, verbose=False).input_ids) - 2 for p in prompts]
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(ensemble.device)
    embeds = torch.cat([ensemble.pipe.text_encoder(ids[i : i + 1])[0] for i in range(ids.shape[0])])
    return embeds.to(ensemble.dtype), n_tokens, [n > limit for n in n_tokens]


# 3. prepare the latents and the generators
def initial_noise(ensemble: Ensemble, plan: Plan) -> tuple[torch.Tensor, torch.Generator]:
    """The request's starting latents from its seed (as diffusers draws them with a CPU generator)."""
    generator = torch.Generator("cpu").manual_seed(plan.config.seed)
    channels = ensemble.unet.config.in_channels
    shape = (1, channels, plan.height // ensemble.vae_scale_factor, plan.width // ensemble.vae_scale_factor)
    latents = torch.randn(shape, generator=generator, dtype=ensemble.dtype).to(ensemble.device)
    return latents * plan.scheduler.init_noise_sigma, generator


def seeded_generators(state: torch.Tensor, n: int) -> list[torch.Generator]:
    """n CPU generators at the same state: every trajectory draws the noise its request's seed gives."""
    generators = []
    for _ in range(n):
        gen = torch.Generator("cpu")
        gen.set_state(state)
        generators.append(gen)
    return generators


# 4. denoise
@functools.cache
def _step_parameters(scheduler_type: type) -> frozenset[str]:
    return frozenset(inspect.signature(scheduler_type.step).parameters)  # once a type: every step asks


def step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    """The keyword arguments this scheduler's `step` takes: eta 0 (DDIM) and the trajectory's generator."""
    params = _step_parameters(type(scheduler))
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def guided(noise: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Classifier-free guidance over consecutive (negative, prompt) row pairs."""
    if not plan.cfg:
        return noise
    pairs = noise.view(-1, 2, *noise.shape[1:])
    uncond, cond = pairs[:, 0], pairs[:, 1]
    return uncond + plan.config.guidance * (cond - uncond)


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
    first_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Steps first..last-1 (default: to the end) for a batch of trajectories (one per scheduler), each its
    own routing group. `should_stop` is asked before each step it runs the UNet for; True raises
    `GenerationCancelled`. `first_noise`: the UNet output at step `first`, already computed (Fast EMoE reads
    it off the gate's batch), so that step only takes the scheduler steps."""
    g = plan.rows_per_group
    for n, t in enumerate(plan.timesteps[first:last]):
        if n == 0 and first_noise is not None:
            noise = first_noise
        else:
            if should_stop is not None and should_stop():
                raise GenerationCancelled(f"stopped before timestep {int(t)}", first + n, latents)
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


# 5. decode
@torch.no_grad()
def decode(ensemble: Ensemble, latents: torch.Tensor) -> list[Any]:
    """VAE decode and post-process to PIL images, as diffusers' StableDiffusionPipeline does."""
    vae = ensemble.pipe.vae
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return ensemble.pipe.image_processor.postprocess(
        image, output_type="pil", do_denormalize=[True] * len(image)
    )
