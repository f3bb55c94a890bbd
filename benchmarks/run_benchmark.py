#!/usr/bin/env python3
"""The development benchmark of the paper's protocol: writes BENCHMARKS.md.

    make setup && source scripts/env.sh && .venv/bin/python benchmarks/run_benchmark.py
    .venv/bin/python benchmarks/run_benchmark.py --scenarios offset_1_3,offset_5_8 [--kernels 1]
    .venv/bin/python benchmarks/run_benchmark.py --scenarios all --report-only

For each scenario (an acquisition calendar of benchmarks/make_dataset.py; default same_day):
1. Builds the simulated series from the real EnMAP tiles in ../shared/data
   (benchmarks/make_dataset.py --scenario NAME) unless it is already in benchmarks/output/dataset
   (same_day) or benchmarks/output/dataset_<NAME>.
2. Runs, each through `qgis_process.bin` as a batch user would: Build MDD stack; Train fusion
   model + Fuse time series with the kernel sets 1, 1/3 and 1/3/5 (default parameters otherwise);
   the two baselines (interpolation, two-stage).
3. Assesses every fused date against the withheld truth (model/metrics.py: CC, SAM, PSNR, SSIM,
   ERGAS, RMSE), separately for dates with and without an HS image, and saves everything in
   benchmarks/output/<scenario>/results.json (work files, logs, models and fused images there too).
   A step that fails (e.g. Train on a calendar it cannot handle) is recorded as "failed: <message>"
   and the run goes on.
4. Writes BENCHMARKS.md: the main tables from same_day (run now or saved before), wall time and
   peak memory (max RSS of each qgis_process.bin run) and the machine; then "Acquisition calendars",
   one table of the network (kernel set 1), two-stage and interpolation on the dates without HS of
   every scenario run now or saved before (benchmarks/output/<scenario>/results.json), so running
   some scenarios keeps the others' rows. --report-only rewrites it from the saved results.json files.

Scenarios other than same_day run kernel set 1 only unless --kernels says otherwise.

products_clear and products_cloudy write their inputs as satellite products (Sentinel-2 L2A, Landsat 8
C2 L2, EnMAP L2A): Build MDD stack reads them through FINE_MS_PRODUCTS, DENSE_MS_PRODUCTS and
HS_PRODUCTS with MASK_BUFFER=1, so products_cloudy's clouds reach the fusion only through the
products' quality layers. For every fused image the benchmark counts its holes: pixels valid in the
truth (every band) where the fused image has nodata (any band). BENCHMARKS.md then compares the two
("Clouds from the products' quality layers"): ΔCC on the dates without HS, holes, and the shares
the quality layers masked per date (from the Build MDD stack log).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, ".build", "plugins")
if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):
    os.makedirs(PLUGINS, exist_ok=True)
    os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))
sys.path.insert(0, PLUGINS)

import re

import numpy as np
from osgeo import gdal

from stsfusion.model.evaluation.metrics import align_to_reference, assess_rasters

gdal.UseExceptions()

KERNEL_SETS = ("1", "1/3", "1/3/5")
SCENARIOS = (  # make_dataset.py's
    "same_day",
    "offset_1_3",
    "offset_5_8",
    "one_fine",
    "one_hs",
    "cloudy_fine",
    "products_clear",
    "products_cloudy",
)
PRODUCTS_BAR = ("products_clear", "products_cloudy")  # compared in "Clouds from the products' quality layers"
PRODUCT_MASK_BUFFER = 1  # grow the quality layers' clouds and shadows by one product pixel
MAX_DELTA_CC = 0.05  # issue 14: the cloudy series within 0.05 CC of the clear one (dates without HS)
CALENDAR_KERNELS = "1"  # the network's kernel set in the calendar table (and the default outside same_day)
BASELINES = (
    ("interpolation", "Interpolation (nearest HS date, bicubic)"),
    ("two_stage", "Two-stage (STARFM-style + ridge MS→HS)"),
)
METRICS = ("cc", "sam", "psnr", "ssim", "ergas", "rmse")


def qgis_env() -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=PLUGINS)
    site = [p for p in sys.path if p.endswith("site-packages") and ".venv" in p]
    env["PYTHONPATH"] = os.pathsep.join(site + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    return env


class StepFailed(RuntimeError):
    """A benchmark step failed; str() is the message to record."""


def failure_message(log_text: str) -> str:
    """The error a qgis_process.bin (or Python) run ended with, from its log: the lines after the
    last "Error"/"Traceback" marker, else the last non-empty line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        low = lines[i].lower()
        if low.startswith("traceback"):
            return lines[-1]
        if low.startswith("error:"):  # qgis_process: "ERROR:\t<the QgsProcessingException's message>"
            return lines[i].split(":", 1)[1].strip()[:400]
        if "error" in low or "exception" in low:
            tail = " ".join(lines[i : i + 4]) if low.rstrip(":").endswith(("error", "exception")) else lines[i]
            return tail[:400]
    return (lines[-1] if lines else "no output")[:400]


def run_measured(args: list, log_path: str) -> dict:
    """Runs a command; returns wall time (s) and its own peak resident memory (MB, from wait4).
    Raises StepFailed with the error from its log when it exits non-zero."""
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=qgis_env())
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        with open(log_path, errors="replace") as f:
            text = f.read()
        print(f"  FAILED ({code}), log {log_path}:\n{text[-3000:]}", flush=True)
        raise StepFailed(failure_message(text) or f"exit code {code}")
    return {"time_s": wall, "peak_mb": usage.ru_maxrss / 1024.0}


def qgis_process(alg: str, params: list, log_path: str) -> dict:
    print(f"  qgis_process.bin run {alg} ...", flush=True)
    return run_measured(["qgis_process.bin", "run", alg, "--", *params], log_path)


def assess_folder(folder: str, prefix: str, dataset: dict, dataset_dir: str, work: str) -> dict:
    """date -> metrics dict of `<prefix>_<date>.tif` against the truth."""
    out = {}
    for date in dataset["dates"]:
        fused = os.path.join(folder, f"{prefix}_{date}.tif")
        if not os.path.exists(fused):
            raise StepFailed(f"no output for {date} ({fused})")
        truth = os.path.join(dataset_dir, dataset["truth_dir"], f"truth_hs_{date}.tif")
        r = assess_rasters(fused, truth, dataset["hs_factor"], os.path.join(work, "assess.csv"))
        out[date] = {m: float(r["overall"][m.upper()]) for m in METRICS}
    return out


def _physical(band) -> np.ndarray:
    a = band.ReadAsArray().astype(np.float64)
    nodata = band.GetNoDataValue()
    if nodata is not None and np.isfinite(nodata):
        a[a == nodata] = np.nan
    return a


def count_holes(fused_path: str, truth_path: str) -> dict:
    """{"holes": pixels valid in the truth (every band finite) where the fused image is nodata in
    any band, "truth_valid": pixels valid in the truth}; the fused image warped onto the truth's grid
    when the grids differ (as assess_rasters does)."""
    fused_ds, truth_ds = gdal.Open(fused_path), gdal.Open(truth_path)
    aligned = align_to_reference(fused_ds, truth_ds)
    shape = (truth_ds.RasterYSize, truth_ds.RasterXSize)
    truth_valid, fused_missing = np.ones(shape, bool), np.zeros(shape, bool)
    for b in range(truth_ds.RasterCount):
        truth_valid &= np.isfinite(_physical(truth_ds.GetRasterBand(b + 1)))
        fused_missing |= ~np.isfinite(_physical(aligned.GetRasterBand(b + 1)))
    return {"holes": int((truth_valid & fused_missing).sum()), "truth_valid": int(truth_valid.sum())}


def holes_folder(folder: str, prefix: str, dataset: dict, dataset_dir: str) -> dict:
    """date -> count_holes of `<prefix>_<date>.tif` against the truth."""
    return {
        date: count_holes(
            os.path.join(folder, f"{prefix}_{date}.tif"),
            os.path.join(dataset_dir, dataset["truth_dir"], f"truth_hs_{date}.tif"),
        )
        for date in dataset["dates"]
    }


_BUILD_LAYER = re.compile(r"(fine MS|dense MS|HS) (\d{4}-\d{2}-\d{2}) '")
_BUILD_VALID = re.compile(r"valid: (.+)$")


def build_summary(log_text: str) -> dict:
    """role -> {date: "36.5 % of the grid; masked ... (quality layer: cloud ...)"}: what Build MDD
    stack's log says of each layer's valid and masked shares."""
    roles = {"fine MS": "fine_ms", "dense MS": "dense_ms", "HS": "hs"}
    out, current = {}, None
    for line in log_text.splitlines():
        m = _BUILD_LAYER.search(line)
        if m:
            current = (roles[m.group(1)], m.group(2))
            continue
        v = _BUILD_VALID.search(line)
        if v and current:
            out.setdefault(current[0], {})[current[1]] = v.group(1).strip()
            current = None
    return out


def mean_over(per_date: dict, dates: list) -> dict:
    return {m: float(np.mean([per_date[d][m] for d in dates])) for m in METRICS}


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def failed_row(name: str, message: str, n_cols: int) -> str:
    return f"| {name} | failed: {cell(message)} |" + " |" * (n_cols - 2)


def fmt_row(name: str, m: dict, extra: str = "") -> str:
    return (
        f"| {name} | {m['cc']:.4f} | {m['sam']:.3f} | {m['psnr']:.2f} | {m['ssim']:.4f} | "
        f"{m['ergas']:.3f} | {m['rmse']:.5f} |{extra}"
    )


HEADER = "| {} | CC | SAM (°) | PSNR (dB) | SSIM | ERGAS | RMSE |{}\n|---|---|---|---|---|---|---|{}"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, no GPU; "
        f"Debian {platform.freedesktop_os_release().get('VERSION_ID', '?')}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def dataset_folder(work: str, scenario: str) -> str:
    """Where make_dataset.py writes a scenario by default (when --work is the default)."""
    return os.path.join(work, "dataset" if scenario == "same_day" else f"dataset_{scenario}")


def reproduce_command(scenario: str, kernels: str) -> str:
    """The command that (re)produces one scenario's results."""
    cmd = ".venv/bin/python benchmarks/run_benchmark.py"
    if scenario != "same_day":
        cmd += f" --scenarios {scenario}"
    if kernels != default_kernels(scenario):
        cmd += f" --kernels {kernels}"
    return cmd


def default_kernels(scenario: str) -> str:
    return ",".join(KERNEL_SETS) if scenario == "same_day" else CALENDAR_KERNELS


def results_path(work: str, scenario: str) -> str:
    return os.path.join(work, scenario, "results.json")


def load_saved(work: str, scenario: str) -> dict | None:
    path = results_path(work, scenario)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_scenario(scenario: str, kernel_sets: list, data: str, root_work: str) -> dict:
    """Runs one scenario end to end; returns (and saves) its results. Failures are recorded."""
    work = os.path.join(root_work, scenario)
    dataset_dir = dataset_folder(root_work, scenario)
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    kernels = ",".join(kernel_sets)
    saved = {
        "scenario": scenario,
        "command": reproduce_command(scenario, kernels),
        "argv": " ".join(["benchmarks/run_benchmark.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "dataset_dir": os.path.relpath(dataset_dir, ROOT),
        "kernels": kernels,
        "results": {},
        "runs": {},
    }
    runs, results = saved["runs"], saved["results"]
    labels = [f"STS Fusion, kernels {k}" for k in kernel_sets] + [label for _, label in BASELINES]

    def fail_all(message: str) -> dict:
        for label in labels:
            results.setdefault(label, {"failed": message})
        save(root_work, saved)
        return saved

    if not os.path.exists(os.path.join(dataset_dir, "dataset.json")):
        print(f"Build dataset {scenario}", flush=True)
        try:
            make = [sys.executable, os.path.join(ROOT, "benchmarks", "make_dataset.py"), "--scenario", scenario]
            saved["make_dataset"] = run_measured(
                make + ["--data", data, "--out", dataset_dir], os.path.join(logs, "make_dataset.log")
            )
        except StepFailed as e:
            saved["dataset"] = {"scenario": scenario, "calendar": "?"}
            return fail_all(f"make_dataset: {e}")
    with open(os.path.join(dataset_dir, "dataset.json")) as f:
        dataset = json.load(f)
    dataset.setdefault(
        "hs_factor", round(dataset["roles"]["hs"]["pixel_size_m"] / dataset["fine_grid"]["pixel_size_m"], 6)
    )
    # What the report needs of dataset.json, so --report-only does not need the dataset itself.
    saved["dataset"] = {
        k: dataset[k]
        for k in (
            "scenario",
            "calendar",
            "dates",
            "hs_dates",
            "fine_ms_dates",
            "dense_ms_dates",
            "no_hs_dates",
            "held_out_dates",
            "tuning_dates",
            "truth_dir",
            "fine_grid",
            "truth_bands",
            "hs_factor",
            "offsets_days",
            "products",
            "product_families",
            "clouds",
        )
        if k in dataset
    }
    saved["dataset"].setdefault("scenario", scenario)
    saved["dataset"].setdefault("calendar", "?")

    print(f"[{scenario}] Build MDD stack", flush=True)
    mdd = os.path.join(work, "mdd", "benchmark_mdd.json")
    os.makedirs(os.path.dirname(mdd), exist_ok=True)
    keys = (("FINE_MS", "fine_ms"), ("DENSE_MS", "dense_ms"), ("HS", "hs"))
    if dataset.get("products"):  # satellite products, read with their quality layers
        params = [
            f"{key}_PRODUCTS={os.path.join(dataset_dir, path)}"
            for key, role in keys
            for path in dataset["products"][role]
        ]
        params.append(f"MASK_BUFFER={PRODUCT_MASK_BUFFER}")
        saved["mask_buffer"] = PRODUCT_MASK_BUFFER
    else:
        params = [
            f"{key}={os.path.join(dataset_dir, name)}" for key, role in keys for name in dataset["roles"][role]["files"]
        ]
    build_log = os.path.join(logs, "buildmdd.log")
    try:
        runs["buildmdd"] = qgis_process("stsfusion:buildmdd", params + [f"OUTPUT={mdd}"], build_log)
    except StepFailed as e:
        return fail_all(f"Build MDD: {e}")
    with open(build_log, errors="replace") as f:
        saved["build"] = build_summary(f.read())

    for kernels in kernel_sets:
        tag = "k" + kernels.replace("/", "")
        label = f"STS Fusion, kernels {kernels}"
        print(f"[{scenario}] Network, kernel set {kernels}", flush=True)
        model = os.path.join(work, f"model_{tag}.pt")
        folder = os.path.join(work, f"fused_{tag}")
        step = "Train"
        try:
            train = qgis_process(
                "stsfusion:train",
                [
                    f"MDD={mdd}",
                    f"KERNELS={kernels}",
                    f"OUTPUT_MODEL={model}",
                    f"OUTPUT_REPORT={os.path.join(work, f'report_{tag}.html')}",
                ],
                os.path.join(logs, f"train_{tag}.log"),
            )
            runs[f"train_{tag}"] = train
            step = "Fuse"
            fuse = qgis_process(
                "stsfusion:fuse",
                [f"MDD={mdd}", f"MODEL={model}", f"OUTPUT_FOLDER={folder}"],
                os.path.join(logs, f"fuse_{tag}.log"),
            )
            runs[f"fuse_{tag}"] = fuse
            step = "Assess"
            results[label] = {
                "per_date": assess_folder(folder, "fused", dataset, dataset_dir, work),
                "holes": holes_folder(folder, "fused", dataset, dataset_dir),
                "time_s": train["time_s"] + fuse["time_s"],
                "peak_mb": max(train["peak_mb"], fuse["peak_mb"]),
            }
        except Exception as e:  # recorded: the other steps still run
            results[label] = {"failed": f"{step}: {e}"}
        save(root_work, saved)
    for method, label in BASELINES:
        print(f"[{scenario}] Baseline {method}", flush=True)
        folder = os.path.join(work, f"baseline_{method}")
        step = "Baseline"
        try:
            run = qgis_process(
                "stsfusion:baseline",
                [f"MDD={mdd}", f"METHOD={method}", f"OUTPUT_FOLDER={folder}"],
                os.path.join(logs, f"baseline_{method}.log"),
            )
            runs[f"baseline_{method}"] = run
            step = "Assess"
            results[label] = {
                "per_date": assess_folder(folder, method, dataset, dataset_dir, work),
                "holes": holes_folder(folder, method, dataset, dataset_dir),
                "time_s": run["time_s"],
                "peak_mb": run["peak_mb"],
            }
        except Exception as e:  # recorded: the other steps still run
            results[label] = {"failed": f"{step}: {e}"}
        save(root_work, saved)
    return saved


def save(root_work: str, saved: dict) -> None:
    path = results_path(root_work, saved["scenario"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "w") as f:
        json.dump(saved, f, indent=1)
    os.replace(path + ".part", path)


def parse_scenarios(text: str) -> list:
    names = SCENARIOS if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise SystemExit(
            f"Unknown scenario(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(SCENARIOS)} or all."
        )
    return list(dict.fromkeys(names))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    ap.add_argument(
        "--work",
        default=os.path.join(ROOT, "benchmarks", "output"),
        help="root of the work folders: <work>/<scenario>/ (results.json, logs, models, fused images) "
        "and the datasets <work>/dataset (same_day), <work>/dataset_<scenario>",
    )
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument(
        "--scenarios",
        default="same_day",
        help=f"comma-separated, or all: {', '.join(SCENARIOS)} (default same_day)",
    )
    ap.add_argument(
        "--kernels",
        help=f"comma-separated kernel sets (default {','.join(KERNEL_SETS)} for same_day, "
        f"{CALENDAR_KERNELS} for the other scenarios)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite --out from the saved <work>/<scenario>/results.json of the scenarios named",
    )
    args = ap.parse_args(argv)
    scenarios = parse_scenarios(args.scenarios)
    saved = {}
    if not args.report_only:
        if shutil.which("qgis_process.bin") is None:
            raise SystemExit("qgis_process.bin not found: run `make setup` first.")
        subprocess.run(["qgis_process.bin", "plugins", "enable", "stsfusion"], env=qgis_env(), capture_output=True)
        for scenario in scenarios:
            kernels = args.kernels or default_kernels(scenario)
            print(f"== Scenario {scenario}", flush=True)
            saved[scenario] = run_scenario(scenario, kernels.split(","), args.data, args.work)
            print(f"   results in {results_path(args.work, scenario)}", flush=True)
    # The report: the scenarios run now, plus every other scenario's saved results (same_day's: the main
    # tables, the reference), so that running some scenarios never drops the others' rows.
    for scenario in SCENARIOS:
        if scenario not in saved:
            loaded = load_saved(args.work, scenario)
            if loaded is not None:
                saved[scenario] = loaded
            elif scenario in scenarios:
                print(f"no saved results for {scenario} ({results_path(args.work, scenario)}): left out")
    if not saved:
        raise SystemExit("No results to report.")
    ordered = {s: saved[s] for s in SCENARIOS if s in saved}
    write_report(args.out, ordered)
    print(f"wrote {args.out}")
    return 0


def kept_sections(path: str, headings: tuple) -> list:
    """The lines of the sections of the existing report that other scripts write (e.g. benchmarks/
    scale.py's "## Scale", generality.py's "## Generality"), kept as they are when this script rewrites the file."""
    if not os.path.exists(path):
        return []
    kept, keep = [], False
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            if line.startswith("## "):
                keep = line.startswith(headings)
            if keep:
                kept.append(line)
    return kept


def write_report(path: str, saved: dict):
    """BENCHMARKS.md from the scenarios' saved results (scenario -> results.json content)."""
    if "same_day" in saved:
        s = saved["same_day"]
        lines = main_tables(s["dataset"], s["results"], s["runs"], s.get("date"), s.get("machine"), s.get("notes"))
    else:
        lines = [
            "# Benchmarks",
            "",
            "No same-day results saved yet (benchmarks/output/same_day/results.json): run "
            "`.venv/bin/python benchmarks/run_benchmark.py` for the main tables.",
            "",
        ]
    lines += calendar_section(saved)
    lines += products_section(saved)
    lines += kept_sections(path, ("## Generality", "## Scale"))
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def network_labels(results: dict) -> list:
    """The network rows of the calendar table: kernel set 1, or whatever kernel sets were run."""
    nets = [k for k in results if k.startswith("STS Fusion")]
    preferred = f"STS Fusion, kernels {CALENDAR_KERNELS}"
    return [preferred] if preferred in nets else nets


def calendar_section(saved: dict) -> list:
    """## Acquisition calendars: network (kernel set 1), two-stage and interpolation per scenario,
    averaged over the dates without HS (the same three dense-MS-only dates in every scenario)."""
    ref = saved.get("same_day", {}).get("results", {})
    lines = [
        "## Acquisition calendars",
        "",
        "The same simulated scene and sensors on other acquisition calendars",
        "(`benchmarks/make_dataset.py --scenario NAME`). Each image draws its noise, gains, misregistration",
        "and clouds from the same random stream as the same-day image it stands for, so a scenario differs",
        "from same_day only in its calendar. Metrics averaged over the dates without HS: the dense-MS-only",
        "dates of the same-day calendar, in every scenario. ΔCC = CC − the same kernel set's CC on same_day.",
    ]
    if any(name in saved for name in PRODUCTS_BAR):
        lines += [
            "products_clear and products_cloudy also differ in their sensors (Sentinel-2, Landsat 8 and EnMAP",
            'products read directly): see "Clouds from the products\' quality layers" below.',
        ]
    lines += [
        "",
        "| Scenario | Calendar | Method | CC | SAM (°) | PSNR (dB) | SSIM | ΔCC vs same day | Command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, s in saved.items():
        results, dataset = s["results"], s["dataset"]
        no_hs = dataset.get("no_hs_dates", [])
        baselines = [label for _, label in reversed(BASELINES)]  # two-stage, then interpolation
        labels = network_labels(results) + [label for label in baselines if label in results]
        for i, label in enumerate(labels):
            first = i == 0
            head = f"| {scenario if first else ''} | {cell(dataset.get('calendar', '?')) if first else ''} | "
            name = label.replace("STS Fusion, kernels", "STS Fusion network, kernels")
            command = f"`{s['command']}`" if first else ""
            r = results[label]
            if "failed" in r:
                lines.append(f"{head}{name} | failed: {cell(r['failed'])} | | | | | {command} |")
                continue
            m = mean_over(r["per_date"], no_hs)
            delta = ""
            if label.startswith("STS Fusion"):
                base = ref.get(label)
                delta = (
                    f"{m['cc'] - mean_over(base['per_date'], no_hs)['cc']:+.4f}"
                    if base and "per_date" in base
                    else "n/a"
                )
            lines.append(
                f"{head}{name} | {m['cc']:.4f} | {m['sam']:.3f} | {m['psnr']:.2f} | {m['ssim']:.4f} | {delta} | "
                f"{command} |"
            )
    lines += [""]
    for scenario, s in saved.items():
        d = s["dataset"]
        if all(k in d for k in ("fine_ms_dates", "hs_dates", "dense_ms_dates")):
            lines.append(
                f"- {scenario}: fine MS {', '.join(d['fine_ms_dates'])}; HS {', '.join(d['hs_dates'])}; "
                f"dense MS {', '.join(d['dense_ms_dates'])}; run {s.get('date', '?')}."
            )
    lines.append("")
    return lines


def total_holes(r: dict, dates: list | None = None) -> tuple[int, int] | None:
    """(holes, truth-valid pixels) summed over ``dates`` (default all) of one method's results, or
    None when they were not counted."""
    holes = r.get("holes")
    if not holes:
        return None
    dates = list(holes) if dates is None else dates
    return sum(holes[d]["holes"] for d in dates), sum(holes[d]["truth_valid"] for d in dates)


def products_section(saved: dict) -> list:
    """## Clouds from the products' quality layers: products_cloudy against products_clear (issue 14's
    bar: no holes, within MAX_DELTA_CC of the clear series on the dates without HS)."""
    present = [name for name in PRODUCTS_BAR if name in saved]
    if not present:
        return []
    clear, cloudy = saved.get("products_clear"), saved.get("products_cloudy")
    any_s = saved[present[0]]
    no_hs = any_s["dataset"].get("no_hs_dates", [])
    buffer = any_s.get("mask_buffer", PRODUCT_MASK_BUFFER)
    lines = [
        "## Clouds from the products' quality layers",
        "",
        "products_clear and products_cloudy: the same simulated series on the same-day calendar, written",
        "as satellite products (model/simulation/products.py) and read by Build MDD stack directly",
        f"(FINE_MS_PRODUCTS, DENSE_MS_PRODUCTS, HS_PRODUCTS, MASK_BUFFER={buffer}): fine MS as Sentinel-2 L2A",
        "(S2A MSI responses, the ten bands the reader stacks, 30 m), dense MS as Landsat 8 C2 L2 (OLI bands",
        "1-7, 60 m), HS as EnMAP L2A (90 m). In products_cloudy the clouds and their shadows are in the data",
        "(bright, nearly flat 0.4-0.8 reflectance with a thin unflagged rim; dark shadows beside them) and",
        "only the products' quality layers (SCL, QA_PIXEL, QL_QUALITY_CLOUD/_CLOUDSHADOW) flag them; every",
        "other pixel is products_clear's, bit for bit. Bar (issue 14): the cloudy series fuses with no",
        f"holes and within {MAX_DELTA_CC:g} CC of the clear series on the dates without HS ({', '.join(no_hs)}).",
        "Metrics averaged over those dates; holes = pixels valid in the truth (every band) where the fused",
        "image is nodata (any band), summed over all fused dates.",
        "",
        "| Method | CC clear | CC cloudy | ΔCC | SAM clear (°) | SAM cloudy (°) | PSNR clear (dB) | PSNR cloudy (dB) "
        "| SSIM clear | SSIM cloudy | Holes clear | Holes cloudy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = []
    for s in (clear, cloudy):
        if s:
            baselines = [label for _, label in reversed(BASELINES)]
            labels += [label for label in network_labels(s["results"]) + baselines if label in s["results"]]
    verdicts = []
    for label in dict.fromkeys(labels):
        cells, means, holes = [], {}, {}
        for name, s in (("clear", clear), ("cloudy", cloudy)):
            r = (s or {}).get("results", {}).get(label)
            if r is None:
                means[name], holes[name] = None, "not run"
            elif "failed" in r:
                means[name], holes[name] = None, "failed (see above)"
            else:
                means[name] = mean_over(r["per_date"], no_hs)
                h = total_holes(r)
                holes[name] = "not counted" if h is None else f"{h[0]:,} of {h[1]:,}"
        a, b = means["clear"], means["cloudy"]
        delta = f"{b['cc'] - a['cc']:+.4f}" if a and b else "n/a"
        for key, fmt in (("cc", ".4f"), ("sam", ".3f"), ("psnr", ".2f"), ("ssim", ".4f")):
            cells += [format(a[key], fmt) if a else "–", format(b[key], fmt) if b else "–"]
            if key == "cc":
                cells.append(delta)
        name = label.replace("STS Fusion, kernels", "STS Fusion network, kernels")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {holes['clear']} | {holes['cloudy']} |")
        if label.startswith("STS Fusion") and a and b:
            h = total_holes(cloudy["results"][label])
            within = abs(b["cc"] - a["cc"]) <= MAX_DELTA_CC
            no_holes = h is not None and h[0] == 0
            verdicts.append(
                f"{name}: ΔCC {b['cc'] - a['cc']:+.4f} ({'within' if within else 'NOT within'} {MAX_DELTA_CC:g}), "
                f"{'no holes' if no_holes else ('holes not counted' if h is None else f'{h[0]:,} hole pixels')}: "
                f"bar {'met' if within and no_holes else 'NOT met'}."
            )
    lines.append("")
    lines += [f"- {v}" for v in verdicts]
    if cloudy and cloudy.get("build"):
        lines += [
            "",
            "Valid and masked shares of the grid per input of products_cloudy, as Build MDD stack logged them",
            "(the grid's share outside the EnMAP mosaic is nodata in every input; classes may overlap):",
            "",
            "| Input | Date | Build MDD stack log |",
            "|---|---|---|",
        ]
        labels_ = {"fine_ms": "fine MS (Sentinel-2)", "dense_ms": "dense MS (Landsat 8)", "hs": "HS (EnMAP)"}
        for role, per_date in cloudy["build"].items():
            for date, text in per_date.items():
                lines.append(f"| {labels_.get(role, role)} | {date} | valid: {cell(text)} |")
    lines += [""]
    for name in present:
        s = saved[name]
        lines.append(f"- {name}: `{s['command']}`, run {s.get('date', '?')}.")
    lines.append("")
    return lines


def main_tables(
    dataset: dict,
    results: dict,
    runs: dict,
    date: str | None = None,
    machine_text: str | None = None,
    notes: dict | None = None,
) -> list:
    """The same-day report (the paper's tables), as the benchmark has always written it."""
    hs_dates, no_hs = dataset["hs_dates"], dataset["no_hs_dates"]
    held, tuning = dataset["held_out_dates"], dataset["tuning_dates"]
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make setup && source scripts/env.sh && .venv/bin/python benchmarks/run_benchmark.py`",
        f"on {date or time.strftime('%Y-%m-%d')}; machine: {machine_text or machine()}.",
        "",
        "**Data: SIMULATED.** No public multi-date hyperspectral series exists, so the 7-date series is",
        "simulated from one real EnMAP L2A image of Potsdam (18 tiles of ../shared/data/enmap_potsdam,",
        "2022-07-24) by `benchmarks/make_dataset.py`: per-parcel seasonal change of unmixed abundances",
        "on the real image, sensor noise, gains, misregistration and clouds, then the paper's Dataset I",
        f"protocol. Fine grid {dataset['fine_grid']['width']}×{dataset['fine_grid']['height']} px at "
        f"{dataset['fine_grid']['pixel_size_m']:g} m, {dataset['truth_bands']} HS bands. "
        f"Fine MS and HS on {', '.join(hs_dates)}; dense MS (×2 coarser) on all 7 dates; HS ×3 coarser.",
        f"Dates without an HS image: {', '.join(no_hs)}. **Held out of every tuning decision: "
        f"{', '.join(held)}**; tuning looked only at {', '.join(tuning)} and the HS dates.",
        "",
        "Metrics against the withheld fine HS truth, on pixels valid in both (model/metrics.py): CC and",
        "PSNR and SSIM averaged over bands, SAM over pixels (degrees), ERGAS with RATIO 3 (HS / fine pixel size), RMSE in",
        "reflectance. Time = wall time of the `qgis_process.bin` runs (train + fuse for the network),",
        "peak memory = the largest max RSS among them. All methods read the same MDD.",
        "",
    ]
    for title, dates in (
        (f"Dates without an HS image ({', '.join(no_hs)})", no_hs),
        (f"Held-out dates only ({', '.join(held)})", held),
        (f"Dates with an HS image ({', '.join(hs_dates)})", hs_dates),
    ):
        lines += [
            f"## {title}",
            "",
            "Kernel sets (layout of the paper's Table 2):",
            "",
            HEADER.format("Size", " Time (s) | Peak memory (MB) |", "---|---|"),
        ]
        for name, r in results.items():
            if name.startswith("STS Fusion") and "failed" in r:
                lines.append(failed_row(name.split("kernels ")[1], r["failed"], 9))
            elif name.startswith("STS Fusion"):
                lines.append(
                    fmt_row(
                        name.split("kernels ")[1],
                        mean_over(r["per_date"], dates),
                        f" {r['time_s']:.0f} | {r['peak_mb']:.0f} |",
                    )
                )
        lines += [
            "",
            "Methods (layout of the paper's Table 4):",
            "",
            HEADER.format("Method", " Time (s) | Peak memory (MB) |", "---|---|"),
        ]
        for name, r in results.items():
            if "failed" in r:
                lines.append(failed_row(name, r["failed"], 9))
                continue
            lines.append(fmt_row(name, mean_over(r["per_date"], dates), f" {r['time_s']:.0f} | {r['peak_mb']:.0f} |"))
        lines.append("")
    lines += ["## Per date", "", HEADER.format("Method / date", "", "")]
    for name, r in results.items():
        if "failed" in r:
            lines.append(failed_row(name, r["failed"], 7))
            continue
        for d in dataset["dates"]:
            kind = "HS" if d in hs_dates else ("held out" if d in held else "tuning")
            lines.append(fmt_row(f"{name} / {d} ({kind})", r["per_date"][d]))
    lines += ["", "## Runs", ""]
    if (notes or {}).get("runs"):  # a note saved with the run (results.json "notes": {"runs": text})
        lines += [*notes["runs"].splitlines(), ""]
    lines += ["| step | wall time (s) | peak memory (MB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['time_s']:.1f} | {v['peak_mb']:.0f} |" for k, v in runs.items()]
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())
