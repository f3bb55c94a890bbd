"""The self-check: an accuracy estimate on the user's own scene, with no truth needed.

The training's first cycle of epochs (the EPOCHS asked for) runs on the MDD with one HS image
withheld (``MDD.hiding``): the HS date nearest the middle of the series, or, where there is only one HS date,
the quarter of the grid where it has the most valid pixels. The network as it stands then, and the
two-stage baseline (fitted on the same view), predict that date, and both are compared with the
withheld HS at its own pixel size (block means of ``round(R)`` grid pixels, R = HS / grid pixel
size: Wald's protocol, the only scale at which the scene has a truth). CC, SAM, PSNR and SSIM of
both go into the log, the training report and the model file; where the network is worse than the
baseline on a metric, a warning names it. A second cycle, a fifth more epochs, trains the same
network on everything (``training.Withheld``): one training, not a self-check's and then the model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.calendar import check_max_days
from ..core.callbacks import Callbacks, callbacks_or_default
from ..core.degrade import degrade
from ..core.vocabulary import by_distance, day_number
from ..evaluation.metrics import assess
from ..mdd.format import MDD
from ..nn.device import select_device
from ..nn.predictor import FusionPredictor
from ..nn.samples import check_mdd
from ..nn.training import (
    DEFAULTS,
    Withheld,
    build_metadata,
    check_parameters,
    self_checked_epochs,
    train_fusion_model,
)
from .baselines import BaselineError, TwoStage
from .tiling import TileReadCache, expand_window, tile_windows

METRICS = ("CC", "SAM", "PSNR", "SSIM")
HIGHER_IS_BETTER = {"CC": True, "SAM": False, "PSNR": True, "SSIM": True}
TILE = 96  # evaluation tile, a multiple of the HS ratios 2, 3, 4 and 6
PROBE_SIDE = 192  # the early stop's block of the withheld HS (grid px a side), also a multiple of them


def choose_holdout(mdd: MDD) -> dict:
    """What to withhold: {"date", "window" (None = the whole date), "label"}."""
    hs = mdd.roles["hs"]
    valid = {d: int(mdd.read_mask("hs", dates=[d])[0].sum()) for d in hs.dates}
    dates = [d for d in hs.dates if valid[d] > 0]
    if not dates:
        raise ValueError("The HS has no valid pixel: nothing to check against.")
    if len(dates) >= 2:
        days = [day_number(d) for d in mdd.dates]
        date = by_distance(dates, (days[0] + days[-1]) // 2)[0]
        return {"date": date, "window": None, "label": f"HS {date} withheld (whole date)"}
    date = dates[0]
    f = _factor(mdd)
    g = mdd.grid
    w, h = (g.width // 2) // f * f, (g.height // 2) // f * f
    mask = mdd.read_mask("hs", dates=[date])[0]
    best = max(
        ((x, y) for y in (0, (g.height - h) // f * f) for x in (0, (g.width - w) // f * f)),
        key=lambda o: int(mask[o[1] : o[1] + h, o[0] : o[0] + w].sum()),
    )
    window = (best[0], best[1], w, h)
    return {"date": date, "window": window, "label": f"HS {date} withheld in the block {window} (x, y, w, h)"}


def _factor(mdd: MDD) -> int:
    return max(1, int(round(mdd.scale_ratio("hs"))))


def _coarse(values: np.ndarray, f: int) -> np.ndarray:
    return values if f == 1 else degrade(values, f, sigma=0)


def evaluate_holdout(
    view: MDD,
    mdd: MDD,
    predictor: FusionPredictor,
    two_stage: TwoStage | None,
    holdout: dict,
    callbacks: Callbacks | None = None,
) -> dict:
    """CC, SAM, PSNR, SSIM of the network and the two-stage baseline against the withheld HS,
    both at the HS pixel size, on the pixels where all three are valid (``two_stage`` None: the
    network alone, {"network": {...}})."""
    cb = callbacks_or_default(callbacks)
    f = _factor(mdd)
    g = mdd.grid
    x0, y0, w, h = holdout["window"] or (0, 0, g.width // f * f, g.height // f * f)
    date = holdout["date"]
    size = -(-TILE // f) * f
    nb = mdd.roles["hs"].n_bands
    keys = ("network", "observed") if two_stage is None else ("network", "two_stage", "observed")
    out = {k: np.full((nb, h // f, w // f), np.nan, np.float32) for k in keys}
    cache = TileReadCache(view.registered(predictor.shifts))
    mdd = mdd.registered(predictor.shifts)  # the withheld HS where the network puts it: moved onto the fine MS
    for tx, ty, tw, th in tile_windows(w, h, size):
        cb.check("Self-check canceled: no model file written.")
        tile = (x0 + tx, y0 + ty, tw // f * f, th // f * f)
        if tile[2] == 0 or tile[3] == 0:
            continue
        cache.clear()
        window, crop = expand_window(tile, predictor.halo, g.width, g.height)
        predicted = {"network": predictor.predict(cache, window, date, crop=crop)}
        if two_stage is not None:
            predicted["two_stage"] = two_stage.predict(tile, [date])[date]
        observed = mdd.read("hs", tile, [date])[0]
        observed[observed == -9999.0] = np.nan
        rows = slice(ty // f, (ty + tile[3]) // f)
        cols = slice(tx // f, (tx + tile[2]) // f)
        for key, values in (*predicted.items(), ("observed", observed)):
            out[key][:, rows, cols] = _coarse(values, f)
    ok = np.logical_and.reduce([np.isfinite(v) for v in out.values()])
    for key in out:
        out[key][~ok] = np.nan
    result = {}
    for key in keys[:-1]:
        overall = assess(out[key], out["observed"], ratio=float(f))["overall"]
        result[key] = {m: float(overall[m]) for m in METRICS}
    return result


def worse_metrics(result: dict) -> list:
    """The metrics on which the network is worse than the two-stage baseline."""
    net, base = result["network"], result["two_stage"]
    return [m for m in METRICS if (net[m] < base[m]) == HIGHER_IS_BETTER[m] and net[m] != base[m]]


def describe(result: dict) -> str:
    def row(m: dict) -> str:
        return f"CC {m['CC']:.4f}, SAM {m['SAM']:.2f}°, PSNR {m['PSNR']:.2f} dB, SSIM {m['SSIM']:.4f}"

    return (
        f"Self-check ({result['withheld']}; compared at the HS pixel size, x{result['factor']}): "
        f"network {row(result['network'])}; two-stage baseline {row(result['two_stage'])}."
    )


def report_self_check(meta: dict, callbacks: Callbacks) -> None:
    """Says what the model's self-check measured (Fuse prints it beside the model it loads)."""
    result = meta.get("info", {}).get("self_check")
    if not result:
        callbacks.log("This model has no self-check (trained with SELF_CHECK off, or by an older version).")
    elif "skipped" in result:
        callbacks.log(f"This model's self-check was skipped: {result['skipped']}")
    else:
        callbacks.log(describe(result))
        if result.get("worse_than_baseline"):
            callbacks.warn(
                f"At training time the network was worse than the two-stage baseline on "
                f"{', '.join(result['worse_than_baseline'])} (self-check)."
            )


def measure_withheld(
    mdd: MDD,
    view: MDD,
    holdout: dict,
    net: Any,
    data: Any,
    fit_params: dict,
    device: str,
    callbacks: Callbacks | None = None,
) -> dict:
    """The self-check's measurement: the network trained on ``view`` (``net``, with its TrainingSet
    ``data``) and the two-stage baseline fitted on the same view predict the withheld HS, and both are
    compared with it. Returns {"withheld", "date", "window", "factor", "network": {metric: value},
    "two_stage": {...}, "worse_than_baseline": [metrics]}, or {"skipped": reason} where the data cannot
    support it."""
    cb = callbacks_or_default(callbacks)
    quiet = Callbacks(progress=lambda *a: None, is_canceled=cb.is_canceled, log=lambda message: None)
    try:
        two_stage = TwoStage(view, TILE, callbacks=quiet, max_days_apart=fit_params["max_days_apart"])
        step = two_stage.step  # the baseline's fit needs tiles aligned with both coarse grids
        two_stage.tiles = tile_windows(mdd.grid.width, mdd.grid.height, -(-TILE // step) * step)
        two_stage.fit_spectral()
    except (BaselineError, ValueError) as e:
        cb.warn(f"Self-check skipped: {e}")
        return {"skipped": str(e)}
    meta, arrays = build_metadata(data, net, dict(fit_params), [], {})
    predictor = FusionPredictor(meta, arrays, net, device)
    scores = evaluate_holdout(view, mdd, predictor, two_stage, holdout, quiet)
    result = {
        "withheld": holdout["label"],
        "date": holdout["date"],
        "window": holdout["window"],
        "factor": _factor(mdd),
        **scores,
    }
    result["worse_than_baseline"] = worse_metrics(result)
    cb.log(describe(result))
    if result["worse_than_baseline"]:
        names = ", ".join(result["worse_than_baseline"])
        cb.warn(
            f"On the withheld HS the network is worse than the two-stage baseline on {names}: its fused "
            "images are likely poorer than the baseline's (try another SEED or other EPOCHS, more is not "
            "always better; or compare with 'Baseline fusion' METHOD=two_stage)."
        )
    return result


def probe_block(mdd: MDD, holdout: dict) -> dict:
    """The holdout cut to its central block of at most PROBE_SIDE grid px a side, in whole HS pixels:
    what the early stop measures between epochs (bounded, whatever the scene's size)."""
    f, g = _factor(mdd), mdd.grid
    x0, y0, w, h = holdout["window"] or (0, 0, g.width // f * f, g.height // f * f)
    side = max(f, PROBE_SIDE // f * f)
    bw, bh = min(w, side), min(h, side)
    return {**holdout, "window": (x0 + (w - bw) // 2 // f * f, y0 + (h - bh) // 2 // f * f, bw, bh)}


def probe_withheld(
    mdd: MDD, view: MDD, holdout: dict, net: Any, data: Any, fit_params: dict, device: str, callbacks: Callbacks
) -> float:
    """The early stop's measure of the network as it stands (``net``, trained on ``view``): its CC
    against the withheld HS at the HS pixel size on ``probe_block`` (NaN without a valid pixel there).
    The network alone, no baseline: a few tiles, run between two epochs."""
    quiet = Callbacks(progress=lambda *a: None, is_canceled=callbacks.is_canceled, log=lambda message: None)
    meta, arrays = build_metadata(data, net, dict(fit_params), [], {})
    predictor = FusionPredictor(meta, arrays, net, device)
    return evaluate_holdout(view, mdd, predictor, None, probe_block(mdd, holdout), quiet)["network"]["CC"]


def train_with_self_check(
    mdd_path: str,
    model_path: str,
    self_check: bool = True,
    callbacks: Callbacks | None = None,
    **params: Any,
) -> dict:
    """``train_fusion_model`` (same parameters) with the self-check inside it: the first cycle of epochs
    trains with one HS image withheld, the network is measured on it, and a second, shorter cycle
    trains on everything (``training.Withheld``, ``training.self_checked_epochs``). The result goes
    into the model file, the returned info and the log (a run resumed past the check takes it from its
    checkpoint). Returns train_fusion_model's summary plus "self_check" (None without)."""
    cb = callbacks_or_default(callbacks)
    params = {**DEFAULTS, **params}
    check_parameters(
        params["pca_components"], params["epochs"], params["patch_size"], params["batch_size"], params["learning_rate"]
    )
    check_max_days(params["max_days_apart"])
    if not self_check:
        summary = train_fusion_model(mdd_path, model_path, callbacks=cb, **params)
        summary["self_check"] = None
        return summary
    mdd = MDD.open(mdd_path)
    check_mdd(mdd, params["patch_size"])
    holdout = choose_holdout(mdd)
    first = self_checked_epochs(params["epochs"])[0]
    fit_params = {k: v for k, v in params.items() if k not in ("device", "resume", "checkpoint_every", "threads")}
    device = select_device(params["device"])

    def check(net: Any, data: Any) -> dict:
        return {"self_check": measure_withheld(mdd, view, holdout, net, data, fit_params, device, cb)}

    def probe(net: Any, data: Any) -> float:
        return probe_withheld(mdd, view, holdout, net, data, fit_params, device, cb)

    view = mdd.hiding("hs", holdout["date"], holdout["window"])
    cb.log(f"Self-check: {holdout['label']} for the first {first} epochs, then measured.")
    summary = train_fusion_model(mdd_path, model_path, callbacks=cb, withheld=Withheld(view, check, probe), **params)
    summary["self_check"] = summary["info"].get("self_check")
    return summary
