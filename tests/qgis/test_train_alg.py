"""stsfusion:train through processing.run: a model file that loads in a fresh process; clear errors."""

import os

import pytest
from helpers.mdd import make_tiny_mdd
from helpers.qgis_process import load_in_fresh_process

from stsfusion.model.nn.training import self_checked_epochs


class Feedback:
    """A QgsProcessingFeedback that records the log and can cancel after n progress reports."""

    def __new__(cls, cancel_after=None):
        from qgis.core import QgsProcessingFeedback

        class _F(QgsProcessingFeedback):
            def __init__(self):
                super().__init__()
                self.lines = []
                self.reports = 0

            def pushInfo(self, info):
                self.lines.append(info)
                super().pushInfo(info)

            def setProgress(self, p):
                self.reports += 1
                if cancel_after is not None and self.reports >= cancel_after:
                    self.cancel()
                super().setProgress(p)

        return _F()


@pytest.mark.slow
def test_processing_run_trains_a_loadable_model(qgis_app, tmp_path):
    import processing

    mdd = make_tiny_mdd(tmp_path, size=24)
    out = str(tmp_path / "model.pt")
    fb = Feedback()
    res = processing.run(
        "stsfusion:train",
        {
            "MDD": mdd,
            "KERNELS": "1/3",
            "PCA_COMPONENTS": 6,
            "EPOCHS": 2,
            "PATCH_SIZE": 12,
            "BATCH_SIZE": 2,
            "LEARNING_RATE": 0.002,
            "DEVICE": "cpu",
            "SEED": 3,
            "OUTPUT_MODEL": out,
        },
        feedback=fb,
    )
    assert res["OUTPUT_MODEL"] == out and os.path.isfile(out)
    assert "LOADED 1/3 40" in load_in_fresh_process(out)
    log = "\n".join(fb.lines)
    first, total = self_checked_epochs(2)  # SELF_CHECK on: the 2 EPOCHS, the check, then one more
    assert (first, total) == (2, 3)
    assert f"epoch {total}/{total}:" in log and "temporal loss" in log and " c " in log and "peak memory" in log
    assert log.index("Self-check (HS") < log.index(f"Epochs {first + 1}-{total}: training on everything")


def test_cancel_leaves_no_model(qgis_app, tmp_path):
    import processing

    mdd = make_tiny_mdd(tmp_path, size=24)
    out = str(tmp_path / "model.pt")
    fb = Feedback(cancel_after=3)
    res = processing.run(
        "stsfusion:train",
        {"MDD": mdd, "EPOCHS": 100, "PATCH_SIZE": 12, "DEVICE": "cpu", "OUTPUT_MODEL": out},
        feedback=fb,
    )
    assert res == {} or "OUTPUT_MODEL" not in res or not os.path.exists(out)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".pt") or f.endswith(".part")]


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("no_hs", "no HS date"),
        ("patch", "PATCH_SIZE 64 is larger than the MDD grid"),
        ("missing", "stack file .* is missing"),
        ("invalid", "has no valid pixel"),
    ],
)
def test_bad_inputs_raise_clear_errors(qgis_app, tmp_path, case, pattern):
    import processing
    from qgis.core import QgsProcessingException

    kwargs = {"no_hs": dict(drop_roles=("hs",)), "invalid": dict(invalid_roles=("fine_ms",))}.get(case, {})
    mdd = make_tiny_mdd(tmp_path, size=24, **kwargs)
    if case == "missing":
        os.remove(str(tmp_path / "tiny_hs_mask.tif"))
    out = str(tmp_path / "model.pt")
    with pytest.raises(QgsProcessingException, match=pattern):
        processing.run(
            "stsfusion:train",
            {
                "MDD": mdd,
                "EPOCHS": 1,
                "DEVICE": "cpu",
                "OUTPUT_MODEL": out,
                "PATCH_SIZE": 64 if case == "patch" else 12,
            },
        )
    assert not os.path.exists(out)


def test_the_parameters_defaults_are_the_training_functions(qgis_app):
    # The algorithm states its defaults as literals (it lists them without importing torch): each must
    # be train_fusion_model's own, or the Toolbox and a Python call would train differently.
    from qgis.core import QgsApplication

    from stsfusion.model.nn.training import DEFAULTS

    alg = QgsApplication.processingRegistry().algorithmById("stsfusion:train")
    for name, key in (
        ("EPOCHS", "epochs"),
        ("PCA_COMPONENTS", "pca_components"),
        ("PATCH_SIZE", "patch_size"),
        ("BATCH_SIZE", "batch_size"),
        ("LEARNING_RATE", "learning_rate"),
        ("SEED", "seed"),
    ):
        assert alg.parameterDefinition(name).defaultValue() == pytest.approx(DEFAULTS[key]), name
    assert f"(default {DEFAULTS['epochs']})" in alg.shortHelpString()
