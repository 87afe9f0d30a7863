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

Batches across requests (`generate_batch`): requests that share a `batch_key` (size, steps, guidance,
scheduler, gate settings; seeds and negative prompts may differ) run as one batch of trajectories, each with
its own seed's noise and generator and its own routing group, so each routes as it would alone. Their numbers
match a request rendered alone bit for bit (tests/emoe/test_render_batch.py): a row's numbers do not depend on
what else is in the batch (emoe/unet_passes.py, emoe/routing.py). That holds with classifier-free guidance
(two rows a trajectory); without it requests run one at a time (`batches_exactly`).

`gate=False` renders fast-mode requests whose decision was taken already (a worker's gate stage): no gate
paths at the first step (with guidance), only the ordinary path, which is all that Fast EMoE's image is made
of; the images are bit-identical to those of the gated call (tested on the tiny and the reference ensemble).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from emoe import unet_passes
from emoe.config import ScoreConfig
from emoe.ensemble import Ensemble
from emoe.pipeline import (
    GenerationCancelled,
    Plan,
    StopCheck,
    check_prompts,
    decode,
    denoise,
    encode_prompts,
    initial_noise,
    seeded_generators,
)
from emoe.routing import routing
from emoe.scoring import Score, first_step, make_plan, make_score

Decide = Callable[[Score], bool]
Rollout = Literal["moe", "experts"]
ROLLOUTS: tuple[Rollout, ...] = ("moe", "experts")
MODES = ("fast", "full")
__all__ = [
    "Generation",
    "GenerationCancelled",
    "StopCheck",
    "batch_key",
    "decode",
    "denoise",
    "generate",
    "generate_batch",
]


@dataclass
class Generation:
    """The score, whether the request was halted, and the images (1 fast, M full, none when halted)."""

    score: Score | None  # None when rendered with gate=False
    halted: bool
    images: list[Any] = field(default_factory=list)  # PIL.Image.Image
    timings_ms: dict[str, float] = field(default_factory=dict)
    mode: str = "fast"
    rollout: str | None = None  # full mode only: "moe" (Algorithm 1) or "experts"
    latents: torch.Tensor | None = None  # the final latents the images were decoded from, one row per image


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def batch_key(config: ScoreConfig) -> tuple[Any, ...]:
    """Requests whose configurations have the same key can be generated in one batch (they may differ in
    seed and negative prompt only)."""
    values = config.to_dict()
    for own in ("seed", "negative_prompt", "batch_size"):
        values.pop(own, None)
    return tuple(sorted((k, repr(v)) for k, v in values.items()))


def generate(
    prompt: str,
    config: ScoreConfig,
    ensemble: Ensemble,
    *,
    mode: Literal["fast", "full"] = "fast",
    decide: Decide | None = None,
    rollout: Rollout = "moe",
    should_stop: StopCheck | None = None,
    gate: bool = True,
) -> Generation:
    """Score `prompt` at the first step, ask `decide` (True: continue; None: always), then generate.

    `rollout` (full mode): after the first step each path continues through the ordinary MoE ("moe", the
    paper's Algorithm 1) or stays forced to its expert at the split layers ("experts", not the paper).
    `should_stop` (e.g. "was the job cancelled?") is asked before each later denoising step; True raises
    `GenerationCancelled`. `gate=False` (fast mode, no `decide`): the same image without the score (None).
    """
    (result,) = generate_batch(
        [(prompt, config)],
        ensemble,
        mode=mode,
        decide=decide,
        rollout=rollout,
        should_stop=[should_stop],
        gate=gate,
    )
    if isinstance(result, Exception):
        raise result
    return result


def generate_batch(
    requests: Sequence[tuple[str, ScoreConfig]],
    ensemble: Ensemble,
    *,
    mode: Literal["fast", "full"] = "fast",
    decide: Decide | None = None,
    rollout: Rollout = "moe",
    should_stop: Sequence[StopCheck | None] | None = None,
    gate: bool = True,
) -> list[Generation | ValueError | GenerationCancelled]:
    """`generate` for several (prompt, config) requests in one batch; one result per request, in order.

    A request that cannot be generated (a bad prompt or setting) gets its ValueError in its place, one whose
    `should_stop[i]` said stop its GenerationCancelled; the others go on. Configurations must share a
    `batch_key` (else ValueError for the whole call): a batch has one size, step count and scheduler.
    `gate=False`: fast mode only, nothing to decide; the first step skips the gate paths (score None).
    Without classifier-free guidance (guidance <= 1) the requests run one at a time, with the gate paths
    (`batches_exactly`: a lone row convolves differently).
    """
    if mode not in MODES:
        raise ValueError(f"mode: must be 'fast' or 'full', got {mode!r}")
    if rollout not in ROLLOUTS:
        raise ValueError(f"rollout: must be one of {ROLLOUTS}, got {rollout!r}")
    if mode == "fast" and rollout != "moe":
        raise ValueError(f"rollout: {rollout!r} needs mode 'full' (Fast EMoE renders the ordinary path only)")
    if not gate and (mode != "fast" or decide is not None):
        raise ValueError(
            "gate: False renders fast mode without a decision (full mode needs the gate's paths)"
        )
    stops = list(should_stop) if should_stop is not None else [None] * len(requests)
    if len(stops) != len(requests):
        raise ValueError(f"should_stop: {len(stops)} checks for {len(requests)} requests")
    keys = {batch_key(config) for _, config in requests if isinstance(config, ScoreConfig)}
    if len(keys) > 1:
        raise ValueError("requests: their configurations differ in more than seed and negative prompt")
    results: list[Any] = [None] * len(requests)
    planned: list[tuple[int, str, Plan]] = []
    # 1. check inputs, one request at a time
    for i, (prompt, config) in enumerate(requests):
        try:
            (prompt,) = check_prompts([prompt])
            if config.at_step:
                raise ValueError(
                    f"ScoreConfig.at_step: generation gates at the first step (0), got {config.at_step}; "
                    "later steps are for scoring studies (emoe.score)"
                )
            planned.append((i, prompt, make_plan(config, ensemble)))
        except ValueError as exc:
            if len(requests) == 1:
                raise
            results[i] = exc
    together = bool(planned) and batches_exactly(planned[0][2].config)
    groups = [planned] if together else [[request] for request in planned]
    gate = gate or not together  # the ordinary path alone would be one row: kept among the gate paths
    with ensemble.lock:
        for group in groups:
            batch = _generate(group, ensemble, mode, decide, rollout, [stops[i] for i, _, _ in group], gate)
            for (i, _, _), result in zip(group, batch, strict=True):
                results[i] = result
    return results


def batches_exactly(config: ScoreConfig) -> bool:
    """Whether requests of this configuration share one denoising batch (else `generate_batch` runs them one
    at a time): only with classifier-free guidance, where a trajectory is a pair of rows. Without it a
    trajectory is one row, and oneDNN convolves a lone row differently from the same row among others."""
    return config.guidance > 1.0


@torch.no_grad()
def _generate(
    planned: list[tuple[int, str, Plan]],
    ensemble: Ensemble,
    mode: str,
    decide: Decide | None,
    rollout: Rollout,
    stops: list[StopCheck | None],
    gate: bool = True,
) -> list[Generation | GenerationCancelled]:
    rollout_of = rollout if mode == "full" else None
    asked = [_Asked(check) if check is not None else None for check in stops]
    prompts = [prompt for _, prompt, _ in planned]
    plans = [plan for _, _, plan in planned]
    plan, requests = plans[0], len(planned)  # the shared settings: size, timesteps, guidance, gate
    t_start = time.perf_counter()

    # 2. encode prompts and negative prompts; 3. prepare each request's latents from its seed
    embeds, n_tokens, truncated = encode_prompts(ensemble, prompts)
    negatives = [p.config.negative_prompt for p in plans]
    if len(set(negatives)) == 1:
        negative, _, _ = encode_prompts(ensemble, negatives[:1])
    else:
        negative, _, _ = encode_prompts(ensemble, negatives)
    noise_and_generators = [initial_noise(ensemble, p) for p in plans]
    latents = torch.cat([z for z, _ in noise_and_generators])
    states = [gen.get_state() for _, gen in noise_and_generators]
    t_encoded = time.perf_counter()

    timings = {"encode_ms": round((t_encoded - t_start) * 1000.0, 3)}
    if requests > 1:
        timings["render_batch_size"] = float(requests)
    results: list[Any] = [None] * requests
    g = plan.rows_per_group
    if not gate:
        # 4-6 (gate=False): the decision was taken; each request's ordinary path starts from its noise
        t_denoise = time.perf_counter()
        scores: list[Score | None] = [None] * requests
        owner = list(range(requests))
        schedulers = [p.fresh_scheduler() for p in plans]
        generators = [seeded_generators(state, 1)[0] for state in states]
        negatives_of = [negative[r if negative.shape[0] == requests else 0] for r in range(requests)]
        pairs = [(negatives_of[r], embeds[r]) if plan.cfg else (embeds[r],) for r in range(requests)]
        encoder_states = torch.stack([row for pair in pairs for row in pair])
        z, forced, first = latents, None, 0
    else:
        # 4. first step: gate paths (+ the ordinary path in fast mode) through down+mid, then the scores
        step = first_step(ensemble, plan, embeds, negative, latents, states, ordinary=mode == "fast")
        timings["gate_ms"] = _ms(t_encoded)
        scores = [
            make_score(ensemble, p, prompt, step, r, n_tokens[r], truncated[r], dict(timings))
            for r, (p, prompt) in enumerate(zip(plans, prompts, strict=True))
        ]

        # 5. the decisions
        t_decide = time.perf_counter()
        going = [r for r in range(requests) if decide is None or bool(decide(scores[r]))]
        timings["decide_ms"] = _ms(t_decide)
        for r in set(range(requests)) - set(going):
            results[r] = Generation(
                score=scores[r],
                halted=True,
                timings_ms={**timings, "total_ms": _ms(t_start)},
                mode=mode,
                rollout=rollout_of,
            )
        if not going:
            return results

        # 6. finish the first step: the ordinary path (fast) or the M disentangled paths (full) of each
        #    request that goes on; each of its trajectories draws from its own seed's generator
        t_denoise = time.perf_counter()
        rows = step.rows
        per_request = 1 if mode == "fast" else len(plan.experts)
        own_rows = torch.nonzero(rows.forced < 0 if mode == "fast" else rows.forced >= 0).flatten()
        chosen = torch.cat([own_rows.view(requests, -1)[r] for r in going])  # the rows of those going on
        encoder_states = rows.encoder_states[chosen]
        if mode == "fast":
            with routing(ensemble.routing, rows_per_group=g, forced_expert=None, split_layers=frozenset()):
                noise = unet_passes.up(ensemble.unet, step.state.rows(chosen), encoder_states)
            forced = None
        else:
            forced = rows.forced[chosen]
            if step.gate_noise is not None:  # the gate ran the up blocks already (latent eps or z_prev)
                noise = torch.cat(
                    [step.gate_noise.view(requests, -1, *step.gate_noise.shape[1:])[r] for r in going]
                )
            else:
                with routing(
                    ensemble.routing, rows_per_group=g, forced_expert=forced, split_layers=plan.split_layers
                ):
                    noise = unet_passes.up(ensemble.unet, step.state.rows(chosen), encoder_states)
        owner = [r for r in going for _ in range(per_request)]  # the request of each trajectory
        schedulers = [plans[r].fresh_scheduler() for r in owner]
        generators = [gen for r in going for gen in seeded_generators(states[r], per_request)]
        z = latents[owner]
        z = denoise(
            ensemble, plan, z, encoder_states, forced, schedulers, generators, 0, 1, first_noise=noise
        )
        first = 1

    # 7. denoise the rest: each trajectory through the ordinary MoE (Algorithm 1, line 15), or still forced;
    #    a request whose `should_stop` says stop leaves the batch before the next step, the others go on
    later_forced = forced if rollout == "experts" else None
    while True:
        try:
            z = denoise(
                ensemble,
                plan,
                z,
                encoder_states,
                later_forced,
                schedulers,
                generators,
                first=first,
                should_stop=_any_stop(owner, asked),
            )
            break
        except GenerationCancelled as stop:
            assert stop.step is not None and stop.latents is not None
            stopped = {r for r in set(owner) if (check := asked[r]) is not None and check.last}
            for r in stopped:
                results[r] = GenerationCancelled(str(stop))
            keep = [i for i, r in enumerate(owner) if r not in stopped]
            if not keep:
                return results
            index = torch.tensor(keep)
            z = stop.latents[index]
            rows_kept = torch.tensor([i * g + k for i in keep for k in range(g)])
            encoder_states = encoder_states[rows_kept]
            forced = forced[rows_kept] if forced is not None else None
            later_forced = later_forced[rows_kept] if later_forced is not None else None
            owner = [owner[i] for i in keep]
            schedulers = [schedulers[i] for i in keep]
            generators = [generators[i] for i in keep]
            first = stop.step
    timings["denoise_ms"] = _ms(t_denoise)

    # 8. decode, one request at a time (the VAE's kernels, like the UNet's, depend on the batch's size)
    t_decode = time.perf_counter()
    done = {}
    for r in dict.fromkeys(owner):
        mine = [i for i, o in enumerate(owner) if o == r]
        final = z[mine[0] : mine[-1] + 1]
        done[r] = (final, decode(ensemble, final))
    timings["decode_ms"] = _ms(t_decode)
    timings["total_ms"] = _ms(t_start)
    for r, (final, images) in done.items():
        results[r] = Generation(
            score=scores[r],
            halted=False,
            images=images,
            timings_ms=dict(timings),
            mode=mode,
            rollout=rollout_of,
            latents=final,
        )
    return results


class _Asked:
    """A request's `should_stop`, remembering its last answer (so a batch knows who said stop)."""

    def __init__(self, check: StopCheck) -> None:
        self.check = check
        self.last = False

    def __call__(self) -> bool:
        self.last = bool(self.check())
        return self.last


def _any_stop(owner: list[int], asked: list[_Asked | None]) -> StopCheck | None:
    """One check for the batch: asks every request still in it (each once), True if any said stop."""
    checks = [asked[r] for r in dict.fromkeys(owner) if asked[r] is not None]
    if not checks:
        return None
    return lambda: any([check() for check in checks])  # a list: every request is asked, not the first only
