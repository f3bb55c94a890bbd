"""Spatial degradation (Gaussian PSF + decimation) and NaN-aware upsampling."""

import numpy as np
import pytest

from stsfusion.model.core.degrade import DegradeError, degrade, gaussian_psf, upsample


def test_psf_default_fwhm_is_factor():
    k = gaussian_psf(3)
    assert k.shape == (9, 9) and k.sum() == pytest.approx(1.0)
    c = 4
    # FWHM = 3 px: k(x)/k(0) = 2^-(2x/3)^2
    assert k[c, c + 1] / k[c, c] == pytest.approx(2 ** (-4 / 9))
    assert k[c, c + 2] / k[c, c] == pytest.approx(2 ** (-16 / 9))
    k2 = gaussian_psf(2)
    assert k2.shape[0] % 2 == 0 and np.allclose(k2, k2[::-1, ::-1])
    assert gaussian_psf(4, sigma=0).shape == (4, 4)


def test_degrade_block_mean_and_shape():
    img = np.arange(7 * 8, dtype=float).reshape(7, 8)
    out = degrade(img, 2, sigma=0)
    assert out.shape == (3, 4)
    assert out[1, 2] == pytest.approx(img[2:4, 4:6].mean())
    np.testing.assert_allclose(degrade(np.full((2, 6, 6), 5.0), 3), 5.0)


def test_degrade_impulse_is_psf():
    f = 3
    k1 = gaussian_psf(f)[4] / gaussian_psf(f)[4].sum()  # the 1-D kernel, margin 3
    img = np.zeros((12, 12))
    img[5, 7] = 1.0
    out = degrade(img, f)
    # coarse pixel (1, 2) starts at fine (3, 6); kernel offset = fine - start + margin
    assert out[1, 2] == pytest.approx(k1[5 - 3 + 3] * k1[7 - 6 + 3])
    assert out[0, 0] == 0.0  # column offset 7 - 0 + 3 = 9 lies beyond the 9-tap kernel
    assert out[1, 1] == pytest.approx(k1[5] * k1[7 - 3 + 3])


def test_degrade_nan_aware():
    img = np.full((12, 12), 2.0)
    img[0, 0] = np.nan
    img[6:9, 6:9] = np.nan  # one whole coarse pixel
    out = degrade(img, 3)
    assert out[0, 0] == pytest.approx(2.0)
    assert np.isnan(out[2, 2])
    assert np.isfinite(out).sum() == 15
    with pytest.raises(DegradeError):
        degrade(np.ones((2, 2)), 3)


def test_upsample_nearest_and_linear_ramp():
    c = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(upsample(c, 2, (4, 4), "nearest"), np.kron(c, np.ones((2, 2))))
    f = 3
    centres = np.arange(6) * f + (f - 1) / 2  # coarse pixel centres in fine coordinates
    coarse = np.tile(centres, (6, 1))
    for method in ("bilinear", "bicubic"):
        fine = upsample(coarse, f, (18, 18), method)
        # a linear ramp is reproduced wherever all taps lie inside (edges are replicated)
        inner = slice(1, 17) if method == "bilinear" else slice(4, 14)
        np.testing.assert_allclose(fine[:, inner], np.tile(np.arange(18.0)[inner], (18, 1)), atol=1e-9)
    with pytest.raises(DegradeError):
        upsample(c, 2, (4, 4), "lanczos")


def test_upsample_nan_aware_and_round_trip():
    c = np.ones((2, 4, 4))
    c[:, 1, 1] = np.nan
    fine = upsample(c, 2, (8, 8), "bicubic")
    assert fine.shape == (2, 8, 8)
    assert np.isnan(fine[:, 2:4, 2:4]).all() and np.isnan(fine).sum() == 8
    np.testing.assert_allclose(fine[np.isfinite(fine)], 1.0)
    rng = np.random.default_rng(0)
    smooth = upsample(rng.random((8, 8)), 4, (32, 32), "bicubic")
    # degrading a smooth image back gives nearly the coarse image
    back = upsample(degrade(smooth, 4), 4, (32, 32), "bicubic")
    assert np.abs(back - smooth)[4:-4, 4:-4].mean() < 0.1


def test_degrade_strips_equal_whole_image():
    from stsfusion.model.core.degrade import degrade_strips

    rng = np.random.default_rng(4)
    img = rng.random((2, 47, 20))
    img[:, 10:13, 4:9] = np.nan
    whole = degrade(img, 3)
    parts = list(degrade_strips(lambda r0, r1: img[:, r0:r1], 47, 3, coarse_rows=4))
    assert [c0 for c0, _ in parts] == [0, 4, 8, 12]
    np.testing.assert_allclose(np.concatenate([p for _, p in parts], axis=1), whole, equal_nan=True)


def test_upsample_window_with_origin_equals_whole():
    rng = np.random.default_rng(6)
    coarse = rng.random((2, 9, 9))
    whole = upsample(coarse, 3, (27, 27), "bicubic")
    # rows 9..17, cols 12..23 of the fine grid from coarse rows 1.. and cols 2.. (fine 3.., 6..)
    part = upsample(coarse[:, 1:, 2:], 3, (9, 12), "bicubic", origin=(9 - 3, 12 - 6))
    np.testing.assert_allclose(part, whole[:, 9:18, 12:24])
