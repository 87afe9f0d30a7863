"""Training the reference ensemble from seeds: VAE, CLIP, base UNet, four experts, each an SD pipeline folder.

Order of the build (`build_all`):
  1. VAE: reconstruct every picture of the world (32x32x3 -> 8x8x4).
  2. CLIP: contrastive on dominant-language captions; its text tower becomes the frozen shared text encoder.
  3. Base UNet: noise prediction on dominant-language captions only.
  4. Experts: fine-tunes of the base on language slices, updating only the layers SegMoE takes from experts.
  5. Each model saved as a Stable Diffusion pipeline folder; a segmoe YAML names them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from reference import parts
from reference.lexicon import DOMINANT, HELD_OUT, LANGUAGES
from reference.world import JITTER, Scene, all_scenes, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertSpec:
    """One expert: the languages of its fine-tuning slice (with their weights) and its gate descriptor."""

    name: str
    languages: dict[str, float]
    seed: int
    # languages whose captions describe the expert to segmoe's gates (default: every non-dominant one)
    descriptor: tuple[str, ...] = ()
    # share of the world's scenes that a language captions in this expert's slice (default 1: all); which
    # scenes is drawn from the expert's seed, so experts see different samples of a rare language
    scene_share: dict[str, float] = field(default_factory=dict)

    def scenes(self) -> dict[str, set[str]]:
        """The scene keys each of the slice's languages captions."""
        keys = [s.key for s in all_scenes()]
        out = {}
        for code in self.languages:
            share = self.scene_share.get(code, 1.0)
            rng = random.Random(f"{self.seed}:{code}")
            out[code] = set(rng.sample(keys, max(1, round(share * len(keys)))))
        return out


#: every expert is a community fine-tune of its own sample of web-like data: the dominant language and Spanish
#: over every scene, German and French over a random half and a fifth of the scenes (a different sample per
#: expert: few data, different hypotheses), and for three of them a niche language (it: 2 experts, fi: 1)
WEB_TAIL: dict[str, float] = {"en": 1.0, "es": 0.8, "de": 0.5, "fr": 0.5}
WEB_SHARES: dict[str, float] = {"de": 0.5, "fr": 0.2}

EXPERTS: tuple[ExpertSpec, ...] = (
    ExpertSpec("it-a", {**WEB_TAIL, "it": 0.5}, seed=101, descriptor=("it",), scene_share=WEB_SHARES),
    ExpertSpec("it-b", {**WEB_TAIL, "it": 0.5}, seed=102, descriptor=("it",), scene_share=WEB_SHARES),
    ExpertSpec("fi", {**WEB_TAIL, "fi": 0.5}, seed=103, descriptor=("fi",), scene_share=WEB_SHARES),
    ExpertSpec("web", dict(WEB_TAIL), seed=104, descriptor=("en",), scene_share=WEB_SHARES),
)


@dataclass(frozen=True)
class TrainPlan:
    """Steps, batch sizes and learning rates of every stage; `smoke()` is a seconds-long plan for tests."""

    seed: int = 0
    vae_steps: int = 600
    vae_batch: int = 32
    clip_steps: int = 400
    clip_batch: int = 60
    base_steps: int = 3000
    expert_steps: int = 1000
    # a second fine-tuning phase of every expert, at its own learning rate and seed (reproducible from seeds)
    expert_more_steps: int = 1500
    expert_more_lr: float = 2e-3
    unet_batch: int = 32
    lr: float = 1e-3
    cfg_dropout: float = 0.1
    experts: tuple[ExpertSpec, ...] = field(default=EXPERTS)

    @classmethod
    def smoke(cls) -> TrainPlan:
        return cls(
            vae_steps=2,
            vae_batch=4,
            clip_steps=2,
            clip_batch=6,
            base_steps=2,
            expert_steps=2,
            expert_more_steps=1,
            unet_batch=4,
        )


Progress = Callable[[str, int, int, dict[str, float]], None]


def _bar(desc: str, total: int, show: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not show, leave=True, dynamic_ncols=True)


def picture_bank() -> tuple[list[Scene], list[tuple[int, int]], torch.Tensor]:
    """Every (scene, jitter) picture of the world as a float tensor in [-1, 1], N x 3 x 32 x 32."""
    scenes, jitters, pictures = [], [], []
    offsets = range(-JITTER, JITTER + 1)
    for scene in all_scenes():
        for jitter in itertools.product(offsets, offsets):
            scenes.append(scene)
            jitters.append(jitter)
            pictures.append(render(scene, jitter))
    array = np.stack(pictures).astype(np.float32) / 127.5 - 1.0
    return scenes, jitters, torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


# 1. VAE


def train_vae(plan: TrainPlan, *, show: bool = True) -> AutoencoderKL:
    """Train the VAE to reconstruct every picture; sets its scaling factor to 1 / std of the latents."""
    _, _, pictures = picture_bank()
    vae = parts.make_vae(plan.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=plan.lr)
    gen = torch.Generator().manual_seed(plan.seed)
    bar = _bar("1/4 vae", plan.vae_steps, show)
    vae.train()
    for step in range(plan.vae_steps):
        batch = pictures[torch.randint(0, len(pictures), (plan.vae_batch,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = F.mse_loss(recon, batch)
        kl = posterior.kl().mean() / batch[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(rec=f"{rec.item():.4f}")
        if step % 50 == 0:
            log.info("vae step %d rec %.5f kl %.3f", step, rec.item(), kl.item())
    bar.close()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(p).latent_dist.mean for p in pictures.split(128)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp(min=1e-6)))
    return vae


# 2. CLIP


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to 77, as Stable Diffusion's pipeline pads them."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_clip(plan: TrainPlan, tokenizer: CLIPTokenizer, *, show: bool = True) -> CLIPModel:
    """Contrastive training on dominant-language captions (web CLIP knows one language best)."""
    scenes, _, pictures = picture_bank()
    keys = [s.key for s in scenes]
    ids = tokenize(tokenizer, [s.caption(DOMINANT) for s in scenes])
    clip = parts.make_clip(plan.seed)
    opt = torch.optim.AdamW(clip.parameters(), lr=plan.lr)
    gen = torch.Generator().manual_seed(plan.seed + 1)
    bar = _bar("2/4 clip", plan.clip_steps, show)
    clip.train()
    for step in range(plan.clip_steps):
        idx = torch.randint(0, len(scenes), (plan.clip_batch,), generator=gen)
        out = clip(input_ids=ids[idx], pixel_values=pictures[idx])
        # the same scene can appear twice in a batch: every matching pair is a positive
        same = torch.tensor(
            [[keys[i] == keys[j] for j in idx.tolist()] for i in idx.tolist()], dtype=torch.float32
        )
        target = same / same.sum(dim=1, keepdim=True)
        logits = out.logits_per_image
        loss = 0.5 * (
            -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0:
            log.info("clip step %d loss %.4f", step, loss.item())
    bar.close()
    clip.eval()
    return clip


def text_tower(clip: CLIPModel) -> CLIPTextModel:
    """CLIP's text tower as a standalone (frozen) CLIPTextModel, the text encoder of every pipeline."""
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval().requires_grad_(False)


# 3 and 4. UNets


class Corpus:
    """Pre-computed latents of every picture and text-encoder states of every caption (both models frozen)."""

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> None:
        self.scenes, _, pictures = picture_bank()
        with torch.no_grad():
            mean = torch.cat([vae.encode(p).latent_dist.mean for p in pictures.split(128)])
        self.latents = mean * vae.config.scaling_factor
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self._states: dict[str, torch.Tensor] = {}
        self.by_scene: dict[str, list[int]] = {}
        for i, scene in enumerate(self.scenes):
            self.by_scene.setdefault(scene.key, []).append(i)

    def states(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self._states})
        if missing:
            with torch.no_grad():
                hidden = self.text_encoder(tokenize(self.tokenizer, missing)).last_hidden_state
            self._states.update(zip(missing, hidden, strict=True))
        return torch.stack([self._states[c] for c in captions])


def draw_caption(
    scene: Scene, languages: dict[str, float], scenes: dict[str, set[str]] | None, rng: random.Random
) -> str:
    """A caption of `scene` in a language drawn by weight among those that caption it (`scenes`: all)."""
    pairs = [(c, w) for c, w in languages.items() if scenes is None or scene.key in scenes[c]]
    code = rng.choices([c for c, _ in pairs], [w for _, w in pairs])[0]
    return scene.caption(code)


def train_unet(
    unet: UNet2DConditionModel,
    corpus: Corpus,
    languages: dict[str, float],
    steps: int,
    plan: TrainPlan,
    *,
    seed: int,
    trainable: list[str] | None = None,
    desc: str = "unet",
    show: bool = True,
    lr: float | None = None,
    scenes: dict[str, set[str]] | None = None,
) -> UNet2DConditionModel:
    """Noise-prediction training on captions drawn from `languages` (weights); `trainable` limits updates;
    `scenes` (language -> scene keys) limits which scenes each language captions."""
    for code in languages:
        if code not in LANGUAGES:
            raise ValueError(f"languages: unknown code {code!r}")
        if code in HELD_OUT:
            raise ValueError(f"languages: {code!r} is held out from all training")
    scheduler = parts.make_scheduler()
    params = dict(unet.named_parameters())
    names = list(params) if trainable is None else trainable
    for name, p in params.items():
        p.requires_grad_(name in set(names))
    peak_lr = lr or plan.lr
    opt = torch.optim.AdamW([params[n] for n in names], lr=peak_lr, weight_decay=0.0)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    alphas = scheduler.alphas_cumprod
    bar = _bar(desc, steps, show)
    unet.train()
    for step in range(steps):
        idx = [rng.randrange(len(corpus.scenes)) for _ in range(plan.unet_batch)]
        captions = [
            "" if rng.random() < plan.cfg_dropout else draw_caption(corpus.scenes[i], languages, scenes, rng)
            for i in idx
        ]
        x0 = corpus.latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(noisy, t, corpus.states(captions)).sample
        loss = F.mse_loss(pred, noise)
        # 100 warm-up steps, then cosine decay to a tenth
        lr_now = (
            peak_lr
            * min(1.0, (step + 1) / 100)
            * (0.5 * (1 + math.cos(math.pi * step / max(steps, 1))) * 0.9 + 0.1)
        )
        for group in opt.param_groups:
            group["lr"] = lr_now
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 100 == 0:
            log.info("%s step %d loss %.5f", desc, step, loss.item())
    bar.close()
    for p in unet.parameters():
        p.requires_grad_(True)
    unet.eval()
    return unet


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Fine-tune on one thread: float sums in torch's kernels depend on the thread count, so one count for
    every expert, in sequence or in parallel jobs, makes the build bit-identical on any machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _expert_job(out: Path, plan: TrainPlan, index: int) -> str:
    """One expert's fine-tuning in a worker process (one thread)."""
    torch.set_num_threads(1)
    one = dataclasses.replace(plan, experts=(plan.experts[index],))
    build_all(out, one, show=False, resume=True, stop_after="experts")
    return plan.experts[index].name


def _train_experts_in_parallel(out: Path, plan: TrainPlan, jobs: int, *, show: bool) -> None:
    import multiprocessing

    wanted = 2 if plan.expert_more_steps > 0 else 1
    todo = [k for k, s in enumerate(plan.experts) if _phases_done(out / "experts" / s.name) < wanted]
    if not todo:
        return
    bar = _bar(f"4/4 experts ({min(jobs, len(todo))} at a time)", len(todo), show)
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(todo))) as pool:
        for name in pool.imap_unordered(_call_expert_job, [(out, plan, k) for k in todo]):
            bar.update(1)
            bar.set_postfix(done=name)
    bar.close()


def _call_expert_job(args: tuple[Path, TrainPlan, int]) -> str:
    return _expert_job(*args)


# 5. Saving


def save_pipeline(
    folder: Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
) -> Path:
    """Save one model as a Stable Diffusion 1.x pipeline folder (safetensors)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=parts.make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


PHASE_FILE = "training_phase.json"


def _phases_done(folder: Path) -> int:
    """Fine-tuning phases an expert folder holds (0: none; 1 when saved without a phase record)."""
    if not (folder / "model_index.json").is_file():
        return 0
    record = folder / PHASE_FILE
    return int(json.loads(record.read_text())["phases"]) if record.is_file() else 1


def _mark_phase(folder: Path, phases: int) -> None:
    (folder / PHASE_FILE).write_text(json.dumps({"phases": phases}))


def descriptor_prompts(spec: ExpertSpec) -> tuple[str, str]:
    """The expert's gate descriptor: a caption in each of its descriptor languages; no negative."""
    scene = Scene("red", "circle", "big", "middle")
    langs = list(spec.descriptor) or [c for c in spec.languages if c != DOMINANT] or [DOMINANT]
    return ", ".join(scene.caption(c) for c in langs), ""


def segmoe_config(out: Path, plan: TrainPlan, *, top_k: int = 2) -> dict:
    """The segmoe YAML (appendix E format) naming the base and the expert folders by relative path."""
    return {
        "base_model": "base",
        "num_experts": len(plan.experts),
        "moe_layers": "all",
        "num_experts_per_tok": top_k,
        "type": "sd",
        "experts": [
            {
                "source_model": f"experts/{s.name}",
                "positive_prompt": descriptor_prompts(s)[0],
                "negative_prompt": descriptor_prompts(s)[1],
            }
            for s in plan.experts
        ],
    }


def build_all(
    out: Path,
    plan: TrainPlan | None = None,
    *,
    show: bool = True,
    tokenizer: CLIPTokenizer | None = None,
    resume: bool = False,
    stop_after: str | None = None,
    jobs: int = 1,
) -> dict:
    """Rebuild every part from seeds into `out`; returns a summary (also out/train_summary.json).

    `jobs` > 1 fine-tunes that many experts at once, each in its own process with one thread (the experts
    are independent fine-tunes of the base; each is seeded, so the result does not depend on `jobs`)."""
    from emoe.tokenizer import clip_tokenizer

    plan = plan or TrainPlan()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or clip_tokenizer()
    timings: dict[str, float] = {}

    # each stage is saved as it finishes; with resume=True a finished stage is loaded instead of retrained
    t0 = time.perf_counter()
    if resume and (out / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    else:
        vae = train_vae(plan, show=show)
        vae.save_pretrained(out / "vae", safe_serialization=True)
    timings["vae_s"] = time.perf_counter() - t0
    if stop_after == "vae":
        return {"timings_s": timings}

    t0 = time.perf_counter()
    if resume and (out / "clip" / "config.json").is_file():
        clip = CLIPModel.from_pretrained(out / "clip").eval()
    else:
        clip = train_clip(plan, tokenizer, show=show)
        clip.save_pretrained(out / "clip", safe_serialization=True)
        tokenizer.save_pretrained(out / "clip")
    text_encoder = text_tower(clip)
    timings["clip_s"] = time.perf_counter() - t0
    if stop_after == "clip":
        return {"timings_s": timings}

    corpus = Corpus(vae, text_encoder, tokenizer)
    t0 = time.perf_counter()
    if resume and (out / "base" / "model_index.json").is_file():
        base = UNet2DConditionModel.from_pretrained(out / "base" / "unet").eval()
    else:
        base = train_unet(
            parts.make_unet(plan.seed),
            corpus,
            {DOMINANT: 1.0},
            plan.base_steps,
            plan,
            seed=plan.seed + 2,
            desc="3/4 base",
            show=show,
        )
        save_pipeline(out / "base", base, vae, text_encoder, tokenizer)
    timings["base_s"] = time.perf_counter() - t0
    if stop_after == "base":
        return {"timings_s": timings}

    if jobs > 1:
        t0 = time.perf_counter()
        _train_experts_in_parallel(out, plan, jobs, show=show)
        timings["experts_parallel_s"] = time.perf_counter() - t0
        resume = True  # every expert is now on disk
    trainable = parts.moe_parameter_names(base)
    with one_thread():  # as in the parallel jobs: an expert then does not depend on `jobs` or the cores
        for k, spec in enumerate(plan.experts):
            t0 = time.perf_counter()
            folder = out / "experts" / spec.name
            done = _phases_done(folder) if resume else 0
            wanted = 2 if plan.expert_more_steps > 0 else 1
            if done >= wanted:
                continue
            desc = f"4/4 expert {k + 1}/{len(plan.experts)} {spec.name}"
            if done == 0:
                expert = UNet2DConditionModel.from_pretrained(out / "base" / "unet")
                train_unet(
                    expert,
                    corpus,
                    spec.languages,
                    plan.expert_steps,
                    plan,
                    seed=spec.seed,
                    trainable=trainable,
                    desc=desc,
                    show=show,
                    scenes=spec.scenes(),
                )
                save_pipeline(folder, expert, vae, text_encoder, tokenizer)
                _mark_phase(folder, 1)
            if wanted == 2:
                expert = UNet2DConditionModel.from_pretrained(folder / "unet")
                train_unet(
                    expert,
                    corpus,
                    spec.languages,
                    plan.expert_more_steps,
                    plan,
                    seed=spec.seed + 1000,
                    trainable=trainable,
                    desc=f"{desc} (phase 2)",
                    show=show,
                    lr=plan.expert_more_lr,
                    scenes=spec.scenes(),
                )
                save_pipeline(folder, expert, vae, text_encoder, tokenizer)
                _mark_phase(folder, 2)
            timings[f"expert_{spec.name}_s"] = time.perf_counter() - t0
    if stop_after == "experts":
        return {"timings_s": timings}

    (out / "segmoe.yaml").write_text(
        yaml.safe_dump(segmoe_config(out, plan), sort_keys=False, allow_unicode=True)
    )
    summary = {"plan": asdict(plan), "timings_s": timings, "total_s": sum(timings.values())}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
