"""qgis_process.bin run stsfusion:train: a model file that loads in a fresh process; errors exit non-zero."""

import os

import pytest
from helpers.mdd import make_tiny_mdd
from helpers.qgis_process import load_in_fresh_process, run_qgis_process, run_qgis_process_json


@pytest.mark.slow
def test_qgis_process_trains_a_loadable_model(tmp_path):
    mdd = make_tiny_mdd(tmp_path, size=24)
    out = str(tmp_path / "cli_model.pt")
    res = run_qgis_process_json(
        "stsfusion:train",
        [
            f"MDD={mdd}",
            "KERNELS=1",
            "EPOCHS=2",
            "PATCH_SIZE=12",
            "BATCH_SIZE=2",
            "DEVICE=cpu",
            "SEED=1",
            f"OUTPUT_MODEL={out}",
        ],
    )
    assert res["results"]["OUTPUT_MODEL"] == out
    assert "LOADED 1 40" in load_in_fresh_process(out)


def test_qgis_process_reports_a_bad_patch_size(tmp_path):
    mdd = make_tiny_mdd(tmp_path, size=24)
    out = str(tmp_path / "m.pt")
    proc = run_qgis_process("run", "stsfusion:train", "--", f"MDD={mdd}", "PATCH_SIZE=100", f"OUTPUT_MODEL={out}")
    assert proc.returncode != 0
    assert "PATCH_SIZE 100 is larger than the MDD grid (24x24 pixels)" in proc.stdout + proc.stderr
    assert not os.path.exists(out)


@pytest.mark.slow
def test_qgis_process_resumes_an_interrupted_training(tmp_path):
    from stsfusion.model.core.callbacks import Callbacks, Canceled
    from stsfusion.model.nn.checkpoint import checkpoint_path
    from stsfusion.model.nn.training import train_fusion_model

    mdd = make_tiny_mdd(tmp_path, size=24)
    out = str(tmp_path / "m.pt")
    calls = []
    with pytest.raises(Canceled):  # the first run stops in epoch 6, after the checkpoint of epoch 5
        train_fusion_model(
            mdd,
            out,
            kernels="1",
            epochs=7,
            patch_size=12,
            batch_size=2,
            device="cpu",
            seed=1,
            max_days_apart=10.0,
            callbacks=Callbacks(is_canceled=lambda: calls.append(1) or len(calls) > 52),
        )
    assert os.path.isfile(checkpoint_path(out)) and not os.path.exists(out)
    args = ["KERNELS=1", "EPOCHS=7", "PATCH_SIZE=12", "BATCH_SIZE=2", "DEVICE=cpu", "SEED=1", "SELF_CHECK=false"]
    proc = run_qgis_process("run", "stsfusion:train", "--", f"MDD={mdd}", *args, "RESUME=true", f"OUTPUT_MODEL={out}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "after epoch 5/7" in proc.stdout and "epoch 1/7:" not in proc.stdout and "epoch 7/7:" in proc.stdout
    assert not os.path.exists(checkpoint_path(out)) and "LOADED 1 40" in load_in_fresh_process(out)
