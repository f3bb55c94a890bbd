"""Spatial degradation (Gaussian point-spread function, then decimation) and upsampling back.

Grid convention: coarse pixel ``i`` covers fine pixels ``i*factor .. (i+1)*factor - 1``, so its
centre lies at fine coordinate ``i*factor + (factor-1)/2``. Both operations are NaN-aware by
normalised convolution: weights of invalid (NaN) or out-of-image pixels are dropped and the rest
renormalised. Kernels are separable, so each pass is a sum of strided slices (numpy only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
# An output pixel is NaN when its valid inputs carry less than this share of the kernel weight.
MIN_VALID_WEIGHT = 0.5


class DegradeError(ValueError):
    """Bad degradation parameters; the message says what to change."""


def default_sigma(factor: int) -> float:
    """PSF sigma in fine pixels such that the PSF's FWHM equals one coarse pixel (``factor``
    fine pixels), the usual model of a sensor whose PSF matches its sampling (Wald's protocol)."""
    return float(factor) / _FWHM_PER_SIGMA


def psf_sigma(ratio: float) -> float:
    """Extra Gaussian sigma (pixels) that takes an image from 1-pixel to `ratio`-pixel resolution.

    A sensor pixel of width s is modelled as a Gaussian with FWHM s (sigma = s / 2.355).
    """
    return math.sqrt(max(ratio * ratio - 1.0, 0.0)) / 2.3548


def _kernel_1d(factor: int, sigma: float | None) -> np.ndarray:
    """1-D weights, centred on a coarse pixel's centre, summing to 1; length factor + 2*margin."""
    if factor < 1:
        raise DegradeError(f"The degradation factor must be an integer >= 1, got {factor}.")
    sigma = default_sigma(factor) if sigma is None else float(sigma)
    if sigma <= 0:  # no blur: the plain block mean
        return np.full(factor, 1.0 / factor)
    margin = max(0, int(np.ceil(3.0 * sigma - (factor - 1) / 2.0)))
    x = np.arange(factor + 2 * margin) - (factor + 2 * margin - 1) / 2.0
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_psf(factor: int, sigma: float | None = None) -> np.ndarray:
    """2-D PSF kernel (sums to 1) applied around each coarse pixel before decimation.

    Default sigma: FWHM = ``factor`` fine pixels (``default_sigma``). The kernel spans 3 sigma
    either side of the coarse pixel's centre and has the parity of ``factor`` (even factors put
    the centre between fine pixels). ``sigma=0`` gives the factor×factor block mean.
    """
    k = _kernel_1d(int(factor), sigma)
    return np.outer(k, k)


def _block_pass(a: np.ndarray, k: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Strided correlation along ``axis``: out[i] = sum_t k[t] * a[i*factor - margin + t],
    zero outside the array."""
    n = a.shape[axis]
    n_out = n // factor
    margin = (k.size - factor) // 2
    a = np.moveaxis(a, axis, -1)
    pad = np.zeros(a.shape[:-1] + (n + 2 * margin + factor,), dtype=a.dtype)
    pad[..., margin : margin + n] = a
    out = np.zeros(a.shape[:-1] + (n_out,), dtype=a.dtype)
    for t, w in enumerate(k):
        out += w * pad[..., t : t + factor * n_out : factor]
    return np.moveaxis(out, -1, axis)


def degrade(image: np.ndarray, factor: int, sigma: float | None = None) -> np.ndarray:
    """(..., H, W) -> (..., H // factor, W // factor): Gaussian PSF blur then decimation.

    NaN-aware: a coarse pixel is the PSF-weighted mean of its valid fine pixels, and NaN when
    those carry less than ``MIN_VALID_WEIGHT`` of the kernel weight. ``factor=1`` with the
    default sigma returns a copy (nothing to degrade).
    """
    factor = int(factor)
    image = np.asarray(image)
    if image.ndim < 2:
        raise DegradeError("degrade needs an array of at least 2 dimensions (..., rows, cols).")
    if factor == 1 and sigma is None:
        return image.astype(np.result_type(image.dtype, np.float32), copy=True)
    if image.shape[-1] < factor or image.shape[-2] < factor:
        raise DegradeError(
            f"An image of {image.shape[-2]}x{image.shape[-1]} pixels is smaller than "
            f"one coarse pixel at factor {factor}."
        )
    k = _kernel_1d(factor, sigma)
    dtype = np.result_type(image.dtype, np.float32)
    valid = np.isfinite(image)
    num = np.where(valid, image, 0).astype(dtype)
    den = valid.astype(dtype)
    for axis in (-2, -1):
        num = _block_pass(num, k, factor, axis)
        den = _block_pass(den, k, factor, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den < MIN_VALID_WEIGHT] = np.nan
    return out


def kernel_margin(factor: int, sigma: float | None = None) -> int:
    """Fine pixels the PSF reaches beyond a coarse pixel's own block, on each side."""
    return (_kernel_1d(int(factor), sigma).size - int(factor)) // 2


def degrade_strips(
    read_rows: Callable[[int, int], np.ndarray],
    height: int,
    factor: int,
    sigma: float | None = None,
    coarse_rows: int = 64,
) -> Iterator[tuple[int, np.ndarray]]:
    """Degrades a tall raster strip by strip, so memory holds one strip, not the raster.

    ``read_rows(r0, r1)`` returns fine rows r0..r1-1 as (..., r1-r0, W). Yields
    (first coarse row, (..., rows, W // factor)) blocks covering ``height // factor`` coarse rows,
    identical to ``degrade`` of the whole raster: each strip is read with a halo of the PSF margin
    rounded up to whole coarse pixels, so the PSF sees the same fine pixels and stays aligned.
    """
    factor = int(factor)
    halo = -(-kernel_margin(factor, sigma) // factor) * factor
    n_coarse = height // factor
    for c0 in range(0, n_coarse, max(1, int(coarse_rows))):
        c1 = min(n_coarse, c0 + max(1, int(coarse_rows)))
        r0, r1 = max(0, c0 * factor - halo), min(height, c1 * factor + halo)
        out = degrade(read_rows(r0, r1), factor, sigma)
        first = c0 - r0 // factor
        yield c0, out[..., first : first + (c1 - c0), :]


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys (1981) cubic convolution kernel, the 'bicubic' of GDAL and most image software."""
    x = np.abs(x)
    return np.where(
        x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1, np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0)
    )


def _taps(n_in: int, n_out: int, factor: float, method: str, start: float = 0.0):
    """Source indices (n_out, taps), clamped to the image, and their weights."""
    u = (np.arange(n_out) + start + 0.5) / factor - 0.5  # fine pixel centres in coarse pixel units
    if method == "nearest":
        idx = np.floor(u + 0.5).astype(int)[:, None]
        w = np.ones_like(idx, dtype=np.float64)
    elif method == "bilinear":
        i0 = np.floor(u).astype(int)
        f = u - i0
        idx = np.stack([i0, i0 + 1], axis=1)
        w = np.stack([1 - f, f], axis=1)
    elif method == "bicubic":
        i0 = np.floor(u).astype(int)
        idx = i0[:, None] + np.arange(-1, 3)[None]
        w = _keys_cubic(u[:, None] - idx)
    else:
        raise DegradeError(f"Unknown upsampling method '{method}': use bicubic, bilinear or nearest.")
    return np.clip(idx, 0, n_in - 1), w


def _interp_pass(a: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(a, axis, -1)
    out = np.zeros(a.shape[:-1] + (idx.shape[0],), dtype=a.dtype)
    for t in range(idx.shape[1]):
        out += w[:, t].astype(a.dtype) * a[..., idx[:, t]]
    return np.moveaxis(out, -1, axis)


def upsample(
    image: np.ndarray, factor: float, shape: Sequence[int], method: str = "bicubic", origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """(..., h, w) coarse -> (..., H, W) = ``shape`` on the fine grid (coarse pixel i centred on
    fine coordinate i*factor + (factor-1)/2; edges replicated beyond the outermost centres).

    ``origin`` (row, col): the fine coordinates of the output's first pixel, for upsampling a
    window of a larger fine grid from a coarse block that starts at fine (0, 0).

    NaN-aware: a fine pixel is NaN where the coarse pixel containing it is NaN; elsewhere invalid
    neighbours are left out of the interpolation and the weights renormalised.
    """
    image = np.asarray(image)
    H, W = (int(s) for s in tuple(shape)[-2:])
    factor = float(factor)
    if factor <= 0:
        raise DegradeError(f"The upsampling factor must be > 0, got {factor}.")
    dtype = np.result_type(image.dtype, np.float32)
    valid = np.isfinite(image)
    num = np.where(valid, image, 0).astype(dtype)
    den = valid.astype(dtype)
    near = valid.astype(dtype)
    for axis, n_out, start in ((-2, H, origin[0]), (-1, W, origin[1])):
        idx, w = _taps(image.shape[axis], n_out, factor, method, start)
        num = _interp_pass(num, idx, w, axis)
        den = _interp_pass(den, idx, w, axis)
        nidx, nw = _taps(image.shape[axis], n_out, factor, "nearest", start)
        near = _interp_pass(near, nidx, nw, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    # Where invalid neighbours leave too little weight, fall back to the nearest coarse value.
    weak = (den < 0.25) & (near > 0)
    if weak.any():
        nearest = upsample(image, factor, shape, "nearest", origin) if method != "nearest" else out
        out[weak] = nearest[weak]
    out[near < 0.5] = np.nan
    return out
