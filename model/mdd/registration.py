"""Co-registration of the coarse roles with the fine MS: one sub-pixel translation per image.

A coarser sensor is rarely where its georeferencing says: Landsat against Sentinel-2 is off by a
third to half of a 30 m pixel, and the simulated series of benchmarks/ by up to 0.4 dense MS and
0.35 HS pixels (0.8 and 1 fine pixels). Misregistered, a dense MS change between two dates carries
the image's edges twice, shifted: on the development scene same_day it made half of the error of
the dense MS change mapped to the fine bands on the held-out dates (RMSE 0.0096-0.0209 reflectance
before, 0.0051-0.0097 after; BENCHMARKS.md, "Co-registration and the HS's blur on the grid").

Each coarse image is matched to the fine MS of the nearest date (the same day where there is one),
blurred to the image's resolution: Lucas-Kanade (Gauss-Newton) on the translation, with every band of
the image fitted as a least-squares mix of the fine MS bands plus an offset at each step, so gains,
offsets, the bands' relation and most of the change between the two dates do not bias it. An HS
image enters as the means of up to ``HS_GROUPS`` groups of neighbouring bands (less noise, less
work). Estimated on the central window of at most ``MAX_SIDE`` pixels a side (bounded memory); an
image whose estimate does not converge, needs more than ``MAX_SHIFT`` of its own pixels or has too
few valid pixels there keeps its georeferencing (shift 0). Pure numpy and scipy.ndimage.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..core.degrade import psf_sigma
from ..core.vocabulary import by_distance, day_number
from .format import MDD, read_values

MAX_SIDE = 256  # the window the shifts and the blur are estimated on, fine px (65 536 pixels at most)
MAX_SHIFT = 0.75  # the largest shift taken, in the coarse image's own pixels
HS_GROUPS = 12
MIN_PIXELS = 500
ITERATIONS = 15
SLOW_AFTER = 4  # iterations after which a step must at least halve the last one
TOLERANCE = 1e-3  # fine px: the step at which the estimate has converged
BLUR_DATES = 3


def _band_groups(values: np.ndarray, n: int) -> np.ndarray:
    """(band, row, col) -> at most ``n`` means of neighbouring bands with data (NaN where invalid)."""
    usable = [b for b in range(values.shape[0]) if np.isfinite(values[b]).any()]
    if len(usable) <= n:
        return values[usable]
    return np.stack([values[list(g)].mean(axis=0) for g in np.array_split(usable, n)])


def _shifted(a: np.ndarray, shift: tuple) -> np.ndarray:
    """a (..., rows, cols) moved by ``shift`` (out[y, x] = a[y - dy, x - dx], bilinear, edges held)."""
    from scipy import ndimage

    return ndimage.shift(a, (0,) * (a.ndim - 2) + tuple(shift), order=1, mode="nearest", prefilter=False)


def _blurred(values: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    if sigma <= 0:
        return np.where(valid, values, 0.0)
    w = ndimage.gaussian_filter(valid.astype(np.float64), sigma)
    out = np.stack([ndimage.gaussian_filter(np.where(valid, b, 0.0), sigma) for b in values])
    return out / np.maximum(w, 1e-6)


def estimate_shift(
    image: np.ndarray, reference: np.ndarray, ratio: float, max_shift: float | None = None
) -> tuple[float, float] | None:
    """(dy, dx) in fine pixels that moves ``image`` (band, row, col) onto ``reference`` (band, row, col),
    both on the fine grid with NaN where invalid (``image`` as read from the MDD, a coarse image
    brought to the grid; ``reference`` a fine MS), or None where it cannot be estimated. See the
    module docstring."""
    max_shift = MAX_SHIFT * ratio if max_shift is None else max_shift
    img_ok = np.isfinite(image).all(axis=0)
    ref_ok = np.isfinite(reference).all(axis=0)
    margin = int(math.ceil(ratio + max_shift)) + 1
    inner = np.zeros_like(img_ok)
    inner[margin:-margin, margin:-margin] = True
    if (img_ok & ref_ok & inner).sum() < MIN_PIXELS:
        return None
    ref = _blurred(reference.astype(np.float64), ref_ok, psf_sigma(ratio))
    design = np.concatenate([ref, np.ones((1,) + ref.shape[1:])])
    img = np.where(img_ok, image, 0.0).astype(np.float64)
    img /= np.maximum(np.array([b[img_ok].std() for b in img]), 1e-12)[:, None, None]  # bands weigh alike
    s, previous = np.zeros(2), np.inf
    for i in range(ITERATIONS):
        moved = _shifted(img, s)
        ok = (_shifted(img_ok.astype(np.float64), s) > 0.999) & ref_ok & inner
        if ok.sum() < MIN_PIXELS:
            return None
        x = design[:, ok].T
        y = moved[:, ok].T
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        e = (y - x @ coef).T  # (band, pixel): what the fine MS cannot explain at this shift
        nb = e.shape[0]
        grads = np.concatenate([np.gradient(moved, axis=1)[:, ok], np.gradient(moved, axis=2)[:, ok]]).T
        # Variable projection: the band mixes are fitted again at every shift, so only the part of the
        # image's gradient that they cannot mimic moves the fit (on smooth scenes the plain gradient
        # takes steps ten times too short).
        g_coef, *_ = np.linalg.lstsq(x, grads, rcond=None)
        grads = (grads - x @ g_coef).T
        gy, gx = grads[:nb], grads[nb:]
        h = np.array([[np.sum(gy * gy), np.sum(gy * gx)], [np.sum(gy * gx), np.sum(gx * gx)]])
        if np.linalg.cond(h) > 1e6:  # no edges to register on
            return None
        step = np.linalg.solve(h, np.array([np.sum(gy * e), np.sum(gx * e)]))
        s += step
        if np.abs(s).max() > max_shift:
            return None
        size = float(np.abs(step).max())
        if size < TOLERANCE:
            return float(s[0]), float(s[1])
        if i >= SLOW_AFTER and size > 0.5 * previous:  # creeping: the images differ by more than a shift
            return None
        previous = size
    return None


def estimate_shifts(
    mdd: MDD,
    log: Callable[[str], None] | None = None,
    check: Callable[[], None] | None = None,
    known: dict | None = None,
) -> dict:
    """(role, date) -> (dy, dx) fine px for every image of the coarse roles (stored coarser than the
    grid) whose shift could be estimated; ``MDD.registered`` reads them moved by it. ``check`` is
    called before each image (a cancel check that raises). ``known``: shifts estimated before (on a
    view of this MDD that hid an image), taken as they are; only the other images are estimated."""
    if "fine_ms" not in mdd.roles:
        return {}
    g = mdd.grid
    window = central_window(g.width, g.height)
    fine = mdd.roles["fine_ms"]
    references = {}
    shifts = dict(known or {})
    for role in ("dense_ms", "hs"):
        stack = mdd.roles.get(role)
        if stack is None or stack.pixel_ratio == 1:
            continue
        ratio = mdd.scale_ratio(role)
        for date in stack.dates:
            if (role, date) in shifts:
                continue
            if check is not None:
                check()
            image = read_values(mdd, role, window, [date])[0]
            if role == "hs":
                image = _band_groups(image, HS_GROUPS)
            found = None
            ok = np.isfinite(image).all(axis=0)
            for ref_date in by_distance(fine.dates, day_number(date)):  # the nearest with enough pixels
                if ref_date not in references:
                    references[ref_date] = read_values(mdd, "fine_ms", window, [ref_date])[0]
                if (ok & np.isfinite(references[ref_date]).all(axis=0)).sum() >= MIN_PIXELS:
                    found = estimate_shift(image, references[ref_date], ratio)
                    break
            if found is not None:
                shifts[(role, date)] = found
        if log is not None:
            moved = [shifts[(role, d)] for d in stack.dates if (role, d) in shifts]
            largest = max((math.hypot(*v) for v in moved), default=0.0)
            log(
                f"Co-registration: {len(moved)} of {stack.n_dates} {role.replace('_', ' ')} images matched to the "
                f"fine MS, shifts up to {largest:.2f} fine px"
                + ("" if len(moved) == stack.n_dates else " (the others are read as georeferenced)")
                + "."
            )
    return shifts


def _misfit(image: np.ndarray, reference: np.ndarray, ok: np.ndarray, sigma: float) -> float:
    """Mean over ``image``'s bands of the share of its variance that the fine MS blurred by ``sigma``
    (each band a least-squares mix of the reference bands plus an offset) does not explain."""
    ref = _blurred(reference, np.isfinite(reference).all(axis=0), sigma)
    x = np.c_[ref[:, ok].T, np.ones(int(ok.sum()))]
    y = image[:, ok].T
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(np.mean(np.mean((y - x @ coef) ** 2, axis=0) / np.maximum(y.var(axis=0), 1e-12)))


def central_window(width: int, height: int, side: int = MAX_SIDE) -> tuple:
    """(xoff, yoff, xsize, ysize) of the grid's central window of at most ``side`` px a side: where the
    scene-wide estimates (shifts, blurs, fusion's fits) are made, whatever tile asks."""
    w, h = min(int(width), side), min(int(height), side)
    return ((int(width) - w) // 2, (int(height) - h) // 2, w, h)


def resampled_blur_sigma(ratio: float) -> float:
    """The blur (fine px) of an image ``ratio`` times coarser than the grid as it lies on the grid: its
    PSF (FWHM one of its pixels, ``psf_sigma``) and the bilinear resampling onto the grid (a triangle
    of half-width ``ratio``: variance ratio²/6). For a dense MS twice the grid 1.10 px (measured on the
    development scenes: 1.26-1.27)."""
    ratio = float(ratio)
    return math.sqrt(psf_sigma(ratio) ** 2 + ratio * ratio / 6.0) if ratio > 1 else 0.0


def max_blur_sigma(ratio: float) -> float:
    """The largest blur ``estimate_blur(widest=True)`` tries (fine px): twice the PSF alone, or one and
    a half times ``resampled_blur_sigma``, whichever is larger. Below a ratio of about 2 the resampling
    dominates: a dense MS 1.6 times the grid measured 1.13-1.17 px, beyond twice its PSF alone (1.06)."""
    return max(2.0 * psf_sigma(ratio), 1.5 * resampled_blur_sigma(ratio))


def estimate_blur(mdd: MDD, role: str, log: Callable[[str], None] | None = None, widest: bool = False) -> float | None:
    """The Gaussian sigma (fine px) that best takes the fine MS to ``role``'s images as they are read on
    the grid: the sensor's PSF and the resampling onto the grid together (for a 30 m HS on a 10 m grid
    about 1.8 px, where the PSF alone, FWHM one pixel, would be 1.2). Fitted on the images of ``role``
    nearest in time to a fine MS (read through ``mdd``, so a registered view's shifts apply), each band
    a least-squares mix of the blurred fine MS bands; the median over up to ``BLUR_DATES`` of them;
    None where none can be used (a role on the fine grid, too few pixels, no minimum in the range).
    ``widest``: candidates up to ``max_blur_sigma``, for a role whose resampling may blur more than its
    PSF (the dense MS; the HS's range, half to twice its PSF, is what its models were trained with)."""
    stack, fine = mdd.roles.get(role), mdd.roles.get("fine_ms")
    if stack is None or fine is None or stack.pixel_ratio == 1:
        return None
    g = mdd.grid
    window = central_window(g.width, g.height)
    ratio = mdd.scale_ratio(role)
    nominal = psf_sigma(ratio)
    # sigma candidates: from half the PSF alone, in steps of a twentieth of it, to twice it (or ``widest``)
    top = max(2.0, max_blur_sigma(ratio) / nominal) if widest else 2.0
    grid = nominal * np.arange(0.5, top + 0.01, 0.05)
    margin = int(math.ceil(3 * grid[-1])) + 1  # the blur's reach: edge pixels do not count
    found = []
    pairs = []  # the images nearest in time to a fine MS first: the least change between the two
    for date in stack.dates:
        near = by_distance(fine.dates, day_number(date))
        if near:
            pairs.append((abs(day_number(near[0]) - day_number(date)), date, near[0]))
    for _, date, ref_date in sorted(pairs)[:BLUR_DATES]:
        image = read_values(mdd, role, window, [date])[0]
        if role == "hs":
            image = _band_groups(image, HS_GROUPS)
        if not np.isfinite(image).any():  # e.g. the HS image a self-check withholds: nothing to fit
            continue
        reference = read_values(mdd, "fine_ms", window, [ref_date])[0].astype(np.float64)
        ok = np.isfinite(image).all(axis=0) & np.isfinite(reference).all(axis=0)
        ok[:margin], ok[-margin:], ok[:, :margin], ok[:, -margin:] = False, False, False, False
        if ok.sum() < MIN_PIXELS:
            continue
        misfit = [_misfit(image.astype(np.float64), reference, ok, s) for s in grid]
        best = int(np.argmin(misfit))
        if 0 < best < len(grid) - 1:  # a minimum inside the range, not at its edge: refined by a parabola
            a, b, c = misfit[best - 1 : best + 2]
            step = grid[1] - grid[0]
            found.append(float(grid[best] + 0.5 * step * (a - c) / max(a - 2 * b + c, 1e-12)))
    if not found:
        if log is not None:
            log(
                f"Blur of the {role.replace('_', ' ')} on the grid: not measurable, the sensor PSF alone ({nominal:.2f} px)."
            )
        return None
    sigma = float(np.median(found))
    if log is not None:
        log(
            f"Blur of the {role.replace('_', ' ')} on the grid (its PSF and the resampling): sigma {sigma:.2f} px "
            f"(the PSF alone {nominal:.2f}), from {len(found)} date(s)."
        )
    return sigma


def shifts_to_json(shifts: dict) -> dict:
    """{role: {date: [dy, dx]}}: the form the model file keeps."""
    out = {}
    for (role, date), (dy, dx) in sorted(shifts.items()):
        out.setdefault(role, {})[date] = [round(float(dy), 4), round(float(dx), 4)]
    return out


def shifts_from_json(d: dict | None) -> dict:
    return {(role, date): (float(v[0]), float(v[1])) for role, dates in (d or {}).items() for date, v in dates.items()}
