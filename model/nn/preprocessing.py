"""What the network sees of the data: per-band normalisation, the noise-weighted PCA of the HS and
the validity-weighted Gaussian blur, shared by training (samples.py) and fusion (predictor.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class TrainingDataError(ValueError):
    """Data that cannot train a model; the message says what is wrong and how to fix it."""


@dataclass
class BandNormalizer:
    """Per-band z-scores: (x - mean) / std; invalid (NaN) -> 0."""

    mean: np.ndarray  # (bands,)
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, valid: np.ndarray) -> BandNormalizer:
        """values (time, band, row, col); valid (time, row, col)."""
        nb = values.shape[1]
        px = np.moveaxis(values, 1, -1)[valid]  # (n, band)
        px = px.astype(np.float64)
        mean = np.nanmean(px, axis=0) if len(px) else np.zeros(nb)
        std = np.nanstd(px, axis=0) if len(px) else np.ones(nb)
        mean = np.nan_to_num(mean)
        std = np.nan_to_num(std)
        floor = max(float(std.max(initial=0.0)) * 1e-6, 1e-12)
        return cls(mean.astype(np.float32), np.maximum(std, floor).astype(np.float32))

    @staticmethod
    def add_moments(moments: tuple | None, values: np.ndarray, valid: np.ndarray) -> tuple:
        """(count, sum, sum of squares) per band, float64, of the finite values in valid pixels, added
        to ``moments`` (None: start): ``fit`` one window at a time, for grids larger than memory."""
        px = np.moveaxis(values, 1, -1)[valid].astype(np.float64)  # (n, band)
        finite = np.isfinite(px)
        filled = np.where(finite, px, 0.0)
        part = (finite.sum(axis=0).astype(np.float64), filled.sum(axis=0), (filled**2).sum(axis=0))
        return part if moments is None else tuple(a + b for a, b in zip(moments, part))

    @classmethod
    def from_moments(cls, count: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> BandNormalizer:
        """The normaliser ``fit`` gives, from ``add_moments`` over all windows."""
        n = np.maximum(count, 1.0)
        mean = np.where(count > 0, total / n, 0.0)
        std = np.where(count > 0, np.sqrt(np.maximum(total_sq / n - mean**2, 0.0)), 1.0)
        floor = max(float(std.max(initial=0.0)) * 1e-6, 1e-12)
        return cls(mean.astype(np.float32), np.maximum(std, floor).astype(np.float32))

    def apply(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """values (..., band, row, col) physical -> float32 z-scores, 0 where invalid or NaN."""
        z = (values - self.mean[:, None, None]) / self.std[:, None, None]
        z = np.where(valid[..., None, :, :] & np.isfinite(z), z, 0.0)
        return z.astype(np.float32)


class HSPCA:
    """Noise-weighted PCA of the HS (scikit-learn), fitted on valid HS pixels.

    Each band is standardised, then weighted by q_b = sqrt(SNR_b / (1 + SNR_b)), the noise estimated
    from what the neighbouring bands cannot predict: noisy bands (SWIR edges,
    water vapour) weigh little in the components, and bands without any finite value (EnMAP's
    absorption bands) weigh nothing and come out as NaN. Scores are divided by sqrt(lambda_1) so the
    first component has unit variance.
    """

    def __init__(
        self,
        band_mean: np.ndarray,
        band_std: np.ndarray,
        band_weight: np.ndarray,
        usable: np.ndarray,
        mean: np.ndarray,
        components: np.ndarray,
        scale: float,
        explained: Sequence[float],
    ) -> None:
        self.band_mean = np.asarray(band_mean, np.float32)
        self.band_std = np.asarray(band_std, np.float32)
        self.band_weight = np.asarray(band_weight, np.float32)
        self.usable = np.asarray(usable, bool)
        self.mean = np.asarray(mean, np.float32)  # (bands,) in weighted z space
        self.components = np.asarray(components, np.float32)  # (k, bands)
        self.scale = float(scale)
        self.explained = [float(v) for v in explained]
        self.score_noise = np.zeros(self.components.shape[0])

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(
        cls,
        pixels: np.ndarray,
        wavelengths: Sequence[float] | None,
        n_components: int,
        seed: int,
        bbl: Sequence[int] | None = None,
    ) -> HSPCA:
        """pixels (n, bands) physical values of valid HS pixels (NaN allowed in bad bands); bbl: the
        bad band list (0 = bad): bad bands are left out of the PCA and come out as NaN (nodata)."""
        from sklearn.decomposition import PCA

        pixels = pixels.astype(np.float64)
        finite = np.isfinite(pixels)
        usable = finite.mean(axis=0) > 0.5
        if bbl is not None:
            usable &= np.asarray(bbl, dtype=float) > 0
        if not usable.any():
            raise TrainingDataError(
                "The HS has no band with finite values in its valid pixels: check its nodata value and rebuild the MDD."
            )
        filled = np.where(finite, pixels, 0.0)
        count = np.maximum(finite.sum(axis=0), 1)
        mean = filled.sum(axis=0) / count  # NaN-free mean/std: bands without data give 0, not warnings
        std = np.sqrt(np.where(finite, (pixels - mean) ** 2, 0.0).sum(axis=0) / count)
        std = np.maximum(std, max(float(std.max()) * 1e-6, 1e-12))
        z = np.where(finite & usable, (pixels - mean) / std, 0.0)
        weight, noise = _snr_weights(z, usable, wavelengths)
        zw = z * weight
        k = int(min(n_components, int(usable.sum()), len(zw)))
        if k < 1:
            raise TrainingDataError("Too few valid HS pixels to fit the PCA.")
        pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit(zw)
        scale = float(np.sqrt(max(pca.explained_variance_[0], 1e-12)))
        out = cls(mean, std, weight, usable, pca.mean_, pca.components_, scale, pca.explained_variance_ratio_.tolist())
        # Per-component noise std of the scores (independent band noise projected on the components).
        out.score_noise = np.sqrt((pca.components_**2) @ (weight**2 * noise)) / scale
        return out

    def transform(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """values (..., band, row, col) physical -> scores (..., k, row, col) float32, 0 where invalid."""
        x = np.moveaxis(values, -3, -1).astype(np.float32)
        z = (x - self.band_mean) / self.band_std
        z = np.where(np.isfinite(z) & self.usable, z, 0.0) * self.band_weight
        s = _matmul(np.ascontiguousarray(z - self.mean, dtype=np.float32), self.components.T) / self.scale
        s = np.where(valid[..., None], s, 0.0)
        return np.moveaxis(s, -1, -3).astype(np.float32)

    def inverse(self, scores: np.ndarray) -> np.ndarray:
        """scores (k, row, col) -> HS (bands, row, col) physical float32; NaN in unusable bands."""
        # One affine map, (bands, k) @ (k, pixels): the scale, the band weights and the band
        # standardisation folded into it, and the result already in (band, row, col) order.
        k, shape = scores.shape[0], scores.shape[1:]
        factor = self.band_std / np.maximum(self.band_weight, 1e-6)
        matrix = (self.components * self.scale * factor).T  # (bands, k)
        x = _matmul(matrix, np.asarray(scores, np.float32).reshape(k, -1))
        x += (self.mean * factor + self.band_mean).astype(np.float32)[:, None]
        x[~self.usable] = np.nan
        return x.reshape((-1,) + tuple(shape))

    def arrays(self) -> dict:
        return {
            "band_mean": self.band_mean,
            "band_std": self.band_std,
            "band_weight": self.band_weight,
            "usable": self.usable.astype(np.float32),
            "mean": self.mean,
            "components": self.components,
            "scale": np.float32(self.scale),
        }

    @classmethod
    def from_arrays(cls, a: dict, explained: Sequence[float]) -> HSPCA:
        return cls(
            a["band_mean"],
            a["band_std"],
            a["band_weight"],
            np.asarray(a["usable"]) > 0.5,
            a["mean"],
            a["components"],
            float(np.asarray(a["scale"])),
            explained,
        )


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in float32 by PyTorch, on its CPU threads: numpy's BLAS gives other last bits with
    another thread count (OpenBLAS 1 vs 2 threads, measured), so a Dask worker (one BLAS thread)
    would not write the bytes of the in-process run; PyTorch's threads are set per task."""
    import torch

    a, b = (torch.from_numpy(np.ascontiguousarray(m, np.float32)) for m in (a, b))
    return (a @ b).numpy()


def _snr_weights(z: np.ndarray, usable: np.ndarray, wavelengths) -> tuple:
    """(q_b, noise_b): q_b = sqrt(SNR/(1+SNR)), floor 0.05, and the noise variance noise_b (z units).

    Noise is what a band's spectral neighbours cannot predict (least squares on the bands on either
    side, as in MNF noise estimation): a noisy band is badly predicted, while a clean band next to a
    noisy one is still predicted by its clean side.
    """
    nb = z.shape[1]
    order = np.argsort(np.asarray(wavelengths, float)) if wavelengths is not None else np.arange(nb)
    good = [b for b in order if usable[b]]
    weight = np.zeros(nb)
    noise_b = np.zeros(nb)
    for i, b in enumerate(good):
        nbrs = [good[j] for j in (i - 1, i + 1) if 0 <= j < len(good)]
        if not nbrs:
            weight[b] = 1.0
            continue
        x = z[:, nbrs]
        coef = np.linalg.lstsq(x, z[:, b], rcond=None)[0]
        noise = float(np.clip(np.var(z[:, b] - x @ coef), 1e-6, 1.0))
        noise_b[b] = noise
        snr = (1.0 - noise) / noise  # z has unit variance: signal + noise = 1
        weight[b] = np.sqrt(snr / (1.0 + snr))
    return np.where(usable, np.maximum(weight, 0.05), 0.0), noise_b


def ridge(
    x: np.ndarray,
    y: np.ndarray,
    bias: bool = True,
    lam: float = 1e-3,
    max_pixels: int = 50000,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y ~ x @ W (+ b) with a small ridge; x (n, i), y (n, o) -> (W (o, i), b (o,)).
    Beyond ``max_pixels`` rows, a random subsample drawn from ``rng``, or without one a regular
    subsample (no draw: a caller's seeded stream stays as it was)."""
    if len(x) > max_pixels:
        if rng is not None:
            pick = rng.choice(len(x), max_pixels, replace=False)
        else:
            pick = np.linspace(0, len(x) - 1, max_pixels).astype(int)
        x, y = x[pick], y[pick]
    x = x.astype(np.float64)
    xa = np.c_[x, np.ones(len(x))] if bias else x
    reg = lam * len(x) * np.eye(xa.shape[1])
    if bias:
        reg[-1, -1] = 0.0
    sol = np.linalg.solve(xa.T @ xa + reg, xa.T @ y.astype(np.float64))
    return (sol[:-1].T, sol[-1]) if bias else (sol.T, np.zeros(y.shape[1]))


def gaussian_blur_stack(values: np.ndarray, valid: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised Gaussian blur of (time, band, row, col) with validity (time, row, col), whole image.

    Returns (blurred values, validity). Same operator as network.GaussianBlur, run in torch.
    """
    import torch

    from .network import GaussianBlur

    blur = GaussianBlur(sigma)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(values))
        v = torch.from_numpy(valid[:, None].astype(np.float32))
        out, ov = blur(x, v)
    return out.numpy(), ov.numpy()[:, 0] > 0.5
