"""Explicit MASK rasters in build_mdd_stack: MASK_VALUES forms (class values, bit flags, any
non-zero), the buffer in mask pixels, matching masks to layers by date or by position, each error,
and a product whose own quality layer and an explicit mask both mask."""

import json

import numpy as np
import pytest
from helpers import products_landsat as landsat
from helpers.rasters import FINE_ORIGIN, WL_MS, make_raster, ramp
from osgeo import gdal

from stsfusion.model.core.callbacks import Callbacks
from stsfusion.model.mdd.build import BuildMddError, build_mdd_stack
from stsfusion.model.mdd.format import NODATA
from stsfusion.model.mdd.products.quality import parse_mask_values

FINE_DATES = ("2022-04-10", "2022-05-01")


def make_inputs(d, fine_order=FINE_DATES):
    """Fine MS (16 x 16 px of 10 m, two dates), dense MS (8 x 8 of 20 m, three dates) and HS (4 x 4
    of 40 m, one date), all in UTM 33N from FINE_ORIGIN: the grid is the fine MS grid."""
    fine = [
        make_raster(
            d / f"fine_{date}.tif", ramp(16, 16, 4) + FINE_DATES.index(date), 32633, FINE_ORIGIN, 10, wavelengths=WL_MS
        )
        for date in fine_order
    ]
    dense = [
        make_raster(d / f"dense_{date}.tif", np.full((3, 8, 8), 0.1 * (k + 1), np.float32), 32633, FINE_ORIGIN, 20)
        for k, date in enumerate(("2022-04-01", "2022-04-20", "2022-05-05"))
    ]
    hs = [
        make_raster(
            d / "hs_2022-04-15.tif",
            np.full((5, 4, 4), 0.2, np.float32),
            32633,
            FINE_ORIGIN,
            40,
            wavelengths=[500, 600, 700, 800, 900],
        )
    ]
    return fine, dense, hs


def mask_raster(path, values, pixel_size=10, origin=FINE_ORIGIN, **kwargs):
    return make_raster(path, np.asarray(values), 32633, origin, pixel_size, **kwargs)


def build(tmp_path, masks, mask_values=None, mask_buffer=0, fine_order=FINE_DATES, **kwargs):
    """(MDD, log messages, manifest dict) of a build of make_inputs with ``masks``."""
    fine, dense, hs = make_inputs(tmp_path / "in", fine_order)
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    messages = []
    mdd = build_mdd_stack(
        str(out / "m.json"),
        fine,
        dense,
        hs,
        masks=masks,
        mask_values=mask_values,
        mask_buffer=mask_buffer,
        callbacks=Callbacks(progress=lambda f, m: messages.append(m)),
        **kwargs,
    )
    return mdd, messages, json.load(open(mdd.path))


def check_fine_masked(mdd, t, expected_valid):
    """Date ``t`` of the fine MS stack: valid exactly where expected, NODATA in every band where
    masked, the input ramp elsewhere; the other date untouched."""
    valid = mdd.read_mask("fine_ms")
    np.testing.assert_array_equal(valid[t], expected_valid)
    values = mdd.read("fine_ms")  # NaN where invalid; NODATA in the file
    assert np.isnan(values[t][:, ~expected_valid]).all()
    raw = gdal.Open(mdd.roles["fine_ms"].path).ReadAsArray()[4 * t : 4 * t + 4]
    assert (raw[:, ~expected_valid] == NODATA).all()
    np.testing.assert_allclose(values[t][:, expected_valid], (ramp(16, 16, 4) + t)[:, expected_valid], atol=1e-5)
    assert valid[1 - t].all()


# ---- MASK_VALUES -------------------------------------------------------------------------------


def test_parse_mask_values_forms():
    for empty in (None, "", "  "):
        rule = parse_mask_values(empty)
        assert (rule.kind, rule.classes, rule.buffer_px) == ("mask", {1: "non-zero"}, 0)
    rule = parse_mask_values("9, 3;3 8")
    assert (rule.kind, rule.classes) == ("classes", {3: "value 3", 8: "value 8", 9: "value 9"})
    assert parse_mask_values("-1").classes == {-1: "value -1"}
    rule = parse_mask_values("bits:1,3,4")
    assert (rule.kind, rule.classes) == ("bits", {1: "bit 1", 3: "bit 3", 4: "bit 4"})
    assert parse_mask_values(" BITS: 0 , 31 ").classes == {0: "bit 0", 31: "bit 31"}


@pytest.mark.parametrize("text", ["cloud", "3.5", "3,x", ",", "bits:", "bits:x", "bits:32", "bits:-1", "bytes:1"])
def test_parse_mask_values_rejects_other_forms(text):
    with pytest.raises(ValueError) as err:
        parse_mask_values(text)
    message = str(err.value)
    assert f"MASK_VALUES '{text}' is not understood" in message
    assert "'3,8,9'" in message and "'bits:1,3,4'" in message and "non-zero" in message


# ---- what is masked ----------------------------------------------------------------------------


def test_class_values_mask_their_pixels_and_the_log_gives_each_share(tmp_path):
    v = np.zeros((16, 16), np.uint8)
    v[2:5, 2:6] = 3  # 12 px
    v[10:12, 0:4] = 9  # 8 px
    v[6:8, 6:8] = 5  # 4 px of a class not chosen
    path = mask_raster(tmp_path / "fine_mask_2022-04-10.tif", v)
    mdd, messages, manifest = build(tmp_path, {"fine_ms": [path]}, mask_values="9,3")
    check_fine_masked(mdd, 0, (v != 3) & (v != 9))
    assert "FINE_MS_MASKS: mask 'fine_mask_2022-04-10.tif' -> fine MS layer 'fine_2022-04-10' (by date 2022-04-10)" in (
        messages
    )
    # 20 of 256 pixels masked: value 3 12 (4.7 %), value 9 8 (3.1 %)
    assert (
        "  valid: 92.2 % of the grid; masked 7.8 % (mask fine_mask_2022-04-10.tif: value 3 4.7 %, value 9 3.1 %)"
        in (messages)
    )
    first, second = manifest["inputs"]["fine_ms"]
    assert first["masks"] == [path] and first["masked_fraction"] == pytest.approx(20 / 256)
    assert first["valid_fraction"] == pytest.approx(236 / 256)
    assert "masks" not in second and "masked_fraction" not in second  # unmasked layers: as before
    assert all("masks" not in e for e in manifest["inputs"]["dense_ms"])


def test_bit_flags_mask_pixels_with_any_chosen_bit(tmp_path):
    v = np.zeros((16, 16), np.int32)
    v[0, 0:4] = [2, 8, 16, 1]  # bits 1, 3, 4 (chosen), bit 0 (not)
    v[1, 0:4] = [3, 2**30 + 2, 2**30, 32]  # bits 0+1; 30+1 (float32 would lose bit 1); 30; 5
    path = mask_raster(tmp_path / "bits_2022-05-01.tif", v)
    mdd, messages, _ = build(tmp_path, {"fine_ms": [path]}, mask_values="bits:1,3,4")
    expected = np.ones((16, 16), bool)
    expected[0, 0:3] = expected[1, 0:2] = False
    check_fine_masked(mdd, 1, expected)
    assert any(
        m.endswith("masked 2.0 % (mask bits_2022-05-01.tif: bit 1 1.2 %, bit 3 0.4 %, bit 4 0.4 %)") for m in messages
    ), messages


def test_empty_mask_values_mask_non_zero_and_nodata_is_valid(tmp_path):
    v = np.zeros((16, 16), np.uint8)
    v[3:5, 3:5] = 1
    v[8, 8] = 7
    v[0:2, :] = 255  # the mask's nodata: valid
    # no date in the name: its ACQUISITION_DATE matches it to the second fine MS layer
    path = mask_raster(tmp_path / "cloudmask.tif", v, nodata=255, metadata={"ACQUISITION_DATE": "2022-05-01"})
    mdd, messages, _ = build(tmp_path, {"fine_ms": [path]})
    check_fine_masked(mdd, 1, (v == 0) | (v == 255))
    assert "FINE_MS_MASKS: mask 'cloudmask.tif' -> fine MS layer 'fine_2022-05-01' (by date 2022-05-01)" in messages
    assert any(m.endswith("; masked 2.0 % (mask cloudmask.tif: non-zero 2.0 %)") for m in messages), messages


def test_class_zero_does_not_mask_outside_the_mask_or_its_nodata(tmp_path):
    v = np.full((8, 16), 5, np.uint8)  # covers the upper half of the grid only
    v[0, 0:4] = 0
    v[1, 0:4] = 200  # nodata
    path = mask_raster(tmp_path / "half_2022-04-10.tif", v, nodata=200)
    mdd, _, _ = build(tmp_path, {"fine_ms": [path]}, mask_values="0")
    expected = np.ones((16, 16), bool)
    expected[0, 0:4] = False
    check_fine_masked(mdd, 0, expected)


def test_buffer_grows_the_mask_in_mask_pixels_across_windows(tmp_path):
    # A 10 m mask: one pixel grown by 1 mask pixel = 1 grid pixel: a cross of 5.
    v = np.zeros((16, 16), np.uint8)
    v[8, 8] = 1
    path = mask_raster(tmp_path / "m10_2022-04-10.tif", v)
    mdd, messages, _ = build(tmp_path / "a", {"fine_ms": [path]}, mask_buffer=1, block=8)
    expected = np.ones((16, 16), bool)
    for r, c in ((8, 8), (7, 8), (9, 8), (8, 7), (8, 9)):
        expected[r, c] = False
    check_fine_masked(mdd, 0, expected)
    assert any(m.endswith("masked 2.0 % (mask m10_2022-04-10.tif: non-zero 2.0 %)") for m in messages), messages

    # A 20 m mask: its pixel (4, 4) covers grid rows/cols 8-9; 1 mask pixel of buffer = 2 grid
    # pixels: every grid pixel within 2 pixels (centre to centre) of that block, over the boundary
    # between the two 8-row windows.
    v20 = np.zeros((8, 8), np.uint8)
    v20[4, 4] = 1
    path20 = mask_raster(tmp_path / "m20_2022-04-10.tif", v20, pixel_size=20)
    mdd, messages, manifest = build(tmp_path / "b", {"fine_ms": [path20]}, mask_buffer=1, block=8)
    rows, cols = np.mgrid[0:16, 0:16]
    near = np.zeros((16, 16), bool)
    for r in (8, 9):
        for c in (8, 9):
            near |= (rows - r) ** 2 + (cols - c) ** 2 <= 4
    assert near.sum() == 24 and near[6, 8] and near[6:8].any()
    check_fine_masked(mdd, 0, ~near)
    assert manifest["inputs"]["fine_ms"][0]["masked_fraction"] == pytest.approx(24 / 256)
    assert any(m.endswith("masked 9.4 % (mask m20_2022-04-10.tif: non-zero 9.4 %)") for m in messages), messages


# ---- matching ----------------------------------------------------------------------------------


def test_masks_by_date_for_only_some_layers_of_several_roles(tmp_path):
    fine_v = np.zeros((16, 16), np.uint8)
    fine_v[0, :] = 1
    dense_v = np.zeros((8, 8), np.uint8)
    dense_v[7, 7] = 1  # grid rows/cols 14-15
    masks = {
        "fine_ms": [mask_raster(tmp_path / "fm.tif", fine_v, metadata={"ACQUISITION_DATE": "2022-04-10"})],
        "dense_ms": [mask_raster(tmp_path / "dense_mask_20220420.tif", dense_v, pixel_size=20)],
    }
    mdd, messages, _ = build(tmp_path, masks)
    check_fine_masked(mdd, 0, fine_v == 0)
    dense = mdd.read_mask("dense_ms")
    assert dense[0].all() and dense[2].all()
    expected = np.ones((16, 16), bool)
    expected[14:16, 14:16] = False
    np.testing.assert_array_equal(dense[1], expected)
    stored = gdal.Open(mdd.roles["dense_ms"].path).ReadAsArray()  # at its own 20 m: 8 x 8 px
    assert stored.shape[1:] == (8, 8) and (stored[3:6][:, 7, 7] == NODATA).all()
    assert (
        "DENSE_MS_MASKS: mask 'dense_mask_20220420.tif' -> dense MS layer 'dense_2022-04-20' (by date 2022-04-20)"
        in (messages)
    )


def test_masks_without_dates_go_by_position_in_the_order_given(tmp_path):
    a, b = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    a[0, :] = 1
    b[15, :] = 1
    masks = [mask_raster(tmp_path / "m_a.tif", a), mask_raster(tmp_path / "m_b.tif", b)]
    # the fine MS layers given later date first: the first mask is the later date's
    mdd, messages, _ = build(tmp_path, {"fine_ms": masks}, fine_order=FINE_DATES[::-1])
    valid = mdd.read_mask("fine_ms")
    np.testing.assert_array_equal(valid[0], b == 0)  # 2022-04-10: the second layer given
    np.testing.assert_array_equal(valid[1], a == 0)  # 2022-05-01: the first
    assert "FINE_MS_MASKS: mask 'm_a.tif' -> fine MS layer 'fine_2022-05-01' (by position 1)" in messages
    assert "FINE_MS_MASKS: mask 'm_b.tif' -> fine MS layer 'fine_2022-04-10' (by position 2)" in messages


# ---- a product's quality layer and an explicit mask -----------------------------------------------


def test_explicit_mask_adds_to_a_products_quality_layer(tmp_path):
    product = landsat.make_landsat_product(tmp_path / "in")
    v = np.zeros((landsat.H, landsat.W), np.uint8)
    v[4, 1] = 1  # water: not masked by QA_PIXEL by default
    v[1, 2] = 1  # a cloud QA_PIXEL masks already
    mask = make_raster(tmp_path / "mask_20220724.tif", v, landsat.EPSG, landsat.ORIGIN, 30)
    out = tmp_path / "out"
    out.mkdir()
    messages = []
    mdd = build_mdd_stack(
        str(out / "m.json"),
        [product],
        [product],
        [product],
        masks={"fine_ms": [mask]},
        callbacks=Callbacks(progress=lambda f, m: messages.append(m)),
    )
    by_quality = np.ones((landsat.H, landsat.W), bool)
    for r, c in landsat.CLOUD_PX + landsat.SHADOW_PX + landsat.FILL_PX + landsat.DILATED_PX:
        by_quality[r, c] = False
    np.testing.assert_array_equal(mdd.read_mask("dense_ms")[0], by_quality)  # no explicit mask
    np.testing.assert_array_equal(mdd.read_mask("fine_ms")[0], by_quality & (v == 0))
    # 7 of 48 pixels: dilated_cloud 1, cloud 3, cloud_shadow 2 and the mask's 2 (one of them new).
    # (QA_PIXEL's fill value 1 is its nodata: the fill pixels are nodata in the bands, not a class.)
    quality = "quality layer: dilated_cloud 2.1 %, cloud 6.2 %, cloud_shadow 4.2 %"
    assert any(m.endswith(f"masked 14.6 % ({quality}; mask mask_20220724.tif: non-zero 4.2 %)") for m in messages)
    assert any(m.endswith(f"masked 12.5 % ({quality})") for m in messages), messages


# ---- errors ------------------------------------------------------------------------------------


def expect_error(tmp_path, masks, *fragments, **kwargs):
    with pytest.raises(BuildMddError) as err:
        build(tmp_path, masks, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    assert list((tmp_path / "out").iterdir()) == [], "a failed build left files behind"


def zeros(d, name, **kwargs):
    return mask_raster(d / name, np.zeros((16, 16), np.uint8), **kwargs)


def test_mask_date_of_no_layer(tmp_path):
    expect_error(
        tmp_path,
        {"fine_ms": [zeros(tmp_path, "mask_2022-06-01.tif")]},
        "FINE_MS_MASKS mask 'mask_2022-06-01.tif' has the date 2022-06-01 (from its file name)",
        "no fine MS layer has that date (theirs: 2022-04-10, 2022-05-01)",
    )


def test_two_masks_for_one_layer(tmp_path):
    masks = [zeros(tmp_path, "a_2022-04-10.tif"), zeros(tmp_path, "b", metadata={"ACQUISITION_DATE": "2022-04-10"})]
    expect_error(
        tmp_path,
        {"fine_ms": masks},
        "FINE_MS_MASKS masks 'a_2022-04-10.tif' and 'b' are both for fine MS layer 'fine_2022-04-10'",
        "one mask per layer",
    )


def test_more_masks_than_layers_by_position(tmp_path):
    masks = [zeros(tmp_path, f"m{k}.tif") for k in range(3)]
    expect_error(
        tmp_path,
        {"fine_ms": masks},
        "FINE_MS_MASKS gives 3 mask(s) for 2 fine MS layer(s)",
        "(m0.tif, m1.tif, m2.tif) are matched by position",
        "put each mask's date in its file name",
    )


def test_fewer_masks_than_layers_by_position(tmp_path):
    # one dated mask and one without a date: matched by position, and 2 masks for 3 layers
    masks = [zeros(tmp_path, "d_2022-04-20.tif", pixel_size=20), zeros(tmp_path, "undated.tif", pixel_size=20)]
    expect_error(
        tmp_path,
        {"dense_ms": masks},
        "DENSE_MS_MASKS gives 2 mask(s) for 3 dense MS layer(s)",
        "(undated.tif)",
        "exactly one mask per layer",
    )


def test_mask_that_does_not_overlap_its_layer(tmp_path):
    far = zeros(tmp_path, "far_2022-05-01.tif", origin=(600000.0, 5900000.0))
    expect_error(
        tmp_path,
        {"fine_ms": [far]},
        "FINE_MS_MASKS mask 'far_2022-05-01.tif' does not overlap its fine MS layer 'fine_2022-05-01' "
        "(by date 2022-05-01)",
        "(600000, 5.89984e+06, 600160, 5.9e+06)",
    )


def test_mask_without_crs_or_unreadable(tmp_path):
    no_crs = make_raster(tmp_path / "nocrs_2022-05-01.tif", np.zeros((16, 16), np.uint8), None, FINE_ORIGIN, 10)
    expect_error(tmp_path / "a", {"fine_ms": [no_crs]}, "FINE_MS_MASKS mask 'nocrs_2022-05-01.tif' has no CRS")
    expect_error(tmp_path / "b", {"hs": [str(tmp_path / "missing.tif")]}, "HS_MASKS: Layer 'missing'", "cannot be read")


def test_mask_values_without_masks_warn(tmp_path):
    fine, dense, hs = make_inputs(tmp_path / "in")
    warnings = []
    mdd = build_mdd_stack(
        str(tmp_path / "out" / "m.json"), fine, dense, hs, mask_values="3", callbacks=Callbacks(warn=warnings.append)
    )
    assert mdd.read_mask("fine_ms").all()
    assert warnings == [
        "MASK_VALUES '3' is ignored: it applies to explicit masks (FINE_MS_MASKS, DENSE_MS_MASKS, HS_MASKS) and "
        "none is given; a product's quality classes are MASK_CLASSES."
    ]


def test_bad_mask_values_and_unknown_role(tmp_path):
    path = zeros(tmp_path, "m_2022-04-10.tif")
    expect_error(tmp_path / "a", {"fine_ms": [path]}, "MASK_VALUES 'bits:33' is not understood", mask_values="bits:33")
    expect_error(tmp_path / "b", {"pan": [path]}, "masks are given for pan: use the roles fine_ms, dense_ms, hs")


def test_a_layer_masked_everywhere(tmp_path):
    path = mask_raster(tmp_path / "all_2022-04-10.tif", np.full((16, 16), 3, np.uint8))
    expect_error(
        tmp_path,
        {"fine_ms": [path]},
        "Layer 'fine_2022-04-10' is masked everywhere on the target grid (mask all_2022-04-10.tif: value 3 100.0 %)",
        "choose fewer MASK_VALUES (or check its mask)",
        mask_values="3",
    )
