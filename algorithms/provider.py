"""The "STS Fusion" Processing provider (id `stsfusion`)."""

import importlib
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

# (module in algorithms/, class): one algorithm a file. Algorithms never import torch at module
# level, so the provider loads (and `qgis_process help` works) even where torch is missing.
ALGORITHMS = (
    ("build_mdd", "BuildMddAlgorithm"),
    ("train", "TrainFusionModelAlgorithm"),
    ("fuse", "FuseTimeSeriesAlgorithm"),
    ("assess", "AssessAccuracyAlgorithm"),
    ("simulate", "SimulateSensorsAlgorithm"),
    ("baseline", "BaselineFusionAlgorithm"),
)

ICON_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.svg")


class STSFusionProvider(QgsProcessingProvider):
    def id(self):
        return "stsfusion"

    def name(self):
        return "STS Fusion"

    def longName(self):
        return "STS Fusion: spatio-temporal-spectral fusion of satellite time series"

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):
        return ICON_PATH

    def loadAlgorithms(self):
        for module_name, class_name in ALGORITHMS:
            module = importlib.import_module(f"{__package__}.{module_name}")
            self.addAlgorithm(getattr(module, class_name)())
