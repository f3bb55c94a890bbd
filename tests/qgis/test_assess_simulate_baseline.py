"""stsfusion:simulate, :baseline and :assess through processing.run, chained as a user would:
simulate sensors from fine HS, build an MDD from the arrays, run a baseline, assess it."""

import os

import numpy as np
import pytest
from helpers.assess import HS_WAVELENGTHS, hs_cube, read_physical, utm_grid, write_hs_int16
from qgis.core import QgsProcessingException

DATES = ["2022-05-01", "2022-05-21", "2022-06-10"]


def _run(alg, params):
    import processing

    return processing.run(alg, params)


@pytest.fixture
def hs_layers(tmp_path):
    grid = utm_grid(24, 24)
    paths = []
    for i, d in enumerate(DATES):
        cube = hs_cube(0, 24, 24) * np.float32(1 + 0.1 * i)
        paths.append(write_hs_int16(str(tmp_path / f"truth_{d.replace('-', '')}.tif"), cube, grid))
    return paths


def test_simulate_then_baseline_then_assess(qgis_app, hs_layers, tmp_path):
    from stsfusion.model.mdd.format import write_mdd_from_arrays

    sim = _run(
        "stsfusion:simulate",
        {
            "INPUT": hs_layers,
            "FINE_MS_SENSOR": "sentinel2_msi_10m",
            "DENSE_FACTOR": 2,
            "HS_FACTOR": 3,
            "FINE_MS_DATES": f"{DATES[0]},{DATES[2]}",
            "HS_DATES": f"{DATES[0]}, {DATES[2]}",
            "OUTPUT_FOLDER": str(tmp_path / "sim"),
        },
    )
    assert [os.path.basename(p) for p in sim["FINE_MS_LAYERS"]] == [
        f"fine_ms_{DATES[0]}.tif",
        f"fine_ms_{DATES[2]}.tif",
    ]
    assert len(sim["DENSE_MS_LAYERS"]) == 3 and len(sim["HS_LAYERS"]) == 2
    assert len(sim["OUTPUT_LAYERS"]) == 7
    assert read_physical(sim["FINE_MS_LAYERS"][0]).shape == (4, 24, 24)
    hs = [read_physical(p) for p in sim["HS_LAYERS"]]
    assert hs[0].shape == (len(HS_WAVELENGTHS), 8, 8)

    # An MDD on the fine grid, coarse roles repeated block-wise (what a nearest warp gives)
    grid = utm_grid(24, 24)
    rep = lambda a, f: np.repeat(np.repeat(a, f, -2), f, -1)
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {
            "fine_ms": dict(
                dates=[DATES[0], DATES[2]],
                values=np.stack([read_physical(p) for p in sim["FINE_MS_LAYERS"]]),
                wavelengths=[492.4, 559.8, 664.6, 832.8],
            ),
            "dense_ms": dict(
                dates=DATES,
                values=np.stack([rep(read_physical(p), 2) for p in sim["DENSE_MS_LAYERS"]]),
                wavelengths=[485, 555, 660, 830, 710, 750, 610],
                native_pixel_size=20.0,
            ),
            "hs": dict(
                dates=[DATES[0], DATES[2]],
                values=np.stack([rep(h, 3) for h in hs]),
                wavelengths=list(HS_WAVELENGTHS),
                native_pixel_size=30.0,
            ),
        },
    )
    res = {}
    for method in ("interpolation", "two_stage"):
        out = _run(
            "stsfusion:baseline",
            {"MDD": mdd.path, "METHOD": method, "DATES": DATES[1], "OUTPUT_FOLDER": str(tmp_path / method)},
        )
        assert [os.path.basename(p) for p in out["OUTPUT_LAYERS"]] == [f"{method}_{DATES[1]}.tif"]
        res[method] = _run(
            "stsfusion:assess",
            {
                "FUSED": out["OUTPUT_LAYERS"][0],
                "REFERENCE": hs_layers[1],
                "RATIO": 3,
                "OUTPUT_TABLE": str(tmp_path / f"{method}.csv"),
                "OUTPUT_REPORT": str(tmp_path / f"{method}.html"),
            },
        )
        assert os.path.exists(res[method]["OUTPUT_TABLE"]) and os.path.exists(res[method]["OUTPUT_REPORT"])
    # the middle date is 10 % brighter than the nearest HS date (a tie: the earlier one is taken);
    # the two-stage baseline sees that change in the dense MS, interpolation cannot
    assert res["two_stage"]["RMSE"] < res["interpolation"]["RMSE"]
    assert res["two_stage"]["CC"] > 0.9 and 0 <= res["two_stage"]["SAM"] < 5


def test_errors_are_processing_exceptions_and_leave_nothing(qgis_app, hs_layers, tmp_path):
    out = tmp_path / "sim"
    with pytest.raises(QgsProcessingException, match="No HS layer is dated 2021-01-01"):
        _run("stsfusion:simulate", {"INPUT": hs_layers, "HS_DATES": "2021-01-01", "OUTPUT_FOLDER": str(out)})
    with pytest.raises(QgsProcessingException, match="one date per layer"):
        _run("stsfusion:simulate", {"INPUT": hs_layers, "DATES": "2022-01-01", "OUTPUT_FOLDER": str(out)})
    assert not out.exists() or os.listdir(out) == []
    with pytest.raises(QgsProcessingException, match="does not exist"):
        _run("stsfusion:baseline", {"MDD": str(tmp_path / "none.json"), "OUTPUT_FOLDER": str(tmp_path / "b")})
    with pytest.raises(QgsProcessingException, match="No pixel is valid"):
        far = write_hs_int16(str(tmp_path / "far.tif"), hs_cube(1, 24, 24), utm_grid(24, 24, x0=700000.0))
        _run("stsfusion:assess", {"FUSED": far, "REFERENCE": hs_layers[0], "OUTPUT_TABLE": str(tmp_path / "t.csv")})
    assert not (tmp_path / "t.csv").exists()
