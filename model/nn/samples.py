"""From an MDD to training samples: the normalised roles, the HS's PCA scores, Wald-protocol batches.

Arrays follow the MDD: (time, band, row, col) per role on the fine grid. Normalised values are
per-band z-scores with statistics from valid pixels; invalid pixels become 0 (the band mean) plus a
validity flag, which does not depend on any window, so tiled fusion equals a one-tile run.

Two "worlds" feed the four tasks (see model/README.md):
- full scale (the MDD grid): temporal and spatial tasks (targets: observed fine MS) and the spectral
  task (fine MS blurred to the HS scale -> observed HS scores);
- reduced scale (Wald's protocol): every role blurred by a Gaussian PSF by the HS/fine ratio R and
  decimated by R, so the observed HS becomes the target of the fusion head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.calendar import (
    MAX_DAYS_APART,
    check_max_days,
    days_apart,
    fill_in_time,
    fine_for,
    interpolation_note,
    paired_date,
)
from ..core.vocabulary import ROLE_LABELS, ROLES, day_number, nearest_index
from ..mdd.format import MDD, read_values
from .network import psf_sigma
from .preprocessing import HSPCA, BandNormalizer, TrainingDataError, gaussian_blur_stack

MAX_PCA_PIXELS = 20000
REGION = 256  # px: a grid up to this side is held whole; a larger one is read in regions of this side
POOL = 4  # regions held at once when the grid is larger (memory: ~ POOL regions, whatever the grid)


@dataclass
class RoleData:
    dates: list
    days: np.ndarray
    z: np.ndarray  # (time, band, row, col) normalised, 0 where invalid
    valid: np.ndarray  # (time, row, col) bool


def read_role(mdd: MDD, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Whole role stack (physical, NaN invalid) and its validity; reads band by band via the MDD."""
    return read_values(mdd, role), mdd.read_mask(role)


def check_mdd(mdd: MDD, patch_size: int) -> None:
    for role in ROLES:
        if role not in mdd.roles or mdd.roles[role].n_dates == 0:
            what = {"hs": "no HS date", "fine_ms": "no fine MS date", "dense_ms": "no dense MS date"}[role]
            raise TrainingDataError(
                f"The MDD {mdd.path} has {what}: training needs at least one "
                f"{ROLE_LABELS[role]} image; add one in 'Build MDD stack'."
            )
    if mdd.roles["hs"].wavelengths is None:
        raise TrainingDataError("The MDD's HS has no wavelengths: rebuild it with HS band wavelengths.")
    g = mdd.grid
    if patch_size < 4:
        raise TrainingDataError(f"PATCH_SIZE {patch_size} is too small: use at least 4 pixels.")
    if patch_size > min(g.width, g.height):
        raise TrainingDataError(
            f"PATCH_SIZE {patch_size} is larger than the MDD grid ({g.width}x{g.height} "
            f"pixels): choose PATCH_SIZE <= {min(g.width, g.height)}."
        )


def _take(arr, t, y0, x0, size, step=1, py=0, px=0):
    """(band, size, size) window of arr[t], decimated by `step` at phase (py, px) when step > 1."""
    ys = py + step * y0
    xs = px + step * x0
    return arr[t][..., ys : ys + step * size : step, xs : xs + step * size : step]


def region_windows(width: int, height: int, size: int) -> list:
    """Square windows (xoff, yoff, xsize, ysize) of ``size`` covering the grid once; the last row and
    column of windows reach the edge."""
    return [
        (x, y, min(size, width - x), min(size, height - y))
        for y in range(0, height, size)
        for x in range(0, width, size)
    ]


@dataclass
class Region:
    """The training arrays of one window of the grid: normalised roles, HS scores, their blurred
    (Wald-reduced) versions and the valid pixels to draw patches around."""

    window: tuple
    fine: RoleData
    dense: RoleData
    hs: RoleData
    fine_b: tuple
    dense_b: tuple
    hs_b: tuple
    valid_flat: dict

    @property
    def shape(self) -> tuple:
        return int(self.window[3]), int(self.window[2])


class TrainingSet:
    """Everything training reads from an MDD, normalised, plus seeded batch builders.

    Batches are dicts of float32 torch tensors (batch, channel, row, col) named as
    ``FusionNetwork.fuse`` expects; validity channels are 0/1.

    Memory does not grow with the raster: a grid of at most ``region`` pixels a side is held whole
    (one ``Region``); a larger one is read in regions of that side. Then the statistics (band
    normalisation, the HS PCA on a sample of valid pixels, which dates have data) come from one pass
    over all regions, and training draws its patches from a pool of ``pool`` regions (more when the
    dates with data need more to be all present), drawn anew by ``refresh`` at every epoch.
    """

    def __init__(
        self,
        mdd: MDD,
        n_components: int,
        patch_size: int,
        seed: int,
        log: Callable[[str], None] = print,
        max_days_apart: float = MAX_DAYS_APART,
        region: int | None = None,
        pool: int | None = None,
        pca: HSPCA | None = None,
    ) -> None:
        """``pca``: the HS PCA to use instead of fitting one (a training run that goes on from a view of
        this MDD keeps the view's, see ``training.Withheld``)."""
        check_mdd(mdd, patch_size)
        self.mdd = mdd
        self.patch = int(patch_size)
        rng = np.random.default_rng(seed)
        H, W = mdd.grid.height, mdd.grid.width
        self.shape = (H, W)
        self.max_days = check_max_days(max_days_apart)
        region = int(REGION if region is None else region)
        self.pool = int(POOL if pool is None else pool)
        hs_dates = list(mdd.roles["hs"].dates)
        self.fine_dates = list(mdd.roles["fine_ms"].dates)
        self.hs_dates_all = hs_dates
        # The dense MS on every date a task needs it (its own, the fine MS and the HS dates), filled
        # in time per pixel: the same rule the predictor applies at fusion time.
        self.dense_dates = sorted(set(mdd.roles["dense_ms"].dates) | set(self.fine_dates) | set(hs_dates))
        self.hs_ratio = float(mdd.scale_ratio("hs"))
        self.dense_ratio = float(mdd.scale_ratio("dense_ms"))
        # Wald's protocol needs a real reduction: at least 2, even where the HS is barely coarser.
        self.step = max(2, int(round(self.hs_ratio)))
        self.sigma = psf_sigma(self.step)
        self.fine_of = {d: i for i, d in enumerate(self.fine_dates)}
        self.dense_of = {d: i for i, d in enumerate(self.dense_dates)}
        self.hs_of = {d: i for i, d in enumerate(hs_dates)}
        self.pca = pca
        with mdd.reading():
            self._load(rng, region, n_components, seed, log)
        self.fine = RoleData(self.fine_dates, np.array([day_number(d) for d in self.fine_dates]), None, None)
        self.hs = RoleData(hs_dates, np.array([day_number(d) for d in hs_dates]), None, None)
        with_fine = [i for i in range(len(self.fine_dates)) if self.counts[("fine", i)].sum() > 0]
        self.spatial_dates = with_fine
        self._usable_fine_dates = [self.fine_dates[i] for i in with_fine]  # the fine MS a date may pair with
        self.pairs = [(q, t) for t in with_fine for q in with_fine if q != t]
        self.hs_dates = [i for i in range(len(hs_dates)) if self.counts[("hs", i)].sum() > 0]
        # The fine MS that stands for each HS date: the nearest within max_days (calendar rule).
        self.hs_fine = {}
        for h in self.hs_dates:
            paired = paired_date(self._usable_fine_dates, hs_dates[h], self.max_days)
            self.hs_fine[h] = self.fine_of[paired] if paired else None
        self.reduced_patch = min(self.patch, H // self.step, W // self.step)
        if len(self.windows) > 1:
            self.reduced_patch = min(self.reduced_patch, min(w[2] for w in self.windows) // self.step)
        self.date_maps = None  # (HS dates, k, n_fine + 1) when the network uses date maps (training.py)
        self.hs_maps = None  # the same maps, for the model file in any case
        self.tasks = ["spectral", "fusion"]
        if self.spatial_dates:
            self.tasks.insert(0, "spatial")
        if self.pairs:
            self.tasks.insert(1 if self.spatial_dates else 0, "temporal")
        self._log_calendar(log, mdd)

    def _load(self, rng: np.random.Generator, region: int, n_components: int, seed: int, log: Callable) -> None:
        """Statistics and the first regions (the whole grid when it is one region)."""
        mdd = self.mdd
        H, W = self.shape
        hs_dates = self.hs_dates_all
        if max(W, H) <= region:
            self.windows = [(0, 0, W, H)]
            raw = {role: self._read(role, self.windows[0]) for role in ("fine_ms", "dense_ms")}
            for role in ("fine_ms", "dense_ms"):
                self._check_any(role, raw[role][1].any())
            self.fine_norm = BandNormalizer.fit(*raw["fine_ms"])
            self.dense_norm = BandNormalizer.fit(*raw["dense_ms"])
            hv, hm = self._read("hs", self.windows[0])
            self._check_any("hs", hm.any())
            if self.pca is None:
                idx = np.argwhere(hm)
                pick = idx[np.sort(rng.choice(len(idx), min(len(idx), MAX_PCA_PIXELS), replace=False))]
                pixels = hv[pick[:, 0], :, pick[:, 1], pick[:, 2]]
                self.pca = HSPCA.fit(pixels, mdd.roles["hs"].wavelengths, n_components, seed, mdd.roles["hs"].bbl)
            raw["hs"] = (hv, hm)
            del hv
            self.regions = [self._region(self.windows[0], raw)]
            del raw
            reg = self.regions[0]
            self.counts = {("fine", i): np.array([reg.fine.valid[i].sum()]) for i in range(len(self.fine_dates))}
            self.counts.update({("hs", i): np.array([reg.hs.valid[i].sum()]) for i in range(len(hs_dates))})
        else:
            self.windows = region_windows(W, H, int(region))
            self._fit_streaming(rng, n_components, seed, log)
            self.regions = []
            self.refresh(rng)

    @property
    def n_fine_bands(self) -> int:
        return self.mdd.roles["fine_ms"].n_bands

    @property
    def n_dense_bands(self) -> int:
        return self.mdd.roles["dense_ms"].n_bands

    # ---- reading --------------------------------------------------------------------------------

    def _read(self, role: str, window: tuple) -> tuple:
        """(physical values with NaN where invalid, validity) of a role in a window; the HS date by date
        (its bands are many) before they are put together."""
        if role != "hs":
            return read_values(self.mdd, role, window=window), self.mdd.read_mask(role, window=window)
        dates = list(self.mdd.roles["hs"].dates)
        parts = [read_values(self.mdd, "hs", window=window, dates=[d]) for d in dates]
        return np.concatenate(parts), self.mdd.read_mask("hs", window=window)

    def _check_any(self, role: str, any_valid: bool) -> None:
        if not any_valid:
            raise TrainingDataError(
                f"The {ROLE_LABELS[role]} of {self.mdd.path} has no valid pixel on any "
                "date (all nodata or masked): check the layers' nodata and masks, "
                "or choose an extent where they have data."
            )

    def _region(self, window: tuple, raw: dict) -> Region:
        """A region's arrays from its physical values (``raw``: role -> (values, valid))."""
        fv, fm = raw["fine_ms"]
        dv, dm = raw["dense_ms"]
        hv, hm = raw["hs"]
        fine = self._role("fine_ms", self.fine_norm.apply(fv, fm), fm)
        dense = self._dense_in_time(dv, dm, self.dense_dates)
        hs = self._role(
            "hs", np.concatenate([self.pca.transform(hv[t : t + 1], hm[t : t + 1]) for t in range(len(hm))]), hm
        )
        s = self.sigma
        # Wald's protocol: each role one reduction coarser than it is (its own ratio x the step).
        fine_b = gaussian_blur_stack(fine.z, fine.valid, s)
        dense_b = gaussian_blur_stack(dense.z, dense.valid, self.dense_ratio * s)
        hs_b = gaussian_blur_stack(hs.z, hs.valid, self.hs_ratio * s)
        flat = {("fine", i): np.flatnonzero(fine.valid[i]) for i in range(len(fine.dates))}
        flat.update({("hs", i): np.flatnonzero(hs.valid[i]) for i in range(len(hs.dates)) if hs.valid[i].any()})
        return Region(tuple(int(v) for v in window), fine, dense, hs, fine_b, dense_b, hs_b, flat)

    def _fit_streaming(self, rng: np.random.Generator, n_components: int, seed: int, log: Callable) -> None:
        """Normalisation, per-window counts of valid pixels and the HS PCA, one region at a time."""
        mdd = self.mdd
        n_fine, n_hs = len(self.fine_dates), len(self.hs_dates_all)
        moments = {}
        self.counts = {("fine", i): np.zeros(len(self.windows), np.int64) for i in range(n_fine)}
        self.counts.update({("hs", i): np.zeros(len(self.windows), np.int64) for i in range(n_hs)})
        for w, window in enumerate(self.windows):
            for role, kind in (("fine_ms", "fine"), ("dense_ms", None)):
                values, valid = read_values(mdd, role, window=window), mdd.read_mask(role, window=window)
                moments[role] = BandNormalizer.add_moments(moments.get(role), values, valid)
                if kind:
                    for i in range(n_fine):
                        self.counts[(kind, i)][w] = int(valid[i].sum())
            hm = mdd.read_mask("hs", window=window)
            for i in range(n_hs):
                self.counts[("hs", i)][w] = int(hm[i].sum())
        for role, kind in (("fine_ms", "fine"), ("dense_ms", None), ("hs", "hs")):
            total = (
                moments[role][0].sum() if kind is None else sum(c.sum() for k, c in self.counts.items() if k[0] == kind)
            )
            self._check_any(role, total > 0)
        self.fine_norm = BandNormalizer.from_moments(*moments["fine_ms"])
        self.dense_norm = BandNormalizer.from_moments(*moments["dense_ms"])
        if self.pca is None:
            self.pca = self._fit_pca_streaming(rng, n_components, seed)
        log(
            f"The {mdd.grid.width}x{mdd.grid.height} px grid is read in {len(self.windows)} regions of up to "
            f"{self.windows[0][2]} px: training draws its patches from {self.pool} of them at a time, new ones "
            "every epoch (memory bounded by the regions, not the grid)."
        )

    def _fit_pca_streaming(self, rng: np.random.Generator, n_components: int, seed: int) -> HSPCA:
        """The HS PCA on MAX_PCA_PIXELS valid HS pixels at random, each window and date giving its share."""
        mdd = self.mdd
        total = sum(int(c.sum()) for k, c in self.counts.items() if k[0] == "hs")
        pixels = []
        for w, window in enumerate(self.windows):
            for i, date in enumerate(self.hs_dates_all):
                n = int(self.counts[("hs", i)][w])
                quota = min(n, int(round(MAX_PCA_PIXELS * n / total)))
                if quota == 0:
                    continue
                values = read_values(mdd, "hs", window=window, dates=[date])[0]
                where = np.argwhere(mdd.read_mask("hs", window=window, dates=[date])[0])
                pick = where[np.sort(rng.choice(len(where), quota, replace=False))]
                pixels.append(values[:, pick[:, 0], pick[:, 1]].T)
        return HSPCA.fit(np.concatenate(pixels), mdd.roles["hs"].wavelengths, n_components, seed, mdd.roles["hs"].bbl)

    def refresh(self, rng: np.random.Generator) -> None:
        """Draws the pool of regions anew (nothing to do when one region holds the whole grid): every
        date with data is in at least one region of the pool, the rest are drawn at random by how
        many valid pixels they hold."""
        if len(self.windows) == 1 and self.regions:
            return
        keys = [k for k, c in self.counts.items() if c.sum() > 0]
        chosen = []
        for k in [keys[i] for i in rng.permutation(len(keys))]:
            if not any(self.counts[k][w] > 0 for w in chosen):
                have = np.flatnonzero(self.counts[k] > 0)
                chosen.append(int(have[rng.integers(len(have))]))
        weight = sum(self.counts[k].astype(np.float64) for k in keys)
        weight[chosen] = 0.0
        extra = min(max(0, self.pool - len(chosen)), int((weight > 0).sum()))
        if extra:
            chosen += [int(w) for w in rng.choice(len(weight), extra, replace=False, p=weight / weight.sum())]
        self.regions = []  # the old pool goes before the new one is read: one pool in memory at a time
        with self.mdd.reading():
            self._read_regions(sorted(chosen))

    def _read_regions(self, chosen: list) -> None:
        for w in chosen:
            window = self.windows[w]
            raw = {role: self._read(role, window) for role in ROLES}
            self.regions.append(self._region(window, raw))

    def _pick_region(self, rng: np.random.Generator, key: tuple) -> Region:
        """A region of the pool with valid pixels for ``key`` (one region: that one, no draw)."""
        if len(self.regions) == 1:
            return self.regions[0]
        have = [r for r in self.regions if len(r.valid_flat.get(key, ())) > 0]
        return have[rng.integers(len(have))]

    def _dense_in_time(self, values: np.ndarray, valid: np.ndarray, dates: list) -> RoleData:
        stack_dates = list(self.mdd.roles["dense_ms"].dates)
        days = [day_number(d) for d in stack_dates]
        nb = values.shape[1]
        z = np.zeros((len(dates), nb) + values.shape[2:], np.float32)
        ok = np.zeros((len(dates),) + values.shape[2:], bool)
        for i, date in enumerate(dates):
            v, m = fill_in_time(values, valid, days, day_number(date))
            z[i], ok[i] = self.dense_norm.apply(v, m), m
        return RoleData(dates, np.array([day_number(d) for d in dates]), z, ok)

    def _log_calendar(self, log: Callable[[str], None], mdd: MDD) -> None:
        """The pairings and interpolations of this calendar, and the tasks they allow."""
        dense_dates = list(mdd.roles["dense_ms"].dates)
        for h in self.hs_dates:
            date, t = self.hs.dates[h], self.hs_fine[h]
            if t is None:
                log(
                    f"HS {date}: no fine MS within {self.max_days:g} days (MAX_DAYS_APART); its MS comes from "
                    "the dense MS and the temporal branch."
                )
            else:
                log(
                    f"HS {date} paired with fine MS {self.fine.dates[t]} "
                    f"({days_apart(date, self.fine.dates[t])} days apart)."
                )
        needed = sorted(set(self.fine.dates) | {self.hs.dates[h] for h in self.hs_dates})
        for date in needed:
            if date not in dense_dates:
                log("Dense MS " + interpolation_note(dense_dates, date) + ".")
        if not self.pairs:
            log(
                "Only one fine MS date: the temporal task cannot be supervised; the temporal branch starts from "
                "the spatial branch's band mapping and learns only through the fusion task."
            )
        if len(self.hs_dates) < 2:
            log(
                "Only one HS date: the fusion head learns without a reference from another date, and "
                "the distance in time to the reference is not used."
            )
        log("Tasks: " + ", ".join(self.tasks) + ".")

    def _role(self, role, z, valid):
        dates = list(self.mdd.roles[role].dates)
        return RoleData(dates, np.array([day_number(d) for d in dates]), z, valid)

    def _origin(self, rng, reg, key, size, step=1):
        """A patch origin (y0, x0, py, px) in the (decimated) region containing a random valid pixel."""
        H, W = reg.shape
        flat = reg.valid_flat[key]
        y, x = divmod(int(flat[rng.integers(len(flat))]), W)
        py, px = y % step, x % step
        hr, wr = (H - py + step - 1) // step, (W - px + step - 1) // step
        y0 = int(np.clip(y // step - rng.integers(size), 0, hr - size))
        x0 = int(np.clip(x // step - rng.integers(size), 0, wr - size))
        return y0, x0, py, px

    @staticmethod
    def _stack(samples):
        import torch

        out = {}
        for k in samples[0]:
            out[k] = torch.from_numpy(np.ascontiguousarray(np.stack([s[k] for s in samples])).astype(np.float32))
        return out

    def _ms(self, reg, world, role, date, y0, x0, size, step, py, px):
        """(values, validity) of a role on a date, zeros when the role has no image then. The fine MS
        of a date is the one paired with it (within max_days); the dense MS is filled in time."""
        data = reg.fine if role == "fine" else reg.dense
        idx = self._fine_index(date) if role == "fine" else self.dense_of.get(date)
        nb = data.z.shape[1]
        if idx is None:
            return np.zeros((nb, size, size), np.float32), np.zeros((1, size, size), np.float32)
        if world == "reduced":
            z, v = reg.fine_b if role == "fine" else reg.dense_b
        else:
            z, v = data.z, data.valid
        return (
            _take(z, idx, y0, x0, size, step, py, px),
            _take(v[:, None], idx, y0, x0, size, step, py, px).astype(np.float32),
        )

    def _guide(self, reg, world, exclude, fq, y0, x0, size, step=1, py=0, px=0) -> np.ndarray:
        """The guided change's fine MS (``FusionNetwork.multi_date_guide``): every usable fine MS
        date's, in date order, with the target's own (index ``exclude``: at fusion a date without it
        has none) and each invalid pixel replaced by the source's ``fq``, as the predictor builds it."""
        z, v = reg.fine_b if world == "reduced" else (reg.fine.z, reg.fine.valid)
        parts = []
        for i in self.spatial_dates:
            if i == exclude:
                parts.append(fq)
                continue
            f = _take(z, i, y0, x0, size, step, py, px)
            parts.append(np.where(_take(v[:, None], i, y0, x0, size, step, py, px) > 0, f, fq))
        return np.concatenate(parts) if parts else fq

    def _fine_index(self, date: str | None) -> int | None:
        """The fine MS image that stands for ``date``: its own, or for an HS date the paired one
        (``core.calendar.fine_for``)."""
        if date is None:
            return None
        own = fine_for(self._usable_fine_dates, date, self.hs_dates_all, self.max_days)
        return self.fine_of[own] if own else self.fine_of.get(date)

    def fine_batch(self, rng: np.random.Generator, batch: int) -> dict:
        """Temporal + spatial tasks at full scale: targets are observed fine MS.

        Keys: y/vy fine MS at t; d/vd dense at t; fq/vfq, dq/vdq the source date q of the pair; guide
        the guided change's fine MS of every date but t (``_guide``)."""
        P = self.patch
        samples = []
        for _ in range(batch):
            if self.pairs:
                q, t = self.pairs[rng.integers(len(self.pairs))]
            else:
                q, t = None, self.spatial_dates[rng.integers(len(self.spatial_dates))]
            reg = self._pick_region(rng, ("fine", t))
            y0, x0, _, _ = self._origin(rng, reg, ("fine", t), P)
            date_t = self.fine_dates[t]
            s = {
                "y": _take(reg.fine.z, t, y0, x0, P),
                "vy": _take(reg.fine.valid[:, None], t, y0, x0, P).astype(np.float32),
            }
            s["d"], s["vd"] = self._ms(reg, "full", "dense", date_t, y0, x0, P, 1, 0, 0)
            date_q = self.fine_dates[q] if q is not None else None
            s["fq"], s["vfq"] = self._ms(reg, "full", "fine", date_q, y0, x0, P, 1, 0, 0)
            s["dq"], s["vdq"] = self._ms(reg, "full", "dense", date_q, y0, x0, P, 1, 0, 0)
            s["guide"] = self._guide(reg, "full", t, s["fq"], y0, x0, P)
            samples.append(s)
        return self._stack(samples)

    def spectral_batch(self, rng: np.random.Generator, batch: int) -> dict:
        """Spectral task at full scale: MS of an HS date (blurred to the HS scale in the graph) -> HS.

        Keys: a/va fine MS, d/vd dense MS of that date, y/vy its HS scores."""
        P = self.patch
        samples = []
        for _ in range(batch):
            h = self.hs_dates[rng.integers(len(self.hs_dates))]
            reg = self._pick_region(rng, ("hs", h))
            y0, x0, _, _ = self._origin(rng, reg, ("hs", h), P)
            date = self.hs_dates_all[h]
            s = {
                "y": _take(reg.hs.z, h, y0, x0, P),
                "vy": _take(reg.hs.valid[:, None], h, y0, x0, P).astype(np.float32),
            }
            s["a"], s["va"] = self._ms(reg, "full", "fine", date, y0, x0, P, 1, 0, 0)
            s["d"], s["vd"] = self._ms(reg, "full", "dense", date, y0, x0, P, 1, 0, 0)
            if self.date_maps is not None:
                s["wmap"] = self._date_map(h, h)
            samples.append(s)
        return self._stack(samples)

    def _date_map(self, h: int, r: int | None) -> np.ndarray:
        """The spectral map for HS date ``h``: its own when its HS is what the sample gives (``r`` is
        ``h``), else the blend of the other HS dates' maps, as a date without HS gets at fusion."""
        from .date_maps import map_for

        own = r == h and np.isfinite(self.date_maps[h]).all()
        if own:
            return self.date_maps[h]
        try:
            return map_for(self.hs.days, self.date_maps, self.hs.days[h], self.max_days, exclude=h)
        except ValueError:  # no other date has a map: its own, or the first there is
            return map_for(self.hs.days, self.date_maps, self.hs.days[h], self.max_days)

    def fusion_batch(
        self, rng: np.random.Generator, batch: int, drop_fine: float = 0.5, self_reference: float = 0.25
    ) -> dict:
        """Fusion head at the reduced scale (Wald): the observed HS of an HS date h is the target.

        The reference is another HS date (or, with probability `self_reference`, h itself, degraded);
        the fine MS of h is left out with probability `drop_fine`, so the head also learns the dates
        where the MS comes from the temporal branch (with a single HS date, also when h is its own
        reference). Keys as FusionNetwork.fuse plus y/vy."""
        P, R, world = self.reduced_patch, self.step, "reduced"
        samples = []
        for _ in range(batch):
            h = self.hs_dates[rng.integers(len(self.hs_dates))]
            others = [i for i in self.hs_dates if i != h]
            r = h if (not others or rng.random() < self_reference) else others[rng.integers(len(others))]
            reg = self._pick_region(rng, ("hs", h))
            y0, x0, py, px = self._origin(rng, reg, ("hs", h), P, R)
            date, date_r = self.hs_dates_all[h], self.hs_dates_all[r]
            s = {
                "y": _take(reg.hs.z, h, y0, x0, P, R, py, px),
                "vy": _take(reg.hs.valid[:, None], h, y0, x0, P, R, py, px).astype(np.float32),
            }
            s["a"], s["va"] = self._ms(reg, world, "fine", date, y0, x0, P, R, py, px)
            if (r != h or not others) and rng.random() < drop_fine:
                s["a"], s["va"] = np.zeros_like(s["a"]), np.zeros_like(s["va"])
            s["d"], s["vd"] = self._ms(reg, world, "dense", date, y0, x0, P, R, py, px)
            day = self.hs.days[h]
            src = [i for i in self.pairs_sources() if i != self.hs_fine[h]]
            q = src[nearest_index(self.fine.days[src], day)] if src else None
            date_q = self.fine.dates[q] if q is not None else None
            s["fq"], s["vfq"] = self._ms(reg, world, "fine", date_q, y0, x0, P, R, py, px)
            s["dq"], s["vdq"] = self._ms(reg, world, "dense", date_q, y0, x0, P, R, py, px)
            s["guide"] = self._guide(reg, world, self.hs_fine[h], s["fq"], y0, x0, P, R, py, px)
            s["gap_q"] = np.full((1, 1, 1), abs(day - self.fine.days[q]) / 365.0 if q is not None else 0.0)
            s["ar"], s["var"] = self._ms(reg, world, "fine", date_r, y0, x0, P, R, py, px)
            s["dr"], s["vdr"] = self._ms(reg, world, "dense", date_r, y0, x0, P, R, py, px)
            s["vh"] = _take(reg.hs_b[1][:, None], r, y0, x0, P, R, py, px).astype(np.float32)
            # The blur that degrades the reference also removes its noise; a real HS image at that
            # scale would be as noisy as the observed one, so the noise is put back.
            s["h"] = (
                _take(reg.hs_b[0], r, y0, x0, P, R, py, px)
                + rng.normal(0.0, 1.0, (self.pca.n_components, P, P)) * self.pca.score_noise[:, None, None] * s["vh"]
            )
            s["gap"] = np.full((1, 1, 1), abs(day - self.hs.days[r]) / 365.0)
            if self.date_maps is not None:
                s["wmap"] = self._date_map(h, r)
                s["wmap_r"] = self._date_map(r, r)
            samples.append(s)
        out = self._stack(samples)
        out["refs"] = [{k: out.pop(k) for k in ("ar", "var", "dr", "vdr", "h", "vh", "gap")}]
        if "wmap_r" in out:
            out["refs"][0]["wmap"] = out.pop("wmap_r")
        return out

    def pairs_sources(self) -> list[int]:
        """Fine MS dates usable as a temporal source (any with valid pixels: the dense MS is filled in time)."""
        return self.spatial_dates
