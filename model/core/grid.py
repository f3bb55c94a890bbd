"""A north-up raster grid, and the coarser grids aligned with it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS (WKT), GDAL geotransform, size in pixels."""

    crs_wkt: str
    geotransform: tuple
    width: int
    height: int

    @property
    def pixel_size(self) -> float:
        return abs(float(self.geotransform[1]))

    @property
    def extent(self) -> tuple:
        """(xmin, ymin, xmax, ymax) in the grid's CRS."""
        x0, dx, _, y0, _, dy = self.geotransform
        xs = (x0, x0 + dx * self.width)
        ys = (y0, y0 + dy * self.height)
        return (min(xs), min(ys), max(xs), max(ys))

    def to_json(self) -> dict:
        return {
            "crs_wkt": self.crs_wkt,
            "geotransform": list(self.geotransform),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_json(cls, d: dict) -> Grid:
        return cls(d["crs_wkt"], tuple(float(v) for v in d["geotransform"]), int(d["width"]), int(d["height"]))


def coarse_grid(grid: Grid, factor: float) -> Grid:
    """The grid of pixels ``factor`` times larger (an integer or not), same origin, the coarse pixels
    that lie whole within the grid (the remainder rows/cols dropped)."""
    x0, dx, rx, y0, ry, dy = grid.geotransform
    width, height = coarse_size(grid.width, factor), coarse_size(grid.height, factor)
    return Grid(grid.crs_wkt, (x0, dx * factor, rx, y0, ry, dy * factor), width, height)


def coarse_size(n: int, factor: float) -> int:
    """How many whole pixels ``factor`` times larger ``n`` pixels hold (168 px at 1.6: 105, where the
    float quotient 168 // 1.6 is 104)."""
    return int(math.floor(n / factor + 1e-9))
