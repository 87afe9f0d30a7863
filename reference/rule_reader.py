"""A model-free quality rule: read colour, shape, size and position off a picture (cf. the paper's SSIM).

It finds the foreground (pixels brighter than the black canvas), names colour by the nearest palette entry,
and names shape, size and position by the best-overlapping ground-truth template. On a ground-truth picture
it reads every attribute right (tested); on a generated picture the share of attributes it reads as the prompt
asked is the picture's rule accuracy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from reference.lexicon import POSITIONS, SHAPES, SIZES
from reference.world import CENTRE_X, CENTRE_Y, JITTER, PALETTE, Scene, shape_mask

FOREGROUND_MIN = 60  # max channel value above which a pixel counts as shape, not canvas
ATTRIBUTES = ("colour", "shape", "size", "position")


@dataclass(frozen=True)
class Reading:
    """What the rule read off one picture (None where there was no shape to read)."""

    colour: str | None
    shape: str | None
    size: str | None
    position: str | None

    def accuracy(self, scene: Scene) -> dict[str, float]:
        """Per attribute: 1.0 where the reading matches the scene, else 0.0; plus their mean under "all"."""
        marks = {a: float(getattr(self, a) == getattr(scene, a)) for a in ATTRIBUTES}
        marks["all"] = float(np.mean([marks[a] for a in ATTRIBUTES]))
        return marks


def _templates() -> list[tuple[str, str, str, np.ndarray]]:
    out = []
    offsets = range(-JITTER, JITTER + 1)
    for shape, size, position in itertools.product(SHAPES, SIZES, POSITIONS):
        for jx, jy in itertools.product(offsets, offsets):
            out.append(
                (shape, size, position, shape_mask(shape, size, CENTRE_X[position] + jx, CENTRE_Y + jy))
            )
    return out


_TEMPLATES = _templates()
_PALETTE_NAMES = list(PALETTE)
_PALETTE_RGB = np.array([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float32)


def read(image: np.ndarray) -> Reading:
    """Read colour, shape, size and position from an HxWx3 uint8 (or 0..1 float) picture."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image: expected HxWx3, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array * 255.0, 0, 255)
    pixels = array.astype(np.float32)
    fg = pixels.max(axis=2) > FOREGROUND_MIN
    if fg.sum() < 3:
        return Reading(None, None, None, None)
    mean_rgb = np.median(pixels[fg], axis=0)
    colour = _PALETTE_NAMES[int(np.argmin(((_PALETTE_RGB - mean_rgb) ** 2).sum(axis=1)))]
    best, best_iou = None, -1.0
    for shape, size, position, mask in _TEMPLATES:
        inter = np.logical_and(fg, mask).sum()
        iou = inter / np.logical_or(fg, mask).sum()
        if iou > best_iou:
            best, best_iou = (shape, size, position), iou
    assert best is not None
    return Reading(colour, *best)
