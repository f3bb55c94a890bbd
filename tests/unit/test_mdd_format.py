"""The MDD on-disk format: round trip, windowed reads, masks, manifest errors."""

import json

import numpy as np
import pytest
from osgeo import gdal, osr

from stsfusion.model.mdd.format import MDD, NODATA, Grid, MDDError, write_mdd_from_arrays


def _grid(w=7, h=5, px=10.0):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return Grid(srs.ExportToWkt(), (500000.0, px, 0.0, 5800000.0, 0.0, -px), w, h)


def test_round_trip_window_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    hs = rng.random((2, 3, 5, 7), dtype=np.float32)
    hs[1, :, 2, 3] = np.nan
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        _grid(),
        {
            "hs": dict(
                dates=["2022-01-01", "2022-03-01"], values=hs, wavelengths=[450, 550, 650], native_pixel_size=30.0
            )
        },
    )
    assert mdd.dates == ["2022-01-01", "2022-03-01"]
    assert mdd.scale_ratio("hs") == pytest.approx(3.0)
    out = mdd.read("hs", window=(2, 1, 4, 3))
    assert out.shape == (2, 3, 3, 4)
    np.testing.assert_allclose(out[0], hs[0, :, 1:4, 2:6])
    assert np.isnan(out[1, :, 1, 1]).all()
    mask = mdd.read_mask("hs", dates=["2022-03-01"])
    assert mask.shape == (1, 5, 7) and mask.sum() == 34 and not mask[0, 2, 3]
    ds = gdal.Open(mdd.roles["hs"].path)
    assert ds.RasterCount == 6
    assert ds.GetRasterBand(5).GetDescription() == "2022-03-01 550 nm"
    assert ds.GetRasterBand(5).GetMetadataItem("wavelength") == "550"
    assert ds.GetRasterBand(5).GetNoDataValue() == NODATA
    assert ds.GetRasterBand(5).ReadAsArray()[2, 3] == NODATA
    assert not list(tmp_path.glob("*.part*"))


def test_foreign_and_old_manifests_are_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MDDError, match="not an STS Fusion MDD"):
        MDD.open(str(p))
    p.write_text(json.dumps({"format": "sts-fusion-mdd", "format_version": 99}))
    with pytest.raises(MDDError, match="format version 99"):
        MDD.open(str(p))
    p.write_text("{truncated")
    with pytest.raises(MDDError, match="not readable JSON"):
        MDD.open(str(p))
