"""stsfusion:assess (and help for simulate/baseline) through qgis_process.bin, as a batch user runs it."""

import numpy as np
import pytest
from helpers.assess import hs_cube, utm_grid, write_hs_int16
from helpers.qgis_process import run_qgis_process, run_qgis_process_json

from stsfusion.model.evaluation.metrics import assess


def test_assess_json_outputs_match_the_metrics(tmp_path):
    grid = utm_grid(16, 16)
    ref = hs_cube(0, 16, 16)
    fused = ref * np.float32(0.95) + np.float32(0.01)
    write_hs_int16(str(tmp_path / "ref.tif"), ref, grid)
    write_hs_int16(str(tmp_path / "fused.tif"), fused, grid)
    result = run_qgis_process_json(
        "stsfusion:assess",
        [
            f"FUSED={tmp_path / 'fused.tif'}",
            f"REFERENCE={tmp_path / 'ref.tif'}",
            "RATIO=3",
            f"OUTPUT_TABLE={tmp_path / 't.csv'}",
            f"OUTPUT_REPORT={tmp_path / 'r.html'}",
        ],
    )
    r = result["results"]
    expect = assess(np.round(fused * 1e4) * 1e-4, np.round(ref * 1e4) * 1e-4, ratio=3)["overall"]
    for m in ("CC", "SAM", "PSNR", "SSIM", "ERGAS", "RMSE"):
        assert r[m] == pytest.approx(expect[m], rel=1e-5)
    assert (tmp_path / "t.csv").read_text().splitlines()[-1].startswith("overall,")


def test_help_lists_every_parameter():
    for alg, keys in (
        ("stsfusion:assess", ["FUSED", "REFERENCE", "RATIO", "OUTPUT_TABLE", "OUTPUT_REPORT"]),
        ("stsfusion:simulate", ["INPUT", "FINE_MS_SENSOR", "DENSE_FACTOR", "HS_DATES"]),
        ("stsfusion:baseline", ["MDD", "METHOD", "DATES", "OUTPUT_FOLDER"]),
    ):
        proc = run_qgis_process("help", alg)
        assert proc.returncode == 0, proc.stderr
        for k in keys:
            assert k in proc.stdout, (alg, k)


def test_assess_bad_input_fails_cleanly(tmp_path):
    grid = utm_grid(16, 16)
    write_hs_int16(str(tmp_path / "ref.tif"), hs_cube(0, 16, 16), grid)
    write_hs_int16(str(tmp_path / "few.tif"), hs_cube(0, 16, 16)[:5], grid, wavelengths=np.arange(5) * 10 + 500)
    proc = run_qgis_process(
        "run",
        "stsfusion:assess",
        "--",
        f"FUSED={tmp_path / 'few.tif'}",
        f"REFERENCE={tmp_path / 'ref.tif'}",
        f"OUTPUT_TABLE={tmp_path / 't.csv'}",
    )
    assert proc.returncode != 0
    assert "has 5 bands and the reference 59" in proc.stdout + proc.stderr
    assert not (tmp_path / "t.csv").exists()
