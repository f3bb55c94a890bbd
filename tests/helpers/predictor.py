"""Small stand-ins for a trained model, and tiny MDDs to fuse, for the tiling tests.

``ConvPredictor`` has the interface of ``model.nn.predictor.FusionPredictor`` (halo, hs_wavelengths,
hs_fwhm, kernels, device, check_compatible, predict): each HS band is a fixed 5×5 convolution of
the roles' date-averaged bands, so with ``halo = 2`` a pixel's value depends only on its 5×5
neighbourhood (zero beyond the grid edge) and is exactly the same whatever window holds it.
"""

import numpy as np
from osgeo import osr

from stsfusion.model.core.grid import Grid
from stsfusion.model.core.vocabulary import ROLES
from stsfusion.model.mdd.format import write_mdd_from_arrays

DATES = ["2022-05-01", "2022-06-01", "2022-07-01"]
HS_WAVELENGTHS = [450.0, 480.0, 560.0, 600.0, 650.0, 800.0]
MS_WAVELENGTHS = [490.0, 560.0, 665.0, 842.0]


def tiny_grid(width=37, height=29, px=10.0) -> Grid:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return Grid(srs.ExportToWkt(), (500000.0, px, 0.0, 5800000.0, 0.0, -px), width, height)


def make_mdd(path, width=37, height=29, seed=0, dead_corner=True):
    """A 3-role MDD (fine MS on dates 0 and 2, dense MS on all, HS on 0 and 2) with random values.

    ``dead_corner``: the top-left 3×4 pixels are invalid in every role on every date (nodata in
    the output); a few other pixels are invalid in one role only (filled in the output).
    """
    rng = np.random.default_rng(seed)
    g = tiny_grid(width, height)

    def values(n_dates, n_bands):
        v = rng.random((n_dates, n_bands, height, width), dtype=np.float32)
        if dead_corner:
            v[:, :, :3, :4] = np.nan
        return v

    fine = values(2, len(MS_WAVELENGTHS))
    fine[0, :, min(10, height - 1), min(10, width - 1)] = np.nan  # a cloud in one role only: still a valid output pixel
    roles = {
        "fine_ms": dict(dates=[DATES[0], DATES[2]], values=fine, wavelengths=MS_WAVELENGTHS),
        "dense_ms": dict(
            dates=DATES, values=values(3, len(MS_WAVELENGTHS)), wavelengths=MS_WAVELENGTHS, native_pixel_size=20.0
        ),
        "hs": dict(
            dates=[DATES[0], DATES[2]],
            values=values(2, len(HS_WAVELENGTHS)),
            wavelengths=HS_WAVELENGTHS,
            fwhm=[10.0] * len(HS_WAVELENGTHS),
            native_pixel_size=30.0,
        ),
    }
    return write_mdd_from_arrays(str(path), g, roles)


class IncompatibleModel(ValueError):
    pass


class ConvPredictor:
    """A window-independent predictor: fixed 5×5 convolutions, halo 2 (see module docstring)."""

    kernels = "1/3/5"
    device = "cpu"

    def __init__(self, hs_wavelengths=HS_WAVELENGTHS, seed=1, halo=2):
        self.hs_wavelengths = list(hs_wavelengths)
        self.hs_fwhm = [10.0] * len(self.hs_wavelengths)
        self.halo = halo
        rng = np.random.default_rng(seed)
        n_in = len(MS_WAVELENGTHS) * 2 + len(HS_WAVELENGTHS)
        self.weights = rng.normal(size=(len(self.hs_wavelengths), n_in, 5, 5))
        self.windows = []  # every window asked for: the memory tests check their sizes

    def check_compatible(self, mdd):
        if mdd.roles["hs"].wavelengths != self.hs_wavelengths:
            raise IncompatibleModel("HS wavelengths differ")

    def predict(self, mdd, window, date, crop=None):
        self.windows.append(tuple(window))
        xoff, yoff, xs, ys = window
        feats = []
        for role in ROLES:
            v = mdd.read(role, window)  # (time, band, row, col), NaN where invalid
            feats.append(np.nan_to_num(v, nan=0.0).mean(axis=0, dtype=np.float64))
        x = np.concatenate(feats)  # (channel, row, col)
        # Zero padding only where the window touches the grid edge: elsewhere the window holds
        # the halo itself, and the two outermost rings (wrong values) are cropped by the caller.
        pad = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        out = np.zeros((len(self.hs_wavelengths), ys, xs))
        for dy in range(5):
            for dx in range(5):
                patch = pad[:, dy : dy + ys, dx : dx + xs]
                out += np.einsum("oc,crw->orw", self.weights[:, :, dy, dx], patch)
        out = (out + mdd.dates.index(date)).astype(np.float32)
        return out if crop is None else out[:, crop[0], crop[1]]


# ---- a real trained model on the tiny synthetic MDD, for the integration tests ----------------

_MODEL_SOURCES = ("core", "mdd", "nn")  # sub-packages of model/ whose code the trained model depends on


def trained_tiny_model(folder, kernels="1", epochs=1, seed=0):
    """(manifest, model path): helpers.mdd.make_tiny_mdd in ``folder`` plus a model trained
    on it for ``epochs`` on the CPU.

    Training takes ~10-25 s on 2 shared cores, so the model is kept under .build/test_models/,
    keyed by the training code and these arguments: every test module after the first reuses it,
    and any change to the model code trains afresh.
    """
    import hashlib
    import os
    import shutil

    import torch

    from helpers.mdd import make_tiny_mdd
    from helpers.paths import ROOT
    from stsfusion.model.nn.training import train_fusion_model

    torch.set_num_threads(2)
    manifest = make_tiny_mdd(folder)
    h = hashlib.sha256(f"{kernels}|{epochs}|{seed}".encode())
    sources = sorted(
        os.path.join(dirpath, name)
        for package in _MODEL_SOURCES
        for dirpath, _, names in os.walk(os.path.join(ROOT, "model", package))
        for name in names
        if name.endswith(".py")
    )
    for path in sources + [os.path.join(ROOT, "tests", "helpers", "mdd.py")]:
        h.update(os.path.relpath(path, ROOT).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    cached = os.path.join(ROOT, ".build", "test_models", h.hexdigest()[:16] + ".stsmodel")
    if not os.path.exists(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = os.path.join(str(folder), "trained.stsmodel")
        train_fusion_model(manifest, tmp, kernels=kernels, epochs=epochs, device="cpu", seed=seed)
        shutil.copyfile(tmp, cached + ".part")
        os.replace(cached + ".part", cached)
        for old in os.listdir(os.path.dirname(cached)):  # models of earlier code: no longer used
            if old.endswith(".stsmodel") and old != os.path.basename(cached):
                os.remove(os.path.join(os.path.dirname(cached), old))
    model = os.path.join(str(folder), "tiny.stsmodel")
    shutil.copyfile(cached, model)
    return manifest, model


def tampered_model(src, dst, **meta_changes):
    """A copy of model file ``src`` with its metadata changed (e.g. format_version=99), loaded
    and saved the way model/nn/model_file.py does, for the mismatch tests."""
    import json

    import torch

    payload = torch.load(src, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta_json"])
    for key, value in meta_changes.items():
        if key == "network_kernels":
            meta["network"]["kernels"] = value
        else:
            meta[key] = value
    payload["meta_json"] = json.dumps(meta)
    torch.save(payload, dst)
    return str(dst)
