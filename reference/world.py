"""The reference world: one coloured shape on a black 32x32 canvas, captioned in seven languages.

Everything is deterministic by seed. A scene is (colour, shape, size, position); its picture moves by at most
one pixel of jitter, so the same caption has a few slightly different pictures, like a tiny photo corpus.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

from reference.lexicon import COLOURS, LANGUAGES, POSITIONS, SHAPES, SIZES

IMAGE_SIZE = 32
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 40),
    "white": (235, 235, 235),
}
RADIUS = {"small": 5, "big": 9}
CENTRE_X = {"left": 9, "middle": 16, "right": 23}
CENTRE_Y = 16
JITTER = 1


@dataclass(frozen=True)
class Scene:
    """What a picture shows; its captions in every language follow from it."""

    colour: str
    shape: str
    size: str
    position: str

    def caption(self, language: str) -> str:
        """This scene's caption in `language` (a code from `lexicon.LANGUAGES`)."""
        if language not in LANGUAGES:
            raise ValueError(f"language: unknown code {language!r}; known: {sorted(LANGUAGES)}")
        return LANGUAGES[language].caption(self.colour, self.shape, self.size, self.position)

    @property
    def key(self) -> str:
        return f"{self.colour}-{self.shape}-{self.size}-{self.position}"


def all_scenes() -> list[Scene]:
    """Every scene of the world, in a fixed order."""
    return [Scene(*combo) for combo in itertools.product(COLOURS, SHAPES, SIZES, POSITIONS)]


def shape_mask(shape: str, size: str, cx: float, cy: float, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean mask of one shape centred at (cx, cy)."""
    r = RADIUS[size]
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "square":
        side = r * 0.9
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "triangle":
        # apex up, base down; height and base both 2r
        inside_y = (dy >= -r) & (dy <= r)
        half_width = (dy + r) / 2.0
        return inside_y & (np.abs(dx) <= half_width)
    if shape == "pizza":
        # a round pizza with its top-right slice (a quarter) eaten
        disc = dx**2 + dy**2 <= r**2
        eaten = (dx > 0) & (dy < 0)
        return disc & ~eaten
    raise ValueError(f"shape: unknown shape {shape!r}; known: {list(SHAPES)}")


def render(scene: Scene, jitter: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The scene as an HxWx3 uint8 array; `jitter` shifts the shape by whole pixels."""
    if scene.colour not in PALETTE or scene.size not in RADIUS or scene.position not in CENTRE_X:
        raise ValueError(f"scene: not a scene of this world: {scene}")
    cx = CENTRE_X[scene.position] + jitter[0]
    cy = CENTRE_Y + jitter[1]
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[shape_mask(scene.shape, scene.size, cx, cy)] = PALETTE[scene.colour]
    return image


def sample(
    n: int, languages: dict[str, float], seed: int, *, scenes: list[Scene] | None = None
) -> list[tuple[Scene, str, str, tuple[int, int]]]:
    """n training examples (scene, language, caption, jitter), languages drawn by their weights."""
    if n < 0:
        raise ValueError("n: must be >= 0")
    weights = {code: w for code, w in languages.items() if w > 0}
    if not weights:
        raise ValueError("languages: needs at least one language with a positive weight")
    for code in weights:
        if code not in LANGUAGES:
            raise ValueError(f"languages: unknown code {code!r}")
    rng = random.Random(seed)
    pool = scenes if scenes is not None else all_scenes()
    codes, probs = list(weights), list(weights.values())
    out = []
    for _ in range(n):
        scene = rng.choice(pool)
        code = rng.choices(codes, probs)[0]
        jitter = (rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER))
        out.append((scene, code, scene.caption(code), jitter))
    return out
