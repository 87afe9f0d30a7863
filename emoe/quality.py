"""Image quality as the paper measures it: the CLIP score of an image against a text (Hessel et al., 2021).

CLIP score = 100 · max(cos(image embedding, text embedding), 0) (the torchmetrics convention; the paper
reports English prompts at about 31). For a translated prompt the paper scores the image against the
*English* prompt, because CLIP was trained on English: pass that text.

The CLIP is a real `CLIPModel` checkpoint in a local folder (nothing is downloaded). Its tokenizer is read
from the folder when it has one, else the CLIP BPE tokenizer built offline (`emoe.tokenizer`); images are
resized and centre-cropped to the model's size and normalised with the folder's preprocessor settings
(CLIP's defaults if it has none).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

METRIC = "clip_score"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScore:
    """A CLIP model that scores (image, text) pairs; build it with `ClipScore.from_pretrained(folder)`."""

    metric = METRIC

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        image_size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str = "cpu") -> ClipScore:
        """Load a CLIP checkpoint (config.json + weights) from a local folder."""
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"quality model: {folder} is not a CLIP checkpoint folder (no config.json)")
        model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        else:
            from emoe.tokenizer import clip_tokenizer

            tokenizer = clip_tokenizer()
        size = int(model.config.vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        return cls(model, tokenizer, image_size=size, mean=mean, std=std, device=device)

    def _pixels(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Resize the shorter side to the model's size (bicubic), centre-crop, scale to [0, 1], normalise."""
        out = []
        for im in images:
            pil = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))
            pil = pil.convert("RGB")
            w, h = pil.size
            scale = self.image_size / min(w, h)
            pil = pil.resize((max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale))),
                             Image.Resampling.BICUBIC)  # fmt: skip
            w, h = pil.size
            left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
            pil = pil.crop((left, top, left + self.image_size, top + self.image_size))
            out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1))
        x = torch.stack(out)
        return ((x - self.mean) / self.std).to(self.device)

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image | np.ndarray], texts: Sequence[str]) -> list[float]:
        """One CLIP score per (image, text) pair; texts longer than the model's context are truncated."""
        if len(images) != len(texts):
            raise ValueError(f"texts: {len(texts)} texts for {len(images)} images")
        if not images:
            return []
        max_len = min(
            int(self.tokenizer.model_max_length), int(self.model.config.text_config.max_position_embeddings)
        )
        tokens = self.tokenizer(
            list(texts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        )
        img = _features(self.model.get_image_features(pixel_values=self._pixels(images)))
        txt = _features(
            self.model.get_text_features(
                input_ids=tokens.input_ids.to(self.device),
                attention_mask=tokens.attention_mask.to(self.device),
            )
        )
        cos = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)
        return (100.0 * cos.clamp(min=0)).float().cpu().tolist()


def _features(output: Any) -> torch.Tensor:
    # transformers 5 may return a model output whose pooler_output holds the projected features
    return output if isinstance(output, torch.Tensor) else output.pooler_output
