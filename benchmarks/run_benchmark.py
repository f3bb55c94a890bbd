#!/usr/bin/env python3
"""The development benchmark of the paper's protocol: writes BENCHMARKS.md.

    make setup && source scripts/env.sh && .venv/bin/python benchmarks/run_benchmark.py

1. Builds the simulated 7-date series from the real EnMAP tiles in ../shared/data
   (benchmarks/make_dataset.py) unless it is already in benchmarks/output/dataset.
2. Runs, each through `qgis_process.bin` as a batch user would: Build MDD stack; Train fusion
   model + Fuse time series with the kernel sets 1, 1/3 and 1/3/5 (default parameters otherwise);
   the two baselines (interpolation, two-stage).
3. Assesses every fused date against the withheld truth (model/metrics.py: CC, SAM, PSNR, SSIM,
   ERGAS, RMSE), separately for dates with and without an HS image, and writes BENCHMARKS.md with
   wall time and peak memory (max RSS of each qgis_process.bin run) and the machine.
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

import numpy as np

from stsfusion.model.evaluation.metrics import assess_rasters

KERNEL_SETS = ("1", "1/3", "1/3/5")
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


def run_measured(args: list, log_path: str) -> dict:
    """Runs a command; returns wall time (s) and its own peak resident memory (MB, from wait4)."""
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=qgis_env())
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(args[:4])} failed ({code}); log {log_path}:\n{tail}")
    return {"time_s": wall, "peak_mb": usage.ru_maxrss / 1024.0}


def qgis_process(alg: str, params: list, log_path: str) -> dict:
    print(f"  qgis_process.bin run {alg} ...", flush=True)
    return run_measured(["qgis_process.bin", "run", alg, "--", *params], log_path)


def assess_folder(folder: str, prefix: str, dataset: dict, dataset_dir: str, work: str) -> dict:
    """date -> metrics dict of `<prefix>_<date>.tif` against the truth."""
    out = {}
    for date in dataset["dates"]:
        fused = os.path.join(folder, f"{prefix}_{date}.tif")
        truth = os.path.join(dataset_dir, dataset["truth_dir"], f"truth_hs_{date}.tif")
        r = assess_rasters(fused, truth, dataset["hs_factor"], os.path.join(work, "assess.csv"))
        out[date] = {m: float(r["overall"][m.upper()]) for m in METRICS}
    return out


def mean_over(per_date: dict, dates: list) -> dict:
    return {m: float(np.mean([per_date[d][m] for d in dates])) for m in METRICS}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    ap.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "output"))
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--kernels", default=",".join(KERNEL_SETS), help="comma-separated kernel sets")
    args = ap.parse_args(argv)
    if shutil.which("qgis_process.bin") is None:
        raise SystemExit("qgis_process.bin not found: run `make setup` first.")
    dataset_dir = os.path.join(args.work, "dataset")
    if not os.path.exists(os.path.join(dataset_dir, "dataset.json")):
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "benchmarks", "make_dataset.py"),
                "--data",
                args.data,
                "--out",
                dataset_dir,
            ],
            check=True,
        )
    with open(os.path.join(dataset_dir, "dataset.json")) as f:
        dataset = json.load(f)
    dataset.setdefault(
        "hs_factor", round(dataset["roles"]["hs"]["pixel_size_m"] / dataset["fine_grid"]["pixel_size_m"])
    )
    subprocess.run(["qgis_process.bin", "plugins", "enable", "stsfusion"], env=qgis_env(), capture_output=True)
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs, exist_ok=True)
    runs = {}

    print("Build MDD stack", flush=True)
    mdd = os.path.join(args.work, "mdd", "benchmark_mdd.json")
    os.makedirs(os.path.dirname(mdd), exist_ok=True)
    params = [
        f"{key}={os.path.join(dataset_dir, name)}"
        for key, role in (("FINE_MS", "fine_ms"), ("DENSE_MS", "dense_ms"), ("HS", "hs"))
        for name in dataset["roles"][role]["files"]
    ]
    runs["buildmdd"] = qgis_process(
        "stsfusion:buildmdd", params + [f"OUTPUT={mdd}"], os.path.join(logs, "buildmdd.log")
    )

    results = {}
    for kernels in args.kernels.split(","):
        tag = "k" + kernels.replace("/", "")
        print(f"Network, kernel set {kernels}", flush=True)
        model = os.path.join(args.work, f"model_{tag}.pt")
        folder = os.path.join(args.work, f"fused_{tag}")
        train = qgis_process(
            "stsfusion:train",
            [
                f"MDD={mdd}",
                f"KERNELS={kernels}",
                f"OUTPUT_MODEL={model}",
                f"OUTPUT_REPORT={os.path.join(args.work, f'report_{tag}.html')}",
            ],
            os.path.join(logs, f"train_{tag}.log"),
        )
        fuse = qgis_process(
            "stsfusion:fuse",
            [f"MDD={mdd}", f"MODEL={model}", f"OUTPUT_FOLDER={folder}"],
            os.path.join(logs, f"fuse_{tag}.log"),
        )
        runs[f"train_{tag}"], runs[f"fuse_{tag}"] = train, fuse
        results[f"STS Fusion, kernels {kernels}"] = {
            "per_date": assess_folder(folder, "fused", dataset, dataset_dir, args.work),
            "time_s": train["time_s"] + fuse["time_s"],
            "peak_mb": max(train["peak_mb"], fuse["peak_mb"]),
        }
    for method, label in BASELINES:
        print(f"Baseline {method}", flush=True)
        folder = os.path.join(args.work, f"baseline_{method}")
        run = qgis_process(
            "stsfusion:baseline",
            [f"MDD={mdd}", f"METHOD={method}", f"OUTPUT_FOLDER={folder}"],
            os.path.join(logs, f"baseline_{method}.log"),
        )
        runs[f"baseline_{method}"] = run
        results[label] = {
            "per_date": assess_folder(folder, method, dataset, dataset_dir, args.work),
            "time_s": run["time_s"],
            "peak_mb": run["peak_mb"],
        }

    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump({"results": results, "runs": runs}, f, indent=1)
    write_report(args.out, dataset, results, runs)
    print(f"wrote {args.out}")
    return 0


def write_report(path: str, dataset: dict, results: dict, runs: dict):
    hs_dates, no_hs = dataset["hs_dates"], dataset["no_hs_dates"]
    held, tuning = dataset["held_out_dates"], dataset["tuning_dates"]
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make setup && source scripts/env.sh && .venv/bin/python benchmarks/run_benchmark.py`",
        f"on {time.strftime('%Y-%m-%d')}; machine: {machine()}.",
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
            if name.startswith("STS Fusion"):
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
            lines.append(fmt_row(name, mean_over(r["per_date"], dates), f" {r['time_s']:.0f} | {r['peak_mb']:.0f} |"))
        lines.append("")
    lines += ["## Per date", "", HEADER.format("Method / date", "", "")]
    for name, r in results.items():
        for d in dataset["dates"]:
            kind = "HS" if d in hs_dates else ("held out" if d in held else "tuning")
            lines.append(fmt_row(f"{name} / {d} ({kind})", r["per_date"][d]))
    lines += ["", "## Runs", "", "| step | wall time (s) | peak memory (MB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['time_s']:.1f} | {v['peak_mb']:.0f} |" for k, v in runs.items()]
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
