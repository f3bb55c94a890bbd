"""Applying a trained model to one window of an MDD: the contract with the tiled fusion loop.

    predictor = load_predictor(model_path, device="auto")
    predictor.check_compatible(mdd)                      # ModelError naming what differs
    hs = predictor.predict(mdd, (xoff, yoff, xsize, ysize), "2022-05-01")   # (bands, ysize, xsize)

A pixel's value depends only on the pixels within `halo` of it (all fill values are constants or
per-pixel interpolations in time, and every date choice is made from the MDD's date lists, never
from the window's content; what is fitted on the scene, the dense MS's map and each date's gain for
``dense_consistency`` and each date's gap fill, is fitted on the MDD's central window whatever window
asks), so a window that reaches `halo` pixels beyond the pixels it keeps (or the grid edge) gives
exact, seamless tiles.

Gaps: a dense MS pixel that is invalid on a date (cloud, or no image that date) is filled with the
linear interpolation in time of that pixel's valid dense MS on the nearest dates before and after
(the nearest one where only one side has data); on a date the dense MS was acquired, from the rest
of that image where a map could be fitted (``core/gap_fill.py``: the pixel's own values on the other
dates, regressed on the date's observed pixels). So every pixel with a valid dense MS on some date
gets a prediction on every date; fine MS and HS gaps are left to the network (temporal branch,
next reference date).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..core.calendar import fill_in_time, fine_for, stand_ins, temporal_sources
from ..core.gap_fill import fit_gap_fill
from ..core.vocabulary import ROLE_LABELS, by_distance, day_number
from ..mdd.format import MDD, read_values
from ..mdd.registration import MAX_SIDE, central_window, estimate_shifts, max_blur_sigma, shifts_from_json
from .device import autocast, precision_for, select_device
from .model_file import ModelError, load_model
from .preprocessing import HSPCA, BandNormalizer

if TYPE_CHECKING:
    from .network import FusionNetwork

__all__ = ["ModelError", "FusionPredictor", "load_predictor"]

# One network evaluation at a time in this process: tasks fusing in threads of one process (Dask in
# this process) read, project and write in parallel, but their networks take turns, each on all of
# PyTorch's threads. Their activations are the largest thing a tile holds: side by side, two tasks'
# peaks coincided more often the more tiles there were (2048² vs 512²: +21.5 % peak memory).
NETWORK_LOCK = threading.Lock()


def _source_weight(d, dq, dq2, stand_ins: tuple = (None, None)):
    """Per pixel, the weight of source q against q2: STARFM's temporal weight, 1 / (mean |dense MS
    change to t| + eps) in z units, normalised over the two sources. The date with less change
    predicts better; measured on the tuning date against weights by time distance (2 seeds: CC
    +0.0027, PSNR +0.16 dB, SSIM +0.008). eps = 0.05 keeps a pixel without change from taking all
    the weight. ``stand_ins``: per side None or a map (1, 1, H, W) of the source's time gap over its
    stand-in's where one stands in (``_fill_sources``; 1 elsewhere), which scales that side's weight:
    a stand-in farther out counts for less than its dense MS change alone says (on the development
    scenes' and cloudy_fine's tuning date, means of the four: CC 0.9717 -> 0.9718, SAM 7.501 -> 7.497°,
    PSNR 28.56 -> 28.57 dB, SSIM 0.8957 -> 0.8961)."""
    m1 = np.abs(d - dq).mean(1, keepdims=True) + 0.05
    m2 = np.abs(d - dq2).mean(1, keepdims=True) + 0.05
    w = m2 / (m1 + m2)
    r1, r2 = stand_ins
    if r1 is None and r2 is None:
        return w.astype(np.float32)
    r1 = np.ones_like(w) if r1 is None else r1
    r2 = np.ones_like(w) if r2 is None else r2
    a, b = w * r1, (1 - w) * r2
    return np.where((r1 != 1) | (r2 != 1), a / np.maximum(a + b, 1e-12), w).astype(np.float32)


# The dense MS's gaps (clouds) on a date it was acquired filled from how the rest of that date changed
# (core/gap_fill.py), not only by interpolation in time; False: interpolation in time alone (as before).
DENSE_GAP_FILL = True
# Where a date's dense MS has a gap but the fine MS that stands for that date is observed, the dense MS
# there is that fine MS as the dense sensor sees it (``_dense_from_fine``), before any other date's fill.
DENSE_FROM_FINE = True
# Where a source date's fine MS has a gap (a cloud), the next fine MS date beyond it on the same side of
# the target that is clear there stands in for it, pixel by pixel (``_fill_sources``); False: that
# source is missing there (the other source alone, or the spatial prediction without either).
SOURCE_FILL = True

# The detail step on the dates without their own HS too (``FusionPredictor._detail``), for models
# that carry the detail's skill (``detail_skill.py``). Chosen on the tuning date of three development
# scenes (CC 0.9467 -> 0.9504, SSIM 0.816 -> 0.830 on their mean; BENCHMARKS.md, Generality). Without
# the skill, the whole step on every date lowered the demo sample's CC 0.9604 -> 0.9578 and SSIM
# 0.861 -> 0.842 (the SWIR's detail from four VNIR bands); weighted by the skill, 0.9605 and 0.857.
# About 5 % more fusion time. Models without the skill keep the step on their HS dates only.
DETAIL_ON_EVERY_DATE = True


# The dense MS change below the dense pixel from the guide's own detail (network.SubpixelChange), added
# to the guided change of the fine MS predicted in time; fusion only, so models trained before get it
# too. On by default since its regressions are solved on a lattice of the dense pixel's size, on the
# change's first two components, and it is added after the dense MS steps (the fusion halo unchanged):
# 4-8 % more fusion time on the scale benchmark's 1024² series (within the 10 % a default may cost;
# per pixel, as first built, 1.6 times), the development scenes' tuning-date gain kept (BENCHMARKS.md,
# "The change below the dense pixel on a lattice"). A run switches it off with
# ``load_predictor(..., subpixel_change=False)`` (Fuse's SUBPIXEL_CHANGE parameter); this is the
# default of a run that does not say.
SUBPIXEL_CHANGE = True


class FusionPredictor:
    """A loaded model, ready to fuse windows of an MDD with the same roles and bands."""

    def __init__(
        self, meta: dict, arrays: dict, net: FusionNetwork, device: str, subpixel_change: bool | None = None
    ) -> None:
        """``subpixel_change``: add the dense MS change below the dense pixel (``SUBPIXEL_CHANGE`` when
        None); it needs a dense MS coarser than the grid and a model with the guided change."""
        self.meta = meta
        self.device = device
        self.roles = meta["roles"]
        dense_ratio = float(self.roles["dense_ms"].get("scale_ratio", 1.0))
        subpixel = SUBPIXEL_CHANGE if subpixel_change is None else bool(subpixel_change)
        if subpixel and dense_ratio > 1 and net.temporal.guided is not None and net.temporal.subpixel is None:
            net = copy.deepcopy(net)  # the caller's network (a training run's self-check) stays as it is
            net.temporal.add_subpixel(dense_ratio)
        self.net = net
        self.kernels = meta["kernels"]
        # The spectral map of each training HS date (date_maps.py): the network's with the date_maps
        # option, and in any case the fine detail of every date (``_detail``); None in a
        # model file from before them.
        maps = arrays.get("date_maps")
        self.hs_maps = np.asarray(maps, np.float32) if maps is not None else None
        self.date_maps = self.hs_maps if getattr(net, "date_maps", False) else None
        self.detail_blur = None
        if self.hs_maps is not None:
            from .network import GaussianBlur

            self.detail_blur = GaussianBlur(net.hs_sigma).to(device)  # the HS's blur on the grid
        # Per PCA component, how far the maps' detail is trusted (detail_skill.py): the detail step's
        # weight. NaN (not measurable on the training scene) reads as 1, the step whole; None in a
        # model file from before it: the step whole, on the HS dates only.
        skill = arrays.get("detail_skill")
        self.detail_skill = np.nan_to_num(np.asarray(skill, np.float32), nan=1.0) if skill is not None else None
        # The fine MS predicted in time put back in line with the dense MS of its date
        # (dense_consistency.py): fitted on each MDD fused, none with STEPS 0 or a dense MS on the grid.
        from .dense_consistency import STEPS, reach

        guided = net.temporal.guided.radius if net.temporal.guided is not None else 0
        self._consistency_args = (dense_ratio, guided, STEPS) if STEPS > 0 and dense_ratio > 1 else None
        self._consistency, self._gains, self._gap_fills = {}, {}, {}
        self._subpixel_bases = {}  # (MDD, the date the guide leaves out) -> the guide's components
        self._fine_covariances = {}  # MDD -> the covariance of its fine MS, every date's bands (the bases')
        self._change_bases = {}  # MDD -> the dense MS change's components (``_change_basis``)
        self._central_denses = {}  # MDD -> its dense MS in the central window (``_central_dense``)
        extra = reach(max_blur_sigma(dense_ratio), guided, STEPS) if self._consistency_args is not None else 0
        # A dense MS filled from its date's fine MS (``_dense_from_fine``) reads the fine MS within the
        # dense MS's blur around each pixel.
        from .network import GaussianBlur

        seen = GaussianBlur(max_blur_sigma(dense_ratio)).radius if self._consistency_args is not None else 0
        # The network's output needs that much more context (the steps read around each pixel).
        self.net_halo = int(net.halo_with(extra, seen))
        # The detail step needs the network's output that far around each kept pixel.
        self.halo = self.net_halo + (self.detail_blur.radius if self.detail_blur is not None else 0)
        self.bracketing = True  # temporal prediction from the fine MS dates on both sides of t
        # Fine MS and HS this many days apart are one date (calendar rule); models from before the
        # rule paired only the same day.
        self.max_days = float(meta.get("parameters", {}).get("max_days_apart", 0))
        # Each coarse image's co-registration with the fine MS, estimated at training (mdd/registration.py);
        # none in a model file from before it.
        self.shifts = shifts_from_json(meta.get("registration"))
        self.hs_wavelengths = list(self.roles["hs"]["wavelengths"])
        self.hs_fwhm = self.roles["hs"].get("fwhm")
        self.fine_norm = BandNormalizer(arrays["fine_mean"], arrays["fine_std"])
        self.dense_norm = BandNormalizer(arrays["dense_mean"], arrays["dense_std"])
        self.map_days = np.array([day_number(d) for d in self.roles["hs"].get("dates", [])], np.float64)
        self.pca = HSPCA.from_arrays(
            {k[4:]: v for k, v in arrays.items() if k.startswith("pca_")}, meta.get("pca_explained_variance", [])
        )

    @property
    def hs_typical_max(self) -> float:
        """The largest HS value training saw as typical (band mean + 4 std over the usable bands):
        what int16 output must hold (``fusion.fuse.int16_scale``)."""
        usable = self.pca.usable if self.pca.usable.any() else np.ones_like(self.pca.usable)
        return float(np.max(np.abs(self.pca.band_mean[usable]) + 4 * self.pca.band_std[usable]))

    def check_compatible(self, mdd: MDD) -> None:
        problems = []
        for role, want in self.roles.items():
            label = ROLE_LABELS[role]
            stack = mdd.roles.get(role)
            if stack is None or stack.n_dates == 0:
                problems.append(f"the MDD has no {label} role, the model needs one")
                continue
            if stack.n_bands != want["band_count"]:
                problems.append(f"{label} has {stack.n_bands} bands, the model was trained on {want['band_count']}")
                continue
            w_model, w_mdd = want.get("wavelengths"), stack.wavelengths
            if w_model and w_mdd and np.max(np.abs(np.subtract(w_model, w_mdd))) > 1.0:
                i = int(np.argmax(np.abs(np.subtract(w_model, w_mdd))))
                problems.append(f"{label} band {i + 1} is at {w_mdd[i]:g} nm, the model's at {w_model[i]:g} nm")
            ratio = mdd.scale_ratio(role)
            if abs(ratio - want["scale_ratio"]) > 0.25 * want["scale_ratio"]:
                problems.append(
                    f"{label} pixels are {ratio:.2f}x the grid's, the model was trained on {want['scale_ratio']:.2f}x"
                )
        if problems:
            raise ModelError(
                "The model does not match this MDD: "
                + "; ".join(problems)
                + ". Train a model on an MDD built from the same sensors."
            )

    def prepare(self, mdd: MDD, log: Callable[[str], None] | None = None) -> MDD:
        """``check_compatible``, then the MDD as this model reads it (``MDD.registered``): each coarse
        image moved by the shift training estimated for it. An MDD other than the one the model was
        trained on (another area or other images of the same sensors) gets its own images' shifts,
        estimated here as training does, not the training images' shifts of the same dates."""
        self.check_compatible(mdd)
        shifts = self.shifts
        if self.meta.get("registration") is not None and not self._trained_on(mdd):
            if log is not None:
                log("The model was trained on another MDD: co-registering this one's images.")
            shifts = estimate_shifts(mdd, log)
        mdd = mdd.registered(shifts) if shifts else mdd
        if log is not None and self.net.temporal.subpixel is not None:
            log(_subpixel_note(self.net.temporal.subpixel))
        self._dense_fit(mdd, log)  # dense_consistency's map, fitted once here rather than in the first tile
        if log is not None and DENSE_GAP_FILL:
            log(_gap_fill_note())  # (_dense_fit said what the steps fitted)
        return mdd

    def fusion_notes(self) -> list[str]:
        """What fusion does besides the network, in words for the log, without fitting anything (Fuse's
        Dask driver says it; each task fits for itself): the change below the dense pixel, the dense MS
        steps, then the gap fill."""
        from .dense_consistency import FIT_SIDE

        notes = []
        if self.net.temporal.subpixel is not None:
            notes.append(_subpixel_note(self.net.temporal.subpixel))
        if self._consistency_args is not None:
            notes.append(
                "Fine MS predicted in time, put back in line with each date's dense MS: "
                f"{self._consistency_args[2]} steps (fitted on the central {FIT_SIDE}x{FIT_SIDE} px)."
            )
        if DENSE_GAP_FILL:
            notes.append(_gap_fill_note())
        return notes

    def _trained_on(self, mdd: MDD) -> bool:
        """Whether ``mdd`` is (a view of) the MDD the model was trained on."""
        trained_on = self.meta.get("source_mdd")
        return bool(trained_on) and os.path.normcase(os.path.abspath(mdd.path)) == os.path.normcase(
            os.path.abspath(trained_on)
        )

    # -- reading and normalising one window -------------------------------------------------------

    def _read(self, mdd, role, date, window, dense=None):
        """(values (1, bands, H, W) normalised, validity (1, 1, H, W)), zeros when no image that date.
        The dense MS comes from `dense` = (values, validity) of all its dates in the window, gaps
        filled in time (`fill_in_time`); on a date it was acquired, its gaps from how the rest of
        that date changed where that could be fitted (`_gap_fill`)."""
        stack = mdd.roles[role]
        ys, xs = int(window[3]), int(window[2])
        nb = stack.n_bands
        if role == "dense_ms" and date is not None:
            days = [day_number(d) for d in stack.dates]
            values, valid = fill_in_time(dense[0], dense[1], days, day_number(date))
            own = dense[1][stack.dates.index(date)] if date in stack.dates else None
            # The date's own gaps in this window from how the rest of it changed (core/gap_fill.py); the
            # map is fitted only once a window has such gaps, so cloud-free series never pay for it.
            gap = self._gap_fill(mdd, date) if own is not None and (valid & ~own).any() else None
            if gap is not None:
                values, valid = gap.apply(dense[0], dense[1], days, (values, valid))
        elif date is None or date not in stack.dates:
            return np.zeros((1, nb, ys, xs), np.float32), np.zeros((1, 1, ys, xs), np.float32)
        else:
            values = read_values(mdd, role, window=window, dates=[date])[0]
            valid = mdd.read_mask(role, window=window, dates=[date])[0]
            valid &= np.isfinite(values).any(axis=0)
        norm = self.fine_norm if role == "fine_ms" else self.dense_norm
        return norm.apply(values, valid)[None], valid[None, None].astype(np.float32)

    def _inputs(self, mdd, window, date, crop=None):
        """The network's inputs for ``date`` in ``window``. With ``crop`` (the pixels kept) the
        references are computed on the part of the window they need (``_reference_part``, as
        ``x["refs_part"]``), not on the whole of it."""
        import torch

        x, dense = self._ms_inputs(mdd, window, date)
        day = day_number(date)
        fine_dates = mdd.roles["fine_ms"].dates
        hs_dates = mdd.roles["hs"].dates
        part = self._reference_part(x["d"].shape[-2:], crop)
        if part is not None:
            rows, cols = part
            window = (window[0] + cols.start, window[1] + rows.start, cols.stop - cols.start, rows.stop - rows.start)
            dense = (dense[0][..., rows, cols], dense[1][..., rows, cols])
            x["refs_part"] = part
        refs, covered = [], None
        memo = getattr(mdd, "derived", None)  # a TileReadCache: what one date of the tile computed, the next reuses
        for r in by_distance(mdd.roles["hs"].dates, day):
            key = ("reference", tuple(int(v) for v in window), r)
            ref = memo.get(key) if memo is not None else None
            if ref is None:
                ref = self._reference(mdd, window, r, dense, fine_dates, hs_dates)
                if memo is not None:
                    memo[key] = ref
            gap = np.full((1, 1, 1, 1), abs(day - day_number(r)) / 365.0, np.float32)
            refs.append(dict(ref, gap=torch.from_numpy(gap).to(self.device)))
            covered = ref["vrho"] if covered is None else torch.maximum(covered, ref["vrho"])
            if not bool((covered < 1).any()):
                break  # every pixel has a reference: the farther dates would add nothing (see FusionNetwork.fuse)
        x["refs"] = refs
        gain = self._dense_gain(mdd, date)
        if gain is not None:  # the temporal prediction put back in line with the date's dense MS
            x["consistency"], x["dense_gain"] = gain
        return x

    def _ms_inputs(self, mdd, window, date) -> tuple[dict, tuple]:
        """The tensors ``FusionNetwork.ms_estimate`` needs for ``date`` in ``window`` (no reference
        HS), and the window's dense MS (values, validity) of every date."""
        import torch

        day = day_number(date)
        fine_dates = mdd.roles["fine_ms"].dates
        hs_dates = mdd.roles["hs"].dates
        own = fine_for(fine_dates, date, hs_dates, self.max_days)  # the fine MS that stands for this date
        # The fine MS dates its own is predicted from (the dense MS is filled in time at any date).
        q, q2 = temporal_sources(fine_dates, date, own, self.bracketing)
        values = read_values(mdd, "dense_ms", window=window)
        dense = (values, mdd.read_mask("dense_ms", window=window) & np.isfinite(values).any(axis=1))
        x = {}
        x["a"], x["va"] = self._read(mdd, "fine_ms", own, window)
        x["d"], x["vd"] = self._read(mdd, "dense_ms", date, window, dense)
        x["fq"], x["vfq"] = self._read(mdd, "fine_ms", q, window)
        x["dq"], x["vdq"] = self._read(mdd, "dense_ms", q, window, dense)
        x["gap_q"] = np.full((1, 1, 1, 1), abs(day - day_number(q)) / 365.0 if q else 0.0, np.float32)
        guide = self._guide(mdd, window, fine_dates, own, q, x["fq"]) if self.net.multi_date_guide else None
        if q2 is not None:  # t lies between two fine MS dates: use both (see _source_weight)
            x["fq2"], x["vfq2"] = self._read(mdd, "fine_ms", q2, window)
            x["dq2"], x["vdq2"] = self._read(mdd, "dense_ms", q2, window, dense)
        self._dense_from_fine(
            mdd, x, dense, (("d", "a", "va", date), ("dq", "fq", "vfq", q), ("dq2", "fq2", "vfq2", q2))
        )
        stand_ins = self._fill_sources(mdd, window, x, dense, own, date, (q, q2)) if SOURCE_FILL else (None, None)
        if q2 is not None:
            x["wq"] = _source_weight(x["d"], x["dq"], x["dq2"], stand_ins)
        if self.date_maps is not None:
            x["wmap"] = self._date_map(date)
        x = {k: torch.from_numpy(v).to(self.device) for k, v in x.items()}
        x["origin"] = (int(window[1]), int(window[0]))  # the window's first pixel on the grid (row, col)
        if guide is not None:
            x["guide"], x["guide_similar"], components = guide
            if components is not None:
                x["subpixel_guide"] = components
        basis = self._change_basis(mdd) if self.net.temporal.subpixel is not None else None
        if basis is not None:
            x["change_basis"] = basis
        return x, dense

    def _fill_sources(self, mdd, window, x: dict, dense: tuple, own: str | None, date: str, sources: tuple) -> tuple:
        """Where a source's fine MS (``sources``: q, q2) has a gap, the other fine MS dates (not ``own``)
        beyond it on the same side of ``date``, nearest first (``calendar.stand_ins``), stand in for it
        pixel by pixel where they are clear: their fine MS, their dense MS, and (for q) their time to
        ``date`` in ``x["gap_q"]``, then a map. On a long cloudy series a pixel under the clouds of both bracketing dates would otherwise
        fall back to the spatial prediction, and under one of them to a single source. Per pixel, so
        tiles agree; ``x`` is changed in place; a pixel no date on that side covers stays as it was. The
        fine MS comes from the tile's guide slots where ``_guide`` has read them. Returns, per source,
        None or a map (1, 1, H, W) of its time gap over its stand-in's (1 where none stands in), for
        ``_source_weight``."""
        day = day_number(date)
        fine_dates = mdd.roles["fine_ms"].dates
        memo = getattr(mdd, "derived", None)
        slots = memo.get(_guide_slots_key(window, own)) if memo is not None else None
        others = [d for d in fine_dates if d != own]  # the guide's dates, in its slots' order
        read = dict(zip(others, slots)) if slots is not None and len(slots) == len(others) else {}
        keys = (("fq", "vfq", "dq", "vdq", "gap_q"), ("fq2", "vfq2", "dq2", "vdq2", None))
        ratios = [None, None]
        for side, (source, (fk, vk, dk, vdk, gap_key)) in enumerate(zip(sources, keys)):
            if source is None or fk not in x:
                continue
            missing = x[vk][0, 0] == 0
            if not missing.any():
                continue
            gap, apart = None, abs(day_number(source) - day)
            for d in stand_ins(fine_dates, date, source, own):
                f, vf = read[d] if d in read else self._read(mdd, "fine_ms", d, window)
                take = missing & (vf[0, 0] > 0)
                if not take.any():
                    continue
                z, vz = self._read(mdd, "dense_ms", d, window, dense)
                for key, value in ((fk, f), (vk, vf), (dk, z), (vdk, vz)):
                    x[key] = np.where(take, value, x[key]).astype(np.float32)
                days = abs(day_number(d) - day)
                if gap_key is not None:
                    gap = np.broadcast_to(x[gap_key], x[vk].shape).copy() if gap is None else gap
                    gap[0, 0][take] = days / 365.0
                if ratios[side] is None:
                    ratios[side] = np.ones(x[vk].shape, np.float32)
                ratios[side][0, 0][take] = apart / days
                missing &= ~take
                if not missing.any():
                    break
            if gap is not None:
                x[gap_key] = gap.astype(np.float32)
        return tuple(ratios)

    def _dense_from_fine(self, mdd, x: dict, dense: tuple, pairs) -> None:
        """Where a date's own dense MS image has a gap (a cloud) but the fine MS that stands for that
        date is observed, the dense MS is that fine MS as the dense sensor sees it (M(B f):
        ``DenseConsistency.seen_as_dense``, the map fitted for the steps), not a fill from other dates.
        ``pairs``: (dense key, fine key, its validity key, date) of ``x``, changed in place. Dates
        without a dense MS image of their own (sensors on other days) keep the fill in time."""
        if not DENSE_FROM_FINE:
            return
        module = self._dense_fit(getattr(mdd, "uncached", mdd)) if self._consistency_args is not None else None
        if module is None:
            return
        import torch

        dates = mdd.roles["dense_ms"].dates
        for dk, fk, vk, date in pairs:
            if dk not in x or date not in dates:
                continue
            missing = ~dense[1][dates.index(date)] & (x[vk][0, 0] > 0)
            if not missing.any():
                continue
            with torch.no_grad():  # on the module's device (its blur kernel is there), back as numpy
                f, vf = (torch.from_numpy(x[k]).to(self.device) for k in (fk, vk))
                seen, vb = (t.float().cpu().numpy() for t in module.seen_as_dense(f, vf))
            use = missing & (vb[0, 0] > 0.5)  # at least half the blur's weight on observed fine MS
            x[dk] = np.where(use[None, None], seen, x[dk]).astype(np.float32)

    # -- the dense MS of the date, put back (dense_consistency.py) ---------------------------------

    def _dense_fit(self, mdd, log: Callable[[str], None] | None = None):
        """The ``DenseConsistency`` of ``mdd`` (its dense map fitted on the central window of the fine
        MS dates), or None where it cannot be fitted; once per MDD (``prepare`` does it first and says
        what it found)."""
        key = os.path.abspath(mdd.path)
        if key not in self._consistency:
            from .dense_consistency import DenseConsistency, fit_dense_map, sigma_on_grid

            found = None
            if self._consistency_args is not None:
                window = central_window(mdd.grid.width, mdd.grid.height)
                dense = self._central_dense(mdd)
                fine, dense_of = [], []
                for d in mdd.roles["fine_ms"].dates:
                    f, vf = self._read(mdd, "fine_ms", d, window)
                    z, vd = self._read(mdd, "dense_ms", d, window, dense)
                    fine.append((f[0], vf[0, 0] > 0))
                    dense_of.append((z[0], vd[0, 0] > 0))
                ratio, guided, steps = self._consistency_args
                sigma = self.meta.get("dense_blur") if self._trained_on(mdd) else None  # measured by training
                sigma = min(sigma or sigma_on_grid(mdd, ratio), max_blur_sigma(ratio))  # within the halo allowed for
                fitted = fit_dense_map(fine, dense_of, sigma)
                if fitted is not None:
                    found = DenseConsistency(sigma, guided, steps).to(self.device)
                    found.set_map(*fitted)
                if log is not None:
                    log(
                        f"Fine MS predicted in time, put back in line with each date's dense MS: {steps} steps, "
                        f"the dense MS's blur on the grid {sigma:.2f} px."
                        if found is not None
                        else "Fine MS predicted in time: not put back in line with the dense MS (too few pixels with "
                        "both a fine MS and a dense MS in the middle of the grid to fit their relation)."
                    )
            self._consistency[key] = found
        return self._consistency[key]

    def _gap_fill(self, mdd, date):
        """The ``GapFill`` of the dense MS of ``date`` (None where it has no image that date, or too
        few observed pixels), fitted once per MDD and date on its central window so that every tile
        gets the same map."""
        if not DENSE_GAP_FILL:
            return None
        base = getattr(mdd, "uncached", mdd)  # a TileReadCache holds one tile's reads: not these
        key = (os.path.abspath(base.path), date)
        if key not in self._gap_fills:
            found = None
            if date in base.roles["dense_ms"].dates:
                values, valid = self._central_dense(base)
                days = [day_number(d) for d in base.roles["dense_ms"].dates]
                found = fit_gap_fill(values, valid, days, day_number(date))
            self._gap_fills[key] = found
        return self._gap_fills[key]

    def _dense_gain(self, mdd, date):
        """(DenseConsistency, the date's gain and offset (2, n_dense) tensor) for ``date``, or None:
        fitted once per MDD and date on its central window (``dense_consistency.date_gain``), so
        every tile of the date gets the same."""
        if self._consistency_args is None:
            return None
        import torch

        from .dense_consistency import date_gain

        base = getattr(mdd, "uncached", mdd)  # a TileReadCache holds one tile's reads: not these
        key = (os.path.abspath(base.path), date)
        if key not in self._gains:
            module = self._dense_fit(base)
            gain = None
            if module is not None:
                x, _ = self._ms_inputs(base, central_window(base.grid.width, base.grid.height), date)
                with NETWORK_LOCK, torch.no_grad():
                    # The gain compares the prediction as the dense sensor sees it: the change below the
                    # dense pixel, which that blur takes out, is left out here (half of its cost).
                    _, _, _, tp, _, _, vt = self.net.ms_estimate(x, below_dense_pixel=False)
                    gain = torch.from_numpy(date_gain(module, tp.float(), vt * x["vd"], x["d"])).to(self.device)
            self._gains[key] = None if gain is None else (module, gain)
        return self._gains[key]

    def _guide(self, mdd, window, fine_dates, own, q, fq) -> tuple:
        """(guide, its similarity or None, its components or None) for the guided change
        (``FusionNetwork.multi_date_guide``) and the change below the dense pixel (``_subpixel_basis``):
        the fine MS of every date but ``own`` (the one standing for the target date), in date order,
        each invalid pixel replaced by the source's ``fq``, as training builds it
        (``TrainingSet._guide``); and ``GuidedChange.similarity`` of it. The dates of a tile share
        both where no guide date has a gap (else those with the same source ``q``), so the similarity
        is judged once per tile, not once per date; not kept when it would take more than
        ``network.MAX_SIMILARITY`` values (a guided change of large radius judges it as it goes)."""
        import torch

        memo = getattr(mdd, "derived", None)
        slots_key = _guide_slots_key(window, own)
        slots = memo.get(slots_key) if memo is not None else None
        if slots is None:  # read and normalised once per tile and ``own``, whatever the date
            slots = [self._read(mdd, "fine_ms", d, window) for d in fine_dates if d != own]
            if memo is not None:
                memo[slots_key] = slots
        gaps = any(not v.all() for _, v in slots)
        key = ("guide",) + slots_key[1:] + (q if gaps else None,)
        if memo is not None and key in memo:
            return memo[key]
        parts = [np.where(v > 0, f, fq) for f, v in slots]
        guide = torch.from_numpy(np.concatenate(parts, axis=1) if parts else fq).to(self.device)
        guided = self.net.temporal.guided
        similar = guided.similarity_if_small(guide) if guided is not None else None
        basis = self._subpixel_basis(mdd, own) if self.net.temporal.subpixel is not None else None
        components = torch.einsum("kg,bghw->bkhw", basis, guide) if basis is not None else None
        if memo is not None:
            memo[key] = (guide, similar, components)
        return guide, similar, components

    def _subpixel_basis(self, mdd, own: str | None):
        """(k, G): the first ``SubpixelChange.COMPONENTS`` principal components of the guide that
        leaves out ``own`` (the fine MS of every other date, normalised), from ``_fine_covariance`` (the
        MDD's central window), so every tile and every Dask task uses the same;
        None where the guide has no more channels than that or too few valid pixels (the guide itself
        is used). Fed all 16-28 channels, the change below the dense pixel made fusion 3.4-3.8 times
        slower; fed 6 components, 1.6 times, per pixel (BENCHMARKS.md, "Fuse's SUBPIXEL_CHANGE")."""
        base = getattr(mdd, "uncached", mdd)
        key = (os.path.abspath(base.path), own)
        if key not in self._subpixel_bases:
            k = self.net.temporal.subpixel.COMPONENTS
            dates = base.roles["fine_ms"].dates
            nb = base.roles["fine_ms"].n_bands
            keep = [i * nb + b for i, d in enumerate(dates) if d != own for b in range(nb)]  # the guide's channels
            cov = self._fine_covariance(base)
            basis = None
            if cov is not None and len(keep) > k:
                basis = self._leading_components(cov[np.ix_(keep, keep)], k)
            self._subpixel_bases[key] = basis
        return self._subpixel_bases[key]

    def _change_basis(self, mdd):
        """(k, n_dense): the first ``SubpixelChange.CHANGE_COMPONENTS`` principal components of the dense
        MS's change from each date to the next (normalised), on the central window's pixels valid on
        both; once per MDD, so every tile and every Dask task uses the same. None where the dense MS
        has no more bands than that or too few such pixels (each band is regressed)."""
        base = getattr(mdd, "uncached", mdd)
        key = os.path.abspath(base.path)
        if key not in self._change_bases:
            k = self.net.temporal.subpixel.CHANGE_COMPONENTS
            stack = base.roles["dense_ms"]
            basis = None
            if stack.n_bands > k:
                values, valid = self._central_dense(base)
                z = [self.dense_norm.apply(v, ok) for v, ok in zip(values, valid)]
                rows = [(z[i + 1] - z[i])[:, valid[i] & valid[i + 1]].T for i in range(len(z) - 1)]
                change = np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, stack.n_bands))
                if len(change) > 4 * stack.n_bands:
                    change -= change.mean(0)
                    basis = self._leading_components(change.T @ change, k)
            self._change_bases[key] = basis
        return self._change_bases[key]

    def _central_dense(self, mdd) -> tuple:
        """(values (T, B, h, w), validity (T, h, w)) of the dense MS on every date in the MDD's central
        window, read once per MDD for the fits made there (the dense map, each date's gap fill, the
        change's components); read-only. At most 256² px a date and band, float32: 21 MB for 10 dates of
        8 bands, held while the predictor lives (each gap fill is fitted when a tile first needs it)."""
        key = os.path.abspath(mdd.path)
        if key not in self._central_denses:
            window = central_window(mdd.grid.width, mdd.grid.height)
            values = read_values(mdd, "dense_ms", window=window)
            valid = mdd.read_mask("dense_ms", window=window) & np.isfinite(values).any(axis=1)
            for a in (values, valid):
                a.setflags(write=False)
            self._central_denses[key] = (values, valid)
        return self._central_denses[key]

    def _leading_components(self, cov: np.ndarray, k: int):
        """(k, n) tensor on the predictor's device: the ``k`` eigenvectors of the symmetric ``cov`` (n, n)
        with the largest eigenvalues, one per row."""
        import torch

        w, u = np.linalg.eigh(cov)
        return torch.from_numpy(np.ascontiguousarray(u[:, np.argsort(-w)[:k]].T, np.float32)).to(self.device)

    def _fine_covariance(self, base: MDD) -> np.ndarray | None:
        """(n_dates x n_bands, same): ``dates_covariance`` of the normalised fine MS of every date, date
        after date, on the central window; read once per MDD, whatever the guide (each ``_subpixel_basis``
        takes its dates' block)."""
        key = os.path.abspath(base.path)
        if key not in self._fine_covariances:
            window = central_window(base.grid.width, base.grid.height)
            slots = [self._read(base, "fine_ms", d, window) for d in base.roles["fine_ms"].dates]
            self._fine_covariances[key] = dates_covariance([(f[0], v[0, 0] > 0) for f, v in slots])
        return self._fine_covariances[key]

    def _date_map(self, date: str) -> np.ndarray:
        """(1, k, n_fine + 1): the spectral map for ``date`` (date_maps.map_for)."""
        from .date_maps import map_for

        return map_for(self.map_days, self.hs_maps, day_number(date), self.max_days)[None]

    def _own_map(self, date: str) -> np.ndarray | None:
        """(1, k, n_fine + 1): the map of the HS date within max_days of ``date``, None when none."""
        from .date_maps import own_index

        if self.hs_maps is None:
            return None
        i = own_index(self.map_days, self.hs_maps, day_number(date), self.max_days)
        return None if i is None else self.hs_maps[i][None]

    @property
    def _detail_every_date(self) -> bool:
        """The detail step on the dates without their own HS as well: by default, for models that
        carry its skill (a model without it had the step on its HS dates only)."""
        return DETAIL_ON_EVERY_DATE and self.detail_blur is not None and self.detail_skill is not None

    def halo_for(self, date: str) -> int:
        """The context ``date`` needs: ``halo`` where the detail step applies, the network's alone
        otherwise (6 % fewer pixels through the network for a 256 px tile)."""
        applies = self._own_map(date) is not None or self._detail_every_date
        return self.halo if applies else self.net_halo

    def _detail(self, scores, x: dict, out: dict, date: str):
        """The detail finer than the HS pixel from a regression of the HS on the fine MS (``r``), the
        rest from the network: ``r + G(scores - r)``, G the HS PSF (Gaussian, validity-weighted).
        - On a date with its own HS image and fine MS: that date's own regression, on its observed
          fine MS, where that is valid. The per-date regression keeps the fine MS's edges exactly
          where they are; the network's finer detail also carries what its HS-scale inputs have of
          noise and misregistration (CC, PSNR and SSIM up on every HS date of two simulated scenes).
        - On any other date (``DETAIL_ON_EVERY_DATE``, for a model with the skill): the regression of the HS dates
          blended in time (``date_maps.map_for``), on the network's own fine MS estimate ``m``
          (observed, or predicted in time), where that is valid.
        Each PCA component takes the step as far as the maps' detail is trusted there
        (``detail_skill``, measured one scale up at training; 0 keeps the network's output).
        scores (1, k, H, W) torch; returns the same."""
        import torch

        from .date_maps import map_for
        from .network import apply_map

        own = self._own_map(date)
        if own is not None:
            if not bool((x["va"] > 0).any()):
                return scores
            w, ms, valid = own, x["a"], x["va"]
        elif not self._detail_every_date:
            return scores
        else:
            w, ms, valid = (
                map_for(self.map_days, self.hs_maps, day_number(date), self.max_days)[None],
                out["m"],
                out["vm"],
            )
        w = torch.from_numpy(w).to(scores.device, scores.dtype)
        ms, valid = ms.to(scores.dtype), valid.to(scores.dtype)
        r = apply_map(w, ms)
        low, _ = self.detail_blur((scores - r) * valid, valid)
        detailed = torch.where(valid > 0, r + low, scores)
        if self.detail_skill is None:
            return detailed
        skill = torch.from_numpy(self.detail_skill).to(scores.device, scores.dtype)[None, :, None, None]
        return scores + skill * (detailed - scores)  # each component's detail: the map's as far as it is trusted

    def _reference(self, mdd, window, r, dense, fine_dates, hs_dates) -> dict:
        """The tensors of reference HS date ``r`` in ``window`` and its residual (which depends on
        ``r`` alone, not on the date being fused)."""
        import torch

        ref = {}
        ref["ar"], ref["var"] = self._read(mdd, "fine_ms", fine_for(fine_dates, r, hs_dates, self.max_days), window)
        ref["dr"], ref["vdr"] = self._read(mdd, "dense_ms", r, window, dense)
        # Into PCA scores before the HS is brought to the fine grid (see MDD.read_projected).
        scores, valid = mdd.read_projected("hs", self._project, window=window, dates=[r])
        ref["h"] = scores
        ref["vh"] = valid[:, None].astype(np.float32)
        if self.date_maps is not None:
            ref["wmap"] = self._date_map(r)
        ref = {k: torch.from_numpy(v).to(self.device) for k, v in ref.items()}
        with NETWORK_LOCK, torch.no_grad(), autocast(self.device, precision_for(self.device, training=False)[0]):
            ref["rho"], ref["vrho"] = self.net.reference_residual(
                ref["ar"], ref["var"], ref["dr"], ref["vdr"], ref["h"], ref["vh"], ref.get("wmap")
            )
        return ref

    def _project(self, values: np.ndarray) -> np.ndarray:
        """HS values (time, band, row, col), NaN where invalid -> PCA scores (time, k, row, col)."""
        return self.pca.transform(values, np.isfinite(values).any(axis=-3))

    def _after_ms(self, shape: tuple, crop: tuple | None) -> tuple | None:
        """(row slice, col slice) of the window that the network needs after its fine MS estimate
        (``ms_estimate``) for the pixels ``crop`` keeps: those pixels grown by the spectral branch's and
        the head's reach and the detail step's blur. The window's larger halo is for the estimate
        (the temporal path, with ``dense_consistency``'s steps), computed on the whole window first.
        None: the whole window (no crop, or no steps to save)."""
        margin = int(self.net.head.radius + self.net.spectral.trunk.radius)
        return self._grown(shape, crop, margin)

    def _reference_part(self, shape: tuple, crop: tuple | None) -> tuple | None:
        """(row slice, col slice) of the window the references' residuals are needed on: the kept
        pixels grown by the network's own halo (what the window was before ``dense_consistency``'s
        steps asked for more). None: the whole window."""
        return self._grown(shape, crop, int(self.net.halo))

    def _grown(self, shape: tuple, crop: tuple | None, margin: int) -> tuple | None:
        """``crop`` grown by ``margin`` and the detail step's blur, within a window of ``shape``;
        None without a crop or without ``dense_consistency``'s steps (the whole window is needed)."""
        if crop is None or self.net_halo == int(self.net.halo):
            return None
        margin += self.detail_blur.radius if self.detail_blur is not None else 0
        rows, cols = crop
        h, w = int(shape[0]), int(shape[1])
        return (
            slice(max((rows.start or 0) - margin, 0), min((h if rows.stop is None else rows.stop) + margin, h)),
            slice(max((cols.start or 0) - margin, 0), min((w if cols.stop is None else cols.stop) + margin, w)),
        )

    def predict(self, mdd: MDD, window: tuple, date: str, crop: tuple | None = None) -> np.ndarray:
        """Fine HS (n_hs_bands, ysize, xsize) float32 in the HS's units for window (xoff, yoff, xsize,
        ysize) on `date` (any date within the MDD's series); NaN where the pixel has neither a fine MS
        of that date nor a valid dense MS on any date (dense MS gaps are filled in time), and in HS
        bands that never had finite values or are flagged bad. ``crop`` = (row slice, col slice):
        only that part of the window is returned (the halo is context, not output)."""
        import torch

        if not mdd.dates or not mdd.dates[0] <= date <= mdd.dates[-1]:
            raise ModelError(f"{date} is not within the MDD's series ({', '.join(mdd.dates)}).")
        x = self._inputs(mdd, window, date, crop)
        with NETWORK_LOCK, torch.no_grad(), autocast(self.device, precision_for(self.device, training=False)[0]):
            inner = self._after_ms(x["d"].shape[-2:], crop)
            if inner is None:
                out = self.net.fuse(x)
            else:  # the fine MS estimate on the whole window, the rest of the network on what it needs
                ms = self.net.ms_estimate(x)
                part = x.pop("refs_part")  # the references were computed on this part of the window
                within = tuple(slice(i.start - p.start, i.stop - p.start) for i, p in zip(inner, part))
                size = (part[0].stop - part[0].start, part[1].stop - part[1].start)
                refs = [{k: _cut(v, size, within) for k, v in r.items()} for r in x.pop("refs")]
                x = dict(_cropped(x, inner), refs=refs)
                out = self.net.fuse(x, tuple(None if t is None else t[..., inner[0], inner[1]] for t in ms))
                crop = tuple(slice(c.start - i.start, c.stop - i.start) for c, i in zip(crop, inner))
            if self.detail_blur is not None:
                out["scores"] = self._detail(out["scores"].float(), x, out, date)
        scores = out["scores"].float()[0].cpu().numpy()
        valid = out["vm"].float()[0, 0].cpu().numpy() > 0
        if crop is not None:
            scores, valid = scores[:, crop[0], crop[1]], valid[crop[0], crop[1]]
        hs = self.pca.inverse(scores)
        hs[:, ~valid] = np.nan
        return hs


def _guide_slots_key(window: tuple, own: str | None) -> tuple:
    """The tile memo's key of the guide's slots (``FusionPredictor._guide``): the fine MS of every date
    but ``own``, read for ``window``; ``_fill_sources`` takes its stand-ins from them."""
    return ("guide slots", tuple(int(v) for v in window), own)


def dates_covariance(slots: list) -> np.ndarray | None:
    """(n_dates x n_bands, same): the covariance of the channels of every date, date after date, from
    ``slots`` [(values (n_bands, H, W), validity (H, W) bool)] of the dates. On the pixels valid on every
    date where there are more than 4 a channel. A long cloudy series may have almost none (twenty
    dates each 30 % cloudy leave 0.08 % of the pixels): then each pair of dates' block comes from the
    pixels valid on both, about each date's own mean (pairwise-complete; its leading components are
    what is used). None where even a pair of dates has too few pixels in common (the guide is then
    used whole)."""
    ok = np.logical_and.reduce([v for _, v in slots])
    channels = sum(len(f) for f, _ in slots)
    if ok.sum() > 4 * channels:
        values = np.concatenate([f[:, ok] for f, _ in slots]).T.astype(np.float64)  # (pixels, channels)
        values -= values.mean(0)
        return values.T @ values / len(values)
    nb = [len(f) for f, _ in slots]
    means = []
    for f, v in slots:
        if v.sum() <= 4 * channels:
            return None
        means.append(f[:, v].astype(np.float64).mean(axis=1))
    starts = np.cumsum([0] + nb)
    cov = np.zeros((channels, channels))
    for i, (fi, vi) in enumerate(slots):
        for j in range(i, len(slots)):
            fj, vj = slots[j]
            both = vi & vj
            if both.sum() <= 4 * channels:
                return None
            a = fi[:, both].astype(np.float64) - means[i][:, None]
            b = fj[:, both].astype(np.float64) - means[j][:, None]
            block = a @ b.T / both.sum()
            cov[starts[i] : starts[i + 1], starts[j] : starts[j + 1]] = block
            cov[starts[j] : starts[j + 1], starts[i] : starts[i + 1]] = block.T
    return cov


def _subpixel_note(sub) -> str:
    side = sub.side
    lattice = f", solved every {sub.stride} px" if sub.stride > 1 else ""
    return (
        "Fine MS predicted in time: the dense MS change put below the dense pixel by the fine MS's own detail "
        f"(local regressions in {side}x{side} px windows{lattice}, of the change, on its first {sub.CHANGE_COMPONENTS} "
        f"principal components where it has more bands, on the first {sub.COMPONENTS} of the fine MS of the other dates)."
    )


def _gap_fill_note() -> str:
    return (
        "Gaps (clouds) of a date's dense MS: filled from how the rest of that image changed since the other "
        f"dates (fitted on the central {MAX_SIDE}x{MAX_SIDE} px of the date), else interpolated in time per pixel."
    )


def _cut(t, size: tuple, where: tuple):
    """``t`` cut to ``where`` (row slice, col slice) when it is laid on pixels of ``size`` (rows, cols);
    anything else (a time gap, a per-band gain, the consistency module) as it is."""
    if hasattr(t, "shape") and t.dim() >= 3 and tuple(t.shape[-2:]) == tuple(size):
        return t[..., where[0], where[1]]
    return t


def _cropped(x: dict, inner: tuple) -> dict:
    """The inputs of ``FusionNetwork.fuse`` but its references, cut to ``inner`` (row slice, col slice):
    every tensor laid on the window's pixels (the guide's similarity too); the others as they are."""
    size = tuple(x["d"].shape[-2:])
    return {k: [_cut(t, size, inner) for t in v] if isinstance(v, list) else _cut(v, size, inner) for k, v in x.items()}


def load_predictor(model_path: str, device: str = "auto", subpixel_change: bool | None = None) -> FusionPredictor:
    """Loads a model file for fusion; ModelError when the file is not a usable model.
    ``subpixel_change``: see ``FusionPredictor``."""
    from .network import FusionNetwork, NetworkError

    meta, arrays, state = load_model(model_path)
    try:
        cfg = dict(meta["network"])
        net = FusionNetwork(**cfg)
    except (KeyError, TypeError, NetworkError) as e:
        raise ModelError(f"{model_path}: its network description is unusable ({e}); train the model again.") from None
    if cfg.get("kernels") != meta.get("kernels"):
        raise ModelError(
            f"{model_path} declares kernel set {meta.get('kernels')} but its network uses "
            f"{cfg.get('kernels')}: the file is inconsistent, train the model again."
        )
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        first = str(e).splitlines()[0][:200]
        raise ModelError(
            f"{model_path}: its weights do not match the declared kernel set "
            f"{meta.get('kernels')} ({first}); train the model again."
        ) from None
    dev = select_device(device)
    net.to(dev).eval()
    needed = ("fine_mean", "fine_std", "dense_mean", "dense_std", "pca_components")
    missing = [k for k in needed + (("date_maps",) if net.date_maps else ()) if k not in arrays]
    if missing:
        raise ModelError(f"{model_path} lacks {', '.join(missing)} (corrupt file): train the model again.")
    return FusionPredictor(meta, arrays, net, dev, subpixel_change)
