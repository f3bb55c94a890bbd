"""`stsfusion:fuse` through processing.run: outputs, date subset, load-on-completion with an RGB
rendering, mismatch and input errors (a message that says what differs, no file left), cancel."""

import os

import numpy as np
import pytest
from helpers.predictor import tampered_model, trained_tiny_model
from osgeo import gdal

pytestmark = [
    pytest.mark.usefixtures("qgis_app"),
    pytest.mark.slow,
]  # every test fuses with a trained model (trained afresh when the model code changed)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return trained_tiny_model(tmp_path_factory.mktemp("fuse_alg"))


def _run(params, context=None, feedback=None):
    import processing

    return processing.run("stsfusion:fuse", params, context=context, feedback=feedback)


def _error(params):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as e:
        _run(params)
    return str(e.value)


def test_date_subset_layers_to_load_and_rgb_rendering(real, tmp_path):
    from qgis.core import (
        QgsMultiBandColorRenderer,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProject,
        QgsRasterLayer,
    )

    manifest, model = real
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    out = tmp_path / "fused"
    res = _run(
        {
            "MDD": manifest,
            "MODEL": model,
            "DATES": "2022-05-15; 2022-03-01",
            "TILE_SIZE": 32,
            "DEVICE": "cpu",
            "OUTPUT_FOLDER": str(out),
        },
        context,
        feedback,
    )
    expected = [str(out / "fused_2022-03-01.tif"), str(out / "fused_2022-05-15.tif")]
    assert res["OUTPUT_LAYERS"] == expected and res["OUTPUT_FOLDER"] == str(out)
    assert sorted(os.listdir(out)) == [
        f"fused_{d}.{ext}" for d in ("2022-03-01", "2022-05-15") for ext in ("qml", "tif")
    ]
    ds = gdal.Open(expected[1])
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (48, 48, 40)
    assert ds.GetRasterBand(1).GetDescription() == "420 nm"
    assert ds.GetRasterBand(40).GetMetadataItem("wavelength") == "2400"

    to_load = context.layersToLoadOnCompletion()
    assert sorted(to_load) == expected
    details = to_load[expected[0]]
    assert details.name == "fused 2022-03-01" and details.outputName == "OUTPUT_LAYERS"
    layer = QgsRasterLayer(expected[0], details.name)
    details.postProcessor().postProcessLayer(layer, context, feedback)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsMultiBandColorRenderer)
    # tiny MDD bands every 50.77 nm from 420 nm: nearest 650 is 673.8 (6), 560 is 572.3 (4), 480 is 470.8 (2)
    assert (renderer.redBand(), renderer.greenBand(), renderer.blueBand()) == (6, 4, 2)
    red = renderer.redContrastEnhancement()
    first = gdal.Open(expected[0])  # keep the dataset alive while its band is read
    band6 = first.GetRasterBand(6).ReadAsArray()
    assert np.percentile(band6, 1) <= red.minimumValue() < red.maximumValue() <= np.percentile(band6, 99.5)


def test_unknown_date_and_missing_files_are_clear_errors(real, tmp_path):
    manifest, model = real
    out = tmp_path / "out"
    params = {"MDD": manifest, "MODEL": model, "DEVICE": "cpu", "OUTPUT_FOLDER": str(out)}
    msg = _error(dict(params, DATES="2022-03-01,2030-01-01"))
    assert "no date 2030-01-01" in msg and "2022-03-26" in msg and "Leave DATES empty" in msg
    assert "YYYY-MM-DD" in _error(dict(params, DATES="March"))
    assert "does not exist" in _error(dict(params, MODEL=str(tmp_path / "missing.pt")))
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a model")
    assert "not a readable STS Fusion model file" in _error(dict(params, MODEL=str(foreign)))
    assert not out.exists() or os.listdir(out) == []


def test_model_and_mdd_must_match(real, tmp_path):
    from helpers.mdd import make_tiny_mdd

    manifest, model = real
    out = tmp_path / "out"
    params = {"MDD": manifest, "MODEL": model, "DEVICE": "cpu", "OUTPUT_FOLDER": str(out)}
    other = make_tiny_mdd(tmp_path / "other", n_hs=30, name="other")
    assert "HS has 30 bands, the model was trained on 40" in _error(dict(params, MDD=other))
    v99 = tampered_model(model, tmp_path / "v99.pt", format_version=99)
    assert "model format version 99" in _error(dict(params, MODEL=v99))
    k135 = tampered_model(model, tmp_path / "k135.pt", kernels="1/3/5", network_kernels="1/3/5")
    assert "do not match the declared kernel set 1/3/5" in _error(dict(params, MODEL=k135))
    assert not out.exists() or os.listdir(out) == []


def test_cancel_leaves_no_geotiff(real, tmp_path):
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    manifest, model = real
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda p: feedback.cancel() if p > 0 else None)
    out = tmp_path / "out"
    res = _run(
        {"MDD": manifest, "MODEL": model, "TILE_SIZE": 16, "DEVICE": "cpu", "OUTPUT_FOLDER": str(out)},
        QgsProcessingContext(),
        feedback,
    )
    assert res["OUTPUT_LAYERS"] == []
    assert os.listdir(out) == []


def test_the_change_below_the_dense_pixel_is_an_advanced_switch_that_reaches_fusion(real, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingFeedback, QgsProcessingParameterDefinition

    alg = QgsApplication.processingRegistry().algorithmById("stsfusion:fuse")
    param = alg.parameterDefinition("SUBPIXEL_CHANGE")
    assert param.defaultValue() is True and param.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    manifest, model = real
    logs = {}
    for on in (False, True):
        feedback = QgsProcessingFeedback()
        params = {"MDD": manifest, "MODEL": model, "DATES": "2022-03-26", "TILE_SIZE": 32, "DEVICE": "cpu"}
        _run(dict(params, SUBPIXEL_CHANGE=on, OUTPUT_FOLDER=str(tmp_path / str(on))), feedback=feedback)
        logs[on] = feedback.textLog()
    assert "the dense MS change put below the dense pixel" in logs[True]
    assert "below the dense pixel" not in logs[False]
    a, b = (gdal.Open(str(tmp_path / str(on) / "fused_2022-03-26.tif")).ReadAsArray() for on in (False, True))
    assert float(np.abs(a - b).max()) > 1e-4
