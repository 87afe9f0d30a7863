"""An Ensemble: a loaded SegMoE pipeline with per-request routing, and how to load and save one.

Which ensemble a spec ("tiny", "default", a path) names is `emoe.specs.load_ensemble`'s business."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emoe import segmoe_adapter, unet_passes
from emoe.routing import RoutedMoE, RoutingContext, replace_moe_blocks
from emoe.segmoe_adapter import EnsembleConfigError

log = logging.getLogger(__name__)

MANIFEST = "emoe.json"
REFERENCE_DIR = Path(__file__).resolve().parent / "reference_ensemble"
RANDOM_NOTICE = "RANDOM WEIGHTS: scores and images of this ensemble mean nothing"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SCHEDULER_CLASSES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
}


@dataclass
class Ensemble:
    """A SegMoE ensemble ready for EMoE scoring: pipeline components plus what describes it."""

    name: str
    description: str
    is_random: bool
    pipe: Any  # diffusers StableDiffusionPipeline whose UNet holds RoutedMoE blocks
    segmoe_config: dict[str, Any]
    routing: RoutingContext
    moe_layers: dict[str, RoutedMoE]
    weights_hash: str
    device: torch.device
    dtype: torch.dtype
    source: str
    expert_prompts: list[str] = field(default_factory=list)
    # the scoring configuration the checkpoint's emoe.json records (chosen by its ablation), if any
    score_config: dict[str, Any] | None = None
    # the routing context is shared state: one scoring/generation at a time (score/generate take it)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    # ---------------------------------------------------------------- descriptive properties
    @property
    def num_experts(self) -> int:
        return int(self.segmoe_config["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.segmoe_config["num_experts_per_tok"])

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor x UNet down-sampling)."""
        return self.vae_scale_factor * 2 ** (len(self.pipe.unet.down_blocks) - 1)

    @property
    def default_height(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.vae_scale_factor

    @property
    def default_width(self) -> int:
        return self.default_height

    @property
    def default_scheduler(self) -> str:
        """Short name of the scheduler the ensemble was saved with."""
        cls_name = type(self.pipe.scheduler).__name__
        for short, name in _SCHEDULER_CLASSES.items():
            if name == cls_name:
                return short
        raise EnsembleConfigError(
            f"scheduler: {cls_name} is not one of the supported {sorted(_SCHEDULER_CLASSES)}"
        )

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens the text encoder sees (the tokenizer's limit less the start and end tokens)."""
        return int(self.pipe.tokenizer.model_max_length) - 2

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @property
    def unet(self) -> nn.Module:
        return self.pipe.unet

    def size_problem(self, height: int, width: int) -> str | None:
        """Why (height, width) cannot be generated, or None."""
        m = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if value < m or value % m:
                return f"{name}: must be a positive multiple of {m} for this ensemble, got {value}"
            if value > 4096:
                return f"{name}: at most 4096, got {value}"
        return None

    def make_scheduler(self, name: str | None) -> Any:
        """A fresh scheduler of the named kind (None: the ensemble's own) from its config."""
        import diffusers

        if name is None:
            return type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        if name not in _SCHEDULER_CLASSES:
            raise ValueError(
                f"ScoreConfig.scheduler: must be one of {sorted(_SCHEDULER_CLASSES)}, got {name!r}"
            )
        return getattr(diffusers, _SCHEDULER_CLASSES[name]).from_config(self.pipe.scheduler.config)

    def resolve_split(self, split: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """The MoE layer names where the EMoE paths are forced to one expert each (sorted)."""
        names = list(self.moe_layers)
        if split == "all":
            return tuple(sorted(names))
        if split in ("attn1", "attn2"):
            first = _first_transformer_block(names)
            wanted: tuple[str, ...] = (f"{first}.{split}",) if first else ()
            kind = split
        else:
            wanted, kind = tuple(split), None
        chosen: set[str] = set()
        for want in wanted:
            hits = [n for n in names if n == want or n.startswith(want + ".")]
            if not hits:
                hint = (
                    f"{kind} needs MoE attention layers; moe_layers: {self.segmoe_config.get('moe_layers')!r}"
                    if kind
                    else (
                        f"not a MoE layer of this ensemble; e.g. {names[0].rsplit('.', 1)[0]!r}"
                        if names
                        else "no MoE layers"
                    )
                )
                raise ValueError(f"ScoreConfig.split: {want!r}: {hint}")
            chosen.update(hits)
        if not chosen:
            raise ValueError(f"ScoreConfig.split: {split!r} matches no MoE layer of this ensemble")
        return tuple(sorted(chosen))

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (for CLI output and health pages)."""
        return {
            "name": self.name,
            "description": self.description,
            "is_random": self.is_random,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "moe_layers": self.segmoe_config.get("moe_layers"),
            "weights_hash": self.weights_hash,
            "default_height": self.default_height,
            "default_width": self.default_width,
            "scheduler": self.default_scheduler,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "source": self.source,
        }


def _first_transformer_block(names: list[str]) -> str | None:
    """The first transformer block of the down path that has MoE layers (SD 1.x: down_blocks.0...)."""
    blocks = sorted(
        {n.split(".attn")[0].split(".ff")[0] for n in names if n.startswith("down_blocks.")},
        key=lambda b: [int(p) if p.isdigit() else p for p in b.split(".")],
    )
    return blocks[0] if blocks else None


def weights_hash(pipe: Any) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every UNet, VAE and text-encoder tensor."""
    digest = hashlib.sha256()
    for part in ("unet", "vae", "text_encoder"):
        state = getattr(pipe, part).state_dict()
        for name in sorted(state):
            tensor = state[name].detach().cpu().reshape(-1)
            digest.update(f"{part}.{name}:{tuple(state[name].shape)}:{tensor.dtype}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype: must be one of {sorted(_DTYPES)}, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def wrap_pipeline(
    pipe: Any,
    segmoe_config: dict[str, Any],
    *,
    name: str,
    description: str,
    is_random: bool,
    source: str,
    device: str,
    dtype: torch.dtype,
) -> Ensemble:
    """Replace segmoe's MoE blocks with per-request routed ones and describe the result."""
    problem = unet_passes.check_unet(pipe.unet)
    if problem:
        raise EnsembleConfigError(f"ensemble {source}: {problem}")
    unet_passes.pairwise_time_embedding(pipe.unet)
    unet_passes.padded_products(pipe.unet)  # after the time embedding's: they are no longer plain nn.Linear
    context = RoutingContext()
    moe_layers = replace_moe_blocks(pipe.unet, segmoe_adapter.sparse_moe_block_type(), context)
    if not moe_layers:
        raise EnsembleConfigError(f"ensemble {source}: the UNet has no SegMoE MoE layers")
    pipe.unet.eval()
    pipe.text_encoder.eval()
    pipe.vae.eval()
    segmoe_config = dict(segmoe_config)
    segmoe_config.setdefault("num_experts", next(iter(moe_layers.values())).num_experts)
    prompts = [e.get("positive_prompt", "") for e in segmoe_config.get("experts", [])] or []
    return Ensemble(
        name=name,
        description=description,
        is_random=is_random,
        pipe=pipe,
        segmoe_config=segmoe_config,
        routing=context,
        moe_layers=moe_layers,
        weights_hash=weights_hash(pipe),
        device=torch.device(device),
        dtype=dtype,
        source=source,
        expert_prompts=prompts,
    )


# ------------------------------------------------------------------------------------------------ loading
def load_yaml(path: Path, *, device: str, dtype: torch.dtype) -> Ensemble:
    """Build an ensemble through segmoe from a segmoe YAML."""
    from settings import get_settings

    pipe, seg_config = segmoe_adapter.build_from_yaml(
        path, device=device, dtype=dtype, allow_network=get_settings().allow_network
    )
    return wrap_pipeline(
        pipe,
        seg_config,
        name=path.stem,
        description=f"SegMoE ensemble built from {path}",
        is_random=False,
        source=str(path),
        device=device,
        dtype=dtype,
    )


def load_checkpoint(folder: Path, *, device: str, dtype: torch.dtype) -> Ensemble:
    """Load a saved merged SegMoE checkpoint folder (and its emoe.json manifest)."""
    pipe, seg_config = segmoe_adapter.load_checkpoint(folder, device=device, dtype=dtype)
    manifest = read_manifest(folder)
    is_random = bool(manifest.get("is_random", False))
    description = manifest.get("description", f"SegMoE checkpoint {folder}")
    if is_random and RANDOM_NOTICE not in description:
        description = f"{description} ({RANDOM_NOTICE})"
    ensemble = wrap_pipeline(
        pipe,
        seg_config,
        name=manifest.get("name", folder.name),
        description=description,
        is_random=is_random,
        source=str(folder),
        device=device,
        dtype=dtype,
    )
    ensemble.score_config = manifest.get("score_config")
    return ensemble


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The emoe.json written next to a checkpoint by save_ensemble ({} if absent)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ------------------------------------------------------------------------------------------------ saving
def save_ensemble(
    ensemble: Ensemble, folder: str | Path, *, fp16: bool = False, extra: dict[str, Any] | None = None
) -> Path:
    """Save as a merged SegMoE checkpoint (segmoe's format, safetensors) plus an emoe.json manifest."""
    folder = Path(folder)
    segmoe_adapter.save_checkpoint(ensemble.pipe, ensemble.segmoe_config, folder, fp16=fp16)
    manifest = {
        "name": ensemble.name,
        "description": ensemble.description,
        "is_random": ensemble.is_random,
        "num_experts": ensemble.num_experts,
        "weights_hash_as_saved": ensemble.weights_hash if not fp16 else None,
        "dtype": "float16" if fp16 else str(ensemble.dtype).removeprefix("torch."),
        **(extra or {}),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return folder
