"""The fine MS predicted in time, put back in line with the target date's own dense MS.

The temporal prediction f_q + L(change) (``network.TemporalBranch``, blended between the fine MS
dates on either side) is built from the dense MS's *change*. What the change mapping L and the blend
get wrong remains at the dense MS's own scale: blurred as the dense sensor sees the grid and mapped to
its bands, the prediction does not give back the dense MS observed on the date. Most of the error of
the fine MS predicted in time is of that kind (BENCHMARKS.md, "The dense MS of the date, put back"):
with the error at that scale taken out by an oracle, the fine MS's CC would rise from 0.975-0.994 to
0.988-0.996 on swir_offset_5_8 and products_clear.

``DenseConsistency`` takes Landweber steps towards that consistency:

    r = d_t - ((1 + g) M(B p) + c)       the date's dense MS against the prediction seen as the dense MS sees it
    p <- p + L0(spread(B r))             back onto the fine bands, spread over the fine fields by the guide

B is the dense MS's blur on the grid (its PSF and the bilinear resampling), M the map from blurred fine
MS to dense MS (least squares on the MDD's fine MS dates), L0 the temporal branch's own change map
(the dense change onto the fine bands, without its bias) and ``spread`` its guided change
(``network.GuidedChange``). g and c are the date's own gain and offset of the dense MS against the
prediction, per band, fitted on the scene: a dense image's calibration differs from date to date
(a few per cent), and without them each step would put the date's calibration error into the fine MS
(SAM worse by 1.4° on a development scene). The blur of r before the spread (the adjoint of B) keeps
the steps stable (without it, more than one step amplified noise). ``STEPS`` was chosen on the
development scenes' tuning date (means of three against none: two steps CC +0.0031, PSNR +0.47 dB,
SSIM +0.0088, SAM +0.08°; one +0.0021, +0.29 dB, +0.0053, +0.13°; three +0.0033, +0.53 dB, +0.0102,
+0.11° for half as much halo again: not taken).

Everything here is fitted at fusion time on the MDD being fused (``fit_dense_map``, ``date_gain``: the
central window of at most ``FIT_SIDE`` pixels, so the result does not depend on the tiling), and the
network's weights are not involved: models trained before it get it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..mdd.format import MDD
from ..mdd.registration import MAX_SIDE, estimate_blur, resampled_blur_sigma
from .network import GaussianBlur

STEPS = 2  # Landweber steps; 0 leaves the temporal prediction as the network makes it
FIT_SIDE = MAX_SIDE  # the central window the dense map and each date's gain are fitted on (px): estimate_blur's
MIN_PIXELS = 200  # fewer valid pixels than this: no fit, no step
MARGIN_SIGMAS = 3  # pixels within this many blur sigmas of the window's edge are left out of the fits


def sigma_on_grid(mdd: MDD, ratio: float) -> float:
    """The dense MS's blur on the grid of ``mdd``, measured (``registration.estimate_blur``: 1.26-1.27
    px on the development scenes, where ``resampled_blur_sigma`` says 1.10; 1.13-1.17 px for a dense MS
    1.6 times the grid), else ``resampled_blur_sigma``."""
    measured = estimate_blur(mdd, "dense_ms", widest=True)
    return float(measured) if measured else resampled_blur_sigma(ratio)


def reach(sigma: float, guided_radius: int, steps: int) -> int:
    """Pixels of context the steps read around each pixel: two blurs and a spread per step."""
    r = int(math.ceil(3 * sigma)) if sigma > 0 else 0
    return int(steps) * (2 * r + int(guided_radius))


def _inner(valid: np.ndarray, margin: int) -> np.ndarray:
    ok = valid.copy()
    if margin > 0:
        ok[:margin], ok[-margin:], ok[:, :margin], ok[:, -margin:] = False, False, False, False
    return ok


class DenseConsistency(nn.Module):
    """The steps (module docstring). Not trained and not in the model file: ``fit`` sets the dense map
    from the MDD being fused. forward(p (B, n_fine, H, W) the blended temporal prediction, v (B, 1, H,
    W) where it and the date's dense MS are valid, d (B, n_dense, H, W) the date's dense MS, gain
    (2, n_dense) the date's gain and offset, to_fine (n_fine, n_dense, 1, 1) L0, spread (change,
    validity) -> change) -> p."""

    def __init__(self, sigma: float, guided_radius: int, steps: int) -> None:
        super().__init__()
        self.steps = int(steps)
        self.blur = GaussianBlur(sigma)
        self.to_dense = None  # (n_dense, n_fine) and (n_dense,): set by set_map
        self.radius = reach(sigma, guided_radius, self.steps)

    @property
    def fitted(self) -> bool:
        return self.to_dense is not None and self.steps > 0

    def set_map(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.to_dense = (torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32))

    def seen_as_dense(self, p: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M(B p) and where it is valid."""
        w, b = (t.to(p.device, p.dtype) for t in self.to_dense)
        pb, vb = self.blur(p, v)
        return torch.einsum("dc,bchw->bdhw", w, pb) + b.view(1, -1, 1, 1), vb

    def forward(
        self,
        p: torch.Tensor,
        v: torch.Tensor,
        d: torch.Tensor,
        gain: torch.Tensor,
        to_fine: torch.Tensor,
        spread: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        g = gain.to(p.device, p.dtype)
        for _ in range(self.steps):
            mp, vb = self.seen_as_dense(p, v)
            r = (d - (1 + g[0]).view(1, -1, 1, 1) * mp - g[1].view(1, -1, 1, 1)) * vb
            rb, vr = self.blur(r, vb)
            p = p + v * nn.functional.conv2d(spread(rb * vr, vr), to_fine.to(p.dtype))
        return p


def fit_dense_map(fine: list, dense: list, sigma: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Least squares dense ~ M(B fine) + b over pairs of the same date: ``fine`` a list of ((n_fine, H,
    W) z-scores, (H, W) validity), ``dense`` the same for the dense MS of each date (filled in time).
    None with fewer than MIN_PIXELS usable pixels."""
    blur = GaussianBlur(sigma)
    margin = int(math.ceil(MARGIN_SIGMAS * sigma))
    xs, ys = [], []
    for (f, vf), (dz, vd) in zip(fine, dense):
        with torch.no_grad():
            fb, vb = blur(torch.from_numpy(f)[None].float(), torch.from_numpy(vf[None, None].astype(np.float32)))
        ok = _inner((vb[0, 0].numpy() > 0) & vf & vd, margin)
        if ok.any():
            xs.append(fb[0].numpy()[:, ok].T)
            ys.append(dz[:, ok].T)
    if not xs or sum(len(x) for x in xs) < MIN_PIXELS:
        return None
    x = np.concatenate(xs).astype(np.float64)
    y = np.concatenate(ys).astype(np.float64)
    xa = np.c_[x, np.ones(len(x))]
    sol = np.linalg.lstsq(xa, y, rcond=None)[0]
    return sol[:-1].T, sol[-1]


def date_gain(consistency: DenseConsistency, p: torch.Tensor, v: torch.Tensor, d: torch.Tensor) -> np.ndarray:
    """(2, n_dense): per band, the gain g and offset c of the date's dense MS against the prediction
    seen as the dense MS (d - M(B p) ~ g M(B p) + c), over the window's valid pixels; zeros where too
    few are valid."""
    with torch.no_grad():
        mp, vb = consistency.seen_as_dense(p, v)
    margin = int(math.ceil(MARGIN_SIGMAS * consistency.blur.sigma))
    ok = _inner((vb * v)[0, 0].cpu().numpy() > 0, margin)
    out = np.zeros((2, d.shape[1]), np.float32)
    if ok.sum() < MIN_PIXELS:
        return out
    mp = mp[0].cpu().numpy().astype(np.float64)
    r = d[0].cpu().numpy().astype(np.float64) - mp
    for k in range(d.shape[1]):
        a = np.stack([mp[k][ok], np.ones(int(ok.sum()))], 1)
        out[:, k] = np.linalg.lstsq(a, r[k][ok], rcond=None)[0]
    return out
