"""Tiles and windows of a fusion run, shared by the network's fusion and the baselines.

The grid is cut into square tiles (the last row and column reach the edge); each tile is computed
from a window grown by a halo (shifted inward at the grid's edge) and cropped back, so results do
not depend on the tile size. ``TileReadCache`` reads each window of the MDD once per tile.
"""

from __future__ import annotations

import numpy as np

from ..core.vocabulary import DateError, parse_date_list
from ..mdd.format import MDD


class FusionError(ValueError):
    """Fusion cannot run as asked; the message says what is wrong and how to fix it."""


def tile_windows(width: int, height: int, tile_size: int) -> list:
    """Tiles (xoff, yoff, xsize, ysize) covering the grid row by row; the last ones reach the edge."""
    if tile_size < 1:
        raise FusionError(f"Tile size must be at least 1 pixel, got {tile_size}.")
    return [
        (x, y, min(tile_size, width - x), min(tile_size, height - y))
        for y in range(0, height, tile_size)
        for x in range(0, width, tile_size)
    ]


def expand_window(window: tuple, halo: int, width: int, height: int) -> tuple[tuple, tuple[slice, slice]]:
    """The window grown by ``halo`` pixels each side, within the grid.

    At the grid's edge the window is shifted inward rather than cut, keeping ``size + 2 * halo``
    pixels where the grid has them: every full tile is then computed on one window shape, so one
    tile's memory is the same at the edge as inside and on a small grid as on a large one. The
    results do not change: the grid's edge is still the window's edge, and the extra pixels lie on
    the side that already had its halo.

    Returns (window, (row slice, col slice)) where the slices cut the original window back out of
    an array covering the returned one.
    """
    xoff, yoff, xs, ys = window
    x0, x1 = _grown(xoff, xs, halo, width)
    y0, y1 = _grown(yoff, ys, halo, height)
    crop = (slice(yoff - y0, yoff - y0 + ys), slice(xoff - x0, xoff - x0 + xs))
    return (x0, y0, x1 - x0, y1 - y0), crop


def _grown(start: int, size: int, halo: int, extent: int) -> tuple[int, int]:
    """[start, end) of ``size`` px at ``start`` grown by ``halo`` each side, shifted to lie within
    [0, extent) (shortened only where the extent is shorter)."""
    span = min(extent, size + 2 * halo)
    first = min(max(0, start - halo), extent - span)
    return first, first + span


def aligned_window(tile: tuple, halo: int, step: int, width: int, height: int) -> tuple:
    """The tile grown by ``halo`` px (rounded up to ``step``) each side, clipped to the grid; its
    origin stays a multiple of ``step`` so block means line up with the whole-grid blocks."""
    halo = -(-halo // step) * step
    x, y, w, h = tile
    x0, y0 = max(0, x - halo), max(0, y - halo)
    x1, y1 = min(width, x + w + halo), min(height, y + h + halo)
    return (x0, y0, x1 - x0, y1 - y0), (slice(y - y0, y - y0 + h), slice(x - x0, x - x0 + w))


def requested_dates(mdd: MDD, dates: str | list | None) -> list:
    """The dates a run was asked for (text or list; None or empty: every date of the MDD), checked
    against the MDD, ascending. FusionError for a date the MDD lacks or text that is no date."""
    try:
        return select_dates(mdd, parse_date_list(dates))
    except DateError as e:
        raise FusionError(str(e)) from None


def select_dates(mdd: MDD, dates: list[str] | None) -> list:
    """The requested dates (all of the MDD's when None), checked against the MDD, ascending."""
    available = mdd.dates
    if dates is None:
        return list(available)
    unknown = [d for d in dates if d not in available]
    if unknown:
        raise FusionError(
            f"The MDD has no date {', '.join(unknown)}; its dates are "
            f"{', '.join(available)}. Leave DATES empty to fuse every date."
        )
    return sorted(dates)


def valid_anywhere(mdd: MDD, window: tuple) -> np.ndarray:
    """bool (row, col): True where at least one role is valid on at least one date."""
    out = np.zeros((window[3], window[2]), dtype=bool)
    for role in mdd.roles:
        out |= mdd.read_mask(role, window).any(axis=0)
    return out


class TileReadCache:
    """The MDD seen through a memo of its windowed reads, emptied at each tile.

    A prediction for one date reads the neighbouring dates too (reference HS dates, the fine MS
    date it starts from), so the dates of one tile read the same windows again and again; the memo
    reads each once. It holds at most one window of the MDD: memory stays bounded by the tile.
    Callers get copies, so a caller that edits its array in place cannot spoil the next read.
    """

    def __init__(self, mdd: MDD) -> None:
        self._mdd = mdd
        self._memo = {}
        self.derived = {}  # what a predictor computed from this tile's reads (e.g. reference residuals)

    def __getattr__(self, name):  # grid, roles, dates, path, scale_ratio, ...
        return getattr(self._mdd, name)

    @property
    def uncached(self) -> MDD:
        """The MDD itself, for reads that are not the tile's (e.g. a scene-wide fit)."""
        return self._mdd

    def clear(self) -> None:
        self._memo.clear()
        self.derived.clear()

    def _cached(self, kind, role, window, dates):
        key = (
            kind,
            role,
            None if window is None else tuple(int(v) for v in window),
            None if dates is None else tuple(dates),
        )
        if key not in self._memo:
            self._memo[key] = getattr(self._mdd, kind)(role, window=window, dates=dates)
        return self._memo[key].copy()

    def read(self, role: str, window: tuple | None = None, dates: list[str] | None = None) -> np.ndarray:
        return self._cached("read", role, window, dates)

    def read_mask(self, role: str, window: tuple | None = None, dates: list[str] | None = None) -> np.ndarray:
        return self._cached("read_mask", role, window, dates)
