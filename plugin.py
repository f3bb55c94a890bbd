"""QGIS entry points: registers the Processing provider (headless and desktop) and the GUI parts.

GUI modules (ui/: widgets, matplotlib) are imported only inside initGui, which QGIS calls in the
desktop application alone: qgis_process and headless scripts only ever run initProcessing.
"""

from qgis.core import QgsApplication


class STSFusionPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.gui = None

    def initProcessing(self):
        # Idempotent: QGIS calls it by itself where there is no GUI, initGui calls it otherwise.
        if self.provider is None:
            from .algorithms.provider import STSFusionProvider

            self.provider = STSFusionProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()
        if self.iface is not None and self.gui is None:
            from .ui.actions import ProfileGui

            self.gui = ProfileGui(self.iface)
            self.gui.install()

    def unload(self):
        if self.gui is not None:
            self.gui.remove()
            self.gui = None
        if self.provider is not None:
            registry = QgsApplication.processingRegistry()
            # Remove only our own provider: removal goes by id, and another instance with the same
            # id (e.g. registered by a test harness) must survive our unload.
            if registry.providerById(self.provider.id()) is self.provider:
                registry.removeProvider(self.provider)
            self.provider = None
