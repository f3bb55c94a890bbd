"""Spectral responses: file parsing, Gaussian bands, presets, and HS -> MS resampling."""

import os

import numpy as np
import pytest

from stsfusion.model.simulation.srf import (
    SpectralResponse,
    SRFError,
    gaussian_response,
    list_presets,
    load_srf_file,
    preset_info,
    sensor_preset,
    spectral_resample,
    subset,
    uncovered_bands,
)

SRF_TEXT = """;; TEST/SENSOR RSR
;;
;; datasets: wavelength, RSR, RSR sd
;; BAND 1
0.40\t0.0\t0
0.41\t0.5\t0.1
0.42\t2.0\t0.1
0.43\t1.0\t0.1
0.44\t-0.01\t0
;;
;; BAND B2\x20
0.43 0.0
0.44 2.0
0.45 4.0
0.46 2.0
0.47 0.0
"""


def test_load_srf_file_parses_headers_units_and_normalises(tmp_path):
    p = tmp_path / "test.txt"
    p.write_text(SRF_TEXT)
    srf = load_srf_file(p)
    assert srf.names == ["1", "B2"]
    # micrometres -> nm, union of both bands' samples
    np.testing.assert_allclose(srf.wavelengths, [400, 410, 420, 430, 440, 450, 460, 470])
    # peak-normalised, negative noise clipped, zero outside a band's own samples
    np.testing.assert_allclose(srf.responses[0], [0, 0.25, 1, 0.5, 0, 0, 0, 0])
    np.testing.assert_allclose(srf.responses[1], [0, 0, 0, 0, 0.5, 1, 0.5, 0])
    # band 2 is a triangle 430-470 peaking at 450: centre 450, FWHM 20
    assert srf.centres()[1] == pytest.approx(450.0)
    assert srf.fwhm()[1] == pytest.approx(20.0)


def test_load_srf_file_errors(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text(";; nothing here\n")
    with pytest.raises(SRFError, match="holds no bands"):
        load_srf_file(p)
    p.write_text("400 1\n")
    with pytest.raises(SRFError, match="before the first"):
        load_srf_file(p)


def test_load_real_gf6_wfv(shared_data):
    srf = load_srf_file(os.path.join(shared_data, "srf", "GF6_WFV.txt"))
    assert srf.names == [f"B{i}" for i in range(1, 9)]
    assert np.allclose(srf.responses.max(axis=1), 1.0) and srf.responses.min() >= 0
    # measured centres lie within 20 nm of the published band-range centres (gf6_wfv preset)
    published = [b["centre_nm"] for b in preset_info("gf6_wfv")["bands"]]
    assert np.abs(srf.centres() - published).max() < 20


def test_gaussian_response_centres_and_fwhm():
    srf = gaussian_response(["a", "b"], [500.0, 800.0], [20.0, 100.0])
    np.testing.assert_allclose(srf.centres(), [500, 800], atol=1e-6)
    np.testing.assert_allclose(srf.fwhm(), [20, 100], atol=0.05)
    assert srf.responses.max(axis=1) == pytest.approx([1, 1])
    with pytest.raises(SRFError):
        gaussian_response(["a"], [500.0], [0.0])


def test_presets_load_and_match_their_json():
    names = list_presets()
    for n in ("zy1_02d_vnic", "sentinel2_msi", "gf6_wfv", "landsat8_oli"):
        assert n in names
        info = preset_info(n)
        assert info["source"]
        srf = sensor_preset(n)
        np.testing.assert_allclose(srf.centres(), [b["centre_nm"] for b in info["bands"]], atol=1e-6)
    assert sensor_preset("gf6_wfv").n_bands == 8
    assert sensor_preset("zy1_02d_vnic").n_bands == 4
    with pytest.raises(SRFError, match="Unknown sensor preset 'nope'"):
        sensor_preset("nope")


def test_spectral_resample_by_hand():
    wl = [400.0, 410.0, 420.0, 430.0, 440.0]
    srf = gaussian_response(["g"], [420.0], [20.0])
    # response at the HS centres: 2^-(2d/20)^2 = 1/16, 1/2, 1, 1/2, 1/16; equal widths
    hs = np.zeros((5, 2, 3))
    hs[2] = 1.0
    hs[:, 1, 2] = [16.0, 2.0, 0.0, 2.0, 16.0]
    out = spectral_resample(hs, wl, srf)
    assert out.shape == (1, 2, 3)
    assert out[0, 0, 0] == pytest.approx(1 / 2.125, rel=1e-6)
    assert out[0, 1, 2] == pytest.approx((2 * 1 + 2 * 1) / 2.125, rel=1e-6)


def test_spectral_resample_weights_by_band_width():
    # Box response 400-440: unequal HS spacing -> the wide band counts more
    srf = SpectralResponse(["box"], np.array([390.0, 395, 445, 450]), np.array([[0, 1, 1, 0]]))
    hs = np.array([[1.0], [3.0]])
    out = spectral_resample(hs, [400.0, 430.0], srf, hs_fwhm=[10.0, 30.0])
    assert out[0, 0] == pytest.approx((1 * 10 + 3 * 30) / 40)


def test_spectral_resample_nan_and_range():
    wl = np.array([400.0, 410, 420, 430, 440, 1000])
    srf = gaussian_response(["g"], [420.0], [20.0])
    hs = np.ones((6, 2))
    hs[2, 0] = np.nan
    hs[5, 1] = np.nan  # 1000 nm has zero weight for a band at 420 nm: must not spoil it
    out = spectral_resample(hs, wl, srf)
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(1.0)
    far = gaussian_response(["ok", "swir"], [420.0, 2200.0], [20.0, 100.0])
    with pytest.raises(SRFError, match=r"swir \(2200 nm\)"):
        spectral_resample(hs, wl[:5], far)


def test_uncovered_bands_and_subset():
    wl = np.arange(418.0, 1000.0, 6.0)
    gf6 = sensor_preset("gf6_wfv")
    assert uncovered_bands(wl, gf6) == ["B7 violet"]  # 400-450 nm starts before the HS
    kept = subset(gf6, [n for n in gf6.names if n != "B7 violet"])
    assert kept.n_bands == 7 and spectral_resample(np.ones((wl.size, 1)), wl, kept).shape == (7, 1)


def test_negligible_tail_does_not_spread_nan():
    wl = np.arange(400.0, 2500.0, 10.0)
    hs = np.ones((wl.size, 1))
    hs[(wl >= 1350) & (wl <= 1400)] = np.nan  # a bad water-vapour band
    out = spectral_resample(hs, wl, sensor_preset("sentinel2_msi"))
    assert np.isfinite(out).all()  # B11 at 1614 nm: its tail at 1400 nm is < 0.1 % of the peak
