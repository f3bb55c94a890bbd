"""QGIS entry points: registers the Processing provider (headless and desktop) and the GUI parts.

GUI modules (ui/: widgets, matplotlib) are imported only inside initGui, which QGIS calls in the
desktop application alone: qgis_process and headless scripts only ever run initProcessing. The
"Install PyTorch…" dialog is imported only when its menu entry is used.
"""

from qgis.core import QgsApplication

from . import deps_folder

MENU = "&STS Fusion"
INSTALL_TEXT = "Install PyTorch…"


class STSFusionPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.gui = None
        self.install_action = None
        self.install_dialog = None

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
        if self.iface is not None and self.install_action is None:
            from qgis.PyQt.QtWidgets import QAction

            # Plugins ▸ STS Fusion ▸ Install PyTorch…
            self.install_action = QAction(INSTALL_TEXT, self.iface.mainWindow())
            self.install_action.setObjectName("STSFusionInstallTorchAction")
            self.install_action.triggered.connect(lambda: self.open_installer())
            self.iface.addPluginToMenu(MENU, self.install_action)

    def open_installer(self):
        """Shows the "Install PyTorch…" dialog (made on first use, kept while it may be running)."""
        if self.install_dialog is None:
            from .ui.install_dialog import InstallTorchDialog

            target = deps_folder(QgsApplication.qgisSettingsDirPath())
            self.install_dialog = InstallTorchDialog(target, self.iface.mainWindow())
        self.install_dialog.show()
        self.install_dialog.raise_()
        return self.install_dialog

    def unload(self):
        if self.install_dialog is not None:
            self.install_dialog.close()  # cancels a running pip: nothing left half-installed
            self.install_dialog.deleteLater()
            self.install_dialog = None
        if self.install_action is not None:
            self.iface.removePluginMenu(MENU, self.install_action)
            self.install_action.deleteLater()
            self.install_action = None
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
