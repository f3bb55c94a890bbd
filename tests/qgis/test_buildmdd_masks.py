"""stsfusion:buildmdd through processing.run with explicit masks: FINE_MS_MASKS / HS_MASKS matched
by date (also a mask in another CRS than its layer), MASK_VALUES class values, MASK_BUFFER in mask
pixels, the log's masked shares, and bad MASK_VALUES / too many masks failing cleanly."""

import numpy as np
import pytest
from helpers.rasters import FINE_ORIGIN, make_raster, make_three_role_inputs

ALG = "stsfusion:buildmdd"


def run(params):
    import processing
    from qgis.core import QgsProcessingFeedback

    class Log(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):
            self.lines.append(info)
            super().pushInfo(info)

    log = Log()
    return processing.run(ALG, params, feedback=log), log.lines


@pytest.fixture
def dirs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return tmp_path / "in", out


def params_for(d, out, **extra):
    fine, dense, hs = make_three_role_inputs(d)
    p = {"FINE_MS": fine, "DENSE_MS": dense, "HS": hs, "OUTPUT": str(out / "m.json")}
    p.update(extra)
    return p


def test_masks_by_date_with_class_values_and_buffer(qgis_app, dirs):
    from stsfusion.model.mdd.format import MDD

    d, out = dirs
    july = np.zeros((32, 32), np.uint8)
    july[4, 4] = 3  # grown by 1 pixel: a cross of 5
    july[20, 20] = 5  # a class not chosen
    august = np.zeros((32, 32), np.uint8)
    august[10:12, 10:14] = 9  # 8 px, grown: 8 + 2 * 2 + 2 * 4 = 20 px
    fine_masks = [
        make_raster(d / "fine_mask_2022-08-01.tif", august, 32633, FINE_ORIGIN, 10),  # given first
        make_raster(d / "fine_mask_2022-07-01.tif", july, 32633, FINE_ORIGIN, 10),
    ]
    # HS layers are in EPSG:4326; this mask is in UTM on the grid: value 9 on rows 20..31
    hs_v = np.zeros((32, 32), np.uint8)
    hs_v[20:, :] = 9
    hs_mask = make_raster(d / "hs_mask_20220801.tif", hs_v, 32633, FINE_ORIGIN, 10)
    result, log = run(
        params_for(d, out, FINE_MS_MASKS=fine_masks, HS_MASKS=[hs_mask], MASK_VALUES="3, 9", MASK_BUFFER=1)
    )
    mdd = MDD.open(result["OUTPUT"])
    rows, cols = np.mgrid[0:32, 0:32]

    def grown(v):
        hit = np.zeros((32, 32), bool)
        for r, c in zip(*np.nonzero(v)):
            hit |= (rows - r) ** 2 + (cols - c) ** 2 <= 1
        return hit

    fm = mdd.read_mask("fine_ms")  # 2022-07-01 (fine_b), 2022-08-01 (the Sentinel-2 name)
    np.testing.assert_array_equal(fm[0], ~grown(july == 3))
    np.testing.assert_array_equal(fm[1], ~grown(august == 9))
    assert (~fm[0]).sum() == 5 and (~fm[1]).sum() == 20
    assert np.isnan(mdd.read("fine_ms")[1][:, ~fm[1]]).all()
    hm = mdd.read_mask("hs")
    # The HS is stored at its own 87 m pixels (8.7 grid rows each): a stored pixel is masked when the
    # mask under its centre is; its second row (grid rows 17.4-26.1, centre 21.75) is, its first is not.
    assert mdd.roles["hs"].pixel_ratio == pytest.approx(8.7, abs=0.1)
    assert not hm[1][17:].any()  # rows 20.., the buffer row 19, and the rest of that stored pixel
    np.testing.assert_array_equal(hm[1][:17], hm[0][:17])  # above: as the unmasked date
    assert hm[0][19:].all()
    assert "Masks: FINE_MS_MASKS: fine_mask_2022-08-01, fine_mask_2022-07-01; HS_MASKS: hs_mask_20220801" in log
    assert "FINE_MS_MASKS: mask 'fine_mask_2022-07-01.tif' -> fine MS layer 'fine_b' (by date 2022-07-01)" in log
    assert any(m.endswith("masked 0.5 % (mask fine_mask_2022-07-01.tif: value 3 0.5 %)") for m in log), log
    assert any(m.endswith("masked 2.0 % (mask fine_mask_2022-08-01.tif: value 9 2.0 %)") for m in log), log
    # Shares of the HS stored pixels (4 x 4 of 87 m): its lower two rows of four (the 10 m buffer is
    # worth no 87 m pixel).
    assert any(m.endswith("masked 50.0 % (mask hs_mask_20220801.tif: value 9 50.0 %)") for m in log), log


def expect_failure(params, out, *fragments):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as err:
        run(params)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    assert list(out.iterdir()) == [], "a failed run left files behind"


def test_bad_mask_values(qgis_app, dirs):
    d, out = dirs
    mask = make_raster(d / "m_2022-07-01.tif", np.zeros((32, 32), np.uint8), 32633, FINE_ORIGIN, 10)
    expect_failure(
        params_for(d, out, FINE_MS_MASKS=[mask], MASK_VALUES="clouds"),
        out,
        "MASK_VALUES 'clouds' is not understood",
        "'3,8,9'",
        "'bits:1,3,4'",
    )


def test_more_masks_than_layers(qgis_app, dirs):
    d, out = dirs
    masks = [make_raster(d / f"hs_mask_{k}.tif", np.zeros((8, 8), np.uint8), 32633, FINE_ORIGIN, 40) for k in "abc"]
    expect_failure(
        params_for(d, out, HS_MASKS=masks),
        out,
        "HS_MASKS gives 3 mask(s) for 2 HS layer(s)",
        "matched by position",
    )
