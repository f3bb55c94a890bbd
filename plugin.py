"""QGIS entry points: registers the Processing provider (headless and desktop) and the GUI parts."""

from qgis.core import QgsApplication


class STSFusionPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS API)
        # Idempotent: QGIS calls it by itself where there is no GUI, initGui calls it otherwise.
        if self.provider is None:
            from .algorithms.provider import STSFusionProvider

            self.provider = STSFusionProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS API)
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
