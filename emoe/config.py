"""ScoreConfig: everything a score depends on besides the ensemble and the prompt (validated on creation)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emoe.ensemble import Ensemble

LATENTS = ("m_post", "m_pre", "z_prev", "eps")
SPLITS = ("attn2", "attn1", "all")
SCHEDULERS = ("ddpm", "ddim", "euler", "euler_a", "dpm", "pndm", "lms")
MAX_STEPS = 1000
MAX_BATCH = 256


def _fail(name: str, problem: str, value: Any) -> ValueError:
    return ValueError(f"ScoreConfig.{name}: {problem}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ScoreConfig:
    """How to score: seed, sampler settings, EMoE latent, where the expert paths split, which experts.

    `split`: "attn2" (the paper: first cross-attention of down_blocks[0]), "attn1", "all" (every MoE
    layer: whole expert paths), or a list of MoE layer names (an attention like
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2", or a single projection "...attn2.to_q").
    `experts`: indices of the experts whose paths are compared (None: all); at least 2.
    `at_step`: index of the denoising step whose disagreement is measured. 0 (the first step) is the paper's
    gate and the only one generation accepts; later steps (the ordinary MoE denoises up to them first) exist
    for the ablation "first step against later steps".
    """

    seed: int = 0
    steps: int = 25
    guidance: float = 7.5
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None
    latent: str = "m_post"
    split: str | tuple[str, ...] = "attn2"
    experts: tuple[int, ...] | None = None
    batch_size: int = 8
    at_step: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise _fail("seed", "must be an integer in 0..2**63-1", self.seed)
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise _fail("steps", f"must be an integer in 1..{MAX_STEPS}", self.steps)
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, int | float):
            raise _fail("guidance", "must be a number", self.guidance)
        if math.isnan(self.guidance) or math.isinf(self.guidance) or self.guidance < 0:
            raise _fail("guidance", "must be a finite number >= 0", self.guidance)
        object.__setattr__(self, "guidance", float(self.guidance))
        if not isinstance(self.negative_prompt, str):
            raise _fail("negative_prompt", "must be a string", self.negative_prompt)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise _fail(name, "must be a positive integer or None", value)
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise _fail("scheduler", f"must be one of {SCHEDULERS} or None", self.scheduler)
        if self.latent not in LATENTS:
            raise _fail("latent", f"must be one of {LATENTS}", self.latent)
        split = self.split
        if isinstance(split, list | tuple):
            split = tuple(split)
            if not split or not all(isinstance(s, str) and s.strip() for s in split):
                raise _fail("split", "a list of MoE layer names must be non-empty strings", self.split)
            object.__setattr__(self, "split", split)
        elif split not in SPLITS:
            raise _fail("split", f"must be one of {SPLITS} or a list of MoE layer names", self.split)
        if self.experts is not None:
            experts = tuple(self.experts) if isinstance(self.experts, list | tuple) else None
            if experts is None or not all(_is_int(e) and e >= 0 for e in experts):
                raise _fail(
                    "experts", "must be a list of expert indices (integers >= 0) or None", self.experts
                )
            if len(experts) < 2:
                raise _fail("experts", "EMoE needs at least 2 experts (M >= 2)", self.experts)
            if len(set(experts)) != len(experts):
                raise _fail("experts", "must not repeat an expert", self.experts)
            object.__setattr__(self, "experts", experts)
        if not _is_int(self.batch_size) or not 1 <= self.batch_size <= MAX_BATCH:
            raise _fail("batch_size", f"must be an integer in 1..{MAX_BATCH}", self.batch_size)
        if not _is_int(self.at_step) or not 0 <= self.at_step < self.steps:
            raise _fail("at_step", f"must be an integer in 0..steps-1 ({self.steps - 1})", self.at_step)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreConfig:
        """Build from a plain dict (JSON/YAML); unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ScoreConfig: unknown field(s) {unknown} (known: {sorted(names)})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["split"] = list(self.split) if isinstance(self.split, tuple) else self.split
        out["experts"] = list(self.experts) if self.experts is not None else None
        return out

    def replace(self, **changes: Any) -> ScoreConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: the paper's EMoE gate (section 3, appendix A): experts split at the first cross-attention, latent m_post
PAPER_SCORING = {"split": "attn2", "latent": "m_post", "at_step": 0}
#: where the reference ensemble's departure from the paper is measured and explained
RESULTS_DOC = "docs/reference-results.md"

_SPLIT_WORDS = {
    "attn2": "split at the first cross-attention",
    "attn1": "split at the first self-attention",
    "all": "whole expert paths",
}
_LATENT_WORDS = {
    "m_post": "mid-block output variance",
    "m_pre": "mid-block input variance",
    "z_prev": "next-latent variance",
    "eps": "noise-prediction variance",
}


def paper_score_config(config: ScoreConfig) -> ScoreConfig:
    """`config` with the paper's split and latent (seed, sampler and size unchanged)."""
    return config.replace(**PAPER_SCORING)


def is_paper_scoring(config: ScoreConfig) -> bool:
    """Whether `config` scores as the paper does (split, latent, first step)."""
    return all(getattr(config, k) == v for k, v in PAPER_SCORING.items())


_FIRST_BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"  # the SD 1.x UNet's first transformer block


def _named_split(layers: tuple[str, ...]) -> str | tuple[str, ...]:
    """A resolved split (MoE layer names, as a fingerprint records it) back to attn2/attn1 where it is one."""
    for name in ("attn2", "attn1"):
        if layers and all(layer.startswith(f"{_FIRST_BLOCK}.{name}.") for layer in layers):
            return name
    return layers


def describe_scoring(config: ScoreConfig | Mapping[str, Any]) -> str:
    """One short phrase naming the scoring configuration, and saying where it is not the paper's.

    e.g. "scoring: whole expert paths, noise-prediction variance - not the paper's split and latent; see
    docs/reference-results.md". Every place that shows a score shows this phrase. Takes a ScoreConfig or a
    mapping with its `split`, `latent` (and `at_step`) fields, such as a policy's or a Score's configuration.
    """
    if not isinstance(config, ScoreConfig):
        fields = {k: config[k] for k in ("split", "latent", "at_step") if config.get(k) is not None}
        if isinstance(fields.get("split"), list | tuple):
            fields["split"] = _named_split(tuple(fields["split"]))
        config = ScoreConfig(**fields)
    split = config.split
    if isinstance(split, tuple):
        where = f"split at {len(split)} MoE layer{'s' if len(split) != 1 else ''}"
    else:
        where = _SPLIT_WORDS[split]
    what = _LATENT_WORDS[config.latent]
    step = f", at step {config.at_step + 1}" if config.at_step else ""
    if is_paper_scoring(config):
        return f"scoring: the paper's ({where}, {what})"
    differs = [
        name
        for name, same in (
            ("split", split == PAPER_SCORING["split"]),
            ("latent", config.latent == PAPER_SCORING["latent"]),
            ("first step", config.at_step == 0),
        )
        if not same
    ]
    listed = " and ".join(differs) if len(differs) < 3 else f"{', '.join(differs[:-1])} and {differs[-1]}"
    return f"scoring: {where}, {what}{step} \u2014 not the paper's {listed}; see {RESULTS_DOC}"


def default_score_config(ensemble: Ensemble) -> ScoreConfig:
    """The scoring configuration policies are calibrated for.

    The one the ensemble's emoe.json records (the reference ensemble's was chosen by its ablation, see
    docs/reference-results.md), else the paper's settings at the ensemble's size and scheduler.
    """
    if ensemble.score_config:
        return ScoreConfig.from_dict(ensemble.score_config)
    return ScoreConfig(
        height=ensemble.default_height, width=ensemble.default_width, scheduler=ensemble.default_scheduler
    )
