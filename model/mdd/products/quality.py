"""Masking a layer's pixels by its product's quality layer, window by window on the target grid.

Each quality raster is warped onto the grid with nearest neighbour (a class value is never
interpolated), over the window grown by the buffer, so a cloud just outside a window still grows
into it and windows stay seamless. Classes are grown by ``buffer_px`` source pixels, converted to
grid pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ...core.grid import Grid
from ..raster_io import inspect_layer, pixel_size_in_crs, warp_window
from . import QualityLayer, invalid_pixels


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
            info.nodata = [None] * info.band_count  # a quality value is never nodata: 0 is a class
            info.scale, info.offset = [1.0] * info.band_count, [0.0] * info.band_count
            self._sources[name] = (info, gdal.Open(path))
            pixel = pixel or pixel_size_in_crs(info, grid.crs_wkt)
        ratio = (pixel or grid.pixel_size) / grid.pixel_size
        self.buffer = int(math.ceil(quality.rule.buffer_px * ratio)) if quality.rule.buffer_px > 0 else 0
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
            values = warp_window(ds, info, self.grid, (x0, y0, x1 - x0, y1 - y0), "near")[0]
            values = np.nan_to_num(values, nan=0.0)  # outside the quality raster: not flagged
            rule = self.quality.rule
            classes = invalid_pixels(rule, values) if name is None else {name: values != 0}
            for cls, hit in classes.items():
                if disk is not None and hit.any():
                    hit = ndimage.binary_dilation(hit, structure=disk)
                hit = hit[crop]
                self.counts[cls] = self.counts.get(cls, 0) + int(hit.sum())
                out |= hit
        return out

    def summary(self, total_pixels: int) -> str:
        """'cloud 12.3 %, cloud_shadow 4.1 %' of the grid (classes overlap: shares may add up to more)."""
        parts = [f"{cls} {100.0 * n / max(total_pixels, 1):.1f} %" for cls, n in self.counts.items() if n]
        return ", ".join(parts) if parts else "nothing"
