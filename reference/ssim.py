"""SSIM (Wang, Bovik, Sheikh and Simoncelli 2004) of a picture against its ground truth: the paper's Table 5.

scikit-image's `structural_similarity` when it is installed; otherwise the same computation written out here:
the paper's 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (co)variances, the local
statistics filtered over the whole image with reflected borders and the SSIM map averaged away from the
border, per colour channel and then over the channels (what skimage computes with `gaussian_weights=True,
use_sample_covariance=False, channel_axis=-1`).
"""

from __future__ import annotations

import numpy as np

SIGMA = 1.5
TRUNCATE = 3.5  # 11x11: radius int(3.5 * 1.5 + 0.5) = 5
K1, K2 = 0.01, 0.03


def ssim(picture: np.ndarray, truth: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two HxW or HxWxC images of the same shape (uint8 pictures: data range 255)."""
    a, b = np.asarray(picture), np.asarray(truth)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"ssim: images must have the same HxW(xC) shape, got {a.shape} and {b.shape}")
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return ssim_reference(a, b, data_range)
    return float(
        structural_similarity(
            a.astype(np.float64),
            b.astype(np.float64),
            data_range=data_range,
            gaussian_weights=True,
            sigma=SIGMA,
            use_sample_covariance=False,
            channel_axis=-1 if a.ndim == 3 else None,
        )
    )


def ssim_reference(picture: np.ndarray, truth: np.ndarray, data_range: float = 255.0) -> float:
    """The computation of `ssim` without scikit-image (the two agree to float rounding; tested)."""
    a, b = np.asarray(picture, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if a.ndim == 3:
        return float(np.mean([_ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[-1])]))
    return _ssim_channel(a, b, data_range)


def _ssim_channel(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    from scipy.ndimage import gaussian_filter

    def local(img: np.ndarray) -> np.ndarray:
        return gaussian_filter(img, sigma=SIGMA, truncate=TRUNCATE, mode="reflect")

    mx, my = local(x), local(y)
    vx = local(x * x) - mx * mx
    vy = local(y * y) - my * my
    cxy = local(x * y) - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = int(TRUNCATE * SIGMA + 0.5)  # half the window: only positions where it lies inside the image
    return float(ssim_map[pad:-pad, pad:-pad].mean())
