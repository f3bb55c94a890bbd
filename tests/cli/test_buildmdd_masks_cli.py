"""stsfusion:buildmdd through qgis_process.bin with explicit masks given as repeated arguments
(FINE_MS_MASKS=a.tif FINE_MS_MASKS=b.tif), matched by position, bit flags in MASK_VALUES."""

import json

import numpy as np
from helpers.qgis_process import run_qgis_process
from helpers.rasters import FINE_ORIGIN, make_raster, make_three_role_inputs

from stsfusion.model.mdd.format import MDD


def test_repeated_mask_arguments_by_position_with_bit_flags(tmp_path):
    fine, dense, hs = make_three_role_inputs(tmp_path / "in")  # fine: the Sentinel-2 name (08-01), fine_b (07-01)
    a = np.zeros((32, 32), np.uint16)
    a[0, 0:3] = [4, 1, 5]  # bits 2 | 0 | 0+2: bit 2 chosen
    b = np.zeros((32, 32), np.uint16)
    b[31, 0:4] = [8, 2, 16, 10]  # bit 3 | 1 | 4 | 1+3
    # no dates in the names: the i-th mask goes to the i-th FINE_MS layer as given
    mask_a = make_raster(tmp_path / "in" / "mask_a.tif", a, 32633, FINE_ORIGIN, 10)
    mask_b = make_raster(tmp_path / "in" / "mask_b.tif", b, 32633, FINE_ORIGIN, 10)
    out = tmp_path / "out" / "m.json"
    out.parent.mkdir()
    proc = run_qgis_process(
        "run",
        "stsfusion:buildmdd",
        "--",
        *[f"FINE_MS={p}" for p in fine],
        *[f"DENSE_MS={p}" for p in dense],
        *[f"HS={p}" for p in hs],
        f"FINE_MS_MASKS={mask_a}",
        f"FINE_MS_MASKS={mask_b}",
        "MASK_VALUES=bits:2,3",
        f"OUTPUT={out}",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    mdd = MDD.open(str(out))
    fm = mdd.read_mask("fine_ms")  # 2022-07-01 (fine_b: mask_b), 2022-08-01 (the first given: mask_a)
    expected_b = np.ones((32, 32), bool)
    expected_b[31, [0, 3]] = False
    expected_a = np.ones((32, 32), bool)
    expected_a[0, [0, 2]] = False
    np.testing.assert_array_equal(fm[0], expected_b)
    np.testing.assert_array_equal(fm[1], expected_a)
    assert mdd.read_mask("dense_ms").mean() > 0.8  # no masks: only the cloud hole of the fixture
    assert "FINE_MS_MASKS: mask 'mask_a.tif' -> fine MS layer" in log and "(by position 1)" in log
    assert "FINE_MS_MASKS: mask 'mask_b.tif' -> fine MS layer 'fine_b' (by position 2)" in log
    assert "masked 0.2 % (mask mask_b.tif: bit 3 0.2 %)" in log
    inputs = json.load(open(out))["inputs"]["fine_ms"]
    assert [e["masks"] for e in inputs] == [[str(mask_b)], [str(mask_a)]]
    assert [e["masked_fraction"] for e in inputs] == [round(2 / 1024, 6)] * 2
