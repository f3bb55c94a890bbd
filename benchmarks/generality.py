#!/usr/bin/env python3
"""Generality protocol: one training configuration on several development scenes, never tuned on a
held-out date or on the held-out scene.

    .venv/bin/python benchmarks/generality.py --config NAME [--options '{"reference_in_prior": true}']
        [--pca 12] [--scenes same_day,offset_5_8,products_clear] [--report]

Each scene is a scenario of benchmarks/make_dataset.py (its dataset made by it or by
run_benchmark.py). Once per scene this script builds its MDD with Build MDD stack and runs and
assesses the two-stage and per-date regression baselines (benchmarks/output/generality/scenes/).
For the configuration (the network's design switches,
``model.nn.training.NETWORK_OPTIONS``, and the number of PCA components) this script trains the
network (kernel set 1, every other parameter at its default, seed 0, no self-check), fuses every
date, and assesses them against the withheld truth. Results: benchmarks/output/generality/<config>/<scene>.json. ``--report`` prints
the tables of every configuration run so far:
- dates without HS, split into the tuning date (what choices may look at) and the held-out dates;
- dates with HS, against the per-date regression.
Scenes differ in sensors and calendar: same_day (ZY1-02D-like fine MS, GF-6 WFV dense MS, EnMAP
HS, all on the same days), offset_5_8 (the same sensors, fine MS and HS 5-8 days from the dense
MS dates, on opposite sides), swir_offset_5_8 (offset_5_8's calendar; a fine MS with SWIR bands,
Landsat 8 OLI-like, and a GF-1 WFV dense MS), products_clear (Sentinel-2 L2A, Landsat 8 C2 L2 and
EnMAP L2A product layouts). products_clear is the held-out scene: it is reported, never used to
choose. prisma_ratio_1_6 (offset_1_3's calendar; a dense MS 1.6 times the grid, not an integer
ratio; a PRISMA-like HS) and prisma_ratio_2_4 (the same, the HS at 2.4 times the grid) were made
after the defaults were chosen: also reported, never chosen on; so were landsat_ratio_3 (Sentinel-2,
Landsat at 3 times the grid, EnMAP) and long_cloudy (the dense MS every 8-9 days, the fine MS on 8 dates,
cloudy on each). cloudy_fine (same_day with a cloudy fine MS on every date) is the development scene of
the choice only cloudy sources show (predictor.SOURCE_FILL), on its tuning date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
from osgeo import gdal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# run_benchmark puts the plugin on sys.path (ROOT/.build/plugins/stsfusion) as it is imported.
from run_benchmark import (
    METRICS,
    PRODUCT_MASK_BUFFER,
    ROOT,
    assess_folder,
    dataset_folder,
    mean_over,
    qgis_process,
)

from stsfusion.model.core.calendar import MAX_DAYS_APART, fine_for
from stsfusion.model.evaluation.metrics import assess_rasters
from stsfusion.model.fusion.baselines import BaselineError, run_baseline
from stsfusion.model.fusion.fuse import fuse_time_series
from stsfusion.model.fusion.self_check import train_with_self_check
from stsfusion.model.mdd.format import MDD
from stsfusion.model.nn import training

WORK = os.path.join(ROOT, "benchmarks", "output")
DEV_SCENES = ("same_day", "offset_5_8", "swir_offset_5_8")
HELD_OUT_SCENE = "products_clear"
# Scenes made after the defaults were chosen, reported and never chosen on: prisma_ratio_1_6 (a dense
# MS at a grid ratio that is not an integer, a PRISMA-like HS, offset_1_3's calendar) and
# prisma_ratio_2_4 (the same with the HS at 2.4 times the grid); landsat_ratio_3 (Sentinel-2, Landsat at
# 3 times the grid and EnMAP: the most common real combination, offset_1_3's calendar).
# long_cloudy (same_day's sensors; the dense MS every 8-9 days, the fine MS on 8 dates, cloudy on each)
# was made after them too.
LATER_SCENES = ("prisma_ratio_1_6", "prisma_ratio_2_4", "landsat_ratio_3", "long_cloudy")
# cloudy_fine (same_day with its fine MS cloudy on every date, 20-40 %): the development scene of the one
# choice that only cloudy sources can show (predictor.SOURCE_FILL), taken on its tuning date.
CLOUDY_DEV_SCENES = ("cloudy_fine",)
ALL_SCENES = DEV_SCENES + CLOUDY_DEV_SCENES + (HELD_OUT_SCENE,) + LATER_SCENES


def scene_kind(scene: str) -> str:
    if scene == HELD_OUT_SCENE:
        return "held-out scene"
    if scene in CLOUDY_DEV_SCENES:
        return "development scene, its fine MS cloudy"
    return "made after the choices, never chosen on" if scene in LATER_SCENES else "development scene"


DEFAULT_OPTIONS = dict(training.NETWORK_OPTIONS)


def _dataset(scene: str) -> tuple[dict, str]:
    dataset_dir = dataset_folder(WORK, scene)
    path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.exists(path):
        raise SystemExit(f"No dataset for {scene}: run benchmarks/make_dataset.py --scenario {scene} first.")
    with open(path) as f:
        dataset = json.load(f)
    dataset.setdefault(
        "hs_factor", round(dataset["roles"]["hs"]["pixel_size_m"] / dataset["fine_grid"]["pixel_size_m"], 6)
    )
    return dataset, dataset_dir


def prepare_scene(scene: str) -> dict:
    """The scene's MDD (Build MDD stack through qgis_process.bin, as run_benchmark.py builds it) and
    its baselines (two-stage, per-date regression), assessed once: generality/scenes/<scene>/."""
    work = os.path.join(WORK, "generality", "scenes", scene)
    summary = os.path.join(work, "scene.json")
    if os.path.exists(summary):
        with open(summary) as f:
            prepared = json.load(f)
        if "interpolation" not in prepared:  # scenes prepared before the interpolation baseline was added
            dataset, dataset_dir = _dataset(scene)
            prepared["interpolation"] = _assess_baseline(
                scene, "interpolation", prepared["mdd"], dataset, dataset_dir, work
            )
            with open(summary, "w") as f:
                json.dump(prepared, f, indent=1)
        return prepared
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    dataset, dataset_dir = _dataset(scene)
    keys = (("FINE_MS", "fine_ms"), ("DENSE_MS", "dense_ms"), ("HS", "hs"))
    if dataset.get("products"):
        params = [f"{k}_PRODUCTS={os.path.join(dataset_dir, p)}" for k, r in keys for p in dataset["products"][r]]
        params.append(f"MASK_BUFFER={PRODUCT_MASK_BUFFER}")
    else:
        params = [f"{k}={os.path.join(dataset_dir, n)}" for k, r in keys for n in dataset["roles"][r]["files"]]
    mdd = os.path.join(work, "mdd.json")
    qgis_process("stsfusion:buildmdd", params + [f"OUTPUT={mdd}"], os.path.join(work, "buildmdd.log"))
    baselines = {
        method: _assess_baseline(scene, method, mdd, dataset, dataset_dir, work)
        for method in ("interpolation", "two_stage", "per_date_regression")
    }
    keep = ("scenario", "calendar", "dates", "hs_dates", "no_hs_dates", "held_out_dates", "tuning_dates")
    result = {"scene": scene, "mdd": mdd, "dataset": {k: dataset[k] for k in keep if k in dataset}, **baselines}
    with open(summary, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _assess_baseline(scene: str, method: str, mdd: str, dataset: dict, dataset_dir: str, work: str) -> dict:
    """date -> metrics of baseline ``method`` on the scene's MDD; {} where it cannot run."""
    folder = os.path.join(work, method)
    try:
        paths = run_baseline(mdd, method, folder)
    except BaselineError as e:  # no HS date with a fine MS within MAX_DAYS_APART (offset calendars)
        print(f"  {scene}: no {method} ({e})", flush=True)
        return {}
    dates = [os.path.basename(p)[len(method) + 1 : -4] for p in paths]
    result = assess_folder(folder, method, dict(dataset, dates=dates), dataset_dir, work)
    shutil.rmtree(folder)
    return result


def _masked_copy(source: str, target: str, keep: np.ndarray) -> None:
    """``source`` GeoTIFF copied to ``target`` with every band's nodata where ``keep`` is False."""
    src = gdal.Open(source)
    out = gdal.GetDriverByName("GTiff").CreateCopy(target, src)
    for b in range(out.RasterCount):
        band = out.GetRasterBand(b + 1)
        nodata = band.GetNoDataValue()
        if nodata is None:  # a float output without nodata: NaN
            band.SetNoDataValue(float("nan"))
            nodata = float("nan")
        values = band.ReadAsArray()
        values[~keep] = nodata
        band.WriteArray(values)
    out.FlushCache()


def assess_where_regression(
    folder: str, prefix: str, dataset: dict, dataset_dir: str, work: str, mdd_path: str, dates
) -> dict:
    """date -> metrics of ``<prefix>_<date>.tif`` on the pixels the per-date regression has a value for
    (where the date's paired fine MS is valid): on its HS dates the network and the regression compared
    on the same pixels. (Each method's own assessment takes its own valid pixels: the regression has
    none under the fine MS's clouds, the network has them all.)"""
    mdd = MDD.open(mdd_path)
    fine, hs = mdd.roles["fine_ms"].dates, mdd.roles["hs"].dates
    out = {}
    for date in dates:
        paired = fine_for(fine, date, hs, MAX_DAYS_APART)
        if paired is None:
            continue
        masked = os.path.join(work, f"masked_{date}.tif")
        _masked_copy(os.path.join(folder, f"{prefix}_{date}.tif"), masked, mdd.read_mask("fine_ms", dates=[paired])[0])
        truth = os.path.join(dataset_dir, dataset["truth_dir"], f"truth_hs_{date}.tif")
        r = assess_rasters(masked, truth, dataset["hs_factor"], os.path.join(work, "assess_masked.csv"))
        out[date] = {m: float(r["overall"][m.upper()]) for m in METRICS}
        os.remove(masked)
    return out


def run_scene(
    scene: str,
    config: str,
    options: dict,
    pca: int,
    epochs: int,
    reuse: str | None = None,
    seed: int = 0,
    kernels: str = "1",
    reuse_scene: str | None = None,
    self_check: bool = False,
) -> dict:
    """``reuse_scene``: with ``reuse``, the scene whose model to fuse with (default ``scene``);
    ``self_check``: train as the Train algorithm does by default, the self-check inside the run."""
    prepared = prepare_scene(scene)
    dataset, dataset_dir = _dataset(scene)
    mdd = prepared["mdd"]
    work = os.path.join(WORK, "generality", config, scene)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model = os.path.join(work, "model.pt")
    training.NETWORK_OPTIONS = dict(DEFAULT_OPTIONS, **options)
    t0 = time.monotonic()
    checked = early = None  # the self-check's result and the early stop's probes, when the run makes them
    if reuse:  # the model another configuration trained: a fusion-time switch only
        shutil.copy(os.path.join(WORK, "generality", reuse, reuse_scene or scene, "model.pt"), model)
    elif self_check:
        summary = train_with_self_check(
            mdd, model, kernels=kernels, pca_components=pca, epochs=epochs, device="cpu", seed=seed
        )
        checked, early = summary["self_check"], summary["info"].get("early_stop")
    else:
        training.train_fusion_model(
            mdd, model, kernels=kernels, pca_components=pca, epochs=epochs, device="cpu", seed=seed
        )
    train_s = time.monotonic() - t0
    fuse_time_series(mdd, model, os.path.join(work, "fused"), device="cpu", scheduler="none")
    network = assess_folder(os.path.join(work, "fused"), "fused", dataset, dataset_dir, work)
    where_regression = assess_where_regression(
        os.path.join(work, "fused"), "fused", dataset, dataset_dir, work, mdd, prepared["per_date_regression"]
    )
    shutil.rmtree(os.path.join(work, "fused"))  # large, and assessed
    result = {
        "scene": scene,
        "config": config,
        "options": training.NETWORK_OPTIONS,
        "reused_model_of": reuse if not reuse_scene else f"{reuse}/{reuse_scene}",
        "pca_components": pca,
        "epochs": epochs,
        "seed": seed,
        "kernels": kernels,
        "train_s": round(train_s, 1),
        "self_check": checked,
        "early_stop": early,
        "network": network,
        "network_where_regression": where_regression,
        "per_date_regression": prepared["per_date_regression"],
        "two_stage": prepared["two_stage"],
        "interpolation": prepared["interpolation"],
        "dataset": prepared["dataset"],
    }
    with open(os.path.join(WORK, "generality", config, f"{scene}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def _row(name: str, m: dict) -> str:
    return f"| {name} | {m['cc']:.4f} | {m['sam']:.3f} | {m['psnr']:.2f} | {m['ssim']:.4f} |"


HEADER = """## Generality: one configuration, three scenes (issue 11)

`.venv/bin/python benchmarks/generality.py --config NAME [--options JSON] [--pca N] [--epochs N]
[--seed N]` per configuration, then `--report --write` (this section). Three simulated scenes on the
real EnMAP image (see the top of this file), which differ in sensors and calendar: **same_day**
(ZY1-02D-like fine MS, GF-6 WFV dense MS ×2, EnMAP HS ×3, fine MS and HS on the same 4 days),
**offset_5_8** (the same sensors; fine MS and HS 5–8 days from the dense MS dates, on opposite
sides, so no HS date has a fine MS within 10 days and there is no per-date regression) and
**products_clear** (Sentinel-2 L2A, Landsat 8 C2 L2 and EnMAP L2A product layouts read through
`*_PRODUCTS`). Choices were made on the development scenes' tuning date (2022-07-19) and HS dates
only; their held-out dates and the whole held-out scene (products_clear) were only reported.
Network: kernel set 1, every parameter at its default but those named, seed 0 unless named, trained
by `train_fusion_model` without the self-check (the j_ configurations with it), fused with the loop; baselines on the same MDD
(Build MDD stack): two-stage (STARFM-style + ridge MS→HS) and the per-date regression (each HS
date's own ridge from its fine MS to its HS). Metrics as above (model/metrics.py) against the
withheld truth. Configurations: a_defaults (the defaults before this work: now
`--epochs 30 --options '{"guided_change": false}'`), b_date_maps
(`date_maps`: one spectral map per HS date, blended in time), c_pca30 (30 PCA components),
d_outside_own / e_outside_nearest (the a_defaults models, plus what the PCA leaves out of the HS
image of the date itself / of the nearest HS date, shrunk by each band's SNR/(1+SNR); a fusion-time
switch tried at commit d8f044a and removed since), f_guided
(`guided_change`: the dense-MS change spread over the fine MS's similar neighbours, STARFM-style,
before the temporal branch), g_guided_pca30, h_guided_e60 (60 epochs), i_guided_refprior
(`reference_in_prior`), k_guided_e15 (15 epochs), l_e15 (the defaults with 15 epochs); m_detail (k_guided_e15 trained again, the same weights, now
with the detail step on the HS dates: finer than the HS pixel from the date's own regression of
the HS on its fine MS, the rest from the network); q_detail_all (the m_detail models, the detail
step on every date: the HS dates' maps blended in time on the network's fine MS estimate, not the
default: the demo sample got worse); r_skill (m_detail trained again with the detail step's skill,
the same weights: each PCA component's detail step weighted by how well the maps predict the HS's
own detail one scale up), s_skill_all (the r_skill models, the detail step on every date);
t_coreg (s_skill_all plus `coregister`: each coarse image moved onto the fine MS by the sub-pixel
shift training estimates for it, in training and fusion), v_ref1 (t_coreg with
`reference_smoothing` 1: the reference residual blurred once, not twice, now that the HS is
co-registered; no different), w_tref (t_coreg plus a `temporal_reference` switch, tried and not kept:
an HS date without its own fine MS got its MS predicted in time from the nearest fine MS date, in the
spectral task, the linear priors and the references, instead of from its dense MS alone; lower CC on
both offset scenes), z_blur (t_coreg plus `fitted_blur`: the HS's blur as it lies on the grid,
its PSF and the resampling, measured at training against the fine MS and used for every HS-scale
blur of the network and of the detail step, instead of the PSF alone), g_guide (z_blur plus
`multi_date_guide`: the guided change's similar neighbours judged on the fine MS of every date but the
target's, in training and fusion), h_notrunk (g_guide with `temporal_correction` off: the temporal
prediction is its guided prior alone, the trunk's features still go to the head; commit 4ce232f),
i_prior (g_guide with `temporal_trunk` off: no temporal trunk at all, the prediction is the guided
prior and the head reads no temporal features; trained without the self-check); j_selfcheck,
j_selfcheck_extra, j_selfcheck_extra5 (i_prior trained as Train trains by default, `--self-check`: the
self-check inside the run; split: 10 epochs without the withheld HS, then 5 with everything (a recipe
measured and dropped); extra: the 15 epochs without it, then 5 more with everything; extra5: then 3
more, the defaults now); `_seedN`: the same with another training seed (the run-to-run spread).
"""


def _saved_runs(root: str, config: str, scenes) -> list:
    """The saved results of ``config`` on those of ``scenes`` it has run on."""
    runs = []
    for scene in scenes:
        path = os.path.join(root, config, f"{scene}.json")
        if os.path.exists(path):
            with open(path) as f:
                runs.append(json.load(f))
    return runs


def report() -> str:
    root = os.path.join(WORK, "generality")
    lines = HEADER.splitlines() + [""]
    configs = sorted(c for c in os.listdir(root) if c != "scenes") if os.path.isdir(root) else []
    for scene in ALL_SCENES:
        runs = [r for c in configs for r in _saved_runs(root, c, (scene,))]
        if not runs:
            continue
        d = runs[0]["dataset"]
        tuning, held = d["tuning_dates"], d["held_out_dates"]
        hs_dates = [x for x in d["dates"] if x in runs[0]["per_date_regression"]]
        kind = scene_kind(scene)
        lines += [f"### {scene} ({kind})", ""]
        for title, dates, base_key, base_name in (
            (f"Tuning date without HS ({', '.join(tuning)})", tuning, "two_stage", "Two-stage"),
            (f"Held-out dates without HS ({', '.join(held)})", held, "two_stage", "Two-stage"),
            (f"HS dates ({', '.join(hs_dates)})", hs_dates, "per_date_regression", "Per-date regression"),
        ):
            if not dates:
                continue
            lines += [f"{title}:", "", "| Method | CC | SAM (°) | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
            lines.append(_row(base_name, mean_over(runs[0][base_key], dates)))
            for r in runs:
                lines.append(_row(f"network, {r['config']}", mean_over(r["network"], dates)))
            lines.append("")
    lines += choice_table(root, configs)
    lines += bars_table(root)
    return "\n".join(lines)


CHOSEN = "e_epochs20"  # the defaults now (seed 0): z_standin trained for 20 epochs instead of 15; z_standin:
# trained and fused with the clear fine MS dates beyond a cloudy source standing in for it, weighted by their
# time gaps (predictor.SOURCE_FILL); v_lattice before


def bars_table(root: str) -> list:
    """Issue 11's bars for the chosen configuration: on each scene's held-out dates without HS, the
    network minus the two-stage baseline (bar: ahead on all four, CC by 0.02, SSIM by 0.03); on the
    HS dates, the network minus the per-date regression (bar: PSNR at most 0.5 dB and CC at most
    0.003 below), on every pixel each method has, and on the pixels the regression has (runs that
    recorded ``network_where_regression``): the verdict is on the same pixels where that is known."""
    lines = [
        f"### The bars, for the defaults ({CHOSEN}, seed 0)",
        "",
        "| Scene | held-out: ΔCC | ΔSAM (°) | ΔPSNR (dB) | ΔSSIM | vs two-stage | HS dates: ΔCC | ΔPSNR (dB) | "
        "the regression's pixels: ΔCC | ΔPSNR (dB) | vs per-date regression |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _saved_runs(root, CHOSEN, ALL_SCENES):
        scene = r["scene"]
        held = r["dataset"]["held_out_dates"]
        n, b = mean_over(r["network"], held), mean_over(r["two_stage"], held)
        d = {k: n[k] - b[k] for k in METRICS}
        met = d["cc"] >= 0.02 and d["ssim"] >= 0.03 and d["sam"] < 0 and d["psnr"] > 0
        hs = [x for x in r["dataset"]["dates"] if x in r["per_date_regression"]]
        if hs:
            b2 = mean_over(r["per_date_regression"], hs)
            n2 = mean_over(r["network"], hs)
            dc, dp = n2["cc"] - b2["cc"], n2["psnr"] - b2["psnr"]
            same = r.get("network_where_regression") or {}
            if all(x in same for x in hs):
                n3 = mean_over(same, hs)
                sc, spx = n3["cc"] - b2["cc"], n3["psnr"] - b2["psnr"]
                verdict, same_cells = sc >= -0.003 and spx >= -0.5, f"{sc:+.4f} | {spx:+.2f}"
            else:
                verdict, same_cells = dc >= -0.003 and dp >= -0.5, "– | –"
            hs_cells = f"{dc:+.4f} | {dp:+.2f} | {same_cells} | {'met' if verdict else 'not met'} |"
        else:
            hs_cells = "– | – | – | – | no HS date with a fine MS within 10 days |"
        lines.append(
            f"| {scene} | {d['cc']:+.4f} | {d['sam']:+.3f} | {d['psnr']:+.2f} | {d['ssim']:+.4f} | "
            f"{'met' if met else 'not met'} | {hs_cells}"
        )
    return lines + [""]


def kernel_table(root: str, configs: list) -> list:
    """Per scene, one table: the interpolation and two-stage baselines and the network of each of
    ``configs`` (its kernel set named), on the held-out dates without HS, and on the HS dates with
    the per-date regression."""
    lines = []
    for scene in ALL_SCENES:
        runs = [r for c in configs for r in _saved_runs(root, c, (scene,))]
        if not runs:
            continue
        d = runs[0]["dataset"]
        held = d["held_out_dates"]
        hs_dates = [x for x in d["dates"] if x in runs[0]["per_date_regression"]]
        kind = scene_kind(scene)
        lines += [f"#### {scene} ({kind})", ""]
        for title, dates, baselines in (
            (
                f"Held-out dates without HS ({', '.join(held)})",
                held,
                (("interpolation", "Interpolation"), ("two_stage", "Two-stage")),
            ),
            (
                f"HS dates ({', '.join(hs_dates)})",
                hs_dates,
                (("interpolation", "Interpolation"), ("per_date_regression", "Per-date regression")),
            ),
        ):
            if not dates:
                continue
            lines += [f"{title}:", "", "| Method | CC | SAM (°) | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
            for key, name in baselines:
                if all(x in runs[0].get(key, {}) for x in dates):
                    lines.append(_row(name, mean_over(runs[0][key], dates)))
            for r in runs:
                how = (
                    f"the models of {r['reused_model_of']}"
                    if r.get("reused_model_of")
                    else f"{r['train_s']:.0f} s training"
                )
                label = f"network, kernels {r.get('kernels', '1')} ({r['config']}, {how})"
                lines.append(_row(label, mean_over(r["network"], dates)))
            lines.append("")
    return lines


CEILING = "_fine_every_date"  # make_dataset.py --fine-every-date: the scene with a fine MS on every date


def ceiling_table(root: str, config: str) -> list:
    """On each scene's held-out dates: the two-stage baseline and ``config``'s network as run, and both
    again with an observed fine MS on those dates (make_dataset.py --fine-every-date; the network
    fused with the same model, the two-stage run again on that MDD): what a perfect temporal
    prediction of the fine MS would give each, next to the CC bar (the two-stage as run + 0.02)."""
    lines = [
        "| Scene | two-stage CC | network CC | CC bar | two-stage, fine MS observed | network, fine MS observed | "
        "network SSIM | its bar | SSIM, fine MS observed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scene in ALL_SCENES:
        runs = _saved_runs(root, config, (scene,))
        ceil = _saved_runs(root, config + "_ceiling", (scene + CEILING,))
        if not runs or not ceil:
            continue
        held = runs[0]["dataset"]["held_out_dates"]
        b, n = mean_over(runs[0]["two_stage"], held), mean_over(runs[0]["network"], held)
        bc, nc = mean_over(ceil[0]["two_stage"], held), mean_over(ceil[0]["network"], held)
        lines.append(
            f"| {scene} | {b['cc']:.4f} | {n['cc']:.4f} | {b['cc'] + 0.02:.4f} | {bc['cc']:.4f} | {nc['cc']:.4f} | "
            f"{n['ssim']:.4f} | {b['ssim'] + 0.03:.4f} | {nc['ssim']:.4f} |"
        )
    return lines + [""]


def _family(config: str) -> str:
    """A configuration's name without its seed: a_defaults_seed1 -> a_defaults."""
    return config.split("_seed")[0]


def choice_table(root: str, configs: list) -> list:
    """What the choices were made on: per configuration (its seeds averaged), the mean over the
    development scenes of the tuning date and of the HS dates (same_day's; offset_5_8 has none)."""
    by_family = {}
    for c in configs:
        runs = _saved_runs(root, c, DEV_SCENES)
        if len(runs) == len(DEV_SCENES):
            by_family.setdefault(_family(c), []).append((c, runs))
    if not by_family:
        return []
    lines = [
        "### Choosing: the development scenes' tuning date and HS dates, seeds averaged",
        "",
        "| Configuration | seeds | tuning CC | SAM (°) | PSNR (dB) | SSIM | HS dates CC | PSNR (dB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, members in sorted(by_family.items()):
        tuning, hs = [], []
        for _, runs in members:
            for r in runs:
                tuning.append(mean_over(r["network"], r["dataset"]["tuning_dates"]))
                dates = [x for x in r["dataset"]["dates"] if x in r["per_date_regression"]]
                if dates:
                    hs.append(mean_over(r["network"], dates))
        t = {k: float(np.mean([m[k] for m in tuning])) for k in METRICS}
        h = {k: float(np.mean([m[k] for m in hs])) for k in METRICS} if hs else None
        seeds = ", ".join(sorted({str(runs[0].get("seed", 0)) for _, runs in members}))
        lines.append(
            f"| {family} | {seeds} | {t['cc']:.4f} | {t['sam']:.3f} | {t['psnr']:.2f} | {t['ssim']:.4f} | "
            + (f"{h['cc']:.4f} | {h['psnr']:.2f} |" if h else "– | – |")
        )
    return lines + [""]


def write_section(path: str, text: str) -> None:
    """Replaces (or adds, before "## Scale") the "## Generality" section of BENCHMARKS.md."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, skip, placed = [], False, False
    for line in lines:
        if line.startswith("## "):
            if line.startswith("## Generality"):
                skip = True
                continue
            if not placed and (skip or line.startswith("## Scale")):
                out += text.splitlines() + [""]
                placed = True
            skip = False
        if not skip:
            out.append(line)
    if not placed:
        out += [""] + text.splitlines()
    with open(path + ".part", "w", encoding="utf-8") as f:
        f.write("\n".join(out).rstrip() + "\n")
    os.replace(path + ".part", path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a name for this configuration")
    ap.add_argument("--options", default="{}", help="NETWORK_OPTIONS to change, as JSON")
    ap.add_argument("--pca", type=int, default=training.DEFAULTS["pca_components"])
    ap.add_argument("--epochs", type=int, default=training.DEFAULTS["epochs"])
    ap.add_argument("--scenes", default=",".join(ALL_SCENES))
    ap.add_argument("--seed", type=int, default=0, help="training seed (run-to-run spread)")
    ap.add_argument("--kernels", default="1", help="the network's kernel set: 1, 1,3 or 1,3,5")
    ap.add_argument(
        "--detail-every-date",
        action="store_true",
        help="fuse with the detail step on the dates without their own HS too (predictor.DETAIL_ON_EVERY_DATE; "
        "the default now, kept for the runs that named it)",
    )
    ap.add_argument(
        "--detail-hs-dates-only",
        action="store_true",
        help="fuse with the detail step on the HS dates only (the defaults before s_skill_all)",
    )
    ap.add_argument(
        "--kernel-table",
        help="print the per-scene table of these configurations (comma-separated, e.g. the defaults with each "
        "kernel set) with the interpolation and two-stage baselines",
    )
    ap.add_argument("--reuse", help="fuse with the models this configuration trained (fusion-time switches)")
    ap.add_argument(
        "--self-check",
        action="store_true",
        help="train as the Train algorithm does by default: the self-check inside the run (the EPOCHS without one "
        "HS date, the check, then a fifth more epochs with it)",
    )
    ap.add_argument(
        "--ceiling",
        help="fuse each scene's <scene>_fine_every_date dataset (make_dataset.py --fine-every-date) with the model "
        "this configuration trained on the scene, run the baselines on it, and print the ceiling table",
    )
    ap.add_argument("--write", action="store_true", help="with --report: put the tables into BENCHMARKS.md")
    ap.add_argument("--report", action="store_true", help="print the tables of every configuration run")
    args = ap.parse_args(argv)
    if args.detail_every_date or args.detail_hs_dates_only:
        from stsfusion.model.nn import predictor

        predictor.DETAIL_ON_EVERY_DATE = not args.detail_hs_dates_only
    if args.config:
        for scene in [s.strip() for s in args.scenes.split(",") if s.strip()]:
            r = run_scene(
                scene,
                args.config,
                json.loads(args.options),
                args.pca,
                args.epochs,
                args.reuse,
                args.seed,
                args.kernels,
                self_check=args.self_check,
            )
            d = r["dataset"]
            for label, dates in (("tuning", d["tuning_dates"]), ("held out", d["held_out_dates"])):
                m, b = mean_over(r["network"], dates), mean_over(r["two_stage"], dates)
                print(
                    f"{scene} {args.config} {label}: "
                    + ", ".join(f"{k} {m[k]:.4f} ({m[k] - b[k]:+.4f})" for k in METRICS[:4])
                    + f"; train {r['train_s']} s",
                    flush=True,
                )
            hs = [x for x in d["dates"] if x in r["per_date_regression"]]
            if not hs:
                continue
            m, b = mean_over(r["network"], hs), mean_over(r["per_date_regression"], hs)
            print(
                f"{scene} {args.config} HS dates: "
                + ", ".join(f"{k} {m[k]:.4f} ({m[k] - b[k]:+.4f})" for k in METRICS[:4])
            )
    if args.ceiling:
        for scene in [s.strip() for s in args.scenes.split(",") if s.strip()]:
            if not os.path.exists(os.path.join(dataset_folder(WORK, scene + CEILING), "dataset.json")):
                print(f"{scene}: no {scene + CEILING} dataset (make_dataset.py --scenario {scene} --fine-every-date)")
                continue
            run_scene(
                scene + CEILING, args.ceiling + "_ceiling", {}, args.pca, args.epochs, args.ceiling, 0, "1", scene
            )
        print("\n".join(ceiling_table(os.path.join(WORK, "generality"), args.ceiling)))
    if args.kernel_table:
        print("\n".join(kernel_table(os.path.join(WORK, "generality"), args.kernel_table.split(","))))
    if args.report:
        text = report()
        print(text)
        if args.write:
            write_section(os.path.join(ROOT, "BENCHMARKS.md"), text)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
