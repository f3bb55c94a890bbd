"""stsfusion:buildmdd through qgis_process.bin, as a batch user runs it."""

import numpy as np
import pytest
from helpers.qgis_process import run_qgis_process, run_qgis_process_json
from helpers.rasters import make_raster, make_three_role_inputs

from stsfusion.model.mdd.format import MDD
from stsfusion.model.mdd.raster_io import same_crs


def args(fine, dense, hs, out, *extra):
    return (
        [f"FINE_MS={p}" for p in fine]
        + [f"DENSE_MS={p}" for p in dense]
        + [f"HS={p}" for p in hs]
        + list(extra)
        + [f"OUTPUT={out}"]
    )


def test_qgis_process_run_with_crs_extent_and_dates(tmp_path):
    fine, dense, hs = make_three_role_inputs(tmp_path / "in")
    out = tmp_path / "out" / "series.json"
    out.parent.mkdir()
    result = run_qgis_process_json(
        "stsfusion:buildmdd",
        args(
            fine,
            dense,
            hs,
            out,
            "DATES=fine_b=2022-06-30;hs_1=2022-08-02",
            "TARGET_CRS=EPSG:3857",
            "PIXEL_SIZE=25",
            "TARGET_EXTENT=500000,500300,5799700,5800000 [EPSG:32633]",
        ),
    )
    assert result["results"]["OUTPUT"] == str(out)
    mdd = MDD.open(str(out))
    from helpers.rasters import crs_wkt

    assert same_crs(mdd.grid.crs_wkt, crs_wkt(3857)) and mdd.grid.pixel_size == 25.0
    assert mdd.grid.geotransform[0] % 25 == 0 and mdd.grid.geotransform[3] % 25 == 0
    # 300 m in UTM is ~490 m of Web Mercator at 52.35 N: about 20 pixels of 25 m a side.
    assert 19 <= mdd.grid.width <= 22 and 19 <= mdd.grid.height <= 22
    assert mdd.roles["fine_ms"].dates == ["2022-06-30", "2022-08-01"]
    assert mdd.roles["hs"].dates == ["2022-07-01", "2022-08-02"]
    assert mdd.roles["dense_ms"].dates == ["2022-07-01", "2022-07-15", "2022-08-01"]
    assert mdd.roles["hs"].wavelengths == pytest.approx([500, 600, 700, 800, 900])
    dm = mdd.read_mask("dense_ms")
    assert 0 < dm.mean() < 1  # the cloud
    np.testing.assert_allclose(mdd.read("dense_ms")[0, 2][dm[0]], 0.32, atol=1e-6)
    np.testing.assert_allclose(mdd.read("hs")[0, 0][mdd.read_mask("hs")[0]], 0.2, atol=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["series.json"] + [f"series_{r}{s}.tif" for r in ("fine_ms", "dense_ms", "hs") for s in ("", "_mask")]
    )


def test_qgis_process_bad_input_fails_cleanly(tmp_path):
    fine, dense, hs = make_three_role_inputs(tmp_path / "in")
    hs = [
        make_raster(
            tmp_path / "in" / "plain_20220701.tif", np.ones((5, 8, 8), np.float32), 32633, (500000, 5800000), 30
        )
    ]
    out = tmp_path / "out" / "m.json"
    out.parent.mkdir()
    proc = run_qgis_process("run", "stsfusion:buildmdd", "--", *args(fine, dense, hs, out))
    assert proc.returncode != 0
    assert "HS layer 'plain_20220701' has no band wavelengths" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list(out.parent.iterdir()) == []
