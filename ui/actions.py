"""The plugin's desktop entries: a toolbar button, a Raster-menu item and an entry in a raster layer's
context menu (Layers panel) that open the profile dock and activate its map tool.
``remove()`` takes every one of them out again (plugin unload/reload)."""

import os

from qgis.core import QgsMapLayerType, QgsRasterLayer
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

MENU = "&STS Fusion"
ACTION_TEXT = "STS Fusion spectral-temporal profile"
ICON_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.svg")


class ProfileGui:
    """Owns the profile action, dock and map tool for one QGIS main window (``iface``)."""

    def __init__(self, iface):
        self.iface = iface
        self.action = None
        self.layer_action = None
        self.dock = None
        self.tool = None

    def install(self):
        self.action = QAction(QIcon(ICON_PATH), ACTION_TEXT, self.iface.mainWindow())
        self.action.setObjectName("STSFusionProfileAction")
        self.action.setCheckable(True)  # checked while the map tool is the canvas's tool
        self.action.setToolTip(
            "Click a pixel of a fused layer, an MDD stack or any raster with band "
            "wavelengths: its spectrum on every date, and one wavelength over time."
        )
        self.action.triggered.connect(lambda: self.open())  # not open(checked)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        # Right-click a raster in the Layers panel: profile of that layer.
        self.layer_action = QAction(QIcon(ICON_PATH), ACTION_TEXT, self.iface.mainWindow())
        self.layer_action.triggered.connect(lambda: self.open(self.iface.activeLayer()))
        self.iface.addCustomActionForLayerType(self.layer_action, "", QgsMapLayerType.RasterLayer, True)

    def open(self, layer=None):
        """Shows the dock (made on first use) and makes the profile tool the canvas's map tool;
        ``layer``: the raster to sample (default: the active layer if the dock has none yet)."""
        canvas = self.iface.mapCanvas()
        if self.dock is None:
            try:
                from .profile_dock import ProfileDock
            except ImportError as e:  # matplotlib is a separate package on some systems
                self.action.setChecked(False)
                self.iface.messageBar().pushCritical(
                    "STS Fusion",
                    f"The profile needs matplotlib ({e}): install python3-matplotlib "
                    "(Debian/Ubuntu) or matplotlib for the Python that QGIS uses, then restart QGIS.",
                )
                return
            from .profile_tool import ProfileMapTool

            self.dock = ProfileDock(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.tool = ProfileMapTool(canvas)
            self.tool.setAction(self.action)
            self.tool.clicked.connect(self.dock.show_point)
        if layer is None and self.dock.layer_combo.currentLayer() is None:
            layer = self.iface.activeLayer()
        if isinstance(layer, QgsRasterLayer):
            self.dock.set_layer(layer)
        self.dock.show()
        self.dock.raise_()
        canvas.setMapTool(self.tool)

    def remove(self):
        if self.tool is not None:
            canvas = self.iface.mapCanvas()
            if canvas.mapTool() is self.tool:
                canvas.unsetMapTool(self.tool)
            self.tool.deleteLater()
            self.tool = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.close()
            self.dock.deleteLater()
            self.dock = None
        if self.layer_action is not None:
            self.iface.removeCustomActionForLayerType(self.layer_action)
            self.layer_action.deleteLater()
            self.layer_action = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
