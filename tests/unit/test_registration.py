"""Co-registration of the coarse roles with the fine MS (model/mdd/registration.py) and the MDD view
that reads them moved (``MDD.registered``): the shift a misregistered image needs is found to a few
hundredths of a pixel, a coarse image is read moved by it with seamless windows, and a trained model
keeps the shifts and fuses with them."""

import numpy as np
import pytest
from helpers.mdd import DENSE_CENTRES, DENSE_FWHM, FINE_CENTRES, FINE_FWHM, PIXEL, _srf, synthetic_series
from scipy import ndimage

from stsfusion.model.core.grid import Grid
from stsfusion.model.mdd.format import MDD, write_mdd_from_arrays
from stsfusion.model.mdd.registration import (
    estimate_shift,
    estimate_shifts,
    shifts_from_json,
    shifts_to_json,
)


def _coarse_mdd(folder, misregistration=None, size=72, hs_ratio=3, dense_ratio=2):
    """An MDD whose dense MS and HS are stored at their own pixel size (block means of a known truth),
    each image moved by ``misregistration[(role, date index)]`` = (dy, dx) fine px before it is
    averaged: the shift that registers it is minus that."""
    truth, dates, wl = synthetic_series(size, n_dates=4, n_hs=30, seed=3, n_fields=20)
    misregistration = misregistration or {}

    def coarse(role, t, srf, ratio):
        img = np.einsum("cb,bhw->chw", srf, truth[t]) if srf is not None else truth[t]
        dy, dx = misregistration.get((role, t), (0.0, 0.0))
        img = ndimage.shift(img, (0, dy, dx), order=3, mode="nearest")
        return img.reshape(img.shape[0], size // ratio, ratio, size // ratio, ratio).mean(axis=(2, 4))

    dense_srf = _srf(wl, DENSE_CENTRES, DENSE_FWHM)
    roles = {
        "fine_ms": dict(
            dates=dates,
            values=np.einsum("cb,tbhw->tchw", _srf(wl, FINE_CENTRES, FINE_FWHM), truth),
            wavelengths=list(FINE_CENTRES),
            native_pixel_size=PIXEL,
        ),
        "dense_ms": dict(
            dates=dates,
            values=np.stack([coarse("dense_ms", t, dense_srf, dense_ratio) for t in range(4)]),
            wavelengths=list(DENSE_CENTRES),
            native_pixel_size=PIXEL * dense_ratio,
            pixel_ratio=dense_ratio,
        ),
        "hs": dict(
            dates=dates,
            values=np.stack([coarse("hs", t, None, hs_ratio) for t in range(4)]),
            wavelengths=wl.tolist(),
            native_pixel_size=PIXEL * hs_ratio,
            pixel_ratio=hs_ratio,
        ),
    }
    grid = Grid('LOCAL_CS["synthetic",UNIT["metre",1]]', (500000.0, PIXEL, 0.0, 5800000.0, 0.0, -PIXEL), size, size)
    manifest = str(folder / "coarse.json")
    write_mdd_from_arrays(manifest, grid, roles)
    return manifest


def _scene(size=96, seed=0):
    """Fine MS-like bands (3, size, size): sharp-edged fields with texture, reflectance-like."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    seeds = rng.uniform(0, size, (25, 2))
    field = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    values = rng.uniform(0.05, 0.4, (25, 3))[field].transpose(2, 0, 1)
    return (values + 0.01 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float64)


@pytest.mark.parametrize("true_shift", [(0.6, -0.4), (-1.1, 0.25), (0.0, 0.0)])
def test_the_shift_that_moves_a_coarse_image_onto_the_fine_ms_is_found(true_shift):
    ratio = 3.0
    fine = _scene()
    # The coarse sensor: its bands a mix of the fine ones with gains and offsets, blurred to its
    # resolution, misregistered by -true_shift (so true_shift moves it back), with noise and a cloud.
    mix = np.array([[0.7, 0.3, 0.0], [0.1, 0.5, 0.4], [0.0, 0.2, 0.9], [0.3, 0.3, 0.3]])
    coarse = np.einsum("cb,byx->cyx", mix, fine) * 1.05 + 0.01
    coarse = np.stack([ndimage.gaussian_filter(b, 1.2) for b in coarse])
    coarse = ndimage.shift(coarse, (0, -true_shift[0], -true_shift[1]), order=3, mode="nearest")
    coarse += np.random.default_rng(1).normal(0, 0.002, coarse.shape)
    coarse[:, 10:25, 60:80] = np.nan
    found = estimate_shift(coarse, fine, ratio)
    assert found is not None
    np.testing.assert_allclose(found, true_shift, atol=0.05)


def test_an_image_without_edges_or_pixels_has_no_shift():
    fine = _scene()
    flat = np.full((2,) + fine.shape[1:], 0.2) + np.random.default_rng(0).normal(0, 1e-4, (2,) + fine.shape[1:])
    assert estimate_shift(flat, fine, 3.0) is None
    cloudy = fine.copy()
    cloudy[:, 12:, :] = np.nan
    assert estimate_shift(cloudy, fine, 3.0) is None  # too few valid pixels


def test_a_registered_view_reads_each_coarse_image_moved_and_its_windows_are_seamless(tmp_path):
    mdd = MDD.open(_coarse_mdd(tmp_path, size=48))
    date = mdd.roles["hs"].dates[1]
    plain = mdd.read("hs", dates=[date])[0]
    assert np.array_equal(mdd.registered({}).read("hs", dates=[date])[0], plain, equal_nan=True)
    # One whole HS pixel (3 fine px) down: fine row y takes what row y - 3 had.
    moved = mdd.registered({("hs", date): (3.0, 0.0)})
    whole = moved.read("hs", dates=[date])[0]
    np.testing.assert_array_equal(whole[:, 3:], plain[:, :-3])
    # A fractional shift: any window gives the pixels of the whole-grid read, values and validity.
    view = mdd.registered({("hs", date): (0.7, -1.3), ("dense_ms", mdd.roles["dense_ms"].dates[0]): (-0.4, 0.9)})
    for role in ("hs", "dense_ms"):
        full, full_ok = view.read(role), view.read_mask(role)
        part, part_ok = view.read(role, (5, 7, 20, 17)), view.read_mask(role, (5, 7, 20, 17))
        np.testing.assert_array_equal(part, full[:, :, 7:24, 5:25])
        np.testing.assert_array_equal(part_ok, full_ok[:, 7:24, 5:25])
    # The projected read (HS to PCA-like scores) is the read projected, date by date with its own shift.
    proj = np.random.default_rng(0).normal(size=(mdd.roles["hs"].n_bands, 2)).astype(np.float32)

    def project(v):
        return np.nan_to_num(np.einsum("tbyx,bk->tkyx", v, proj))

    scores, ok = view.read_projected("hs", project, (5, 7, 20, 17))
    direct = project(view.read("hs", (5, 7, 20, 17)))
    np.testing.assert_allclose(scores[ok[:, None].repeat(2, 1)], direct[ok[:, None].repeat(2, 1)], atol=1e-4)
    # A hiding view of a registered view keeps the shifts.
    hidden = view.hiding("hs", date, (0, 0, 10, 10))
    assert hidden.shifts == view.shifts and not hidden.read_mask("hs", dates=[date])[0, :10, :10].any()


def test_shifts_are_estimated_for_every_coarse_image_and_kept_as_json(tmp_path):
    moved = {("dense_ms", 1): (0.8, -0.5), ("hs", 2): (-0.9, 0.6)}
    shifts = estimate_shifts(MDD.open(_coarse_mdd(tmp_path, moved)))
    mdd = MDD.open(str(tmp_path / "coarse.json"))
    assert set(shifts) == {(r, d) for r in ("dense_ms", "hs") for d in mdd.roles[r].dates}
    for (role, date), found in shifts.items():
        dy, dx = moved.get((role, mdd.roles[role].dates.index(date)), (0.0, 0.0))
        np.testing.assert_allclose(found, (-dy, -dx), atol=0.1, err_msg=f"{role} {date}")
    assert shifts_from_json(shifts_to_json(shifts)) == {k: tuple(round(v, 4) for v in s) for k, s in shifts.items()}


def test_a_trained_model_keeps_the_shifts_and_fusion_reads_with_them(tmp_path, monkeypatch):
    from stsfusion.model.nn import training
    from stsfusion.model.nn.model_file import load_model
    from stsfusion.model.nn.predictor import load_predictor

    manifest = _coarse_mdd(tmp_path, {("dense_ms", 1): (0.8, -0.5)}, size=48)
    model = str(tmp_path / "model.pt")
    params = dict(epochs=1, patch_size=16, batch_size=2, device="cpu", seed=0)
    training.train_fusion_model(manifest, model, **params)
    meta, _, _ = load_model(model)
    date = MDD.open(manifest).roles["dense_ms"].dates[1]
    np.testing.assert_allclose(meta["registration"]["dense_ms"][date], (-0.8, 0.5), atol=0.15)
    predictor = load_predictor(model, "cpu")
    view = predictor.prepare(MDD.open(manifest))
    assert view.shifts[("dense_ms", date)] == tuple(meta["registration"]["dense_ms"][date])
    # Another MDD of the same sensors, its dense MS misregistered otherwise: its own shifts, estimated.
    other = tmp_path / "other"
    other.mkdir()
    logs = []
    moved = predictor.prepare(MDD.open(_coarse_mdd(other, {("dense_ms", 1): (-0.4, 0.7)}, size=48)), logs.append)
    np.testing.assert_allclose(moved.shifts[("dense_ms", date)], (0.4, -0.7), atol=0.15)
    assert any("trained on another MDD" in line for line in logs)
    # Without co-registration the model keeps no shift and fusion reads the MDD as it is.
    monkeypatch.setitem(training.NETWORK_OPTIONS, "coregister", False)
    training.train_fusion_model(manifest, str(tmp_path / "plain.pt"), **params)
    assert load_model(str(tmp_path / "plain.pt"))[0]["registration"] is None
    plain = load_predictor(str(tmp_path / "plain.pt"), "cpu")
    mdd = MDD.open(manifest)
    assert plain.prepare(mdd) is mdd


def test_the_blur_of_a_coarse_role_on_the_grid_is_measured(tmp_path):
    """The HS of _coarse_mdd is a 3x3 block mean read back bilinearly: blurrier than its PSF alone
    (a Gaussian of FWHM one HS pixel, 1.2 fine px). The measured sigma says by how much, and a role
    stored on the fine grid has none."""
    from stsfusion.model.core.degrade import psf_sigma
    from stsfusion.model.mdd.registration import estimate_blur

    mdd = MDD.open(_coarse_mdd(tmp_path, size=72))
    logs = []
    sigma = estimate_blur(mdd, "hs", logs.append)
    assert sigma is not None and 1.2 < sigma < 2.2, sigma
    assert sigma > psf_sigma(3.0) and "Blur of the hs on the grid" in logs[0]
    dense = estimate_blur(mdd, "dense_ms")
    assert dense is not None and psf_sigma(2.0) < dense < sigma
    assert estimate_blur(mdd, "fine_ms") is None
    # An HS image withheld (a self-check's view) is left out, without numpy's "Mean of empty slice"
    # warning in Train's log; the others measure what they measured.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for date in mdd.roles["hs"].dates:
            held = estimate_blur(mdd.hiding("hs", date), "hs")
            assert held is None or abs(held - sigma) < 0.3
