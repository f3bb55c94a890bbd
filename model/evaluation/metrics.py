"""Accuracy of a fused image against a reference: CC, SAM, PSNR, SSIM, ERGAS, RMSE.

Inputs are (band, row, col) arrays in the same units, NaN where invalid. Every metric uses the
pixels valid (finite) in every band of both images, so all metrics see the same pixels.

Definitions (issue 5):
- CC: mean over bands of the Pearson correlation of fused and reference band;
- SAM: mean over pixels of the angle between the two spectra, degrees (pixels where either
  spectrum is all zeros have no angle and are left out);
- PSNR: mean over bands of 10·log10(peak_b² / MSE_b), peak_b = the reference band's maximum;
- SSIM: mean over bands of SSIM (Wang et al. 2004): Gaussian window σ = 1.5 truncated to
  11×11 px, K1 = 0.01, K2 = 0.03, data range = the reference band's max − min, population
  (co)variances; the SSIM map is averaged over pixels whose whole window is valid (with no
  invalid pixels this equals scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)``, which also drops a 5 px border);
- ERGAS = 100·(1/RATIO)·sqrt(mean_b (RMSE_b / mean_b)²), mean_b = the reference band's mean and
  RATIO = coarse pixel size / fine pixel size (e.g. 3 for 30 m HS fused to 10 m);
- RMSE: over all bands and pixels (per band: over that band's pixels).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..core.callbacks import Callbacks, callbacks_or_default
from ..mdd.geotiff import read_band_wavelengths, write_text_atomic

if TYPE_CHECKING:
    from osgeo import gdal

CANCELED = "Assessment canceled: no file was written."
METRICS = ("CC", "SAM", "PSNR", "SSIM", "ERGAS", "RMSE")
BAND_METRICS = ("CC", "PSNR", "SSIM", "RMSE")
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5), as in Wang's code and scikit-image
SSIM_K1, SSIM_K2 = 0.01, 0.03


class MetricsError(ValueError):
    """Images that cannot be compared; the message says why and what to do."""


def _band_cc(f: np.ndarray, r: np.ndarray) -> float:
    fd, rd = f - f.mean(), r - r.mean()
    denom = np.sqrt((fd * fd).sum() * (rd * rd).sum())
    return float((fd * rd).sum() / denom) if denom > 0 else float("nan")


def _psnr(mse: float, peak: float) -> float:
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))


def _gaussian_window_1d() -> np.ndarray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _filter_valid(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation with ``w`` on both axes, 'valid' region only (window inside)."""
    n = w.size
    rows = sum(w[t] * a[t : a.shape[0] - n + 1 + t] for t in range(n))
    return sum(w[t] * rows[:, t : a.shape[1] - n + 1 + t] for t in range(n))


def ssim_band(f: np.ndarray, r: np.ndarray, valid: np.ndarray, data_range: float) -> float:
    """Mean SSIM of one band over pixels whose 11×11 window is entirely valid (NaN if none)."""
    n = 2 * SSIM_RADIUS + 1
    if f.shape[0] < n or f.shape[1] < n:
        return float("nan")
    w = _gaussian_window_1d()
    x = np.where(valid, f, 0.0).astype(np.float64)
    y = np.where(valid, r, 0.0).astype(np.float64)
    full = _filter_valid(valid.astype(np.float64), np.ones(n) / n) > 1 - 1e-9
    if not full.any():
        return float("nan")
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    vx = _filter_valid(x * x, w) - mx * mx
    vy = _filter_valid(y * y, w) - my * my
    cxy = _filter_valid(x * y, w) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[full].mean())


def assess_bands(
    n_bands: int,
    read_band: Callable[[int], tuple[np.ndarray, np.ndarray]],
    ratio: float = 1.0,
    callbacks: Callbacks | None = None,
) -> dict:
    """Streams the metrics band by band, so memory holds a few (row, col) arrays, not the cube.

    ``read_band(b) -> (fused_2d, reference_2d)`` (NaN where invalid) is called twice per band:
    once to find the pixels valid in every band, once to measure. SAM is accumulated from
    per-band dot products and norms. Bands invalid everywhere in either image (e.g. bad
    water-vapour bands) are skipped. Returns {"overall": {metric: value}, "bands": [per used band
    {band (1-based), CC, PSNR, SSIM, RMSE, reference_mean}], "valid_pixels": n,
    "skipped_bands": [1-based]}. Raises ``Canceled`` when the user cancels.
    """
    cb = callbacks_or_default(callbacks)
    if ratio <= 0:
        raise MetricsError(f"RATIO must be > 0 (coarse / fine pixel size), got {ratio}.")
    valid, used = None, []
    for b in range(n_bands):
        f, r = read_band(b)
        if f.shape != r.shape:
            raise MetricsError(
                f"Fused band {b + 1} {f.shape} and reference band {r.shape} differ in "
                "size: put both images on one grid."
            )
        ok = np.isfinite(f) & np.isfinite(r)
        if ok.any():  # a band invalid everywhere (e.g. a bad water-vapour band) is skipped
            used.append(b)
            valid = ok if valid is None else valid & ok
        cb.progress(0.3 * (b + 1) / n_bands, "finding valid pixels")
        cb.check(CANCELED)
    n_valid = 0 if valid is None else int(valid.sum())
    if n_valid == 0:
        raise MetricsError(
            "No pixel is valid in both the fused image and the reference: check that "
            "they overlap and that their nodata values are set correctly."
        )
    bands, sq_rel, sse_total = [], [], 0.0
    dot = np.zeros(n_valid)
    nf2 = np.zeros(n_valid)
    nr2 = np.zeros(n_valid)
    for i, b in enumerate(used):
        f2, r2 = read_band(b)
        f = f2[valid].astype(np.float64)
        r = r2[valid].astype(np.float64)
        dot += f * r
        nf2 += f * f
        nr2 += r * r
        mse = float(np.mean((f - r) ** 2))
        sse_total += mse * n_valid
        r_mean = float(r.mean())
        sq_rel.append(mse / (r_mean * r_mean) if r_mean != 0 else float("inf"))
        bands.append(
            {
                "band": b + 1,
                "CC": _band_cc(f, r),
                "PSNR": _psnr(mse, float(r.max())),
                "SSIM": ssim_band(f2, r2, valid, float(r.max() - r.min())),
                "RMSE": float(np.sqrt(mse)),
                "reference_mean": r_mean,
            }
        )
        cb.progress(0.3 + 0.7 * (i + 1) / len(used), f"band {b + 1} of {n_bands}")
        cb.check(CANCELED)
    ok = (nf2 > 0) & (nr2 > 0)  # an all-zero spectrum has no angle
    cos = np.clip(dot[ok] / np.sqrt(nf2[ok] * nr2[ok]), -1.0, 1.0)
    overall = {
        "CC": float(np.mean([b["CC"] for b in bands])),
        "SAM": float(np.degrees(np.arccos(cos)).mean()) if ok.any() else float("nan"),
        "PSNR": float(np.mean([b["PSNR"] for b in bands])),
        "SSIM": float(np.mean([b["SSIM"] for b in bands])),
        "ERGAS": float(100.0 / ratio * np.sqrt(np.mean(sq_rel))),
        "RMSE": float(np.sqrt(sse_total / (n_valid * len(used)))),
    }
    skipped = [b + 1 for b in range(n_bands) if b not in used]
    return {"overall": overall, "bands": bands, "valid_pixels": n_valid, "skipped_bands": skipped}


def assess(fused: np.ndarray, reference: np.ndarray, ratio: float = 1.0) -> dict:
    """All metrics of in-memory (band, row, col) or (row, col) arrays; see ``assess_bands``."""
    fused = np.asarray(fused)
    reference = np.asarray(reference)
    if fused.ndim == 2:
        fused, reference = fused[None], reference[None]
    if fused.shape != reference.shape:
        raise MetricsError(
            f"Fused image {fused.shape} and reference {reference.shape} differ in "
            "shape (bands, rows, cols): put them on one grid with the same bands."
        )
    return assess_bands(fused.shape[0], lambda b: (fused[b], reference[b]), ratio)


# ---- rasters on disk: alignment, CSV table, HTML report ------------------------------------


def _open(path: str, label: str):
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        return gdal.Open(path)
    except RuntimeError as e:
        raise MetricsError(f"The {label} raster {path} cannot be read by GDAL ({e}): choose a raster file.") from None


def _same_grid(a, b) -> bool:
    from ..mdd.raster_io import same_crs

    if (a.RasterXSize, a.RasterYSize) != (b.RasterXSize, b.RasterYSize):
        return False
    tolerance = 1e-6 * abs(b.GetGeoTransform()[1])
    if not np.allclose(a.GetGeoTransform(), b.GetGeoTransform(), rtol=0, atol=tolerance):
        return False
    wa, wb = a.GetProjection(), b.GetProjection()
    return (not wa and not wb) or (bool(wa) and bool(wb) and same_crs(wa, wb))


def align_to_reference(
    fused_ds: gdal.Dataset, reference_ds: gdal.Dataset, log: Callable[[str], None] | None = None
) -> gdal.Dataset:
    """The fused raster on the reference's grid: itself when the grids match, else an in-memory
    bilinear GDAL warp (exact at whole-pixel shifts) with NaN outside and at nodata."""
    from osgeo import gdal

    if _same_grid(fused_ds, reference_ds):
        return fused_ds
    if not fused_ds.GetProjection() or not reference_ds.GetProjection():
        raise MetricsError(
            "The fused and reference rasters lie on different grids and one has no "
            "CRS, so they cannot be aligned: assign the CRS, or give rasters on one grid."
        )
    gt = reference_ds.GetGeoTransform()
    nodata = [fused_ds.GetRasterBand(b + 1).GetNoDataValue() for b in range(fused_ds.RasterCount)]
    if log:
        log("The fused raster is on another grid than the reference: warping it onto the reference grid (bilinear).")
    return gdal.Warp(
        "",
        fused_ds,
        format="MEM",
        dstSRS=reference_ds.GetProjection(),
        outputBounds=(gt[0], gt[3] + gt[5] * reference_ds.RasterYSize, gt[0] + gt[1] * reference_ds.RasterXSize, gt[3]),
        width=reference_ds.RasterXSize,
        height=reference_ds.RasterYSize,
        resampleAlg="bilinear",
        outputType=gdal.GDT_Float32,
        srcNodata=nodata[0] if nodata[0] is not None else None,
        dstNodata=np.nan,
    )


def _read_physical(band, scaling_band=None) -> np.ndarray:
    """float64 values with the band scale/offset (of ``scaling_band`` if given) applied, NaN at
    nodata."""
    a = band.ReadAsArray().astype(np.float64)
    nd = band.GetNoDataValue()
    if nd is not None and np.isfinite(nd):
        a[a == nd] = np.nan
    scaling_band = scaling_band or band
    scale, offset = scaling_band.GetScale(), scaling_band.GetOffset()
    if scale not in (None, 0, 1) or offset not in (None, 0):
        a = a * (scale if scale not in (None, 0) else 1.0) + (offset or 0.0)
    return a


def assess_rasters(
    fused_path: str,
    reference_path: str,
    ratio: float,
    output_table: str,
    output_report: str | None = None,
    callbacks: Callbacks | None = None,
) -> dict:
    """Metrics of a fused raster against a reference raster, written as CSV (and HTML).

    Grids are aligned by warping the fused raster onto the reference's; values are compared in
    physical units (each raster's band scale/offset applied). Returns ``assess_bands``' dict with
    "wavelengths" (nm or None) added. Raises ``Canceled`` (no file written) when the user cancels.
    """
    cb = callbacks_or_default(callbacks)
    log = cb.log
    fused_ds = _open(fused_path, "fused")
    ref_ds = _open(reference_path, "reference")
    if fused_ds.RasterCount != ref_ds.RasterCount:
        raise MetricsError(
            f"The fused raster has {fused_ds.RasterCount} bands and the reference "
            f"{ref_ds.RasterCount}: compare rasters with the same bands."
        )
    aligned = align_to_reference(fused_ds, ref_ds, log)
    wavelengths, _ = read_band_wavelengths(ref_ds)
    if wavelengths is None:
        wavelengths, _ = read_band_wavelengths(fused_ds)

    def read_band(b):
        cb.check(CANCELED)
        # a warp keeps the raw values: scale/offset always come from the fused file itself
        f = _read_physical(aligned.GetRasterBand(b + 1), fused_ds.GetRasterBand(b + 1))
        return f, _read_physical(ref_ds.GetRasterBand(b + 1))

    result = assess_bands(ref_ds.RasterCount, read_band, ratio, cb)
    result["wavelengths"] = wavelengths
    result["ratio"] = float(ratio)
    _write_atomic(output_table, table_csv(result))
    if output_report:
        try:
            _write_atomic(output_report, report_html(result, fused_path, reference_path))
        except BaseException:
            os.remove(output_table)
            raise
    return result


def table_csv(result: dict) -> str:
    """Per-band rows then an 'overall' row; empty cells where a metric is not per band."""
    wl = result.get("wavelengths")
    lines = ["band,wavelength_nm,CC,SAM_deg,PSNR_dB,SSIM,ERGAS,RMSE,valid_pixels"]
    for b in result["bands"]:
        w = f"{wl[b['band'] - 1]:g}" if wl else ""
        lines.append(
            f"{b['band']},{w},{b['CC']:.6g},,{b['PSNR']:.6g},{b['SSIM']:.6g},,{b['RMSE']:.6g},{result['valid_pixels']}"
        )
    o = result["overall"]
    lines.append(
        f"overall,,{o['CC']:.6g},{o['SAM']:.6g},{o['PSNR']:.6g},{o['SSIM']:.6g},"
        f"{o['ERGAS']:.6g},{o['RMSE']:.6g},{result['valid_pixels']}"
    )
    return "\n".join(lines) + "\n"


def _band_plot_png(result: dict) -> str:
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wl = result.get("wavelengths")
    x = [wl[b["band"] - 1] for b in result["bands"]] if wl else [b["band"] for b in result["bands"]]
    fig = Figure(figsize=(8.0, 5.5), dpi=100)
    FigureCanvasAgg(fig)  # Agg only: no pyplot, no Qt, the QGIS session's backend is untouched
    for i, (key, label) in enumerate((("CC", "CC"), ("PSNR", "PSNR (dB)"), ("SSIM", "SSIM"), ("RMSE", "RMSE"))):
        ax = fig.add_subplot(2, 2, i + 1)
        y = [b[key] if np.isfinite(b[key]) else np.nan for b in result["bands"]]
        ax.plot(x, y, marker="." if len(x) < 60 else None, lw=1)
        ax.set_ylabel(label)
        ax.set_xlabel("wavelength (nm)" if wl else "band")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def report_html(result: dict, fused_path: str, reference_path: str) -> str:
    import html

    o = result["overall"]
    esc = html.escape
    rows = "".join(f"<tr><th>{k}</th><td>{o[k]:.4f}</td></tr>" for k in METRICS)
    skipped = result.get("skipped_bands") or []
    table = "\n".join(
        f"<tr>{''.join(f'<td>{c}</td>' for c in line.split(','))}</tr>"
        for line in table_csv(result).strip().splitlines()[1:]
    )
    header = "".join(f"<th>{c}</th>" for c in table_csv(result).splitlines()[0].split(","))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>STS Fusion accuracy</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>Accuracy of a fused image</h1>
<p>Fused: {esc(fused_path)}<br>Reference: {esc(reference_path)}<br>
Pixels valid in both: {result["valid_pixels"]}; bands compared: {len(result["bands"])}
{f"; bands skipped (no valid pixel): {esc(', '.join(map(str, skipped)))}" if skipped else ""};
ERGAS ratio: {result.get("ratio", 1.0):g}.</p>
<h2>Overall</h2><table>{rows}</table>
<p>CC, PSNR (dB, peak = reference band maximum) and SSIM (Wang et al. 2004, Gaussian σ = 1.5,
K1 = 0.01, K2 = 0.03) are means over bands; SAM (degrees) is the mean over pixels; ERGAS =
100/ratio·sqrt(mean over bands of (RMSE/mean)²); RMSE over all bands and pixels.</p>
<h2>Per band</h2><img alt="metrics per band" src="data:image/png;base64,{_band_plot_png(result)}">
<table><tr>{header}</tr>
{table}</table></body></html>
"""


def _write_atomic(path: str, text: str):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MetricsError(f"The folder {folder} does not exist: choose an output in an existing folder.")
    write_text_atomic(path, text)
