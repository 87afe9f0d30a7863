"""What the EMoE gate costs: plain SegMoE generation vs Fast EMoE vs the gate alone (batch 1, 8, ...); and,
with --render-batches, what rendering accepted jobs in batches gives (images/s, peak memory).

    python bench/gate_cost.py --quick --json          # tiny seeded ensemble, < 30 s once its cache is built
    python bench/gate_cost.py --sd15 --size 256 --steps 4   # SD1.5-shaped random 4-expert top-2 MoE

Plain SegMoE = diffusers' StableDiffusionPipeline.__call__ on the ensemble's UNet with whole-batch routing
(segmoe's own behaviour; same numbers as segmoe's SparseMoeBlock for one request: see test_routing.py).
Fast EMoE = `emoe.generate(mode="fast")`: the M gate paths and the ordinary path share the first step's
down+mid. Gate alone = `emoe.score`. Render batch b = `emoe.generate_batch(..., gate=False)` on b accepted
jobs (seeds and negative prompts differ), what a render worker runs with EMOE_RENDER_BATCH_SIZE=b. Times are
the best of `--repeats` runs after one warm-up. With --json the last line is one JSON object. The 25-step
figures are extrapolated from the measured per-step time when --steps is below 25.

A GPU run of every figure issue 15 asks for (SD1.5-shaped, float16): `bench/gpu.sh` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emoe import Ensemble, default_score_config, generate, generate_batch, load_ensemble, score
from emoe.routing import routing

PROMPTS = [
    "a photo of a cat on a sofa",
    "une maison bleue au bord de la mer",
    "a red bicycle leaning on a wall",
    "ein alter Mann mit Hut",
    "a bowl of ramen, studio light",
    "un perro corriendo en la playa",
    "a city street at night in the rain",
    "a watercolor of mountains at dawn",
]


def best_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, float]:
    """Best time of each function over `repeats` rounds; the functions take turns within a round, so a
    change in the box's load hits all of them alike (on a shared box noise only ever adds time)."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def sd15_like(size: int, device: str, dtype: torch.dtype, num_experts: int = 4, top_k: int = 2) -> Ensemble:
    """SD1.5-shaped random-weight SegMoE (attn MoE, M experts, top-k) made with segmoe's own layout code.

    Experts: one random UNet's attention layers, perturbed per expert; gates random. No gate-vector pass (it
    would run 25 SD1.5 steps per expert), so routing is arbitrary: only the cost is meaningful.
    """
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from emoe import segmoe_adapter
    from emoe.ensemble import wrap_pipeline
    from emoe.tokenizer import clip_tokenizer

    seg_config = {
        "type": "sd",
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "moe_layers": "attn",
        "up_idx_start": 1,
        "up_idx_end": 4,
        "down_idx_start": 0,
        "down_idx_end": 3,
    }
    # 1. the MoE UNet from segmoe's own layout code (diffusers' UNet defaults are SD1.5's)
    torch.manual_seed(0)
    with torch.device("meta"):
        shape_only = UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768)
    shape_only.register_to_config(segmoe_config=seg_config)
    with tempfile.TemporaryDirectory() as tmp:
        shape_only.save_config(Path(tmp) / "unet")
        unet = segmoe_adapter.empty_moe_unet(tmp)
    # 2. experts: fine-tune-like perturbations of the shared random init; random gates
    gen = torch.Generator().manual_seed(1)
    sparse = segmoe_adapter.sparse_moe_block_type()
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, sparse):
                module.gate.weight.normal_(0.0, 0.02, generator=gen)
                for expert in module.experts:
                    for param in expert.parameters():
                        param.add_(0.05 * param.std() * torch.randn(param.shape, generator=gen))
    # 3. the rest of an SD1.5 pipeline
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return wrap_pipeline(
        pipe,
        seg_config,
        name="sd15-random",
        description="SD1.5-shaped random SegMoE (bench only)",
        is_random=True,
        source="bench",
        device=device,
        dtype=dtype,
    )


def _sizes(text: str, option: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"{option}: want positive batch sizes separated by commas, got {text!r}")
    return sizes


def _prompts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


def _render_requests(config: Any, n: int) -> list[tuple[str, Any]]:
    """n accepted jobs as a render worker batches them: one seed each, every other one a negative prompt."""
    return [
        (PROMPTS[i % len(PROMPTS)], config.replace(seed=i, negative_prompt="blurry, text" if i % 2 else ""))
        for i in range(n)
    ]


def _render_peak_mib(requests: list[tuple[str, Any]], ensemble: Ensemble) -> float | None:
    """The GPU memory a render batch peaks at (CUDA only: a process's peak RSS cannot be reset)."""
    if not torch.cuda.is_available() or ensemble.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    generate_batch(requests, ensemble, gate=False)
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _same_as_alone(requests: list[tuple[str, Any]], ensemble: Ensemble) -> tuple[int, float]:
    """How many of a batch's images have the final latents (so the bytes) they get rendered alone, and the
    largest difference: on CPU all (tests/emoe/test_render_batch.py); on a GPU, what its kernels do."""
    together = generate_batch(requests, ensemble, gate=False)
    same, worst = 0, 0.0
    for request, batched in zip(requests, together, strict=True):
        (alone,) = generate_batch([request], ensemble, gate=False)
        a, b = alone.latents.float(), batched.latents.float()  # type: ignore[union-attr]
        same += int(torch.equal(a, b))
        worst = max(worst, float((a - b).abs().max()))
    return same, worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny ensemble, 1 repeat, few steps (< 30 s)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--ensemble", default="tiny", help="tiny, default, a YAML or a checkpoint folder")
    parser.add_argument("--sd15", action="store_true", help="SD1.5-shaped random 4-expert top-2 ensemble")
    parser.add_argument("--size", type=int, default=None, help="image height = width (px)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps of the generations")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first run (large models)")
    parser.add_argument("--alone", type=int, default=8, help="how many prompts to time one by one (batch 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (GPU default)")
    parser.add_argument("--gate-batches", default="8", help="gate batch sizes besides 1 (e.g. 8,32)")
    parser.add_argument(
        "--render-batches", default="", help="also time renders of accepted jobs in batches (e.g. 1,4,8)"
    )
    args = parser.parse_args()
    gate_batches = _sizes(args.gate_batches, "--gate-batches")
    render_batches = _sizes(args.render_batches, "--render-batches") if args.render_batches else []

    dtype_name = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype_name]
    steps = args.steps or (5 if args.quick else 25)
    repeats = args.repeats or (1 if args.quick else 3)

    t_load = time.perf_counter()
    if args.sd15:
        ensemble = sd15_like(args.size or 512, args.device, dtype)
    else:
        ensemble = load_ensemble(args.ensemble, device=args.device, dtype=dtype)
    load_s = time.perf_counter() - t_load
    size = args.size or ensemble.default_height
    config = default_score_config(ensemble).replace(steps=steps, height=size, width=size)
    prompt = PROMPTS[0]

    # 1. plain SegMoE generation of one image (whole-batch routing: segmoe's own behaviour)
    def plain() -> object:
        with routing(ensemble.routing, rows_per_group=None):
            return ensemble.pipe(
                prompt,
                num_inference_steps=steps,
                guidance_scale=config.guidance,
                height=size,
                width=size,
                generator=torch.Generator("cpu").manual_seed(0),
            )

    # one UNet CFG step alone, to extrapolate to 25 steps
    def unet_step() -> object:
        x = torch.randn(
            2,
            4,
            size // ensemble.vae_scale_factor,
            size // ensemble.vae_scale_factor,
            dtype=dtype,
            device=args.device,
        )
        enc = torch.randn(
            2, 77, ensemble.pipe.text_encoder.config.hidden_size, dtype=dtype, device=args.device
        )
        with torch.no_grad(), routing(ensemble.routing, rows_per_group=None):
            return ensemble.unet(x, 961, enc).sample

    alone = PROMPTS[: max(1, min(args.alone, 8))]
    b1_config = config.replace(batch_size=1)
    timed: dict[str, Callable[[], object]] = {
        # 1. plain SegMoE generation; one UNet CFG step (to extrapolate to 25 steps)
        "plain": plain,
        "unet step": unet_step,
        # 2. Fast EMoE generation (gate + one ordinary image)
        "fast": lambda: generate(prompt, config, ensemble),
        # 3. the gate alone: batch 1 (per prompt), then batches of several prompts
        "gate b1": lambda: [score([p], b1_config, ensemble) for p in alone],
    }
    for b in gate_batches:
        timed[f"gate b{b}"] = functools.partial(score, _prompts(b), config.replace(batch_size=b), ensemble)
    # 4. renders of accepted jobs (the gate decided already), b at a time
    renders = {b: _render_requests(config, b) for b in render_batches}
    for b, requests in renders.items():
        timed[f"render b{b}"] = functools.partial(generate_batch, requests, ensemble, gate=False)
    best = best_seconds(timed, repeats, not args.no_warmup)
    t_plain, t_step, t_fast = best["plain"], best["unet step"], best["fast"]
    t_b1 = best["gate b1"] / len(alone)
    per_prompt = {b: best[f"gate b{b}"] / b for b in gate_batches}
    per_image = {b: best[f"render b{b}"] / b for b in render_batches}
    render_peak = {b: _render_peak_mib(renders[b], ensemble) for b in render_batches}
    identity = {b: _same_as_alone(renders[b], ensemble) for b in render_batches if b > 1}

    plain_25 = t_plain if steps >= 25 else t_plain + (25 - steps) * t_step
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_label = "peak_gpu_mib"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_label = "peak_rss_mib"
    result = {
        "ensemble": ensemble.name,
        "is_random": ensemble.is_random,
        "num_experts": ensemble.num_experts,
        "top_k": ensemble.top_k,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "load_s": round(load_s, 2),
        "plain_ms": round(t_plain * 1e3, 2),
        "unet_cfg_step_ms": round(t_step * 1e3, 2),
        "fast_ms": round(t_fast * 1e3, 2),
        "gate_b1_ms_per_prompt": round(t_b1 * 1e3, 2),
        "plain_25_steps_ms": round(plain_25 * 1e3, 2),
        "fast_over_plain": round(t_fast / t_plain, 4),
        "gate_over_plain": round(t_b1 / t_plain, 4),
        "gate_over_plain_25_steps": round(t_b1 / plain_25, 4),
        "fast_over_plain_25_steps": round((plain_25 + t_fast - t_plain) / plain_25, 4),
        peak_label: round(peak, 1),
    }
    for b, t in per_prompt.items():
        result[f"gate_b{b}_ms_per_prompt"] = round(t * 1e3, 2)
        result[f"gate_b{b}_prompts_per_s"] = round(1.0 / t, 2)
        result[f"batched_speedup_b{b}"] = round(t_b1 / t, 3)
    if 8 in per_prompt:
        result["batched_speedup"] = result["batched_speedup_b8"]  # the name earlier runs reported
    for b, t in per_image.items():
        result[f"render_b{b}_images_per_s"] = round(1.0 / t, 3)
        if 1 in per_image:
            result[f"render_b{b}_over_b1"] = round(per_image[1] / t, 3)
        if render_peak[b] is not None:
            result[f"render_b{b}_peak_gpu_mib"] = render_peak[b]
        if b in identity:
            result[f"render_b{b}_same_as_alone"] = f"{identity[b][0]}/{b}"
            result[f"render_b{b}_max_latent_diff"] = identity[b][1]
    print(
        f"ensemble {result['ensemble']} (M={result['num_experts']}, top-{result['top_k']}, "
        f"random={ensemble.is_random})"
        f" on {args.device} {dtype_name}, {size}x{size}px, {steps} steps, best of {repeats}"
    )
    for key, value in result.items():
        if isinstance(value, float) or key.endswith("_same_as_alone"):
            print(f"  {key:28s} {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
