"""EMoE scoring: disagreement of the M expert paths at the first denoising step (paper section 3, appendix A).

Paths are batch rows. Per request r and path m there are the CFG rows (negative, prompt) - one routing group,
so every later MoE layer routes exactly as that path would alone. At the split layers each path is forced to
its own expert (no gate). EU(y) is the mean over the d latent dimensions of the population variance across the
M paths of the conditional row; the reported score is sqrt(d) * EU, where d is the size of the chosen latent
(the reference ensemble's eps at 32x32: 4 x 8 x 8 = 256; SD 1.5's m_post: 1280 x 8 x 8), not the paper's fixed
1280 x 8 x 8, so scores of different latents or image sizes are not on one scale.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from emoe import unet_passes
from emoe.config import ScoreConfig
from emoe.ensemble import Ensemble
from emoe.pipeline import (
    Plan,
    check_prompts,
    denoise,
    encode_prompts,
    guided,
    initial_noise,
    seeded_generators,
    step_kwargs,
)
from emoe.routing import routing

SCORING_VERSION = 1


@dataclass(frozen=True)
class Score:
    """One prompt's EMoE score and everything needed to interpret and replay it."""

    prompt: str
    score: float  # sqrt(d) * eu
    eu: float
    num_experts: int
    latent: str
    split: str | list[str]
    fingerprint: str
    scoring: dict[str, Any]
    timings_ms: dict[str, float]
    expert_deviation: list[float]  # per path: mean over dims of (path - paths' mean)^2; their mean is eu
    n_tokens: int
    truncated: bool
    experts: list[int] = field(
        default_factory=list
    )  # the expert of each path, same order as expert_deviation
    is_random: bool = False  # True when the ensemble has random weights (the score means nothing)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "prompt": self.prompt,
            "score": self.score,
            "eu": self.eu,
            "num_experts": self.num_experts,
            "latent": self.latent,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "scoring": self.scoring,
            "timings_ms": dict(self.timings_ms),
            "expert_deviation": list(self.expert_deviation),
            "experts": list(self.experts),
            "n_tokens": self.n_tokens,
            "truncated": self.truncated,
            "is_random": self.is_random,
        }


# --------------------------------------------------------------------------------------------------
# the plan: a ScoreConfig resolved against an ensemble
# ----------------------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def make_plan(config: ScoreConfig, ensemble: Ensemble) -> Plan:
    """Check config against the ensemble and compute the scoring fingerprint."""
    if not isinstance(config, ScoreConfig):
        raise TypeError(f"config: expected a ScoreConfig, got {type(config).__name__}")
    height = config.height or ensemble.default_height
    width = config.width or ensemble.default_width
    problem = ensemble.size_problem(height, width)
    if problem:
        raise ValueError(f"ScoreConfig.{problem}")
    experts = list(config.experts) if config.experts is not None else list(range(ensemble.num_experts))
    bad = [e for e in experts if e >= ensemble.num_experts]
    if bad:
        raise ValueError(
            f"ScoreConfig.experts: {bad} out of range for an ensemble of {ensemble.num_experts} experts"
        )
    if len(experts) < 2:
        raise ValueError(
            f"ScoreConfig.experts: EMoE needs at least 2 experts (M >= 2), the ensemble has {len(experts)}"
        )
    split_layers = ensemble.resolve_split(config.split)
    scheduler = ensemble.make_scheduler(config.scheduler)
    try:
        scheduler.set_timesteps(config.steps, device=ensemble.device)
    except ValueError as exc:
        raise ValueError(
            f"ScoreConfig.steps: {type(scheduler).__name__} refuses {config.steps} steps: {exc}"
        ) from exc
    timesteps = scheduler.timesteps
    cfg = config.guidance > 1.0  # diffusers' rule: guidance <= 1 runs without classifier-free guidance
    scheduler_config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    scoring = {
        "version": SCORING_VERSION,
        "weights_hash": ensemble.weights_hash,
        "dtype": str(ensemble.dtype).removeprefix("torch."),
        "scheduler": type(scheduler).__name__,
        "scheduler_config": _json_safe(scheduler_config),
        "first_timestep": int(timesteps[0]),
        "steps": config.steps,
        "guidance": config.guidance,
        "cfg": cfg,
        "negative_prompt": config.negative_prompt,
        "height": height,
        "width": width,
        "seed": config.seed,
        "latent": config.latent,
        "split": list(split_layers),
        "experts": experts,
    }
    if config.at_step:  # only when set, so that every first-step fingerprint stays what it was
        scoring["at_step"] = config.at_step
        scoring["at_timestep"] = int(timesteps[config.at_step])
    fingerprint = hashlib.sha256(
        json.dumps(scoring, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return Plan(
        config,
        height,
        width,
        scheduler,
        timesteps,
        frozenset(split_layers),
        experts,
        cfg,
        scoring,
        fingerprint,
    )


# --------------------------------------------------------------------------------------------------
# the gate's batch at the first step
# ----------------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """A batch laid out as requests x paths x CFG rows; path len(experts) is the ordinary MoE path."""

    latents: torch.Tensor
    encoder_states: torch.Tensor
    forced: torch.Tensor
    paths: int


def layout(
    ensemble: Ensemble,
    plan: Plan,
    embeds: torch.Tensor,
    negative: torch.Tensor,
    latents: torch.Tensor,
    *,
    ordinary: bool,
    cond_only: bool = False,
) -> Rows:
    """Rows for R requests: per request, M gate paths (+ the ordinary path), each with its CFG rows (only the
    conditional row with `cond_only`). `negative`: one negative-prompt embedding for all, or one a request."""
    requests = embeds.shape[0]
    paths = len(plan.experts) + (1 if ordinary else 0)
    cfg = plan.cfg and not cond_only
    per_group = 2 if cfg else 1
    encoder_rows = []
    for r in range(requests):
        per_path = [negative[r if negative.shape[0] == requests else 0], embeds[r]] if cfg else [embeds[r]]
        encoder_rows.extend(per_path * paths)
    path_expert = [*plan.experts, -1][:paths]
    forced = torch.tensor(
        [e for _ in range(requests) for e in path_expert for _ in range(per_group)],
        device=ensemble.device,
    )
    x = latents.repeat_interleave(paths * per_group, dim=0)
    return Rows(x, torch.stack(encoder_rows), forced, paths)


def disagreement(paths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(requests, M, d) -> EU (requests,) and each path's mean squared deviation from the mean (requests, M).

    Centred on path 0 first, in float64, so identical paths give exactly 0.
    """
    x = paths.double()
    centred = x - x[:, :1]
    deviation = centred - centred.mean(dim=1, keepdim=True)
    per_path = deviation.pow(2).mean(dim=2)
    return per_path.mean(dim=1), per_path


@dataclass
class FirstStep:
    """The gate's outputs for one batch at the first denoising step."""

    eu: torch.Tensor
    deviation: torch.Tensor
    dims: int
    state: unet_passes.DownMid
    rows: Rows
    gate_noise: torch.Tensor | None  # UNet output of the gate rows when the latent needed the up blocks


@torch.no_grad()
def first_step(
    ensemble: Ensemble,
    plan: Plan,
    embeds: torch.Tensor,
    negative: torch.Tensor,
    latents: torch.Tensor,
    generator_states: list[torch.Tensor],
    *,
    ordinary: bool,
    score_only: bool = False,
) -> FirstStep:
    """Run the M gate paths (+ the ordinary path) through down+mid at the first timestep; measure EU.

    With `config.at_step` > 0, `latents` are already denoised to that step and it is measured there.
    `score_only`: the caller needs the score, not rows to denoise on from.
    """
    unet = ensemble.unet
    t0 = plan.timesteps[plan.config.at_step]
    # When every MoE layer is split (whole expert paths) no layer routes, so the batch rows are independent,
    # and a latent read off the conditional rows does not need the negative-prompt rows that guidance adds:
    # they are skipped (half the work, the same numbers). z_prev needs the guided noise, so it keeps them.
    cond_only = (
        score_only
        and plan.cfg
        and plan.config.latent != "z_prev"
        and plan.split_layers == frozenset(ensemble.moe_layers)
    )
    rows = layout(ensemble, plan, embeds, negative, latents, ordinary=ordinary, cond_only=cond_only)
    g, m, requests = 1 if cond_only else plan.rows_per_group, len(plan.experts), embeds.shape[0]
    x = plan.scheduler.scale_model_input(rows.latents, t0)
    with routing(
        ensemble.routing, rows_per_group=g, forced_expert=rows.forced, split_layers=plan.split_layers
    ):
        state = unet_passes.down_mid(unet, x, t0, rows.encoder_states)
        gate_noise = None
        if plan.config.latent in ("eps", "z_prev"):
            gate_idx = (rows.forced >= 0).nonzero(as_tuple=True)[0]
            with routing(
                ensemble.routing,
                rows_per_group=g,
                forced_expert=rows.forced[gate_idx],
                split_layers=plan.split_layers,
            ):
                gate_noise = unet_passes.up(unet, state.rows(gate_idx), rows.encoder_states[gate_idx])

    # the conditional row of each gate path: (requests, M, ...)
    def cond_rows(t: torch.Tensor, per_path: int) -> torch.Tensor:
        t = t.view(requests, per_path, g, *t.shape[1:])
        return t[:, :m, g - 1]

    latent = plan.config.latent
    if latent == "m_post":
        paths = cond_rows(state.sample, rows.paths)
    elif latent == "m_pre":
        paths = cond_rows(state.mid_in, rows.paths)
    elif latent == "eps":
        assert gate_noise is not None
        paths = cond_rows(gate_noise, m)
    else:  # z_prev: each path takes its own first scheduler step from the same latents and the same noise
        assert gate_noise is not None
        eps = guided(gate_noise, plan).view(requests, m, *gate_noise.shape[1:])
        stepped = []
        for r in range(requests):
            for p in range(m):
                scheduler = plan.fresh_scheduler()
                gen = torch.Generator("cpu")
                gen.set_state(generator_states[r])
                out = scheduler.step(eps[r, p : p + 1], t0, latents[r : r + 1], **step_kwargs(scheduler, gen))
                stepped.append(out.prev_sample[0])
        paths = torch.stack(stepped).view(requests, m, *latents.shape[1:])
    flat = paths.reshape(requests, m, -1)
    eu, deviation = disagreement(flat)
    return FirstStep(eu, deviation, flat.shape[-1], state, rows, gate_noise)


def make_score(
    ensemble: Ensemble,
    plan: Plan,
    prompt: str,
    step: FirstStep,
    index: int,
    n_tokens: int,
    truncated: bool,
    timings_ms: dict[str, float],
) -> Score:
    eu = float(step.eu[index])
    split = plan.config.split
    return Score(
        prompt=prompt,
        score=math.sqrt(step.dims) * eu,
        eu=eu,
        num_experts=len(plan.experts),
        latent=plan.config.latent,
        split=list(split) if isinstance(split, tuple) else split,
        fingerprint=plan.fingerprint,
        scoring=plan.scoring,
        timings_ms=timings_ms,
        expert_deviation=[float(v) for v in step.deviation[index]],
        n_tokens=n_tokens,
        truncated=truncated,
        experts=list(plan.experts),
        is_random=ensemble.is_random,
    )


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


# --------------------------------------------------------------------------------------------------
# the public entry point
# ----------------------------------------------------------------------------------------------------


def score(prompts: Sequence[str], config: ScoreConfig, ensemble: Ensemble) -> list[Score]:
    """Score prompts with EMoE at the first denoising step, `config.batch_size` requests per batch."""
    with ensemble.lock:
        return _score(prompts, config, ensemble)


def _score(prompts: Sequence[str], config: ScoreConfig, ensemble: Ensemble) -> list[Score]:
    # 1. check inputs and resolve the configuration
    prompts = check_prompts(prompts)
    plan = make_plan(config, ensemble)
    negative, _, _ = encode_prompts(ensemble, [config.negative_prompt])
    latents, generator = initial_noise(ensemble, plan)
    generator_state = generator.get_state()

    scores: list[Score] = []
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start : start + config.batch_size]
        t_batch = time.perf_counter()
        # 2. encode the prompts
        embeds, n_tokens, truncated = encode_prompts(ensemble, batch)
        t_encoded = time.perf_counter()
        # 3. every request starts from its seed's latents (same seed, same noise); for a later-step score the
        #    ordinary MoE denoises each request up to that step first
        start_latents = latents.expand(len(batch), -1, -1, -1)
        states = [generator_state] * len(batch)
        if plan.config.at_step:
            start_latents, states = ordinary_denoise(
                ensemble, plan, embeds, negative, start_latents, generator_state, last=plan.config.at_step
            )
        # 4. the gate
        step = first_step(
            ensemble, plan, embeds, negative, start_latents, states, ordinary=False, score_only=True
        )
        timings = {
            "encode_ms": round((t_encoded - t_batch) * 1000.0, 3),
            "gate_ms": _ms(t_encoded),
            "batch_ms": _ms(t_batch),
            "batch_size": float(len(batch)),
        }
        for i, prompt in enumerate(batch):
            scores.append(
                make_score(ensemble, plan, prompt, step, i, n_tokens[i], truncated[i], dict(timings))
            )
    return scores


@torch.no_grad()
def ordinary_denoise(
    ensemble: Ensemble,
    plan: Plan,
    embeds: torch.Tensor,
    negative: torch.Tensor,
    latents: torch.Tensor,
    generator_state: torch.Tensor,
    *,
    last: int | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Denoise each request with the ordinary (routed) MoE from the first step up to `last` (default: the
    end); the latents and each request's generator state."""
    rows = [r for e in embeds for r in ((negative[0], e) if plan.cfg else (e,))]
    schedulers = [plan.fresh_scheduler() for _ in range(embeds.shape[0])]
    generators = seeded_generators(generator_state, len(schedulers))
    out = denoise(
        ensemble, plan, latents.clone(), torch.stack(rows), None, schedulers, generators, first=0, last=last
    )
    return out, [gen.get_state() for gen in generators]


def scoring_fingerprint(config: ScoreConfig, ensemble: Ensemble) -> str:
    """The fingerprint every Score made with `config` on `ensemble` carries, without scoring anything."""
    return make_plan(config, ensemble).fingerprint
