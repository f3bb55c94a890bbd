"""A small synthetic MDD whose fine MS, dense MS and HS are consistent views of one known fine HS truth.

The truth: a few smooth endmember spectra mixed by abundances that change per field (sharp-edged
Voronoi regions, each with its own seasonal schedule) plus smooth texture inside fields. The sensors:
fine MS = Gaussian spectral responses at full resolution; dense MS = other responses, block-averaged
by DENSE_RATIO and bilinearly resampled back to the fine grid (as a warp to the MDD grid would);
HS = every truth band block-averaged by HS_RATIO and resampled back, with noise. Fast (well under a
second for 48x48 px) and deterministic under `seed`.

    manifest = make_tiny_mdd(tmp_path)                  # tmp_path/tiny.json
    truth = np.load(truth_path(manifest))               # (dates, hs bands, rows, cols)
"""

from __future__ import annotations

import datetime
import os

import numpy as np

FINE_CENTRES = (490.0, 560.0, 665.0, 842.0)
FINE_FWHM = (65.0, 35.0, 30.0, 115.0)
DENSE_CENTRES = (485.0, 555.0, 660.0, 830.0, 710.0, 750.0, 425.0, 610.0)
DENSE_FWHM = (70.0, 70.0, 60.0, 120.0, 40.0, 40.0, 40.0, 40.0)
PIXEL = 10.0


def truth_path(manifest: str) -> str:
    return os.path.splitext(manifest)[0] + "_truth.npy"


def _endmembers(wl: np.ndarray, rng) -> np.ndarray:
    """Soil, vegetation, water, built-up-like reflectance spectra (0..1), one row each."""
    x = (wl - 400.0) / 2100.0
    soil = 0.10 + 0.25 * x + 0.02 * np.sin(8 * x)
    red_edge = 1 / (1 + np.exp(-(wl - 715.0) / 12.0))
    veg = 0.04 + 0.05 * np.exp(-(((wl - 550) / 30) ** 2)) + 0.42 * red_edge * np.exp(-np.clip(wl - 1300, 0, None) / 900)
    veg -= 0.12 * np.exp(-(((wl - 1450) / 60) ** 2)) + 0.1 * np.exp(-(((wl - 1940) / 80) ** 2))
    water = 0.06 * np.exp(-np.clip(wl - 450, 0, None) / 150) + 0.01
    built = 0.18 + 0.06 * x + 0.03 * np.cos(5 * x + rng.uniform(0, 1))
    return np.clip(np.stack([soil, veg, water, built]), 0.005, 1.0)


def _srf(wl: np.ndarray, centres, fwhm) -> np.ndarray:
    r = np.exp(-0.5 * ((wl[None] - np.asarray(centres)[:, None]) / (np.asarray(fwhm)[:, None] / 2.3548)) ** 2)
    return r / r.sum(axis=1, keepdims=True)


def _degrade(img: np.ndarray, ratio: int) -> np.ndarray:
    """(bands, H, W): area-average by `ratio`, then bilinear back to (H, W)."""
    import torch

    b, h, w = img.shape
    coarse = img.reshape(b, h // ratio, ratio, w // ratio, ratio).mean(axis=(2, 4))
    t = torch.from_numpy(coarse[None].astype(np.float32))
    up = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return up[0].numpy()


def synthetic_series(size=48, n_dates=6, n_hs=40, seed=0, n_fields=14):
    """(truth (dates, bands, H, W) float32 reflectance, dates, wavelengths)."""
    rng = np.random.default_rng(seed)
    wl = np.linspace(420.0, 2400.0, n_hs)
    em = _endmembers(wl, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    seeds = rng.uniform(0, size, (n_fields, 2))
    field = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    base = rng.dirichlet(np.ones(4) * 0.7, n_fields)  # per-field abundances
    phase = rng.uniform(0, 2 * np.pi, n_fields)
    amp = rng.uniform(0.1, 0.5, n_fields)
    texture = 0.15 * np.sin(xx / rng.uniform(3, 7)) * np.cos(yy / rng.uniform(3, 7))
    start = datetime.date(2022, 3, 1)
    dates = [(start + datetime.timedelta(days=25 * i)).isoformat() for i in range(n_dates)]
    truth = np.empty((n_dates, n_hs, size, size), np.float32)
    for t in range(n_dates):
        season = amp * np.sin(2 * np.pi * t / n_dates + phase)  # vegetation up, soil down per field
        ab = base.copy()
        ab[:, 1] = np.clip(ab[:, 1] + season, 0.0, None)
        ab[:, 0] = np.clip(ab[:, 0] - season, 0.0, None)
        ab /= ab.sum(axis=1, keepdims=True)
        a = ab[field]  # (H, W, 4)
        a = a * (1.0 + texture[..., None] * np.array([1.0, -1.0, 0.5, 0.0]))
        a = np.clip(a, 0, None)
        a /= a.sum(axis=-1, keepdims=True)
        truth[t] = np.einsum("hwe,eb->bhw", a, em)
    return truth, dates, wl


def make_tiny_mdd(
    folder,
    size=48,
    n_dates=6,
    n_hs=40,
    fine_dates=(0, 2, 3, 5),
    hs_dates=(0, 2, 3, 5),
    hs_ratio=3,
    dense_ratio=2,
    seed=0,
    noise=0.003,
    cloud=True,
    name="tiny",
    drop_roles=(),
    invalid_roles=(),
    dense_dates=None,
    shift_days=None,
    bbl=None,
) -> str:
    """Writes `folder/<name>.json` (+ stacks, + `<name>_truth.npy`); returns the manifest path.

    fine_dates / hs_dates: indices of the dates that have a fine MS / HS image (dense MS: all).
    cloud: a nodata disc in one dense MS and one HS date. drop_roles: roles left out of the MDD;
    invalid_roles: roles whose every pixel is nodata (for error tests). dense_dates: indices of the
    dates with a dense MS image (default all). shift_days: {role: days} moves a role's acquisition
    dates (the images stay those of the truth dates): a real calendar, sensors days apart. bbl: the
    HS bad band list.
    """
    from stsfusion.model.core.grid import Grid
    from stsfusion.model.mdd.format import write_mdd_from_arrays

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    truth, dates, wl = synthetic_series(size, n_dates, n_hs, seed)
    fine_srf = _srf(wl, FINE_CENTRES, FINE_FWHM)
    dense_srf = _srf(wl, DENSE_CENTRES, DENSE_FWHM)
    fine = np.einsum("cb,tbhw->tchw", fine_srf, truth)
    dense = np.stack(
        [
            _degrade(np.einsum("cb,bhw->chw", dense_srf, truth[t]), dense_ratio)
            * rng.normal(1.0, 0.01, (len(DENSE_CENTRES), 1, 1))
            for t in range(n_dates)
        ]
    )
    sigma = noise * (1.0 + 2.0 * (wl > 1800))[:, None, None]  # noisier in the SWIR
    hs = np.stack([_degrade(truth[t], hs_ratio) + rng.normal(0, 1, truth[t].shape) * sigma for t in range(n_dates)])
    fine = fine + rng.normal(0, noise / 3, fine.shape)
    if cloud:
        yy, xx = np.mgrid[0:size, 0:size]
        disc = (yy - size * 0.3) ** 2 + (xx - size * 0.6) ** 2 < (size * 0.15) ** 2
        dense[1][:, disc] = np.nan
        hs[hs_dates[-1]][:, disc] = np.nan
    grid = Grid('LOCAL_CS["synthetic",UNIT["metre",1]]', (500000.0, PIXEL, 0.0, 5800000.0, 0.0, -PIXEL), size, size)
    roles = {
        "fine_ms": dict(
            dates=[dates[i] for i in fine_dates],
            values=fine[list(fine_dates)],
            wavelengths=list(FINE_CENTRES),
            fwhm=list(FINE_FWHM),
            native_pixel_size=PIXEL,
        ),
        "dense_ms": dict(
            dates=dates,
            values=dense,
            wavelengths=list(DENSE_CENTRES),
            fwhm=list(DENSE_FWHM),
            native_pixel_size=PIXEL * dense_ratio,
        ),
        "hs": dict(
            dates=[dates[i] for i in hs_dates],
            values=hs[list(hs_dates)],
            wavelengths=wl.tolist(),
            fwhm=[float(wl[1] - wl[0])] * n_hs,
            native_pixel_size=PIXEL * hs_ratio,
        ),
    }
    if dense_dates is not None:
        roles["dense_ms"]["dates"] = [dates[i] for i in dense_dates]
        roles["dense_ms"]["values"] = dense[list(dense_dates)]
    for role, days in (shift_days or {}).items():
        roles[role]["dates"] = [
            (datetime.date.fromisoformat(d) + datetime.timedelta(days=days)).isoformat() for d in roles[role]["dates"]
        ]
    if bbl is not None:
        roles["hs"]["bbl"] = list(bbl)
    for role in invalid_roles:
        roles[role]["values"] = np.full_like(roles[role]["values"], np.nan)
    for role in drop_roles:
        roles.pop(role)
    manifest = os.path.join(str(folder), f"{name}.json")
    write_mdd_from_arrays(
        manifest, grid, {k: {**v, "values": np.asarray(v["values"], np.float32)} for k, v in roles.items()}
    )
    np.save(truth_path(manifest), truth)
    return manifest


def make_tiny_model(folder, kernels="1", epochs=2, size=24, seed=0, **mdd_kwargs):
    """A tiny MDD plus a model trained on it in a few seconds: (manifest path, model path, summary)."""
    from stsfusion.model.nn.training import train_fusion_model

    manifest = make_tiny_mdd(folder, size=size, seed=seed, **mdd_kwargs)
    model = os.path.join(str(folder), f"model_{kernels.replace('/', '-')}.pt")
    summary = train_fusion_model(
        manifest, model, kernels=kernels, epochs=epochs, patch_size=min(16, size), batch_size=4, device="cpu", seed=seed
    )
    return manifest, model, summary
