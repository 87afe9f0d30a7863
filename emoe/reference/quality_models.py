"""Model-based quality: the CLIP score of a picture against its scene's dominant-language caption.

The CLIP is loaded with `CLIPModel.from_pretrained(folder)`, the code path of a real CLIP checkpoint;
pictures are resized and normalised with the checkpoint's own image size and CLIP's standard mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """CLIP score = 100 * max(cos(image embedding, text embedding), 0), as in Hessel et al. and the paper."""

    def __init__(self, folder: str | Path, tokenizer: CLIPTokenizer | None = None) -> None:
        self.model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
        if tokenizer is None:
            from emoe.tokenizer import clip_tokenizer

            tokenizer = clip_tokenizer()
        self.tokenizer = tokenizer
        self.size = int(self.model.config.vision_config.image_size)

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
        if array.max() > 1.5:
            array = array / 255.0
        x = torch.from_numpy(array).permute(0, 3, 1, 2)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def score(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
        """One CLIP score per (picture, caption) pair."""
        if len(images) != len(captions):
            raise ValueError(f"captions: {len(captions)} captions for {len(images)} images")
        ids = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        img = F.normalize(_features(self.model.get_image_features(pixel_values=self._pixels(images))), dim=-1)
        txt = F.normalize(_features(self.model.get_text_features(input_ids=ids)), dim=-1)
        return (100.0 * (img * txt).sum(-1).clamp(min=0)).numpy()


def _features(output: object) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected features
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]
