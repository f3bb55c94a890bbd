"""Training the fusion network on an MDD: `train_fusion_model`, the one function the algorithm calls.

Each step draws one batch per task (seeded), computes the four task losses, combines them with the
learnable multi-task loss, and checks for cancel (``Callbacks``). A cancelled run raises ``Canceled``
and writes nothing.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.calendar import MAX_DAYS_APART, check_max_days
from ..core.callbacks import Callbacks, callbacks_or_default
from ..core.memory import format_mb, peak_rss_mb
from ..core.vocabulary import ROLES
from ..mdd.format import MDD
from ..mdd.geotiff import with_gdal_cache
from ..mdd.registration import estimate_blur, estimate_shifts, shifts_to_json
from .checkpoint import CHECKPOINT_EVERY, Checkpointer, checkpoint_path, restore_rng, rng_state, training_fingerprint
from .detail_skill import detail_skill
from .device import (
    autocast,
    configure_threads,
    describe_device,
    grad_scaler,
    is_cuda,
    is_out_of_memory,
    precision_for,
    release_gpu_memory,
    select_device,
)
from .model_file import save_model
from .optimiser import Adam, LambdaSchedule
from .preprocessing import TrainingDataError, ridge
from .samples import TrainingSet

if TYPE_CHECKING:
    from .network import FusionNetwork

DEFAULTS = dict(
    kernels="1",
    pca_components=12,
    epochs=20,
    patch_size=32,
    batch_size=8,
    learning_rate=0.002,
    device="auto",
    seed=0,
    max_days_apart=MAX_DAYS_APART,
)
WIDTH, N_BLOCKS = 32, 2
# epochs 20: chosen on the development scenes and cloudy_fine, tuning date, two seeds (BENCHMARKS.md, "The
# training's length, chosen again"): against 15, CC +0.0006, SAM -0.34 deg, SSIM +0.002; 30 no better.
# Design switches; defaults chosen with benchmarks/generality.py on two development scenes' tuning date
# and HS dates, 3 seeds (BENCHMARKS.md, "Generality"): guided_change on (tuning date CC +0.0028, PSNR
# +0.25 dB, SSIM +0.003 with 15 epochs); date_maps and reference_in_prior off (no better).
# Data options, chosen on three development scenes' tuning date (BENCHMARKS.md, "Co-registration and the
# HS's blur on the grid"): coregister moves each coarse image onto the fine MS before training and fusion
# (mdd/registration.py; CC +0.0130, SSIM +0.029); fitted_blur measures the HS's blur on the grid for the
# network's HS-scale blurs (registration.estimate_blur; CC +0.0007, SSIM +0.003). multi_date_guide: the
# guided change's similar neighbours judged on the fine MS of every date but the target's, in training
# and fusion (network.GuidedChange; BENCHMARKS.md, "The guided change on every fine MS date").
# temporal_trunk off: the temporal prediction is its guided prior f_q + L(change), no trunk; its
# correction, learned on the few pairs of fine MS dates, did not carry over to other dates (BENCHMARKS.md,
# "The temporal prediction without the trunk").
NETWORK_OPTIONS = dict(
    reference_smoothing=2.0,
    reference_in_prior=False,
    smooth_correction=True,
    date_maps=False,
    guided_change=True,
    coregister=True,
    fitted_blur=True,
    multi_date_guide=True,
    temporal_trunk=False,
)
MIN_STEPS, MAX_STEPS = 10, 60  # per epoch
CANCELED = "Training cancelled: no model file written."


def network_options(data: TrainingSet) -> dict:
    """NETWORK_OPTIONS as FusionNetwork takes them: ``guided_change`` becomes the radius of the
    guided change, 1.5 dense MS pixels (at least 2 grid pixels), as the two-stage baseline's window."""
    options = dict(NETWORK_OPTIONS)
    for data_option in ("coregister", "fitted_blur"):  # how the data are read, not the network's
        options.pop(data_option, None)
    guided = options.pop("guided_change", False)
    options["guided_radius"] = max(2, int(round(1.5 * data.dense_ratio))) if guided else 0
    return options


def _masked_mse(pred, target, mask):
    w = mask.expand_as(pred)
    return ((pred - target) ** 2 * w).sum() / w.sum().clamp_min(1.0)


def task_losses(net: FusionNetwork, data: TrainingSet, rng: np.random.Generator, batch_size: int, device: str) -> dict:
    """{task: scalar loss} for one batch of each task (see model/README.md)."""
    import torch

    def dev(b):
        out = {k: v.to(device) for k, v in b.items() if k != "refs"}
        if "refs" in b:
            out["refs"] = [{k: v.to(device) for k, v in r.items()} for r in b["refs"]]
        return out

    losses = {}
    if "spatial" in data.tasks or "temporal" in data.tasks:
        b = dev(data.fine_batch(rng, batch_size))
        if "spatial" in data.tasks:
            sp, _ = net.spatial(b["d"], b["vd"])
            losses["spatial"] = _masked_mse(sp, b["y"], b["vy"] * b["vd"])
        if "temporal" in data.tasks:
            v = b["vfq"] * b["vdq"] * b["vd"]
            tp, _ = net.temporal(b["fq"], b["dq"], b["d"], v, b["guide"] if net.multi_date_guide else None)
            losses["temporal"] = _masked_mse(tp, b["y"], b["vy"] * v)
    b = dev(data.spectral_batch(rng, batch_size))
    sp, _ = net.spatial(b["d"], b["vd"])
    m = b["va"] * b["a"] + (1 - b["va"]) * b["vd"] * sp
    mb, vmb = net.blur(m, torch.maximum(b["va"], b["vd"]))
    s, _ = net.spectral(mb, b.get("wmap"))
    losses["spectral"] = _masked_mse(s, b["y"], b["vy"] * vmb)
    b = dev(data.fusion_batch(rng, batch_size))
    out = net.fuse(b)
    losses["fusion"] = _masked_mse(out["scores"], b["y"], b["vy"] * out["vm"])
    return losses


def _pixels(arr, t, valid):
    """(n, bands) of arr[t] at the pixels where valid (row, col) is true."""
    return np.moveaxis(arr[t], 0, -1)[valid]


def init_linear_priors(net: FusionNetwork, data: TrainingSet, rng: np.random.Generator) -> None:
    """Starts each branch's linear prior at its least-squares fit (the two-stage baseline's maps), so
    training begins from a sound physical model and only learns what is beyond it; then fits each HS
    date's own map (``fit_hs_maps``)."""
    band_map = _band_map(data, rng)  # dense MS -> fine MS, (W (fine, dense), b (fine,)), or None
    if band_map is not None:
        _set_conv(net.spatial.linear, *band_map)
    xs, ys = [], []
    for reg in data.regions:
        f, d = reg.fine, reg.dense
        for q, t in data.pairs:
            dq, dt = data.dense_of[f.dates[q]], data.dense_of[f.dates[t]]
            ok = f.valid[t] & f.valid[q] & d.valid[dq] & d.valid[dt]
            xs.append(_pixels(d.z, dt, ok) - _pixels(d.z, dq, ok))
            ys.append(_pixels(f.z, t, ok) - _pixels(f.z, q, ok))
    if xs and sum(len(x) for x in xs):
        _set_conv(net.temporal.change, *ridge(np.concatenate(xs), np.concatenate(ys), bias=False, rng=rng))
    elif band_map is not None:  # one fine MS date: the change of the fine MS is the mapped dense change
        _set_conv(net.temporal.change, band_map[0], np.zeros(band_map[0].shape[0]))
    xs, ys, per_date = _spectral_pixels(data, band_map)
    if xs and sum(len(x) for x in xs):
        _set_conv(net.spectral.linear, *ridge(np.concatenate(xs), np.concatenate(ys), rng=rng))
    _fit_maps(net, data, xs, ys, per_date, rng)


def fit_hs_maps(net: FusionNetwork, data: TrainingSet, rng: np.random.Generator) -> None:
    """Each HS date's own map and the maps' detail skill on ``data`` (``_fit_maps``), the network's
    linear priors left as they are: for a run that goes on with more HS dates (``Withheld``)."""
    xs, ys, per_date = _spectral_pixels(data, _band_map(data, rng))
    _fit_maps(net, data, xs, ys, per_date, rng)


def _set_conv(conv, w, b) -> None:
    import torch

    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w.astype(np.float32))[:, :, None, None])
        if conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(b.astype(np.float32)))


def _band_map(data: TrainingSet, rng: np.random.Generator) -> tuple | None:
    """The ridge map dense MS -> fine MS on the dates with both, (W (fine, dense), b (fine,)); None
    without such a date."""
    xs, ys = [], []
    for reg in data.regions:  # the pixels of every region in the pool (the whole grid when it is one)
        f, d = reg.fine, reg.dense
        for t in data.spatial_dates:
            dt = data.dense_of[f.dates[t]]
            ok = f.valid[t] & d.valid[dt]
            xs.append(_pixels(d.z, dt, ok))
            ys.append(_pixels(f.z, t, ok))
    if xs and sum(len(x) for x in xs):
        return ridge(np.concatenate(xs), np.concatenate(ys), rng=rng)
    return None


def _spectral_pixels(data: TrainingSet, band_map: tuple | None) -> tuple[list, list, dict]:
    """(fine MS pixels, HS score pixels, HS date -> indices into them) at the HS scale, per region and
    HS date: the fine MS that stands for the date, or without one its dense MS mapped by ``band_map``."""
    xs, ys, per_date = [], [], {}
    for reg in data.regions:
        fb = reg.fine_b
        for h in data.hs_dates:
            t = data.hs_fine.get(h)
            if t is not None:
                ok = reg.hs.valid[h] & fb[1][t]
                xs.append(_pixels(fb[0], t, ok))
            elif band_map is not None:  # no fine MS near this HS date: its dense MS mapped to the fine bands
                dh = data.dense_of[reg.hs.dates[h]]
                ok = reg.hs.valid[h] & reg.dense_b[1][dh]
                xs.append(_pixels(reg.dense_b[0], dh, ok) @ band_map[0].T + band_map[1])
            else:
                continue
            ys.append(_pixels(reg.hs.z, h, ok))
            per_date.setdefault(h, []).append(len(xs) - 1)
    return xs, ys, per_date


def _fit_maps(net, data: TrainingSet, xs: list, ys: list, per_date: dict, rng: np.random.Generator) -> None:
    # Each HS date's own map: in the model file for fusion (the detail of the HS dates, predictor.py),
    # and, with the date_maps option, in place of the spectral branch's linear part.
    data.hs_maps = fit_date_maps(data, xs, ys, per_date, rng, required=bool(getattr(net, "date_maps", False)))
    # How far the maps' detail can be trusted, per PCA component (detail_skill.py): fusion weights
    # its detail step by it. No random draw here, so the seeded training that follows is unchanged.
    # NaN where it cannot be measured (no HS date with its own fine MS, too few pixels): the step whole.
    if data.hs_maps is not None:
        skill = detail_skill(data)
        data.detail_skill = skill if skill is not None else np.full(data.pca.n_components, np.nan, np.float32)
    else:
        data.detail_skill = None
    if getattr(net, "date_maps", False):
        data.date_maps = data.hs_maps


def fit_date_maps(
    data: TrainingSet, xs: list, ys: list, per_date: dict, rng: np.random.Generator, required: bool = True
) -> np.ndarray | None:
    """One ridge map per HS date (its own pixels only): (n HS dates, k, n_fine + 1), weights then
    intercept; NaN for a date with fewer than 4 pixels per coefficient (it borrows its neighbours').
    When no date has one: TrainingDataError if ``required``, else None."""
    k, nf = data.pca.n_components, data.n_fine_bands
    maps = np.full((len(data.hs_dates_all), k, nf + 1), np.nan, np.float32)
    for h, parts in per_date.items():
        x = np.concatenate([xs[i] for i in parts])
        if len(x) >= 4 * (nf + 1):
            w, b = ridge(x, np.concatenate([ys[i] for i in parts]), rng=rng)
            maps[h] = np.c_[w, b]
    if not np.isfinite(maps).all(axis=(1, 2)).any():
        if not required:
            return None
        raise TrainingDataError("No HS date has enough valid pixels with a fine MS to fit its spectral map.")
    return maps


def check_parameters(pca_components: int, epochs: int, patch_size: int, batch_size: int, learning_rate: float) -> None:
    """TrainingDataError for a training parameter out of range."""
    if pca_components < 1:
        raise TrainingDataError(f"PCA_COMPONENTS must be at least 1 (got {pca_components}).")
    if epochs < 1:
        raise TrainingDataError(f"EPOCHS must be at least 1 (got {epochs}).")
    if batch_size < 1:
        raise TrainingDataError(f"BATCH_SIZE must be at least 1 (got {batch_size}).")
    if not learning_rate > 0:
        raise TrainingDataError(f"LEARNING_RATE must be > 0 (got {learning_rate}).")


def build_metadata(data: TrainingSet, net: FusionNetwork, params: dict, history: list, info: dict) -> tuple:
    """(meta, arrays) of the model file: what fusion needs besides the weights."""
    mdd = data.mdd
    roles = {}
    for role in ROLES:
        s = mdd.roles[role]
        roles[role] = {
            "band_count": s.n_bands,
            "wavelengths": s.wavelengths,
            "fwhm": s.fwhm,
            "band_names": s.band_names,
            "dates": s.dates,
            "scale_ratio": mdd.scale_ratio(role),
        }
    meta = {
        "kernels": net.config["kernels"],
        "network": net.config,
        "halo": net.halo,
        "roles": roles,
        "training_dates": mdd.dates,
        "pca_explained_variance": data.pca.explained,
        "parameters": params,
        "history": history,
        "info": info,
        "source_mdd": mdd.path,
        # the dense MS's blur on the grid (fine px), for fusion's dense_consistency steps on this MDD
        "dense_blur": getattr(data, "dense_blur", None),
        # (role, date) -> the shift fusion reads it with; None: trained without co-registration
        "registration": shifts_to_json(mdd.shifts) if NETWORK_OPTIONS.get("coregister") else None,
    }
    arrays = {
        "fine_mean": data.fine_norm.mean,
        "fine_std": data.fine_norm.std,
        "dense_mean": data.dense_norm.mean,
        "dense_std": data.dense_norm.std,
    }
    arrays.update({f"pca_{k}": v for k, v in data.pca.arrays().items()})
    if getattr(data, "hs_maps", None) is not None:  # the spectral map of each training HS date
        arrays["date_maps"] = data.hs_maps
    if getattr(data, "detail_skill", None) is not None:  # per PCA component, the detail step's weight
        arrays["detail_skill"] = data.detail_skill
    return meta, arrays


def _training_step(net, mtl, opt, scaler, data, rng, batch_size: int, device: str, amp_dtype) -> dict:
    """One optimiser step on one batch per task; returns the task losses."""
    with autocast(device, amp_dtype):  # float32 (CPU, MPS): no autocast at all
        losses = task_losses(net, data, rng, batch_size, device)
    loss = mtl({k: v.float() for k, v in losses.items()})
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return losses


# With a self-check, the run's first cycle trains the EPOCHS asked for without the withheld HS (the
# self-check measures what a run without it would train) and ends at the check; a second cycle of a
# fifth more epochs, restarting at RESTART_LR of the learning rate, trains the same network on
# everything. One training instead of two (the self-check's, then the model's from scratch); chosen on
# the development scenes' tuning date against a third more epochs and against splitting the EPOCHS
# two thirds / one third (BENCHMARKS.md, "The self-check inside the training").
FINAL_SHARE, RESTART_LR = 0.2, 0.5


def self_checked_epochs(epochs: int) -> tuple[int, int]:
    """(epochs without the withheld HS, epochs in all) of a self-checked run asked for ``epochs``: the
    EPOCHS, then a fifth more (at least one)."""
    return epochs, epochs + max(1, round(epochs * FINAL_SHARE))


# The early stop (issue 11, part 4): over the second half of a self-checked run's first cycle, every
# fifth of it, the network's CC against a block of the withheld HS (``Withheld.probe``). Where it has
# fallen more than EARLY_STOP_TOLERANCE below the best probe so far, the first cycle ends there and the
# run goes on from that best probe's network (its weights, task weights, optimiser and schedule), the
# second cycle a fifth of the epochs it kept. The tolerance keeps a probe's noise from ending a cycle
# whose learning rate is still falling: on offset_5_8 and swir_offset_5_8 the probe fell 0.0008 and
# 0.0004 from epoch 12 to 15, and stopping there (tolerance 0) lowered their tuning date (CC -0.0001,
# SAM +0.23° and +0.11°; BENCHMARKS.md, "The early stop on the self-check").
EARLY_STOP, EARLY_STOP_TOLERANCE = True, 0.001


def early_stop_epochs(first: int) -> list[int]:
    """The epochs (1-based) of a first cycle of ``first`` epochs after which the early stop probes the
    withheld HS: every fifth of the cycle (at least every epoch) over its second half, down from its
    last epoch; none where that gives fewer than two (nothing to compare)."""
    every = max(1, round(first / 5))
    epochs = [e for e in range(first, 0, -every) if 2 * e >= first]
    return sorted(epochs) if len(epochs) >= 2 else []


@dataclass
class Withheld:
    """A self-check inside a training run (``fit_network``): the first epochs (``self_checked_epochs``)
    train on ``view`` (the MDD with one HS image hidden, ``MDD.hiding``); then ``check(net, data)``
    measures that network (``data``: the view's TrainingSet) and returns what to keep in the model
    file's info and the checkpoint; the remaining epochs train on the whole MDD, with the view's PCA,
    blur and linear priors, so that the same network goes on learning with the withheld image too.
    ``probe(net, data)``, where given, is the early stop's measure between epochs (higher is better)."""

    view: MDD
    check: Callable[[Any, TrainingSet], dict]
    probe: Callable[[Any, TrainingSet], float] | None = None  # the early stop's CC (``early_stop_epochs``)


def fit_network(
    mdd: MDD,
    kernels: str = "1",
    pca_components: int = 12,
    epochs: int = 15,
    patch_size: int = 32,
    batch_size: int = 8,
    learning_rate: float = 0.002,
    device: str = "cpu",
    seed: int = 0,
    max_days_apart: float = MAX_DAYS_APART,
    callbacks: Callbacks | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    threads: int = 0,
    checkpointer: Checkpointer | None = None,
    withheld: Withheld | None = None,
) -> dict:
    """Trains a FusionNetwork on an open MDD (or a view of one, see ``MDD.hiding``), in memory.

    ``device`` is a device from ``select_device``; ``threads``: CPU threads (0 = torch's default,
    see ``configure_threads``); ``checkpointer``: save every few epochs and, when it resumes, go on
    from its saved state (see ``checkpoint.py``); ``withheld``: a self-check inside the run (``Withheld``).
    Returns {"net", "data" (the TrainingSet), "history", "steps", "device", "threads", "precision",
    "extra" (what ``withheld.check`` returned, {} without)}. Raises ``Canceled`` when the user cancels.
    """
    import torch

    from .loss import MultiTaskLoss
    from .network import FusionNetwork

    cb = callbacks_or_default(callbacks)
    log = cb.log
    p0, p1 = progress_span

    def progress(fraction: float, message: str) -> None:
        cb.progress(p0 + (p1 - p0) * fraction, message)

    threads = configure_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    whole = mdd
    # the epochs of the first cycle, and in all
    first, epochs = self_checked_epochs(epochs) if withheld is not None else (epochs, epochs)

    def registered(view: MDD, done: float = 0.0, known: dict | None = None) -> MDD:
        """``known``: the shifts of a view of ``view`` (the withheld image's alone is estimated)."""
        if not NETWORK_OPTIONS.get("coregister"):
            return view
        progress(done, "co-registering the coarse images with the fine MS")
        shifts = estimate_shifts(view, log if known is None else None, lambda: cb.check(CANCELED), known)
        return view.registered(shifts)

    progress(0.0, "reading the MDD")
    mdd = registered(withheld.view if withheld is not None else mdd)
    hs_sigma = estimate_blur(mdd, "hs", log) if NETWORK_OPTIONS.get("fitted_blur") else None
    data = TrainingSet(mdd, pca_components, patch_size, seed, log, max_days_apart)
    # The dense MS's blur on the grid, for fusion's dense_consistency steps (measured once, here).
    from .dense_consistency import sigma_on_grid

    dense_blur = data.dense_blur = sigma_on_grid(mdd, data.dense_ratio)
    cb.check(CANCELED)
    net = FusionNetwork(
        data.n_fine_bands,
        data.n_dense_bands,
        data.pca.n_components,
        kernels,
        hs_ratio=data.hs_ratio,
        width=WIDTH,
        n_blocks=N_BLOCKS,
        reference_gap=len(data.hs_dates) > 1,
        hs_sigma=hs_sigma,
        **network_options(data),
    )
    init_linear_priors(net, data, rng)
    net.to(device)
    mtl = MultiTaskLoss(data.tasks).to(device)
    opt = Adam(list(net.parameters()) + list(mtl.parameters()), lr=learning_rate)
    H, W = data.shape
    per_epoch = math.ceil(H * W * max(1, len(data.fine.dates)) / (batch_size * patch_size**2))
    steps = int(np.clip(per_epoch, MIN_STEPS, MAX_STEPS))
    total = epochs * steps

    def cycle(i: int) -> float:  # cosine from the top to 0.1 of the learning rate; a second cycle restarts lower
        if i < first * steps or first == epochs:
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / (first * steps)))
        j, n = i - first * steps, (epochs - first) * steps
        return 0.1 + (RESTART_LR - 0.1) * 0.5 * (1 + math.cos(math.pi * j / n))

    sched = LambdaSchedule(opt, cycle)
    amp_dtype, scaled, _ = precision_for(device)
    scaler = grad_scaler() if scaled else None  # float16 only: its gradients underflow unscaled
    log(describe_device(device, threads))
    log(
        f"Grid {W}x{H} px; tasks "
        f"{', '.join(data.tasks)}; {data.pca.n_components} PCA components explain "
        f"{100 * sum(data.pca.explained):.1f}% of the weighted HS variance; halo {net.halo} px; "
        f"{epochs} epochs x {steps} steps."
    )
    history, first_epoch = [], 0
    probes = early_stop_epochs(first) if withheld is not None and withheld.probe is not None and EARLY_STOP else []
    probing = bool(probes)  # (a probe without a valid pixel clears ``probes``; what it measured is kept)
    early: dict = {"probes": []}  # what the early stop measured, for the model file's info
    best = None  # the early stop's best probe: {"epoch", "CC", "state"}
    saved = checkpointer.load() if checkpointer is not None else None  # read once, only when resuming
    if checkpointer is not None and checkpointer.resume and saved is None:
        log(f"No checkpoint of this MDD and these parameters at {checkpointer.path}: training from the start.")
    if saved is not None:
        net.load_state_dict(saved["net"])
        mtl.load_state_dict(saved["mtl"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        restore_rng(rng, saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        history, first_epoch = json.loads(saved["history_json"]), int(saved["epoch"])
        first, epochs = int(saved.get("first", first)), int(saved.get("epochs", epochs))  # an early stop's
        total = epochs * steps
        early, best = json.loads(saved.get("early_json") or '{"probes": []}'), saved.get("best") or None
        log(f"Resumed from {checkpointer.path} after epoch {first_epoch}/{epochs}.")
    extra = {}

    def go_on_with_everything(check: bool) -> None:
        """The end of the first cycle of a self-checked run: the check (unless a resumed run has it in
        its checkpoint), then the whole MDD, read with the view's PCA, for the epochs left."""
        nonlocal mdd, data, best
        best = None  # the first cycle's probes are over
        if check:
            net.eval()
            extra.update(withheld.check(net, data))
            net.train()
            if checkpointer is not None:
                checkpointer.extra.update(extra)
        cb.check(CANCELED)
        log(f"Epochs {first + 1}-{epochs}: training on everything, the withheld HS included.")
        pca, known = data.pca, mdd.shifts
        data = None  # the view's arrays go before the whole MDD's are read: one TrainingSet in memory at a time
        mdd = registered(whole, first / epochs, known)
        data = TrainingSet(mdd, pca_components, patch_size, seed, lambda message: None, max_days_apart, pca=pca)
        data.dense_blur = dense_blur  # the dense MS is the view's
        # reference_gap stays the view's: with two HS dates the view had one, the head never saw a time
        # to its reference, and a few epochs would not teach it what that input means.
        fit_hs_maps(net, data, np.random.default_rng(seed))  # its own stream: a resumed run draws the same

    def snapshot() -> dict:
        return copy.deepcopy(
            {"net": net.state_dict(), "mtl": mtl.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
        )

    def probe(done: int) -> bool:
        """The early stop's probe after epoch ``done`` of the first cycle; True where it ends that cycle,
        the network then back as it was at the best probe."""
        nonlocal best, first, epochs, total, history
        net.eval()
        cc = float(withheld.probe(net, data))
        net.train()
        early["probes"].append({"epoch": done, "CC": cc})
        if not math.isfinite(cc):
            log("Early stop: the withheld HS has no valid pixel in the block it measures; no early stop.")
            probes.clear()
            return False
        if best is None or cc > best["CC"]:
            best = {"epoch": done, "CC": cc, "state": snapshot()}
            log(f"Early stop's probe after epoch {done}: network CC {cc:.4f} on the withheld HS (the best so far).")
            return False
        if cc >= best["CC"] - EARLY_STOP_TOLERANCE:
            log(f"Early stop's probe after epoch {done}: network CC {cc:.4f} (best {best['CC']:.4f}).")
            return False
        state = best["state"]
        net.load_state_dict(state["net"])
        mtl.load_state_dict(state["mtl"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        first, epochs = self_checked_epochs(best["epoch"])
        total, history = epochs * steps, history[:first]
        for group, base in zip(opt.param_groups, sched.base_lrs):  # the second cycle's restart from here
            group["lr"] = base * cycle(sched.last_epoch)
        early.update(stopped_after=done, kept=first)
        log(
            f"Early stop after epoch {done}: the network's CC on the withheld HS fell to {cc:.4f}, from "
            f"{best['CC']:.4f} after epoch {first}; the run goes on from that epoch's network."
        )
        best = None
        return True

    def save(done: int, checked: bool = False) -> None:
        checkpointer.save(
            {
                "net": net.state_dict(),
                "mtl": mtl.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "rng": rng_state(rng),
                "torch_rng": torch.get_rng_state(),
                "history_json": json.dumps(history),
                "epoch": done,
                "checked": checked,  # a self-checked run past its check: resumed, it does not check again
                "first": first,  # the cycles as an early stop left them
                "epochs": epochs,
                "early_json": json.dumps(early),
                "best": best or {},
            }
        )

    switched = withheld is not None and (
        first_epoch > first or (first_epoch == first and bool(saved is not None and saved.get("checked")))
    )
    if switched:  # resumed past the check: what it measured is in the checkpoint
        extra.update(json.loads(saved.get("extra_json") or "{}"))
        checkpointer.extra.update(extra)
        log("Self-check: taken from the checkpoint being resumed.")
        go_on_with_everything(check=False)
    epoch = first_epoch - 1
    while epoch + 1 < epochs:
        epoch += 1
        te = time.time()
        if withheld is not None and epoch == first:
            if not switched:
                go_on_with_everything(check=True)
                switched = True
                if checkpointer is not None and checkpointer.every > 0:  # the check is not repeated on resume
                    save(epoch, checked=True)
        elif epoch > 0:
            data.refresh(rng)  # a grid larger than one region: a new pool of regions each epoch
        sums = dict.fromkeys(data.tasks, 0.0)
        for step in range(steps):
            cb.check(CANCELED)
            while True:
                try:
                    losses = _training_step(net, mtl, opt, scaler, data, rng, batch_size, device, amp_dtype)
                    break
                except Exception as e:  # a GPU out of memory: the same step again with half the batch
                    if not is_out_of_memory(e):
                        raise
                    opt.zero_grad(set_to_none=True)
                    release_gpu_memory(device)
                    if batch_size <= 1:
                        raise TrainingDataError(
                            f"{device} ran out of memory even with a batch of 1 patch of {patch_size} px: lower "
                            "PATCH_SIZE, train on the CPU (DEVICE=cpu), or free the GPU of other work."
                        ) from None
                    batch_size //= 2
                    log(f"Out of memory on {device}: batch size halved to {batch_size} for the rest of the run.")
            sched.step()
            for k, v in losses.items():
                sums[k] += float(v.detach())
            progress((epoch * steps + step + 1) / total, f"epoch {epoch + 1}/{epochs}")
        entry = {
            "epoch": epoch + 1,
            "loss": {k: v / steps for k, v in sums.items()},
            "c": mtl.weights(),
            "time_s": time.time() - te,
        }
        history.append(entry)
        log(
            f"epoch {epoch + 1}/{epochs}: "
            + ", ".join(f"{k} loss {entry['loss'][k]:.4f} c {entry['c'][k]:.3f}" for k in data.tasks)
            + f" ({entry['time_s']:.1f} s)"
        )
        if not switched and epoch + 1 in probes and probe(epoch + 1):
            epoch = first - 1  # the next epoch is the first of the second cycle
            continue
        if checkpointer is not None and checkpointer.due(epoch + 1, epochs):
            save(epoch + 1)
    if probing:
        extra["early_stop"] = early
    net.eval()
    precision = str(amp_dtype or torch.float32).replace("torch.", "")
    return {
        "net": net,
        "data": data,
        "history": history,
        "steps": steps,
        "device": device,
        "threads": threads,
        "precision": precision,
        "extra": extra,
        "first": first,
    }


def make_checkpointer(
    mdd_path: str,
    model_path: str,
    resume: bool = False,
    every: int = CHECKPOINT_EVERY,
    extra: dict | None = None,
    **params: Any,
) -> Checkpointer:
    """The checkpointer of a training run of ``params`` on ``mdd_path`` into ``model_path``."""
    return Checkpointer(
        checkpoint_path(model_path), training_fingerprint(mdd_path, params), resume, int(every), dict(extra or {})
    )


@with_gdal_cache()
def train_fusion_model(
    mdd_path: str,
    model_path: str,
    kernels: str = "1",
    pca_components: int = 12,
    epochs: int = 15,
    patch_size: int = 32,
    batch_size: int = 8,
    learning_rate: float = 0.002,
    device: str = "auto",
    seed: int = 0,
    max_days_apart: float = MAX_DAYS_APART,
    callbacks: Callbacks | None = None,
    extra_info: dict | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    threads: int = 0,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    withheld: Withheld | None = None,
) -> dict:
    """Trains a FusionNetwork on the MDD at `mdd_path` and writes it to `model_path`.

    ``device``: a DEVICE text (``select_device``); ``threads``: CPU threads, 0 = torch's default.
    Every ``checkpoint_every`` epochs (0: never) the run is saved to ``<model_path>.checkpoint``;
    ``resume`` continues from that checkpoint when it was made from the same MDD and parameters
    (else training starts afresh, and says so). The checkpoint is removed once the model is written.
    ``extra_info`` (e.g. the self-check) goes into the model file's info, with what ``withheld`` (a
    self-check inside the run, ``Withheld``) measured. Returns {"model_path",
    "history": [per-epoch dicts], "info": {...}}. Raises TrainingDataError / MDDError (ValueError)
    with a message for the user on bad input, and ``Canceled`` when the user cancels (no file is
    written then).
    """
    import torch

    from .network import parse_kernels

    cb = callbacks_or_default(callbacks)
    log = cb.log
    parse_kernels(kernels)
    check_parameters(pca_components, epochs, patch_size, batch_size, learning_rate)
    check_max_days(max_days_apart)
    dev = select_device(device)
    t0 = time.time()
    mdd = MDD.open(mdd_path)
    if is_cuda(dev):
        torch.cuda.reset_peak_memory_stats(dev)
    fit_params = dict(
        kernels=kernels,
        pca_components=pca_components,
        epochs=epochs,
        patch_size=patch_size,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        max_days_apart=max_days_apart,
    )
    if withheld is not None:  # another run: its checkpoints are not this one's
        fit_params["self_check"] = True
    checkpointer = make_checkpointer(mdd_path, model_path, resume, checkpoint_every, extra_info, **fit_params)
    fit = fit_network(
        mdd,
        kernels,
        pca_components,
        epochs,
        patch_size,
        batch_size,
        learning_rate,
        dev,
        seed,
        max_days_apart,
        cb,
        progress_span,
        threads=threads,
        checkpointer=checkpointer,
        withheld=withheld,
    )
    net, data, history, steps = fit["net"], fit["data"], fit["history"], fit["steps"]
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if is_cuda(dev) else peak_rss_mb()
    params = dict(
        mdd=mdd.path,
        kernels=net.config["kernels"],
        pca_components=pca_components,
        epochs=epochs,
        patch_size=patch_size,
        batch_size=batch_size,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        steps_per_epoch=steps,
        max_days_apart=float(max_days_apart),
    )
    if withheld is not None:
        params["epochs_in_all"], params["self_check_epochs"] = len(history), fit["first"]
    info = {
        "parameters": params,
        "device": dev,
        "precision": fit["precision"],
        "threads": fit["threads"],
        "time_s": time.time() - t0,
        "peak_memory_mb": peak,
        "pca_explained_variance": data.pca.explained,
        "tasks": list(data.tasks),
        **(extra_info or {}),
        **fit["extra"],
    }
    meta, arrays = build_metadata(data, net, params, history, info)
    cb.check(CANCELED)
    save_model(model_path, meta, arrays, net.state_dict())
    checkpointer.remove()
    info["time_s"] = time.time() - t0
    log(
        f"Model written to {model_path} in {info['time_s']:.1f} s; peak memory {format_mb(peak)} "
        f"({'GPU allocated' if is_cuda(dev) else 'process max RSS'})."
    )
    return {"model_path": model_path, "history": history, "info": info}
