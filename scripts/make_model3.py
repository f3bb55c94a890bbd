"""Writes resources/sts_fusion_chain.model3: Build MDD stack -> Train fusion model -> Fuse time series.

The model is built with QgsProcessingModelAlgorithm (not by hand), so it stays valid for the QGIS
version that writes it. Run after changing a parameter of the three algorithms:

    source scripts/env.sh && .venv/bin/python scripts/make_model3.py

Model inputs: the three layer lists and the number of training epochs (default: Train fusion
model's); outputs: the MDD manifest, the model file and the folder of fused GeoTIFFs (temporary
unless the user picks paths). Every other parameter keeps its algorithm's default: run the
algorithms one by one for other settings.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "resources", "sts_fusion_chain.model3")
sys.path.insert(0, "/usr/share/qgis/python/plugins")
sys.path.insert(0, os.path.join(ROOT, ".build", "plugins"))  # the package `stsfusion` (make setup)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (
    QgsApplication,
    QgsProcessing,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
)
from qgis.PyQt.QtCore import QPointF


def _input(model, definition, x, y):
    component = QgsProcessingModelParameter(definition.name())
    component.setPosition(QPointF(x, y))
    model.addModelParameter(definition, component)


def _child(model, alg_id, child_id, description, x, y, sources, statics=None, outputs=None):
    child = QgsProcessingModelChildAlgorithm(alg_id)
    child.setChildId(child_id)
    child.setDescription(description)
    child.setPosition(QPointF(x, y))
    for name, source in sources.items():
        child.addParameterSources(name, source if isinstance(source, list) else [source])
    # As the modeler does: every other input parameter gets its algorithm's default as a static
    # value (the model then stays valid, and keeps these defaults if the algorithm's change).
    alg = QgsApplication.processingRegistry().algorithmById(alg_id)
    for definition in alg.parameterDefinitions():
        name = definition.name()
        if name in sources or definition.isDestination() or definition.defaultValue() is None:
            continue
        value = (statics or {}).get(name, definition.defaultValue())
        child.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    model_outputs = {}
    for child_output, (output_name, description, oy) in (outputs or {}).items():
        out = QgsProcessingModelOutput(output_name, description)
        out.setChildId(child_id)
        out.setChildOutputName(child_output)
        out.setPosition(QPointF(x + 200, y + oy))
        model_outputs[output_name] = out
    child.setModelOutputs(model_outputs)
    model.addChildAlgorithm(child)


def build_model(epochs_default: int) -> QgsProcessingModelAlgorithm:
    model = QgsProcessingModelAlgorithm("STS Fusion chain", "STS Fusion")
    model.setHelpContent(
        {
            "ALG_DESC": "Fine multispectral, dense multispectral and coarse hyperspectral layers in, "
            "one fine hyperspectral GeoTIFF per date out: Build MDD stack, Train fusion "
            "model and Fuse time series with their defaults.",
            "FINE_MS": "Fine multispectral layers, one a date.",
            "DENSE_MS": "Dense (frequent, coarser) multispectral layers, one a date.",
            "HS": "Coarse hyperspectral layers with band wavelengths, one a date.",
            "EPOCHS": f"Training epochs (default {epochs_default}, as in Train fusion model).",
        }
    )
    src = QgsProcessingModelChildParameterSource
    for i, (name, label) in enumerate(
        (("FINE_MS", "Fine MS layers"), ("DENSE_MS", "Dense MS layers"), ("HS", "HS layers"))
    ):
        _input(model, QgsProcessingParameterMultipleLayers(name, label, QgsProcessing.TypeRaster), 120, 60 + 80 * i)
    _input(
        model,
        QgsProcessingParameterNumber(
            name="EPOCHS",
            description="Training epochs",
            type=QgsProcessingParameterNumber.Integer,
            defaultValue=epochs_default,
            minValue=1,
        ),
        120,
        300,
    )

    _child(
        model,
        "stsfusion:buildmdd",
        "buildmdd",
        "Build MDD stack",
        420,
        120,
        {name: src.fromModelParameter(name) for name in ("FINE_MS", "DENSE_MS", "HS")},
        outputs={"OUTPUT": ("MDD", "MDD manifest", 60)},
    )
    _child(
        model,
        "stsfusion:train",
        "train",
        "Train fusion model",
        420,
        260,
        {"MDD": src.fromChildOutput("buildmdd", "OUTPUT"), "EPOCHS": src.fromModelParameter("EPOCHS")},
        outputs={"OUTPUT_MODEL": ("MODEL", "Model file", 60)},
    )
    _child(
        model,
        "stsfusion:fuse",
        "fuse",
        "Fuse time series",
        420,
        400,
        {"MDD": src.fromChildOutput("buildmdd", "OUTPUT"), "MODEL": src.fromChildOutput("train", "OUTPUT_MODEL")},
        outputs={"OUTPUT_FOLDER": ("FUSED_FOLDER", "Fused GeoTIFFs folder", 60)},
    )
    return model


def main():
    app = QgsApplication([], False)
    app.initQgis()
    from stsfusion.algorithms.provider import STSFusionProvider

    provider = STSFusionProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    train = QgsApplication.processingRegistry().algorithmById("stsfusion:train")
    model = build_model(int(train.parameterDefinition("EPOCHS").defaultValue()))
    for child_id in model.childAlgorithms():
        ok, problems = model.validateChildAlgorithm(child_id)
        if not ok:
            sys.exit(f"{child_id}: " + "; ".join(problems))
    if not model.toFile(OUTPUT):
        sys.exit(f"Could not write {OUTPUT}")
    print(OUTPUT)
    app.exitQgis()


if __name__ == "__main__":
    main()
