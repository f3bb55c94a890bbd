"""The synthetic fine HS scene: bands, library spectra, parcels, composition, determinism."""

import numpy as np
from scipy import ndimage

from stsfusion.model.simulation.synthetic_scene import (
    ENDMEMBERS,
    LAND_COVER,
    enmap_like_bands,
    library_spectrum,
    parcel_layout,
    synthetic_scene,
)


def test_enmap_like_bands_cover_400_2500_with_water_vapour_bands_flagged():
    wl, fwhm, bad = enmap_like_bands()
    assert 60 <= wl.size <= 80
    assert wl.min() == 400 and 2400 < wl.max() < 2500 and np.all(np.diff(wl) > 0)
    assert np.all((fwhm > 5) & (fwhm < 13)) and np.all(fwhm < np.diff(wl).min())
    flagged = wl[bad]
    assert flagged.size >= 6
    assert np.all(((flagged > 1330) & (flagged < 1470)) | ((flagged > 1780) & (flagged < 1970)))


def test_library_spectra_are_plausible():
    wl = np.arange(400.0, 2500.0, 5.0)
    at = lambda name, nm: library_spectrum(name, wl)[np.argmin(np.abs(wl - nm))]
    for name in ENDMEMBERS:
        r = library_spectrum(name, wl)
        assert np.all((r >= 0) & (r <= 0.6)), name
    # Vegetation: green peak above red, a red edge to a bright NIR plateau, leaf water dips.
    assert at("green_vegetation", 555) > 1.5 * at("green_vegetation", 670)
    assert at("green_vegetation", 850) > 6 * at("green_vegetation", 670)
    assert at("green_vegetation", 1450) < 0.7 * at("green_vegetation", 1250)
    # Water dark beyond the red; soils brighter in the SWIR than in the blue.
    assert at("water", 850) < 0.01 and at("water", 500) > at("water", 700)
    assert at("soil", 1650) > 2 * at("soil", 450)
    assert at("bright_soil", 1000) > at("soil", 1000)
    assert at("roof_tile", 650) > 2.5 * at("roof_tile", 450)


def test_parcels_are_contiguous_and_varied_in_size():
    labels = parcel_layout(64, 64, 50.0, np.random.default_rng(3))
    n = labels.max() + 1
    assert 0.6 * 64 * 64 / 50 <= n <= 1.2 * 64 * 64 / 50
    for p in range(n):
        _, k = ndimage.label(labels == p)
        assert k == 1, f"parcel {p} is split in {k} pieces"
    areas = np.bincount(labels.ravel())
    assert areas.min() < 25 and areas.max() > 100  # from smaller than a 2x2 dense pixel... to large


def test_scene_is_deterministic_and_composed():
    a = synthetic_scene(48, 48, seed=5)
    b = synthetic_scene(48, 48, seed=5)
    c = synthetic_scene(48, 48, seed=6)
    np.testing.assert_array_equal(a.hs, b.hs)
    assert not np.array_equal(a.hs, c.hs)
    assert a.hs.shape == (a.wavelengths.size, 48, 48) and a.hs.dtype == np.float32
    assert np.all(np.isfinite(a.hs)) and a.hs.min() >= 0 and a.hs.max() < 0.7
    np.testing.assert_allclose(np.tensordot(a.endmembers, a.abundances, axes=(0, 0)), a.hs, atol=1e-5)
    present = {LAND_COVER[i] for i in np.unique(a.cover)}
    # seed 5 at 48x48 px has every cover the NDVI checks below need (~490 forest pixels): the
    # scene is deterministic, so these checks always run rather than being skipped when absent
    assert {"crop", "water", "road", "forest"} <= present
    water, forest = a.cover == LAND_COVER.index("water"), a.cover == LAND_COVER.index("forest")
    assert water.sum() > 50 and forest.sum() > 50
    wl = a.wavelengths
    nir, red = a.hs[np.argmin(np.abs(wl - 840))], a.hs[np.argmin(np.abs(wl - 660))]
    ndvi = (nir - red) / (nir + red)
    assert np.median(ndvi[water]) < 0
    assert np.median(ndvi[forest]) > 0.6
