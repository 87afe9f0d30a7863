"""The reference ensemble's model parts: configurations of the VAE, the small CLIP and the SD-layout UNet.

Every part is a stock diffusers / transformers class, so the ensemble loads through the same code paths as a
real Stable Diffusion 1.x checkpoint and a real CLIP (`from_pretrained(folder)`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel

from reference.world import IMAGE_SIZE

LATENT_CHANNELS = 4
VAE_SCALE = 4  # 32x32 pictures -> 8x8x4 latents
LATENT_SIZE = IMAGE_SIZE // VAE_SCALE
TEXT_WIDTH = 64
CLIP_VOCAB = 49408
CLIP_BOS, CLIP_EOS = 49406, 49407


def make_vae(seed: int) -> AutoencoderKL:
    """A small AutoencoderKL: 32x32x3 pictures to 8x8x4 latents."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def make_clip(seed: int) -> CLIPModel:
    """A small CLIP with the real CLIP vocabulary: its text tower is the ensemble's frozen text encoder."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": CLIP_VOCAB,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 4 * TEXT_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": CLIP_BOS,
            "eos_token_id": CLIP_EOS,
            "pad_token_id": CLIP_EOS,
            "projection_dim": 64,
        },
        vision_config={
            "image_size": IMAGE_SIZE,
            "patch_size": 4,
            "num_channels": 3,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": 64,
        },
        projection_dim=64,
    )
    return CLIPModel(config)


def make_unet(seed: int) -> UNet2DConditionModel:
    """An SD 1.x-layout UNet, small: three levels (8, 4, 2), cross-attention in the first two down blocks."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,
        norm_num_groups=16,
    )


def make_scheduler() -> DDPMScheduler:
    """Stable Diffusion 1.x's training noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def moe_parameter_names(unet: UNet2DConditionModel) -> list[str]:
    """Names of the parameters segmoe takes from an expert (moe_layers "all"): q/k/v of attn1/attn2 and the
    feed-forward of every transformer block in down blocks 0..n-2 and up blocks 1..n-1. Everything else in a
    SegMoE comes from the base, so experts fine-tune only these."""
    down = [f"down_blocks.{i}." for i in range(len(unet.down_blocks) - 1)]
    up = [f"up_blocks.{i}." for i in range(1, len(unet.up_blocks))]
    keep = (
        ".attn1.to_q.",
        ".attn1.to_k.",
        ".attn1.to_v.",
        ".attn2.to_q.",
        ".attn2.to_k.",
        ".attn2.to_v.",
        ".ff.",
    )
    return [
        name
        for name, _ in unet.named_parameters()
        if name.startswith(tuple(down + up)) and any(k in name for k in keep)
    ]
