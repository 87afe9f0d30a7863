"""SSIM against known values: scikit-image 0.26.0's structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1), computed once on these pictures."""

from __future__ import annotations

import numpy as np
import pytest

from reference.ssim import K1, ssim, ssim_reference
from reference.world import all_scenes, render

SCENES = all_scenes()
TRUTH = render(SCENES[0])  # a small red circle on the left
NOISE = (np.arange(TRUTH.size).reshape(TRUTH.shape) * 37) % 81 - 40
CASES = {  # name: (picture, skimage's value)
    "shifted one pixel": (render(SCENES[0], (1, 0)), 0.84480389530962),
    "another scene": (render(SCENES[5]), 0.11677706777405428),
    "noise added": (np.clip(TRUTH.astype(int) + NOISE, 0, 255).astype(np.uint8), 0.20667889088843164),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ssim_equals_scikit_image(name: str) -> None:
    picture, expected = CASES[name]
    assert ssim_reference(picture, TRUTH) == pytest.approx(expected, rel=1e-12, abs=0)
    assert ssim(picture, TRUTH) == pytest.approx(expected, rel=1e-12, abs=0)  # skimage's own, if installed


def test_ssim_of_one_channel_and_the_analytic_cases() -> None:
    noisy = CASES["noise added"][0]
    assert ssim_reference(noisy[..., 0], TRUTH[..., 0]) == pytest.approx(0.33690983339610225, rel=1e-12)
    assert ssim_reference(TRUTH, TRUTH) == 1.0
    # two flat images a and b: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 100.0, 140.0, (K1 * 255) ** 2
    flat = ssim_reference(np.full((32, 32), a), np.full((32, 32), b))
    assert flat == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def test_ssim_refuses_images_of_different_shapes() -> None:
    with pytest.raises(ValueError, match=r"^ssim: images must have the same"):
        ssim(TRUTH, TRUTH[:16])


def test_quartile_rows_report_ssim_per_quartile() -> None:
    from reference.experiments import _quartile_rows

    rows = [
        {"score": float(i), "clip": 0.0, "rule": 0.0, "ssim": i / 10, "chars": 1, "words": 1, "n_tokens": 1}
        for i in range(8)
    ]
    quartiles = _quartile_rows(rows)
    assert [q["n"] for q in quartiles] == [2, 2, 2, 2]
    assert [q["ssim"] for q in quartiles] == pytest.approx([0.05, 0.25, 0.45, 0.65])
    assert [q["ssim_sd"] for q in quartiles] == pytest.approx([0.05] * 4)
