"""Pinned numbers: scores and pixel slices that a library upgrade (torch, diffusers, transformers) must not
move unseen.

The scoring fingerprint hashes the weights and the configuration, not the numerics of the libraries, so a
library upgrade that moves scores would silently invalidate every calibrated policy. As diffusers pins output
slices, these tests pin the default-configuration scores of a few prompts on `tiny` and `default` (float32,
CPU) and the centre pixels of one Fast and one full generation on `default`; the full generation's prompt is
Dutch, held out of all training, so its M images disagree.

Tolerances, from what was measured on the 2-core CPU box (torch 2.13, diffusers 0.42.1):
- scores, relative: benign changes move them by at most 1.3e-5 (1 or 2 threads: 0; batch of 1 against 8: 0,
  tested exactly below; float32 against float64: 5.6e-6; oneDNN kernels off: 1.3e-5; multiplying the time
  embedding in row pairs instead of whole batches: 6e-6), a float16 cast by 3.7e-4 to 6.5e-3 (and the
  bundled policy's thresholds by 0.45 %). 1e-4 sits between the two.
- pixels, 0-255 levels: the same benign changes move them by at most 1 level; a different rollout (full EMoE
  with the every-step split instead of Algorithm 1) by up to 255.

Regenerate the pins with `.venv/bin/python tests/emoe/test_pinned.py` (it prints them) once the move is
understood.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SCORE_RTOL = 1e-4
PIXEL_ATOL = 2

PROMPTS = [
    "a small red circle on the left",
    "a big blue square in the middle",
    "un círculo rojo sobre un fondo blanco",
    "ein großes grünes Dreieck oben",
    "een kleine gele ster rechts",
]
FAST_PROMPT = "a big blue square in the middle"
FULL_PROMPT = "een kleine gele ster rechts"

PINNED_SCORES = {  # one per prompt, in order
    "tiny": [
        0.020104232487495908,
        0.018755565943597473,
        0.015151308357374762,
        0.020476284557529836,
        0.015095936167576025,
    ],
    "default": [
        0.001340053247815514,
        0.0015950571581669483,
        0.003538311897180162,
        0.002963963851549821,
        0.005337672925675183,
    ],
}
# the centre 3x3 pixels (RGB) of the `default` ensemble's Fast image and of each of its full-mode images
PINNED_FAST = [
    [[47, 89, 220], [47, 86, 216], [42, 77, 207]],
    [[43, 86, 210], [43, 83, 205], [43, 77, 201]],
    [[36, 77, 189], [39, 77, 185], [44, 76, 189]],
]
PINNED_FULL = [  # one line per expert path
    [
        [[245, 200, 37], [255, 207, 61], [50, 52, 13]],
        [[242, 200, 41], [255, 208, 62], [59, 59, 16]],
        [[240, 203, 43], [255, 214, 66], [65, 67, 24]],
    ],
    [
        [[65, 111, 232], [65, 98, 172], [0, 0, 10]],
        [[61, 113, 226], [64, 103, 170], [0, 0, 6]],
        [[62, 121, 225], [68, 115, 173], [0, 0, 6]],
    ],
    [
        [[91, 160, 67], [88, 98, 47], [0, 0, 0]],
        [[90, 154, 65], [94, 103, 51], [0, 0, 0]],
        [[96, 152, 67], [102, 110, 60], [0, 1, 0]],
    ],
    [
        [[17, 0, 24], [16, 1, 9], [16, 15, 13]],
        [[12, 0, 23], [13, 3, 8], [14, 14, 6]],
        [[12, 6, 52], [9, 7, 18], [13, 9, 3]],
    ],
]

WHAT_TO_DO = (
    "The scoring fingerprint does not see library numerics, so policies calibrated on the old numbers would "
    "still be accepted. Re-check: run this file again and tests/emoe/test_routing.py and test_scoring.py; "
    "find which upgrade moved them ({versions}). If the new numbers are right, recalibrate the bundled "
    "policies (commands in policies/bundled/README.md; every deployed policy needs recalibrating too) and "
    "update the pins here with `.venv/bin/python tests/emoe/test_pinned.py`."
)

PIXELS_WHAT_TO_DO = (
    "No score reads these pixels: if the score pins still hold, no policy needs recalibrating. Re-check: "
    "find which upgrade moved them ({versions}) and whether tests/emoe/test_generation.py still passes (Fast "
    "EMoE equals plain SegMoE, full EMoE is Algorithm 1); if the new images are right, update the pins here "
    "with `.venv/bin/python tests/emoe/test_pinned.py`."
)


def versions() -> str:
    """The library versions whose numerics the pins depend on."""
    import diffusers
    import torch
    import transformers

    return ", ".join(f"{m.__name__} {m.__version__}" for m in (torch, diffusers, transformers))


def current_scores(ensemble: Any) -> list[float]:
    from emoe import default_score_config, score

    return [s.score for s in score(PROMPTS, default_score_config(ensemble), ensemble)]


def centre(image: Any) -> np.ndarray:
    """The centre 3x3 pixels of a PIL image, (3, 3, 3) ints."""
    array = np.asarray(image).astype(int)
    h, w = array.shape[0] // 2, array.shape[1] // 2
    return array[h - 1 : h + 2, w - 1 : w + 2, :]


def current_slices(ensemble: Any) -> tuple[np.ndarray, np.ndarray]:
    """The Fast image's centre (3, 3, 3) and the full images' centres (M, 3, 3, 3)."""
    from emoe import default_score_config, generate

    config = default_score_config(ensemble)
    fast = generate(FAST_PROMPT, config, ensemble)
    full = generate(FULL_PROMPT, config, ensemble, mode="full")
    return centre(fast.images[0]), np.stack([centre(im) for im in full.images])


@pytest.fixture(scope="module")
def reference():
    from emoe import load_ensemble

    ensemble = load_ensemble("default")
    assert not ensemble.is_random, "the shipped reference ensemble is missing: the pins are for it"
    return ensemble


def assert_scores(name: str, got: list[float]) -> None:
    expected = PINNED_SCORES[name]
    moved = [
        (prompt, e, g)
        for prompt, e, g in zip(PROMPTS, expected, got, strict=True)
        if not math.isclose(g, e, rel_tol=SCORE_RTOL, abs_tol=0.0)
    ]
    if moved:
        lines = "\n".join(
            f"  {p!r}: pinned {e:.10g}, now {g:.10g} (rel {abs(g - e) / e:.1e})" for p, e, g in moved
        )
        pytest.fail(
            f"EMoE scores on the {name!r} ensemble moved beyond numerical noise (rel > {SCORE_RTOL:g}):\n"
            f"{lines}\n" + WHAT_TO_DO.format(versions=versions()),
            pytrace=False,
        )


def test_pinned_scores_tiny(tiny) -> None:
    assert_scores("tiny", current_scores(tiny))


def test_pinned_scores_default(reference) -> None:
    assert_scores("default", current_scores(reference))


def test_default_batch_scores_exactly_as_each_alone(reference) -> None:
    """The claim the gate's batching rests on, on the shipped ensemble (tiny: tests/emoe/test_scoring.py)."""
    from emoe import default_score_config, score

    config = default_score_config(reference)
    together = score(PROMPTS, config.replace(batch_size=8), reference)
    for prompt, batched in zip(PROMPTS, together, strict=True):
        alone = score([prompt], config.replace(batch_size=1), reference)[0]
        assert (batched.score, batched.expert_deviation) == (alone.score, alone.expert_deviation), prompt
    # d in sqrt(d) * EU is the size of the chosen latent (eps: the UNet's output), here 4 x 8 x 8 = 256
    side = config.height // reference.vae_scale_factor
    d = reference.unet.config.out_channels * side * (config.width // reference.vae_scale_factor)
    assert config.latent == "eps" and d == 256
    assert all(s.score == math.sqrt(d) * s.eu for s in together)


def test_pinned_pixels_default(reference) -> None:
    fast, full = current_slices(reference)
    cases = (("Fast", FAST_PROMPT, fast, PINNED_FAST), ("full", FULL_PROMPT, full, PINNED_FULL))
    for what, prompt, got, pinned in cases:
        diff = int(np.abs(got - np.asarray(pinned)).max())
        if diff > PIXEL_ATOL:
            pytest.fail(
                f"the {what} EMoE image of {prompt!r} on the 'default' ensemble moved by {diff} levels "
                f"(> {PIXEL_ATOL}) at its centre; now {got.tolist()}.\n"
                + PIXELS_WHAT_TO_DO.format(versions=versions()),
                pytrace=False,
            )


if __name__ == "__main__":  # print the current numbers, to paste above once a move is understood
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

    from emoe import load_ensemble

    for spec in ("tiny", "default"):
        print(f"{spec!r}: {current_scores(load_ensemble(spec))},")
    fast_now, full_now = current_slices(load_ensemble("default"))
    print(f"PINNED_FAST = {fast_now.tolist()}\nPINNED_FULL = {full_now.tolist()}")
    print(versions())
