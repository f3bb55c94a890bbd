"""The "STS Fusion" Processing provider (id `stsfusion`): the algorithms of ALGORITHMS and the
bundled model chain (resources/sts_fusion_chain.model3, id `stsfusion:STS Fusion chain`)."""

import importlib
import os

from qgis.core import QgsApplication, QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .base import tr

# (module in algorithms/, class): one algorithm a file. Algorithms never import torch at module
# level, so the provider loads (and `qgis_process help` works) even where torch is missing.
ALGORITHMS = (
    ("build_mdd", "BuildMddAlgorithm"),
    ("train", "TrainFusionModelAlgorithm"),
    ("fuse", "FuseTimeSeriesAlgorithm"),
    ("assess", "AssessAccuracyAlgorithm"),
    ("simulate", "SimulateSensorsAlgorithm"),
    ("baseline", "BaselineFusionAlgorithm"),
    ("check_environment", "CheckEnvironmentAlgorithm"),
)

ICON_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.svg")
MODEL_CHAIN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "sts_fusion_chain.model3")


def load_model_chain():
    """The bundled model chain as a QgsProcessingModelAlgorithm, shown at the top of the provider
    (no group), or None when the file does not load."""
    model = QgsProcessingModelAlgorithm()
    if not model.fromFile(MODEL_CHAIN):
        return None
    definition = model.toVariant()
    definition["model_group"] = ""  # group() and groupId() both come from it: no group of its own
    model.loadVariant(definition)
    model.setSourceFilePath(MODEL_CHAIN)
    return model


class STSFusionProvider(QgsProcessingProvider):
    def id(self):
        return "stsfusion"

    def name(self):
        return tr("STS Fusion")

    def longName(self):
        return tr("STS Fusion: spatio-temporal-spectral fusion of satellite time series")

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):
        return ICON_PATH

    def loadAlgorithms(self):
        for module_name, class_name in ALGORITHMS:
            module = importlib.import_module(f"{__package__}.{module_name}")
            self.addAlgorithm(getattr(module, class_name)())
        chain = load_model_chain()
        if chain is None:
            return
        self._chain_name = chain.name()
        self.addAlgorithm(chain)
        registry = QgsApplication.processingRegistry()
        if registry.providerById(self.id()) is not self:
            # While the registry first loads the provider, the chain's steps (this provider's own
            # algorithms) cannot be found yet, so the chain lacks the outputs they add: read it again
            # once the provider is registered. (Running it is not affected: each run makes a fresh copy.)
            registry.providerAdded.connect(self._complete_chain)

    def _complete_chain(self, provider_id):
        if provider_id != self.id():
            return
        QgsApplication.processingRegistry().providerAdded.disconnect(self._complete_chain)
        chain = self.algorithm(self._chain_name)
        if chain is not None:
            chain.loadVariant(chain.toVariant())
