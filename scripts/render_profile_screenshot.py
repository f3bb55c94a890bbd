#!/usr/bin/env python3
"""Renders the spectral-temporal profile dock, offscreen, for a fused output folder (+ its MDD).

    source scripts/env.sh
    .venv/bin/python scripts/render_profile_screenshot.py demo_output/fused \\
        --mdd demo_output/mdd.json --out docs/profile.png

Without --pixel the pixel is chosen from the data: among pixels valid on every fused date, the one
whose value at the chosen wavelength varies over time at the 90th percentile of all pixels (a
clearly changing but typical pixel, not an outlier). The dock is the one users get in QGIS.
"""

import argparse
import glob
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, ".build", "plugins")
MAX_SCAN = 256  # the pixel search reads each date's band at most this many pixels a side


def _plugin_import_path():
    os.makedirs(PLUGINS, exist_ok=True)
    if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):
        os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))
    sys.path.insert(0, PLUGINS)


def pick_pixel(paths, wavelength):
    """(col, row) of a pixel whose value at ``wavelength`` changes much over time, typical of the scene."""
    from osgeo import gdal

    from stsfusion.model.mdd.geotiff import read_band_wavelengths

    stack = []
    for p in paths:
        ds = gdal.Open(p)
        wl, _ = read_band_wavelengths(ds)
        band = ds.GetRasterBand(int(np.argmin(np.abs(np.asarray(wl) - wavelength))) + 1)
        step = max(1, int(np.ceil(max(ds.RasterXSize, ds.RasterYSize) / MAX_SCAN)))
        bw, bh = -(-ds.RasterXSize // step), -(-ds.RasterYSize // step)
        a = band.ReadAsArray(buf_xsize=bw, buf_ysize=bh, resample_alg=gdal.GRIORA_NearestNeighbour)
        a = a.astype(np.float64)
        nodata = band.GetNoDataValue()
        if nodata is not None:
            a[a == nodata] = np.nan
        stack.append(a)
    values = np.stack(stack)
    spread = np.where(np.isfinite(values).all(axis=0), np.nanstd(values, axis=0), np.nan)
    if not np.isfinite(spread).any():
        raise SystemExit("No pixel is valid on every fused date: give --pixel COL ROW.")
    target = np.nanpercentile(spread, 90)
    r, c = np.unravel_index(np.nanargmin(np.abs(spread - target)), spread.shape)
    # Back to full resolution: the centre of the (step x step) block the nearest-neighbour read sampled.
    ds = gdal.Open(paths[0])
    sx, sy = ds.RasterXSize / values.shape[2], ds.RasterYSize / values.shape[1]
    return int((c + 0.5) * sx), int((r + 0.5) * sy)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="folder of fused_YYYY-MM-DD.tif files")
    ap.add_argument("--mdd", help="the MDD manifest (.json) whose inputs are shown as markers")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--prefix", default="fused", help="series file prefix (default fused; or a baseline)")
    ap.add_argument("--pixel", nargs=2, type=int, metavar=("COL", "ROW"), help="pixel to show")
    ap.add_argument("--wavelength", type=float, default=865.0, help="wavelength followed over time, nm")
    ap.add_argument("--size", nargs=2, type=int, default=(980, 860), metavar=("W", "H"))
    args = ap.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    _plugin_import_path()
    paths = sorted(glob.glob(os.path.join(args.folder, f"{args.prefix}_????-??-??.tif")))
    if not paths:
        raise SystemExit(f"No {args.prefix}_YYYY-MM-DD.tif in {args.folder}.")

    from osgeo import gdal
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    app = QgsApplication([], True)
    app.initQgis()
    from stsfusion.ui.profile_dock import ProfileDock, nm

    col, row = args.pixel if args.pixel else pick_pixel(paths, args.wavelength)
    gt = gdal.Open(paths[0]).GetGeoTransform()
    x, y = gdal.ApplyGeoTransform(gt, col + 0.5, row + 0.5)
    layer = QgsRasterLayer(paths[-1], os.path.splitext(os.path.basename(paths[-1]))[0])
    QgsProject.instance().addMapLayer(layer)

    dock = ProfileDock()
    dock.resize(*args.size)
    dock.show()
    dock.set_layer(layer)
    if args.mdd:
        dock.set_manifest(os.path.abspath(args.mdd))
    profile = dock.show_point((x, y), None)  # None: the point is in the layer's own CRS
    if profile is None:
        raise SystemExit(f"Nothing to plot: {dock.status.text()}")
    dock.set_wavelength(args.wavelength)
    tmp = args.out + ".part.png"
    if not dock.save_png(tmp):
        raise SystemExit(f"Could not write {args.out}.")
    os.replace(tmp, args.out)
    print(
        f"{args.out}: pixel (col {col}, row {row}) of {len(paths)} {args.prefix} date(s), "
        f"{len(profile.observed)} observed input image(s), {nm(dock.current_wavelength())} nm over time"
    )
    dock.close()
    del dock
    QgsProject.instance().removeAllMapLayers()
    app.exitQgis()


if __name__ == "__main__":
    main()
