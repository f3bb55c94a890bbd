#!/usr/bin/env python3
"""Writes the bundled demo sample (resources/sample/) and, on request, its withheld truth.

    python scripts/make_sample.py                       # the inputs, into resources/sample/
    python scripts/make_sample.py --truth DIR           # only the fine HS truth, into DIR
    python scripts/make_sample.py --out DIR --truth DIR2

The sample is simulated (model/synthetic_scene.py, model/scene_series.py) from a seed, so the
truth (7 dates x 80 bands x 96 x 96 px) need not be committed: ``--truth`` regenerates it
exactly and checks it against the statistics recorded in sample.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, ".build", "plugins")
if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):
    os.makedirs(PLUGINS, exist_ok=True)
    os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))
sys.path.insert(0, PLUGINS)

from stsfusion.model.core.grid import Grid
from stsfusion.model.simulation import sensors as sim_sensors
from stsfusion.model.simulation import truth as sim_truth
from stsfusion.model.simulation import writing as sim_writing
from stsfusion.model.simulation.synthetic_scene import synthetic_scene

SEED = 2022
SIZE = 96  # fine grid, pixels
PIXEL_M = 10.0
# WGS 84 / UTM 50N, near the paper's Dataset I (N37.5 E116.7); the content is synthetic.
EPSG = 32650
ORIGIN = (473000.0, 4151000.0)
START, STEP_DAYS = "2022-04-10", 25
HS_INDICES = (0, 2, 3, 6)
DEFAULT_OUT = os.path.join(ROOT, "resources", "sample")


def sample_grid() -> Grid:
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    return Grid(srs.ExportToWkt(), (ORIGIN[0], PIXEL_M, 0.0, ORIGIN[1], 0.0, -PIXEL_M), SIZE, SIZE)


def simulate(seed: int = SEED):
    """(scene, truth, design, images): everything the sample is made of, deterministic."""
    scene = synthetic_scene(SIZE, SIZE, seed=seed)
    dates = sim_truth.season_dates(START, 7, STEP_DAYS)
    truth = sim_truth.simulate_truth(
        scene.hs,
        scene.wavelengths,
        dates,
        seed=seed,
        parcels=scene.parcels,
        unmixing=sim_truth.unmixing_from_scene(scene),
    )
    design = sim_sensors.SeriesDesign.paper(dates, HS_INDICES)
    sensors = sim_sensors.default_sensors(scene.wavelengths, scene.fwhm)
    images = sim_sensors.simulate_inputs(truth, scene.wavelengths, scene.fwhm, design, sensors, seed=seed)
    bbl = [{"bbl": "0" if bad else "1"} for bad in scene.bad_bands]
    for im in images:
        if im.role == "hs":
            im.extra["band_md"] = bbl
    return scene, truth, design, images


def truth_stats(truth) -> dict:
    """Per-date mean and std of the truth as stored (int16 DN), to check a regenerated truth."""
    out = {}
    for t, date in enumerate(truth.dates):
        dn = np.round(truth.values[t] / sim_writing.SCALE)
        out[date] = [round(float(dn.mean()), 3), round(float(dn.std()), 3)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help=f"folder for the inputs (default {DEFAULT_OUT} unless --truth is given alone)")
    ap.add_argument("--truth", help="folder for the withheld fine HS truth (truth_hs_<date>.tif)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    out = args.out or (None if args.truth else DEFAULT_OUT)
    t0 = time.time()
    scene, truth, design, images = simulate(args.seed)
    grid = sample_grid()
    if out:
        files = sim_writing.write_inputs(out, images, grid, {"SAMPLE": "STS Fusion demo sample (synthetic)"})
        summary = sim_writing.series_summary(design, images, files, grid, scene.wavelengths)
        summary.update(
            seed=args.seed,
            crs=f"EPSG:{EPSG}",
            generator="scripts/make_sample.py",
            truth_command="python scripts/make_sample.py --truth DIR",
            truth_files=[f"truth_hs_{d}.tif" for d in design.dates],
            truth_stats_dn=truth_stats(truth),
            no_hs_dates=[d for d in design.dates if d not in design.role_dates["hs"]],
        )
        sim_writing.write_json(os.path.join(out, "sample.json"), summary)
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(
            f"sample inputs: {sum(len(v) for v in files.values())} GeoTIFFs in {out} "
            f"({size / 1e6:.2f} MB with sample.json and README)"
        )
    if args.truth:
        names = sim_writing.write_truth(
            args.truth,
            truth,
            grid,
            scene.wavelengths,
            scene.fwhm,
            {"SAMPLE": "STS Fusion demo sample (synthetic): withheld truth"},
            [{"bbl": "0" if b else "1"} for b in scene.bad_bands],
        )
        print(f"sample truth: {len(names)} GeoTIFFs in {args.truth}")
        recorded = _recorded_stats(out or DEFAULT_OUT)
        if recorded:
            now = truth_stats(truth)
            bad = [d for d in now if d not in recorded or not np.allclose(now[d], recorded[d], rtol=1e-3, atol=0.5)]
            if bad:
                print(
                    f"WARNING: the regenerated truth differs from the one the sample was made with on "
                    f"{', '.join(bad)}: regenerate the sample (python scripts/make_sample.py).",
                    file=sys.stderr,
                )
                return 1
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def _recorded_stats(folder):
    import json

    path = os.path.join(folder, "sample.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("truth_stats_dn")


if __name__ == "__main__":
    sys.exit(main())
