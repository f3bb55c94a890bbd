#!/usr/bin/env python3
"""Scale benchmark: time and peak memory of Build MDD stack, Train and Fuse at three grid sizes.

    .venv/bin/python benchmarks/scale.py [--sizes 512,1024,2048] [--hs-bands 128] [--dates 10]
        [--epochs 2] [--fuse-dates 2] [--dask-workers 1,2] [--work benchmarks/output/scale] [--dask-only]

For each size N it writes a synthetic series (procedural, no real data: what is measured is time and
memory, not accuracy): fine MS N x N px at 10 m (4 bands) on 4 dates, dense MS at 20 m (8 bands) on
``--dates`` dates, HS at 30 m (``--hs-bands`` bands, 400-2500 nm) on 4 dates; int16 reflectance x 1e4
with band scale, nodata, wavelengths and ACQUISITION_DATE, written block by block. Then it runs the
three algorithms through ``qgis_process.bin`` as a user would, each under GNU time (wall time and peak
resident memory of the process), fusing ``--fuse-dates`` dates (float32, DEFLATE): in this process
(the default: Dask tasks on its threads), with the plain loop (DASK_SCHEDULER=none), and on a local
Dask cluster of each ``--dask-workers`` count (DASK_SCHEDULER=<its address>) when dask.distributed is
installed. For the fused output it also times GDAL's own copy of the same files
with the same creation options (gdal_translate), the yardstick of "fusion at the speed of writing
its output". Results go to <work>/scale.json and, as a table, to stdout (paste into BENCHMARKS.md).
Each LocalCluster runs under GNU time as well: "cluster MiB" is the peak of its largest process (a
worker, or the scheduler). ``--dask-only`` reruns only the LocalCluster runs on an earlier run's MDD
and model (results: <work>/scale_dask.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, ".build", "plugins")
if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):
    os.makedirs(PLUGINS, exist_ok=True)
    os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))
sys.path.insert(0, PLUGINS)

from osgeo import gdal, osr

gdal.UseExceptions()

ORIGIN = (500000.0, 5800020.0)  # UTM 33N; a multiple of 60 m so the 10/20/30 m grids align
FINE_WL = (490.0, 560.0, 665.0, 842.0)
DENSE_WL = (443.0, 490.0, 560.0, 665.0, 705.0, 740.0, 842.0, 945.0)
FINE_T = (0, 3, 6, 9)  # indices into the dense dates: fine MS and HS dates
BLOCK = 256


def dates_of(n: int) -> list:
    start = np.datetime64("2022-04-01")
    return [str(start + np.timedelta64(12 * i, "D")) for i in range(n)]


def reflectance(wl: np.ndarray, y: np.ndarray, x: np.ndarray, t: int) -> np.ndarray:
    """(band, rows, cols) plausible reflectance: vegetation and soil mixed by smooth fields."""
    veg = 0.5 + 0.45 * np.sin(x / 37.0 + t * 0.3) * np.cos(y / 53.0 - t * 0.2)
    red_edge = 1.0 / (1.0 + np.exp(-(wl - 715.0) / 18.0))
    green = np.exp(-(((wl - 555.0) / 40.0) ** 2))
    water = np.exp(-(((wl - 1450.0) / 60.0) ** 2)) + np.exp(-(((wl - 1940.0) / 70.0) ** 2))
    v_spec = (0.04 + 0.05 * green + 0.42 * red_edge) * (1 - 0.8 * water)
    s_spec = (0.12 + 0.18 * (wl - 400.0) / 2100.0) * (1 - 0.3 * water)
    return (veg[None] * v_spec[:, None, None] + (1 - veg[None]) * s_spec[:, None, None]).astype(np.float32)


def write_layer(path: str, n: int, pixel: float, wl: tuple, date: str, t: int, seed: int) -> None:
    """One date of one role, int16 x 1e4, written by blocks of BLOCK rows."""
    size = math.ceil(n * 10.0 / pixel)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    opts = ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=2", "BIGTIFF=IF_SAFER", "INTERLEAVE=BAND"]
    ds = gdal.GetDriverByName("GTiff").Create(path, size, size, len(wl), gdal.GDT_Int16, opts)
    ds.SetGeoTransform((ORIGIN[0], pixel, 0.0, ORIGIN[1], 0.0, -pixel))
    ds.SetProjection(srs.ExportToWkt())
    ds.SetMetadataItem("ACQUISITION_DATE", date)
    w = np.asarray(wl)
    for b in range(len(wl)):
        band = ds.GetRasterBand(b + 1)
        band.SetNoDataValue(-32768)
        band.SetScale(1e-4)
        band.SetMetadata({"wavelength": f"{wl[b]:g}", "wavelength_units": "nm"})
    rng = np.random.default_rng(seed)
    for y0 in range(0, size, BLOCK):
        rows = min(BLOCK, size - y0)
        y, x = np.mgrid[y0 : y0 + rows, 0:size].astype(np.float32) * (pixel / 10.0)
        values = reflectance(w, y, x, t) + rng.normal(0, 0.003, (len(wl), rows, size)).astype(np.float32)
        for b in range(len(wl)):
            ds.GetRasterBand(b + 1).WriteArray(np.clip(values[b] * 1e4, -32000, 32000).astype(np.int16), 0, y0)
    ds = None


def make_series(folder: str, n: int, hs_bands: int, n_dates: int) -> dict:
    os.makedirs(folder, exist_ok=True)
    hs_wl = tuple(float(v) for v in np.linspace(400.0, 2500.0, hs_bands))
    dates = dates_of(n_dates)
    layers = {"FINE_MS": [], "DENSE_MS": [], "HS": []}
    for t, date in enumerate(dates):
        spec = [("DENSE_MS", "dense", 20.0, DENSE_WL)]
        if t in FINE_T:
            spec += [("FINE_MS", "fine", 10.0, FINE_WL), ("HS", "hs", 30.0, hs_wl)]
        for key, name, pixel, wl in spec:
            path = os.path.join(folder, f"{name}_{date}.tif")
            if not os.path.exists(path):
                write_layer(path + ".tmp.tif", n, pixel, wl, date, t, hash((name, t, n)) % 2**31)
                os.replace(path + ".tmp.tif", path)
            layers[key].append(path)
    return {"layers": layers, "dates": dates, "fine_dates": [dates[i] for i in FINE_T if i < n_dates]}


def qgis_env() -> dict:
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


def timed(label: str, args: list, log_path: str, env: dict | None = None) -> dict:
    """Runs ``args`` under GNU time: {"wall_s", "peak_mb", "rc"}."""
    times = log_path + ".time"
    cmd = ["/usr/bin/time", "-f", "%e %M", "-o", times] + args if os.path.exists("/usr/bin/time") else args
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or qgis_env())
    wall = time.monotonic() - t0
    peak = None
    if os.path.exists(times):
        with open(times) as f:
            parts = f.read().split()
        wall, peak = float(parts[-2]), float(parts[-1]) / 1024.0
    print(f"  {label}: {wall:.1f} s, peak {peak:.0f} MiB, rc {rc}" if peak else f"  {label}: {wall:.1f} s, rc {rc}")
    if rc != 0:
        with open(log_path) as f:
            print(f.read()[-3000:])
    return {"wall_s": round(wall, 2), "peak_mb": round(peak, 1) if peak else None, "rc": rc}


def qgis_process(alg: str, params: list) -> list:
    return ["qgis_process.bin", "run", alg, "--"] + params


def fusion_seconds(log_path: str) -> float | None:
    """The fusion's own time from Fuse's log ("Fused N date(s) in X s"): the process's start-up
    (QGIS, PyTorch) and the model's loading left out, as GDAL's copy has none of them."""
    import re

    with open(log_path) as f:
        found = re.findall(r"Fused \d+ date\(s\) in ([0-9.]+) s", f.read())
    return float(found[-1]) if found else None


def gdal_copy_time(paths: list, folder: str) -> float:
    """Seconds GDAL takes to copy the fused files with the creation options Fuse uses."""
    os.makedirs(folder, exist_ok=True)
    opts = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]
    opts += ["INTERLEAVE=BAND", "PREDICTOR=3", "NUM_THREADS=ALL_CPUS"]
    t0 = time.monotonic()
    for p in paths:
        gdal.Translate(os.path.join(folder, os.path.basename(p)), p, creationOptions=opts)
    return time.monotonic() - t0


def start_cluster(workers: int):
    """A local dask.distributed cluster of ``workers`` processes (one thread each) in a process of its
    own, so nothing of it stays behind in this one to slow the later runs: (process, address), or
    None where dask.distributed is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return None
    code = (
        "import sys\nfrom distributed import LocalCluster\n"
        f"c = LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, dashboard_address=None)\n"
        "print(c.scheduler_address, flush=True)\nsys.stdin.read()\nc.close()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    # Under GNU time: its peak is that of the cluster's largest process (a worker, or the scheduler).
    times = os.path.join(os.path.abspath(os.environ.get("TMPDIR", "/tmp")), f"stsfusion_cluster_{os.getpid()}.time")
    timer = ["/usr/bin/time", "-f", "%M", "-o", times] if os.path.exists("/usr/bin/time") else []
    proc = subprocess.Popen(
        timer + [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    return proc, proc.stdout.readline().strip(), times


def stop_cluster(cluster) -> float | None:
    """Stops the cluster; returns the peak resident memory (MiB) of its largest process."""
    proc, _, times = cluster
    proc.stdin.close()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    try:
        with open(times) as f:
            return round(float(f.read().split()[-1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        return None
    finally:
        if os.path.exists(times):
            os.remove(times)


def run_size(n: int, args, work: str) -> dict:
    folder = os.path.join(work, f"n{n}")
    print(f"Size {n} x {n} px", flush=True)
    t0 = time.monotonic()
    series = make_series(os.path.join(folder, "inputs"), n, args.hs_bands, args.dates)
    result = {"size": n, "hs_bands": args.hs_bands, "dates": args.dates, "make_s": round(time.monotonic() - t0, 1)}
    logs = os.path.join(folder, "logs")
    os.makedirs(logs, exist_ok=True)
    mdd = os.path.join(folder, "mdd", "scale.json")
    model = os.path.join(folder, "model.pt")
    reuse = args.dask_only and os.path.exists(mdd) and os.path.exists(model)
    if not reuse:
        shutil.rmtree(os.path.dirname(mdd), ignore_errors=True)
        params = [f"{k}={p}" for k, paths in series["layers"].items() for p in paths] + [f"OUTPUT={mdd}"]
        result["build"] = timed(
            "Build MDD stack", qgis_process("stsfusion:buildmdd", params), os.path.join(logs, "build.log")
        )
        train = [f"MDD={mdd}", f"EPOCHS={args.epochs}", "SELF_CHECK=false", "DEVICE=cpu", f"OUTPUT_MODEL={model}"]
        result["train"] = timed("Train", qgis_process("stsfusion:train", train), os.path.join(logs, "train.log"))
    fuse_dates = ",".join(series["dates"][1 : 1 + args.fuse_dates])
    pixel_bands = n * n * args.hs_bands * args.fuse_dates
    runs = [] if reuse else [("in process", None), ("loop", 0)]
    runs += [(f"Dask, {w} worker(s)", w) for w in args.dask_workers]
    result["fuse"] = {}
    for label, workers in runs:
        out = os.path.join(folder, "fused" if workers is None else f"fused_{workers}")
        shutil.rmtree(out, ignore_errors=True)
        fuse = [f"MDD={mdd}", f"MODEL={model}", f"DATES={fuse_dates}", "DEVICE=cpu", f"OUTPUT_FOLDER={out}"]
        cluster = None
        if workers == 0:  # the plain loop, without Dask: one pass reads each tile once for all its dates
            fuse.append("DASK_SCHEDULER=none")
        elif workers is not None:
            cluster = start_cluster(workers)
            if cluster is None:
                print(f"  {label}: skipped (dask.distributed is not installed)")
                continue
            fuse.append(f"DASK_SCHEDULER={cluster[1]}")
        worker_peak = None
        try:
            r = timed(f"Fuse, {label}", qgis_process("stsfusion:fuse", fuse), os.path.join(logs, f"fuse_{workers}.log"))
        finally:
            if cluster is not None:
                worker_peak = stop_cluster(cluster)
        if worker_peak is not None:
            r["cluster_peak_mb"] = worker_peak
            print(f"  largest process of the cluster (worker or scheduler): peak {worker_peak:.0f} MiB")
        r["fuse_s"] = fusion_seconds(os.path.join(logs, f"fuse_{workers}.log"))  # without QGIS's start-up
        r["pixel_bands_per_s"] = round(pixel_bands / (r["fuse_s"] or r["wall_s"])) if r["rc"] == 0 else None
        if workers is None and r["rc"] == 0:
            fused = [os.path.join(out, f"fused_{d}.tif") for d in fuse_dates.split(",")]
            r["gdal_copy_s"] = round(gdal_copy_time(fused, os.path.join(folder, "gdal_copy")), 2)
            r["vs_gdal_copy"] = round((r["fuse_s"] or r["wall_s"]) / r["gdal_copy_s"], 2)
            shutil.rmtree(os.path.join(folder, "gdal_copy"), ignore_errors=True)
            print(f"  GDAL copy of the fused files: {r['gdal_copy_s']:.1f} s (Fuse: {r['vs_gdal_copy']:.1f}x)")
        result["fuse"][label] = r
    return result


def table(results: list) -> str:
    lines = [
        "| grid (px) | HS bands | dates | Build s / MiB | Train s / MiB | Fuse s / MiB | fusion itself s | "
        "Fuse pixel·bands/s | GDAL copy s (Fuse ×) | loop without Dask: fusion s / MiB | "
        "Dask LocalCluster 1 worker: fusion s / cluster MiB | 2 workers: fusion s / cluster MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f = r["fuse"].get("in process", {})
        lp = r["fuse"].get("loop", {})
        d1 = r["fuse"].get("Dask, 1 worker(s)", {})
        d2 = r["fuse"].get("Dask, 2 worker(s)", {})

        def cell(x):
            return f"{x['wall_s']:.1f} / {x['peak_mb']:.0f}" if x and x.get("peak_mb") else "–"

        lines.append(
            f"| {r['size']}² | {r['hs_bands']} | {r['dates']} | {cell(r['build'])} | {cell(r['train'])} | "
            f"{cell(f)} | {f.get('fuse_s', '–')} | {f.get('pixel_bands_per_s') or 0:,} | "
            f"{f.get('gdal_copy_s', '–')} ({f.get('vs_gdal_copy', '–')}×) | "
            f"{lp.get('fuse_s', '–')} / {lp.get('peak_mb', '–')} | {d1.get('fuse_s', '–')} / {d1.get('cluster_peak_mb', '–')} | "
            f"{d2.get('fuse_s', '–')} / {d2.get('cluster_peak_mb', '–')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--hs-bands", type=int, default=128)
    ap.add_argument("--dates", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--fuse-dates", type=int, default=2)
    ap.add_argument("--dask-workers", default="1,2")
    ap.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "output", "scale"))
    ap.add_argument(
        "--dask-only",
        action="store_true",
        help="only the LocalCluster runs, on the MDD and model of an earlier run (results: scale_dask.json)",
    )
    args = ap.parse_args(argv)
    args.dask_workers = [int(v) for v in args.dask_workers.split(",") if v.strip()]
    os.makedirs(args.work, exist_ok=True)
    results = []
    for n in (int(v) for v in args.sizes.split(",")):
        results.append(run_size(n, args, args.work))
        summary = {
            "command": "benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
            "results": results,
        }
        with open(os.path.join(args.work, "scale_dask.json" if args.dask_only else "scale.json"), "w") as f:
            json.dump(summary, f, indent=1)
    if not args.dask_only:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
