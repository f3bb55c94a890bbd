"""Writing a simulated series: int16 reflectance GeoTIFFs per role and date, the truth, a summary."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from ..core.grid import Grid, coarse_grid, coarse_size
from ..core.vocabulary import ROLES
from ..mdd.geotiff import spectral_band_metadata, write_geotiff, write_text_atomic
from .sensors import SeriesDesign
from .truth import TruthSeries

SCALE = 1e-4  # reflectance stored as int16 x 1e4
INT_NODATA = -32768


def write_reflectance(
    path: str,
    values: np.ndarray,
    grid: Grid,
    date: str,
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray | None,
    descriptions: Sequence[str] | None,
    metadata: dict,
    extra_band_md: Sequence[dict] | None = None,
) -> None:
    """int16 reflectance x 1e4 (band scale 0.0001, nodata -32768), the date in GDAL metadata
    (ACQUISITION_DATE) and wavelengths/FWHM in band metadata; written atomically."""
    q = np.where(np.isfinite(values), np.clip(np.round(values / SCALE), -32767, 32767), INT_NODATA)
    band_md = spectral_band_metadata(wavelengths, fwhm)
    for b, md in enumerate(band_md):
        md["date"] = date
        if extra_band_md:
            md.update(extra_band_md[b])
    write_geotiff(
        path,
        q.astype(np.int16),
        grid,
        nodata=INT_NODATA,
        descriptions=descriptions,
        band_metadata=band_md,
        metadata={"ACQUISITION_DATE": date, **metadata},
        scale=SCALE,
        offset=0.0,
    )


def write_inputs(folder: str, images: list, grid: Grid, metadata: dict | None = None) -> dict:
    """Writes ``<role>_<date>.tif`` per image; returns role -> list of file names."""
    os.makedirs(folder, exist_ok=True)
    files = {role: [] for role in ROLES}
    for im in images:
        name = f"{im.role}_{im.date}.tif"
        md = {
            "STSFUSION_ROLE": im.role,
            "SENSOR": im.sensor,
            "SIMULATED": "yes",
            "MISREGISTRATION_PX": f"{im.shift_px[0]:.3f} {im.shift_px[1]:.3f}",
            "CLOUD_FRACTION": f"{im.cloud_fraction:.3f}",
            **(metadata or {}),
        }
        desc = [f"{n} ({w:.0f} nm)" if im.role != "hs" else n for n, w in zip(im.band_names, im.wavelengths)]
        write_reflectance(
            os.path.join(folder, name),
            im.values,
            coarse_grid(grid, im.factor),
            im.date,
            im.wavelengths,
            im.fwhm,
            desc,
            md,
            im.extra.get("band_md"),
        )
        files[im.role].append(name)
    return files


def write_truth(
    folder: str,
    truth: TruthSeries,
    grid: Grid,
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray | None,
    metadata: dict | None = None,
    extra_band_md: Sequence[dict] | None = None,
) -> list:
    """Writes ``truth_hs_<date>.tif`` per date (the withheld fine HS reference)."""
    os.makedirs(folder, exist_ok=True)
    names = []
    for t, date in enumerate(truth.dates):
        name = f"truth_hs_{date}.tif"
        desc = [f"band {b + 1} ({w:g} nm)" for b, w in enumerate(wavelengths)]
        write_reflectance(
            os.path.join(folder, name),
            truth.values[t],
            grid,
            date,
            wavelengths,
            fwhm,
            desc,
            {"STSFUSION_ROLE": "truth", "SIMULATED": "yes", **(metadata or {})},
            extra_band_md,
        )
        names.append(name)
    return names


def series_summary(
    design: SeriesDesign, images: list, files: dict, grid: Grid, wavelengths: Sequence[float] | np.ndarray
) -> dict:
    """A JSON-able description of a written series: dates per role, files, sizes, sensors."""
    by_role = {}
    for role in ROLES:
        ims = [im for im in images if im.role == role]
        if not ims:
            continue
        by_role[role] = {
            "dates": [im.date for im in ims],
            "files": files[role],
            "sensor": ims[0].sensor,
            "bands": len(ims[0].wavelengths),
            "band_names": ims[0].band_names,
            "wavelengths_nm": [round(float(w), 2) for w in ims[0].wavelengths],
            "pixel_size_m": grid.pixel_size * ims[0].factor,
            "size_px": [coarse_size(grid.width, ims[0].factor), coarse_size(grid.height, ims[0].factor)],
            "cloud_fraction": {im.date: round(im.cloud_fraction, 3) for im in ims},
        }
    return {
        "dates": design.dates,
        "roles": by_role,
        "truth_bands": len(wavelengths),
        "fine_grid": {"pixel_size_m": grid.pixel_size, "width": grid.width, "height": grid.height},
    }


def write_json(path: str, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))
