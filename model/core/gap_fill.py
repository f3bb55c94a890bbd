"""The gaps of a dense MS image filled from how the rest of that image changed.

``calendar.fill_in_time`` fills a pixel missing on date t (a cloud) by interpolating its own values
between the nearest valid dates before and after. Over a month of crop growth that is a straight line
through a curve, the same for every field. Where the dense MS of t is observed elsewhere in the scene,
the scene says how fields like this one changed: ``GapFill`` regresses the observed pixels of t on
their values at the ``K_NEAREST`` other dense MS dates (each filled in time without t), band on band,
and predicts the missing pixels from their own values on those dates. Fields that looked alike on the
other dates are taken to have changed alike (the idea behind filling Landsat gaps from other dates of
the same place, e.g. NSPI, Chen et al. 2011; here one least-squares map per date rather than similar
pixels per gap), and the date's own calibration comes with the fit.

Checked on the inputs alone (benchmarks/gap_fill.py: clouds put where each dense image of six scenes is
observed): under them RMSE 0.0167-0.0190 -> 0.0124-0.0134 and CC 0.928-0.931 -> 0.951-0.958 against the
interpolation in time; K_NEAREST 1, 2, 4, 6 gave CC 0.898, 0.932, 0.946, 0.951 on same_day (BENCHMARKS.md,
"Gaps of the dense MS filled from the rest of the date").

The fit runs once per date on a window of the scene (the fusion's central window), so every tile gets
the same map; a pixel's fill depends on its own time series alone, so tiles stay seamless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .calendar import fill_in_time

K_NEAREST = 6  # the other dates a fill reads (the nearest in time): bounds the cost on long series
MIN_PIXELS = 200  # fewer observed pixels on the date than this (or than 4 per coefficient): no fit
RIDGE = 1e-6  # relative to the mean diagonal of the normal equations: only against a singular system


def nearest_others(days: Sequence[int], day: int, k: int = K_NEAREST) -> list[int]:
    """Indices of the ``k`` dates of ``days`` nearest to ``day``, ``day`` itself left out (the
    earlier on a tie), in the order of ``days``."""
    others = [i for i, d in enumerate(days) if d != day]
    chosen = sorted(others, key=lambda i: (abs(days[i] - day), days[i]))[: int(k)]
    return sorted(chosen)


def gap_features(
    values: np.ndarray, valid: np.ndarray, days: Sequence[int], day: int, chosen: Sequence[int]
) -> np.ndarray:
    """(len(chosen) * bands, ...): each chosen date's dense MS (values (T, bands, ...), valid (T, ...):
    pixels on a grid or in a list), its own gaps filled in time from the dates other than ``day`` (NaN
    where a pixel has no valid date but ``day``'s)."""
    keep = [i for i, d in enumerate(days) if d != day]
    kept_days = [days[i] for i in keep]
    return np.concatenate([fill_in_time(values[keep], valid[keep], kept_days, days[i])[0] for i in chosen])


@dataclass
class GapFill:
    """The map of one date: dense MS at ``day`` ~ features @ ``weights`` + ``bias`` (features:
    ``gap_features`` of the dates ``feature_days``)."""

    day: int
    feature_days: tuple
    weights: np.ndarray  # (features, bands)
    bias: np.ndarray  # (bands,)

    def apply(
        self, values: np.ndarray, valid: np.ndarray, days: Sequence[int], interpolated: tuple | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``fill_in_time`` of (values (T, B, H, W), valid (T, H, W)) at this map's date (or
        ``interpolated``, that result computed by the caller), with the date's gaps taken from the map
        where the pixel has all its features. Returns (values (B, H, W), valid (H, W)) as fill_in_time
        does."""
        days = [int(d) for d in days]
        out, ok = interpolated if interpolated is not None else fill_in_time(values, valid, days, self.day)
        if self.day not in days or not all(d in days for d in self.feature_days):
            return out, ok  # not the MDD the map was fitted on: plain interpolation
        own = valid[days.index(self.day)]
        gaps = ok & ~own
        if not gaps.any():
            return out, ok
        chosen = [days.index(d) for d in self.feature_days]
        # The gaps' own time series alone (fill_in_time is per pixel): the cost follows the gaps.
        f = gap_features(values[:, :, gaps], valid[:, gaps], days, self.day, chosen)
        fine = np.isfinite(f).all(axis=0)
        cols = np.flatnonzero(gaps)[fine]
        pred = (f[:, fine].T.astype(np.float64) @ self.weights + self.bias).T.astype(np.float32)
        filled = out.reshape(out.shape[0], -1)
        filled[:, cols] = pred
        return filled.reshape(out.shape), ok


def fit_gap_fill(
    values: np.ndarray, valid: np.ndarray, days: Sequence[int], day: int, k: int | None = None
) -> GapFill | None:
    """The ``GapFill`` of date ``day`` from (values (T, B, H, W), valid (T, H, W)) of every dense MS
    date, on the ``k`` nearest other dates (``K_NEAREST``): least squares over the pixels observed on
    ``day`` whose features are all valid. None where ``day`` is not one of ``days``, it has no other
    date, or too few pixels are observed."""
    days = [int(d) for d in days]
    if day not in days or len(days) < 2:
        return None
    t = days.index(day)
    chosen = nearest_others(days, day, K_NEAREST if k is None else k)
    f = gap_features(values, valid, days, day, chosen)
    target = values[t]
    use = valid[t] & np.isfinite(target).all(axis=0) & np.isfinite(f).all(axis=0)
    n = int(use.sum())
    if n < max(MIN_PIXELS, 4 * (f.shape[0] + 1)):
        return None
    a = np.c_[f[:, use].T.astype(np.float64), np.ones(n)]
    y = target[:, use].T.astype(np.float64)
    normal = a.T @ a
    normal += RIDGE * np.trace(normal) / len(normal) * np.eye(len(normal))
    sol = np.linalg.solve(normal, a.T @ y)
    return GapFill(day, tuple(days[i] for i in chosen), sol[:-1], sol[-1])
