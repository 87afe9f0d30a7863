"""The tiny seeded random ensemble: SD-layout components built in code, merged by segmoe, cached on disk.

RANDOM WEIGHTS: it exists so that everything runs offline and in tests; its scores mean nothing.
Four experts are fine-tune-like perturbations of one random base (segmoe takes resnets and convolutions from
the base and only attention/feed-forward layers from the experts, so experts must share a base).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

TINY_VERSION = 1
TINY_EXPERT_PROMPTS = (
    ("a photograph of an animal", "text, watermark"),
    ("a watercolor landscape painting", "photograph"),
    ("a portrait of a person", "landscape"),
    ("a city street at night", "daylight"),
)
# (base seed, expert noise scale relative to each tensor's std)
BASE_SEED = 1234
EXPERT_NOISE = 0.2

Perturb = Callable[[int, str, torch.Tensor], torch.Tensor | None]


def tiny_components(seed: int = BASE_SEED, sample_size: int = 16) -> dict[str, object]:
    """Seeded random StableDiffusionPipeline components: 3-level cross-attention UNet, VAE, CLIP text."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from emoe.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            layer_norm_eps=1e-5,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def perturb_expert(noise: float = EXPERT_NOISE) -> Perturb:
    """Fine-tune-like change: each attention/feed-forward tensor + noise x its std (seeded per expert)."""

    def perturb(expert: int, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if ".attn" not in name and ".ff." not in name:
            return None
        gen = torch.Generator().manual_seed(10_000 + 97 * expert + (sum(map(ord, name)) % 9973))
        scale = noise * float(tensor.float().std()) if tensor.numel() > 1 else noise
        return tensor + scale * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)

    return perturb


def write_tiny_sources(
    folder: str | Path,
    *,
    num_experts: int = 4,
    perturb: Perturb | None = None,
    top_k: int = 2,
    moe_layers: str = "attn",
    base_seed: int = BASE_SEED,
    sample_size: int = 16,
) -> Path:
    """Save a base and `num_experts` expert pipelines plus a segmoe YAML under folder; returns the YAML path.

    `perturb(expert, unet_param_name, tensor)` returns the expert's tensor (None: keep the base's).
    `sample_size` is the latent size (images are twice that); segmoe's gate-vector pass runs at that size.
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    perturb = perturb or perturb_expert()
    components = tiny_components(base_seed, sample_size)
    pipe = StableDiffusionPipeline(**components)
    pipe.save_pretrained(folder / "base", safe_serialization=True)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    experts = []
    for i in range(num_experts):
        state = {}
        for name, tensor in base_state.items():
            changed = perturb(i, name, tensor)
            state[name] = tensor if changed is None else changed
        pipe.unet.load_state_dict(state)
        pipe.save_pretrained(folder / f"expert_{i}", safe_serialization=True)
        positive, negative = TINY_EXPERT_PROMPTS[i % len(TINY_EXPERT_PROMPTS)]
        experts.append(
            {"source_model": f"expert_{i}", "positive_prompt": positive, "negative_prompt": negative}
        )
    config = {
        "base_model": "base",
        "num_experts": num_experts,
        "moe_layers": moe_layers,
        "num_experts_per_tok": top_k,
        "type": "sd",
        "experts": experts,
    }
    path = folder / "segmoe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def build_tiny(folder: str | Path, **source_options: object) -> Path:
    """Build the tiny ensemble through segmoe from fresh sources; save the merged checkpoint to `folder`."""
    from emoe.ensemble import RANDOM_NOTICE, load_yaml, save_ensemble

    with tempfile.TemporaryDirectory(prefix="emoe-tiny-src-") as tmp:
        yaml_path = write_tiny_sources(tmp, **source_options)  # type: ignore[arg-type]
        ensemble = load_yaml(yaml_path, device="cpu", dtype=torch.float32)
    ensemble.name = "tiny"
    ensemble.is_random = True
    ensemble.description = (
        "tiny seeded random SD-layout SegMoE ensemble built in code (4 experts, top-2, 32x32 px); "
        + RANDOM_NOTICE
    )
    return save_ensemble(ensemble, folder)


def tiny_checkpoint(cache: Path | None = None) -> Path:
    """The cached tiny checkpoint folder (built once per machine and torch version) under `cache`.

    Default cache: `settings.home / "cache"`.
    """
    if cache is None:
        from settings import get_settings

        cache = get_settings().home / "cache"
    folder = cache / f"tiny-v{TINY_VERSION}-torch{torch.__version__.replace('+', '_')}"
    if (folder / "emoe.json").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=cache))
    try:
        build_tiny(staging)
        try:
            os.rename(
                staging, folder
            )  # atomic: concurrent builders produce identical folders, first one wins
        except OSError:
            if not (folder / "emoe.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
