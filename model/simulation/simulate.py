"""Sensor simulation (the paper's Dataset I protocol): from fine HS images, one per date, make

- fine MS: the HS through a fine sensor's spectral responses, on the HS grid;
- dense MS: the HS through GF-6 WFV-like responses, then a Gaussian PSF and decimation by
  ``dense_factor``;
- coarse HS: the HS itself, Gaussian PSF and decimation by ``hs_factor``;

each on chosen dates, as ``<role>_YYYY-MM-DD.tif`` (float32, values in the input's physical
units, i.e. band scale/offset applied; nodata ``NODATA``; wavelengths/FWHM in band metadata;
``ACQUISITION_DATE`` in dataset metadata). No noise, gains, misregistration or clouds are added:
this is the idealised protocol users validate their own data with.

Memory: each date is processed in strips of rows (``strip_rows`` coarse rows), never whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
from osgeo import gdal

from ..core.callbacks import Callbacks, callbacks_or_default
from ..core.degrade import degrade_strips
from ..core.grid import Grid, coarse_grid
from ..core.vocabulary import ROLES, parse_date_text
from ..mdd.format import NODATA
from ..mdd.geotiff import GeoTiffWriter, WriterGroup, spectral_band_metadata
from ..mdd.raster_io import RasterInputError, inspect_layer
from .srf import (
    SpectralResponse,
    SRFError,
    list_presets,
    load_srf_file,
    preset_info,
    resample_weights,
    sensor_preset,
    subset,
    uncovered_bands,
)

gdal.UseExceptions()

ROLE_FILES = {"fine_ms": "fine_ms_{date}.tif", "dense_ms": "dense_ms_{date}.tif", "hs": "hs_{date}.tif"}


class SimulateError(ValueError):
    """The simulation cannot run as asked; the message says what to change."""


def load_response(spec: str) -> tuple:
    """(SpectralResponse, short label for logs, sensor description for metadata) from a preset
    name or an SRF file path."""
    spec = str(spec).strip()
    if os.path.isfile(spec):
        return load_srf_file(spec), os.path.basename(spec), f"responses of {os.path.basename(spec)}"
    if spec in list_presets():
        return sensor_preset(spec), spec, preset_info(spec).get("sensor", spec)
    raise SimulateError(
        f"'{spec}' is neither a spectral response file nor a sensor preset: give a "
        f"file like srf/GF6_WFV.txt or one of {', '.join(list_presets())}."
    )


def _read_rows(ds, info, r0, r1) -> np.ndarray:
    """(band, rows, col) float32 physical values, NaN at nodata."""
    a = ds.ReadAsArray(0, r0, info.width, r1 - r0).astype(np.float32)
    a = a.reshape(info.band_count, r1 - r0, info.width)
    for b in range(info.band_count):
        nd = info.nodata[b]
        if nd is not None:
            a[b][a[b] == np.float32(nd)] = np.nan
        if info.scale[b] != 1.0 or info.offset[b] != 0.0:
            a[b] = a[b] * np.float32(info.scale[b]) + np.float32(info.offset[b])
    return a


def _choose_dates(role, requested, available) -> list:
    if requested is None:
        return list(available)
    dates = [parse_date_text(d) or str(d) for d in requested]
    unknown = [d for d in dates if d not in available]
    if unknown:
        raise SimulateError(
            f"No HS layer is dated {', '.join(unknown)} (asked for {role}); the HS dates are {', '.join(available)}."
        )
    return sorted(set(dates))


def _layers(hs_paths, dates) -> list:
    if not hs_paths:
        raise SimulateError("Give at least one fine HS layer.")
    if dates is not None and len(dates) != len(hs_paths):
        raise SimulateError(f"Give one date per HS layer: {len(hs_paths)} layers, {len(dates)} dates.")
    infos = []
    for i, path in enumerate(hs_paths):
        try:
            info = inspect_layer(path)
        except RasterInputError as e:
            raise SimulateError(str(e)) from None
        if dates is not None:
            info.date = parse_date_text(dates[i])
            if info.date is None:
                raise SimulateError(f"'{dates[i]}' is not a date: write dates as YYYY-MM-DD.")
        if info.date is None:
            raise SimulateError(
                f"Layer '{info.name}' has no date in its metadata or name: name it "
                "with its date (e.g. hs_2022-07-24.tif) or give DATES."
            )
        if info.wavelengths is None:
            raise SimulateError(
                f"Layer '{info.name}' has no band wavelengths: the simulation needs "
                "them (GDAL band metadata 'wavelength' or an ENVI header)."
            )
        infos.append(info)
    seen = {}
    for info in infos:
        if info.date in seen:
            raise SimulateError(
                f"Layers '{seen[info.date]}' and '{info.name}' share the date {info.date}: give one HS layer per date."
            )
        seen[info.date] = info.name
    return sorted(infos, key=lambda i: i.date)


def _usable_response(response, label, info, log) -> SpectralResponse:
    """Drops the sensor's bands that the HS range does not cover (with a log line)."""
    good = _good_hs_bands(info)
    wl = np.asarray(info.wavelengths)[good]
    fw = np.asarray(info.fwhm)[good] if info.fwhm else None
    missing = uncovered_bands(wl, response, fw)
    if len(missing) == response.n_bands:
        raise SimulateError(
            f"The HS of '{info.name}' ({wl.min():.0f}–{wl.max():.0f} nm) covers none "
            f"of the bands of {label}: choose another sensor."
        )
    if missing:
        log(
            f"{label}: band(s) {', '.join(missing)} lie outside the HS range "
            f"{wl.min():.0f}–{wl.max():.0f} nm and are left out."
        )
        response = subset(response, [n for n in response.names if n not in missing])
    return response


def _good_hs_bands(info) -> np.ndarray:
    """Indices of the HS bands to use for spectral resampling: all but ENVI bad bands (bbl 0)."""
    if info.bbl:
        return np.array([b for b in range(info.band_count) if info.bbl[b]], dtype=int)
    return np.arange(info.band_count)


def simulate_sensors(
    hs_paths: Iterable[str],
    output_folder: str,
    fine_ms_sensor: str = "zy1_02d_vnic",
    dense_ms_sensor: str = "gf6_wfv",
    dense_factor: int = 2,
    hs_factor: int = 3,
    psf_sigma: float | None = None,
    dates: Sequence[str] | None = None,
    fine_ms_dates: Sequence[str] | None = None,
    dense_ms_dates: Sequence[str] | None = None,
    hs_dates: Sequence[str] | None = None,
    strip_rows: int = 64,
    callbacks: Callbacks | None = None,
) -> dict:
    """Writes the simulated layers; returns {role: [paths in date order]}.

    ``hs_paths``: fine HS rasters, one per date (dates from metadata or file name unless ``dates``
    gives one per layer). ``*_sensor``: a preset name (resources/sensors) or an SRF file.
    ``dense_factor``/``hs_factor``: integer pixel-size ratios to the HS grid. ``psf_sigma``: PSF
    standard deviation in fine pixels (default: FWHM = one coarse pixel). ``*_dates``: the dates
    each role is made for (None: every date; an empty list: none). Raises ``Canceled`` (no file
    written) when the user cancels.
    """
    cb = callbacks_or_default(callbacks)
    log, progress = cb.log, cb.progress
    for name, f in (("dense MS factor", dense_factor), ("HS factor", hs_factor)):
        if int(f) != f or f < 1:
            raise SimulateError(f"The {name} must be a whole number >= 1, got {f}.")
    if psf_sigma is not None and psf_sigma < 0:
        raise SimulateError(f"The PSF sigma must be >= 0 fine pixels, got {psf_sigma}.")
    infos = _layers(list(hs_paths), dates)
    available = [i.date for i in infos]
    role_dates = {
        "fine_ms": _choose_dates("fine MS", fine_ms_dates, available),
        "dense_ms": _choose_dates("dense MS", dense_ms_dates, available),
        "hs": _choose_dates("HS", hs_dates, available),
    }
    if not any(role_dates.values()):
        raise SimulateError("No date was chosen for any role: leave a role's dates empty to make it on every date.")
    try:
        fine_resp, fine_label, fine_sensor = load_response(fine_ms_sensor)
        dense_resp, dense_label, dense_sensor = load_response(dense_ms_sensor)
    except SRFError as e:
        raise SimulateError(str(e)) from None
    os.makedirs(output_folder, exist_ok=True)
    jobs = [(info, role) for info in infos for role in ROLES if info.date in role_dates[role]]
    written = {r: [] for r in ROLE_FILES}
    with WriterGroup() as writers:  # renamed only when every file is complete
        for k, (info, role) in enumerate(jobs):
            cb.check("Simulation canceled: no file was written.")
            grid = Grid(info.crs_wkt, info.geotransform, info.width, info.height)
            if role == "hs":
                w = _simulate_one(
                    info,
                    grid,
                    None,
                    ("HS", "HS (input bands)"),
                    int(hs_factor),
                    psf_sigma,
                    output_folder,
                    role,
                    strip_rows,
                    log,
                )
            else:
                resp, label, sensor = (
                    (fine_resp, fine_label, fine_sensor)
                    if role == "fine_ms"
                    else (dense_resp, dense_label, dense_sensor)
                )
                factor = 1 if role == "fine_ms" else int(dense_factor)
                w = _simulate_one(
                    info,
                    grid,
                    _usable_response(resp, label, info, log),
                    (label, sensor),
                    factor,
                    psf_sigma,
                    output_folder,
                    role,
                    strip_rows,
                    log,
                )
            writers.append(w)
            written[role].append(w.path)
            progress((k + 1) / len(jobs), f"{role} {info.date}")
    return written


def _simulate_one(info, grid, response, names, factor, psf_sigma, folder, role, strip_rows, log):
    """Writes one role's image of one date (under a temporary name); returns its open writer.
    ``names``: (short label for the log, sensor description for the metadata)."""
    label, sensor = names
    ds = gdal.Open(info.source)
    if response is not None:
        good = _good_hs_bands(info)
        weights = resample_weights(
            np.asarray(info.wavelengths)[good], response, np.asarray(info.fwhm)[good] if info.fwhm else None
        )
        wl, fw, names = response.centres(), response.fwhm(), list(response.names)
        extra = [{} for _ in names]
    else:
        good, weights = None, None
        wl, fw = info.wavelengths, info.fwhm
        names = [f"band {b + 1}" for b in range(info.band_count)]
        extra = [{"bbl": str(info.bbl[b])} if info.bbl else {} for b in range(info.band_count)]
    out_grid = coarse_grid(grid, factor) if factor > 1 else grid
    if out_grid.width < 1 or out_grid.height < 1:
        raise SimulateError(
            f"Layer '{info.name}' ({info.width}x{info.height} px) is smaller than one "
            f"pixel at factor {factor}: use a smaller factor."
        )
    band_md = spectral_band_metadata(wl, fw)
    for md, e in zip(band_md, extra):
        md.update(e, date=info.date)
    desc = [f"{n} ({w:.0f} nm)" if response is not None else f"{n} ({w:g} nm)" for n, w in zip(names, wl)]
    md = {
        "ACQUISITION_DATE": info.date,
        "STSFUSION_ROLE": role,
        "SENSOR": sensor,
        "SIMULATED": "yes",
        "SIMULATED_FROM": os.path.basename(info.source),
        "DEGRADATION_FACTOR": str(factor),
    }
    writer = GeoTiffWriter(
        os.path.join(folder, ROLE_FILES[role].format(date=info.date)),
        out_grid,
        len(names),
        gdal.GDT_Float32,
        NODATA,
        desc,
        band_md,
        md,
    )
    try:

        def rows(r0, r1):
            a = _read_rows(ds, info, r0, r1)
            if weights is None:
                return a
            return _apply_weights(a[good], weights)

        if factor == 1:
            step = max(1, int(strip_rows))
            blocks = ((r0, rows(r0, min(info.height, r0 + step))) for r0 in range(0, info.height, step))
        else:
            blocks = degrade_strips(rows, info.height, factor, psf_sigma, strip_rows)
        for r0, block in blocks:
            out = np.where(np.isfinite(block), block, np.float32(NODATA)).astype(np.float32)
            writer.write(out, (0, r0))
    except BaseException:
        writer.abort()
        raise
    log(
        f"{role} {info.date}: {len(names)} band(s), {out_grid.width}x{out_grid.height} px "
        f"({label}{f', x{factor:d}' if factor > 1 else ''})."
    )
    return writer


def _apply_weights(hs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """spectral_resample with precomputed weights: NaN in a used band gives NaN."""
    out = np.empty((weights.shape[0],) + hs.shape[1:], dtype=np.float32)
    for b, w in enumerate(weights):
        used = np.flatnonzero(w > 0)
        out[b] = np.tensordot(w[used].astype(np.float32), hs[used], axes=(0, 0))
    return out
