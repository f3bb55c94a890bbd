"""Gaps of the dense MS filled from the rest of the date (model/core/gap_fill.py), checked on the inputs
alone: on every dense MS date of each scene's MDD, clouds are put where the image is observed (discs
covering about 15 % of its valid pixels, 3 draws), the fill is fitted on the rest, and what it puts
under the clouds is compared with what the image observed there. Against the interpolation in time
alone (``calendar.fill_in_time``), per scene: RMSE (reflectance), CC (per band over the pixels
under the clouds, mean over bands) and SAM (the dense bands' spectral angle, mean over those pixels), means over dates and draws. No truth and no held-out date is read.

    .venv/bin/python benchmarks/gap_fill.py [--scenes same_day,...] [--k 2,4,6]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generality as g  # first: it puts the plugin on the import path

from stsfusion.model.core import gap_fill
from stsfusion.model.core.calendar import fill_in_time
from stsfusion.model.core.vocabulary import day_number
from stsfusion.model.mdd.format import MDD, read_values

DRAWS, COVER = 3, 0.15


def _clouds(valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Discs on observed pixels covering about COVER of them."""
    h, w = valid.shape
    cloud = np.zeros_like(valid)
    yy, xx = np.mgrid[0:h, 0:w]
    ys, xs = np.nonzero(valid)
    while (cloud & valid).sum() < COVER * valid.sum():
        i = rng.integers(len(ys))
        r = rng.uniform(0.05, 0.12) * min(h, w)
        cloud |= (yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 < r**2
    return cloud & valid


def _scores(filled: np.ndarray, observed: np.ndarray, where: np.ndarray) -> tuple[float, float, float]:
    a, b = filled[:, where].astype(np.float64), observed[:, where].astype(np.float64)
    ok = np.isfinite(a).all(0) & np.isfinite(b).all(0)
    a, b = a[:, ok], b[:, ok]
    rmse = float(np.sqrt(np.mean((a - b) ** 2)))
    cc = float(np.mean([np.corrcoef(a[k], b[k])[0, 1] for k in range(len(a))]))
    cos = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    sam = float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())
    return rmse, cc, sam


def scene_scores(scene: str, ks: list) -> dict:
    mdd = MDD.open(g.prepare_scene(scene)["mdd"])
    values = read_values(mdd, "dense_ms")
    valid = mdd.read_mask("dense_ms") & np.isfinite(values).any(axis=1)
    days = [day_number(d) for d in mdd.roles["dense_ms"].dates]
    rng = np.random.default_rng(0)
    out = {"interpolation": []} | {f"regression, k={k}": [] for k in ks}
    for t, day in enumerate(days):
        for _ in range(DRAWS):
            cloud = _clouds(valid[t], rng)
            hidden = valid.copy()
            hidden[t] &= ~cloud
            out["interpolation"].append(_scores(fill_in_time(values, hidden, days, day)[0], values[t], cloud))
            for k in ks:
                fit = gap_fill.fit_gap_fill(values, hidden, days, day, k)
                filled = (
                    fit.apply(values, hidden, days)[0]
                    if fit is not None
                    else fill_in_time(values, hidden, days, day)[0]
                )
                out[f"regression, k={k}"].append(_scores(filled, values[t], cloud))
    return {name: np.mean(v, axis=0) for name, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=",".join(g.ALL_SCENES))
    ap.add_argument("--k", default="2,4,6", help="K_NEAREST values to compare")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    print("| Scene | Fill | RMSE under the clouds | CC under the clouds | SAM under the clouds (°) |")
    print("|---|---|---|---|---|")
    for scene in [s for s in args.scenes.split(",") if s]:
        for name, (rmse, cc, sam) in scene_scores(scene, ks).items():
            print(f"| {scene} | {name} | {rmse:.4f} | {cc:.4f} | {sam:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
