"""diffusers' UNet2DConditionModel.forward cut in two: down+mid (where EMoE reads its latent) and up.

The SD 1.x forward only (no class/addition embeddings, no adapters); `check_unet` refuses anything else.
Splitting lets the gate stop after the mid block, and lets Fast EMoE carry the ordinary path through the up
blocks alone while the M gate paths ride with it through down+mid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DownMid:
    """What the up blocks need, plus the EMoE latents: `mid_in` (m_pre) and `sample` (m_post)."""

    mid_in: torch.Tensor
    sample: torch.Tensor
    emb: torch.Tensor
    res_samples: tuple[torch.Tensor, ...]
    forward_upsample_size: bool

    def rows(self, index: torch.Tensor | slice) -> DownMid:
        """The same state for a subset of batch rows."""
        return DownMid(
            mid_in=self.mid_in[index],
            sample=self.sample[index],
            emb=self.emb[index],
            res_samples=tuple(r[index] for r in self.res_samples),
            forward_upsample_size=self.forward_upsample_size,
        )


class PairwiseLinear(nn.Linear):
    """nn.Linear that multiplies a (rows, features) input two rows at a time.

    BLAS and oneDNN pick their GEMM kernel by the number of rows, so row i of a 2-D product is not bit-equal
    across batch sizes (measured: 64->64 features, rows 2 against 4 or more, differ by ~1e-7). The time
    embedding (`time_embedding.linear_1/2`, every resnet's `time_emb_proj`) is the UNet's only 2-D product;
    its every other layer multiplies (batch x positions) rows, where it was measured bit-equal. Done in blocks
    of exactly two rows (one request's CFG pair, what diffusers' own forward multiplies for one request),
    each row's numbers no longer depend on what else is in the batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if x.dim() != 2 or rows == 2:
            return super().forward(x)
        if rows % 2:
            x = torch.cat([x, x[-1:]])
        blocks = [F.linear(x[i : i + 2], self.weight, self.bias) for i in range(0, x.shape[0], 2)]
        return torch.cat(blocks)[:rows]


def pairwise_time_embedding(unet: nn.Module) -> None:
    """Make the time embedding's 2-D products batch-size invariant (PairwiseLinear, in place)."""
    for name, module in unet.named_modules():
        in_time_embedding = name.startswith("time_embedding.") or name.endswith("time_emb_proj")
        if type(module) is nn.Linear and in_time_embedding:
            module.__class__ = PairwiseLinear


MIN_PRODUCT_ROWS = 16


class PaddedLinear(nn.Linear):
    """nn.Linear whose products have at least MIN_PRODUCT_ROWS rows (zero rows added, then dropped).

    Below 16 rows MKL's sgemm also picks its kernel by the row count (measured on the 2-core AVX-512 box,
    inner sizes 32 to 512: a row of an 8-row product differs from the same row in 11 rows or more; from 16
    rows on a row stays bit-equal up to 2048 rows). The mid block multiplies few positions (2x2 latents on
    the reference ensemble: 8 rows for one request's CFG pair), so alone and in a batch of requests it would
    round differently; padded, both land in the same kernel. A row's numbers never depend on other rows'.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
        if rows == 0 or rows >= MIN_PRODUCT_ROWS:
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1])
        padded = torch.cat([flat, flat.new_zeros(MIN_PRODUCT_ROWS - rows, flat.shape[1])])
        return F.linear(padded, self.weight, self.bias)[:rows].reshape(*x.shape[:-1], -1)


def padded_products(unet: nn.Module) -> None:
    """Give every other nn.Linear of the UNet at least MIN_PRODUCT_ROWS rows (PaddedLinear, in place)."""
    for module in unet.modules():
        if type(module) is nn.Linear:
            module.__class__ = PaddedLinear


def check_unet(unet: nn.Module) -> str | None:
    """Why this UNet is not an SD 1.x-style UNet this module can run, or None."""
    cfg = unet.config
    for key in ("class_embed_type", "addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim"):
        if cfg.get(key) is not None:
            return f"unet config {key}={cfg.get(key)!r} is not supported (SD 1.x layout only)"
    if cfg.get("center_input_sample"):
        return "unet config center_input_sample is not supported"
    if unet.mid_block is None:
        return "unet has no mid block (EMoE reads the mid-block output)"
    return None


def down_mid(
    unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> DownMid:
    """Time embedding, conv_in, down blocks and the mid block."""
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])

    # 1. time embedding
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, None)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    if emb.shape[0] != sample.shape[0]:
        emb = emb.expand(sample.shape[0], -1)

    # 2. down blocks
    sample = unet.conv_in(sample)
    res_samples: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        res_samples += res

    # 3. mid block
    mid_in = sample
    if getattr(unet.mid_block, "has_cross_attention", False):
        sample = unet.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)
    else:
        sample = unet.mid_block(sample, emb)
    return DownMid(mid_in, sample, emb, res_samples, forward_upsample_size)


def up(unet: nn.Module, state: DownMid, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """Up blocks and the output convolution: the noise prediction."""
    sample = state.sample
    res_samples = state.res_samples
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        is_final = i == len(unet.up_blocks) - 1
        res = res_samples[-len(block.resnets) :]
        res_samples = res_samples[: -len(block.resnets)]
        if not is_final and state.forward_upsample_size:
            upsample_size = res_samples[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(
                hidden_states=sample,
                temb=state.emb,
                res_hidden_states_tuple=res,
                encoder_hidden_states=encoder_hidden_states,
                upsample_size=upsample_size,
            )
        else:
            sample = block(
                hidden_states=sample, temb=state.emb, res_hidden_states_tuple=res, upsample_size=upsample_size
            )
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


def full(
    unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> torch.Tensor:
    """The whole UNet forward (same numbers as unet(...).sample for SD 1.x)."""
    return up(unet, down_mid(unet, sample, timestep, encoder_hidden_states), encoder_hidden_states)
