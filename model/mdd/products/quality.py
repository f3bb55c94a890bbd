"""Masking a layer's pixels by a quality layer, window by window on the target grid: a product's
own quality layer, or an explicit MASK raster the user gives (``parse_mask_values`` reads which of
its values are invalid).

Each quality raster is warped onto the grid with nearest neighbour (a class value is never
interpolated), over the window grown by the buffer, so a cloud just outside a window still grows
into it and windows stay seamless. Classes are grown by ``buffer_px`` source pixels, converted to
grid pixels (to the nearest: the grid is a role's own, possibly coarser, storage grid); the classes
that mean "no data" (``NO_DATA_CLASSES``: the footprint's outside) are not grown.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from scipy import ndimage

from ...core.grid import Grid
from ..raster_io import inspect_layer, pixel_size_in_crs, warp_window
from . import NO_DATA_CLASSES, QualityLayer, QualityRule, invalid_pixels

MAX_BIT = 31  # bit flags of masks up to 32-bit integers

MASK_VALUES_FORMS = (
    "leave it empty (any non-zero mask pixel is invalid), give class values such as '3,8,9' (those "
    "values are invalid) or bit numbers such as 'bits:1,3,4' (pixels with any of those bits set are "
    f"invalid; bit 0 is the least significant, up to {MAX_BIT})"
)


def parse_mask_values(text: str | None) -> QualityRule:
    """The rule of an explicit MASK raster from MASK_VALUES: "" or None -> kind "mask" (any non-zero
    value is invalid); "3,8,9" -> kind "classes" (those values); "bits:1,3,4" -> kind "bits" (those
    bit numbers, 0 = least significant). Raises ValueError naming the accepted forms."""
    s = (text or "").strip()
    if not s:
        return QualityRule("mask", {1: "non-zero"})
    m = re.fullmatch(r"bits?\s*:(.*)", s, re.IGNORECASE | re.DOTALL)
    bits = m is not None
    items = [t for t in re.split(r"[,;\s]+", m.group(1) if bits else s) if t]
    bad = [t for t in items if not re.fullmatch(r"[+-]?\d+", t)]
    if bits:
        bad += [t for t in items if t not in bad and not 0 <= int(t) <= MAX_BIT]
    if not items or bad:
        what = ""
        if bad:
            kind = f"bit number 0-{MAX_BIT}" if bits else "integer class value"
            what = f" ({', '.join(repr(t) for t in bad)} {'is' if len(bad) == 1 else 'are'} no {kind})"
        raise ValueError(f"MASK_VALUES '{text}' is not understood{what}: {MASK_VALUES_FORMS}.")
    numbers = sorted({int(t) for t in items})
    if bits:
        return QualityRule("bits", {n: f"bit {n}" for n in numbers})
    return QualityRule("classes", {n: f"value {n}" for n in numbers})


def explicit_mask(path: str, rule: QualityRule, buffer_px: int = 0) -> QualityLayer:
    """The QualityLayer of an explicit MASK raster at ``path`` (band 1; its nodata is valid) with a
    copy of ``rule`` grown by ``buffer_px`` mask pixels; the log names it 'mask <file name>'."""
    own = QualityRule(rule.kind, dict(rule.classes), int(buffer_px))
    return QualityLayer(rule=own, path=path, label=f"mask {os.path.basename(path)}", nodata_valid=True)


class QualityMask:
    """The invalid pixels of one layer's quality layer, per class, for any window of a grid."""

    def __init__(self, quality: QualityLayer, grid: Grid) -> None:
        from osgeo import gdal

        self.quality = quality
        self.grid = grid
        paths = {None: quality.path} if quality.path else dict(quality.sources)
        self._sources = {}
        pixel = None
        for name, path in paths.items():
            info = inspect_layer(path, name or "quality")
            if not quality.nodata_valid:
                info.nodata = [None] * info.band_count  # a quality value is never nodata: 0 is a class
            info.scale, info.offset = [1.0] * info.band_count, [0.0] * info.band_count
            self._sources[name] = (info, gdal.Open(path))
            pixel = pixel or pixel_size_in_crs(info, grid.crs_wkt)
        ratio = (pixel or grid.pixel_size) / grid.pixel_size
        # The buffer's distance in grid pixels, to the nearest: a mask finer than the grid (a 10 m cloud
        # mask on an HS stored at 30 m) grows by what the distance is worth there, possibly nothing.
        self.buffer = int(math.floor(quality.rule.buffer_px * ratio + 0.5)) if quality.rule.buffer_px > 0 else 0
        self.counts = {}  # class -> invalid pixels so far

    def invalid(self, window: tuple) -> np.ndarray:
        """bool (rows, cols) of ``window``: True where a chosen quality class covers the pixel."""
        xoff, yoff, xs, ys = window
        b = self.buffer
        x0, y0 = max(0, xoff - b), max(0, yoff - b)
        x1, y1 = min(self.grid.width, xoff + xs + b), min(self.grid.height, yoff + ys + b)
        crop = (slice(yoff - y0, yoff - y0 + ys), slice(xoff - x0, xoff - x0 + xs))
        out = np.zeros((ys, xs), bool)
        disk = None
        if b:
            yy, xx = np.mgrid[-b : b + 1, -b : b + 1]
            disk = yy * yy + xx * xx <= b * b
        for name, (info, ds) in self._sources.items():
            # float64: bit flags above bit 23 stay exact (float32 holds integers up to 2**24 only)
            values = warp_window(ds, info, self.grid, (x0, y0, x1 - x0, y1 - y0), "near", float64=True)[0]
            known = np.isfinite(values)  # outside the raster (and its nodata, for explicit masks): NaN
            values = np.nan_to_num(values, nan=0.0)  # outside the quality raster: not flagged
            rule = self.quality.rule
            classes = invalid_pixels(rule, values) if name is None else {name: values != 0}
            for cls, hit in classes.items():
                if self.quality.nodata_valid:
                    hit = hit & known  # e.g. class 0 chosen: the mask's nodata and outside stay valid
                if disk is not None and cls not in NO_DATA_CLASSES and hit.any():
                    hit = ndimage.binary_dilation(hit, structure=disk)
                hit = hit[crop]
                self.counts[cls] = self.counts.get(cls, 0) + int(hit.sum())
                out |= hit
        return out

    def summary(self, total_pixels: int) -> str:
        """'cloud 12.3 %, cloud_shadow 4.1 %' of the grid (classes overlap: shares may add up to more)."""
        return class_summary(self.counts, total_pixels)


def class_summary(counts: dict, total_pixels: int) -> str:
    """'cloud 12.3 %, cloud_shadow 4.1 %': invalid pixels per class (``counts``) as shares of the grid."""
    parts = [f"{cls} {100.0 * n / max(total_pixels, 1):.1f} %" for cls, n in counts.items() if n]
    return ", ".join(parts) if parts else "nothing"
