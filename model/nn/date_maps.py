"""Date-specific spectral maps: the linear MS -> HS relation of each HS date, carried through time.

The relation between the fine MS and the HS changes with season, illumination and each date's
calibration, so one map for the whole series is wrong on every date by a little. Training fits one
ridge map per HS date (normalised fine MS at the HS scale -> HS PCA scores, weights then intercept,
(k, n_fine + 1)); a date takes its own map when it has an HS image within ``max_days``, else the
linear blend in time of the maps of the HS dates before and after it (the nearest one outside the
series). The network's spectral branch applies the map in place of its single learned linear part
and learns only what is beyond it. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def own_index(
    days: np.ndarray, maps: np.ndarray, day: float, max_days: float, exclude: int | None = None
) -> int | None:
    """The HS date (index) with a map within ``max_days`` of ``day``, the nearest; None when none."""
    usable = np.isfinite(maps).all(axis=(1, 2))
    if exclude is not None:
        usable[exclude] = False
    gaps = np.where(usable, np.abs(np.asarray(days, dtype=np.float64) - day), np.inf)
    i = int(np.argmin(gaps)) if len(gaps) else 0
    return i if len(gaps) and gaps[i] <= max_days else None


def map_for(days: np.ndarray, maps: np.ndarray, day: float, max_days: float, exclude: int | None = None) -> np.ndarray:
    """The map (k, c) for ``day`` from ``maps`` (n, k, c) of the HS dates ``days`` (n,); rows of NaN
    are dates without a map, ``exclude`` one date left out (training: a date seen as if it had no
    HS). ValueError when no date has a map."""
    days = np.asarray(days, dtype=np.float64)
    usable = np.isfinite(maps).all(axis=(1, 2))
    if exclude is not None:
        usable[exclude] = False
    idx = np.flatnonzero(usable)
    if not len(idx):
        raise ValueError("No HS date has a spectral map.")
    own = own_index(days, maps, day, max_days, exclude)
    if own is not None:  # its own HS date (the calendar rule: within max_days)
        return maps[own].astype(np.float32)
    gaps = np.abs(days[idx] - day)
    before = idx[days[idx] < day]
    after = idx[days[idx] > day]
    if not len(before) or not len(after):  # outside the HS dates: the nearest one's
        return maps[idx[int(np.argmin(gaps))]].astype(np.float32)
    b, a = before[np.argmax(days[before])], after[np.argmin(days[after])]
    w = (day - days[b]) / (days[a] - days[b])
    return ((1 - w) * maps[b] + w * maps[a]).astype(np.float32)
