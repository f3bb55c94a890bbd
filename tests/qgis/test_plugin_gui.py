"""The plugin's GUI life cycle: initGui adds the profile action and Plugins ▸ STS Fusion ▸ Install
PyTorch…, the tool samples a canvas click, the install dialog runs pip in a thread (offline, fake
wheels), unload leaves no action, dock, dialog or map tool behind, and headless use never imports ui/."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.paths import subprocess_env
from helpers.wheels import make_wheel
from osgeo import osr

from stsfusion.model.core.grid import Grid
from stsfusion.model.mdd.geotiff import spectral_band_metadata, write_geotiff


class FakeIface:
    """The few QgisInterface methods the plugin calls, over a real main window and map canvas."""

    def __init__(self):
        from qgis.gui import QgsMapCanvas
        from qgis.PyQt.QtWidgets import QMainWindow

        self.window = QMainWindow()
        self.canvas = QgsMapCanvas(self.window)
        self.window.setCentralWidget(self.canvas)
        self.window.resize(900, 600)
        self.toolbar, self.menus, self.docks, self.layer_actions, self.active_layer = [], [], [], [], None
        self.messages = []
        self.plugin_menus = []

    def mainWindow(self):
        return self.window

    def mapCanvas(self):
        return self.canvas

    def activeLayer(self):
        return self.active_layer

    def messageBar(self):
        return self

    def pushCritical(self, title, text):
        self.messages.append((title, text))

    def addToolBarIcon(self, action):
        self.toolbar.append(action)

    def removeToolBarIcon(self, action):
        self.toolbar.remove(action)

    def addPluginToMenu(self, menu, action):
        self.plugin_menus.append((menu, action))

    def removePluginMenu(self, menu, action):
        self.plugin_menus.remove((menu, action))

    def addPluginToRasterMenu(self, menu, action):
        self.menus.append((menu, action))

    def removePluginRasterMenu(self, menu, action):
        self.menus.remove((menu, action))

    def addCustomActionForLayerType(self, action, menu, layer_type, all_layers):
        self.layer_actions.append((action, layer_type, all_layers))

    def removeCustomActionForLayerType(self, action):
        before = len(self.layer_actions)
        self.layer_actions = [e for e in self.layer_actions if e[0] is not action]
        return len(self.layer_actions) < before

    def addDockWidget(self, area, dock):
        self.window.addDockWidget(area, dock)
        self.docks.append(dock)

    def removeDockWidget(self, dock):
        self.window.removeDockWidget(dock)
        self.docks.remove(dock)


def _flush_deletes():
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    QCoreApplication.processEvents()


@pytest.fixture
def fused_layer(qgis_app, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    grid = Grid(srs.ExportToWkt(), (370000.0, 30.0, 0.0, 5810000.0, 0.0, -30.0), 8, 6)
    wl = [480.0, 560.0, 660.0, 860.0]
    for t, date in enumerate(["2022-05-01", "2022-06-01"]):
        b, r, c = np.meshgrid(np.arange(4), np.arange(6), np.arange(8), indexing="ij")
        write_geotiff(
            str(tmp_path / f"fused_{date}.tif"),
            (1000 * t + 100 * b + 10 * r + c).astype(np.float32),
            grid,
            nodata=-9999.0,
            band_metadata=spectral_band_metadata(wl),
        )
    layer = QgsRasterLayer(str(tmp_path / "fused_2022-06-01.tif"), "fused 2022-06-01")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeMapLayer(layer.id())


def test_load_click_unload_leaves_nothing_behind(qgis_app, fused_layer):
    from qgis.core import (
        QgsApplication,
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsMapLayerType,
        QgsPointXY,
        QgsProject,
    )
    from qgis.gui import QgsMapMouseEvent
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt
    from qgis.PyQt.QtWidgets import QAction, QDockWidget

    import stsfusion

    registry = QgsApplication.processingRegistry()
    harness_provider = registry.providerById("stsfusion")
    iface = FakeIface()
    iface.active_layer = fused_layer
    plugin = stsfusion.classFactory(iface)
    plugin.initGui()
    assert [a.text() for a in iface.toolbar] == ["STS Fusion spectral-temporal profile"]
    assert [(m, a.text()) for m, a in iface.menus] == [("&STS Fusion", "STS Fusion spectral-temporal profile")]
    assert [(a.text(), t) for a, t, _ in iface.layer_actions] == [
        ("STS Fusion spectral-temporal profile", QgsMapLayerType.RasterLayer)
    ]
    assert [(m, a.text()) for m, a in iface.plugin_menus] == [("&STS Fusion", "Install PyTorch…")]

    iface.toolbar[0].trigger()
    dock, tool = plugin.gui.dock, plugin.gui.tool
    assert iface.docks == [dock] and iface.canvas.mapTool() is tool and iface.toolbar[0].isChecked()
    assert dock.layer_combo.currentLayer() is fused_layer  # the active raster is sampled

    # A click on the canvas, shown in Web Mercator, lands on pixel (col 5, row 4) of the UTM raster.
    canvas = iface.canvas
    canvas.resize(400, 300)
    web = QgsCoordinateReferenceSystem("EPSG:3857")
    canvas.setDestinationCrs(web)
    to_web = QgsCoordinateTransform(fused_layer.crs(), web, QgsProject.instance())
    canvas.setExtent(to_web.transformBoundingBox(fused_layer.extent()))
    canvas.refresh()
    target = to_web.transform(QgsPointXY(370000.0 + 30 * 5.5, 5810000.0 - 30 * 4.5))
    screen = canvas.getCoordinateTransform().transform(target)
    pos = QPoint(round(screen.x()), round(screen.y()))
    tool.canvasPressEvent(QgsMapMouseEvent(canvas, QEvent.MouseButtonPress, pos, Qt.LeftButton))
    tool.canvasReleaseEvent(QgsMapMouseEvent(canvas, QEvent.MouseButtonRelease, pos, Qt.LeftButton))
    assert dock.profile is not None and dock.profile.pixel == (5, 4), dock.status.text()
    np.testing.assert_array_equal(dock.profile.spectra[1].values, [1000 + 100 * b + 45 for b in range(4)])

    plugin.unload()
    _flush_deletes()
    assert iface.toolbar == [] and iface.menus == [] and iface.docks == [] and iface.layer_actions == []
    assert iface.plugin_menus == [] and canvas.mapTool() is None and iface.messages == []
    assert iface.window.findChildren(QDockWidget) == []
    assert [a for a in iface.window.findChildren(QAction) if a.objectName() == "STSFusionProfileAction"] == []
    # Unload removed only the plugin's own provider: the harness's one (same id) is still there.
    assert registry.providerById("stsfusion") is harness_provider is not None


def test_reload_twice_leaves_one_action_then_none(qgis_app):
    from qgis.PyQt.QtWidgets import QDialog, QDockWidget

    import stsfusion

    iface = FakeIface()
    for _ in range(2):
        plugin = stsfusion.classFactory(iface)
        plugin.initGui()
        plugin.initGui()  # idempotent
        assert len(iface.toolbar) == 1 and len(iface.menus) == 1 and len(iface.plugin_menus) == 1
        iface.toolbar[0].trigger()
        iface.plugin_menus[0][1].trigger()  # the install dialog, shown
        assert plugin.install_dialog.isVisible()
        plugin.unload()
        _flush_deletes()
        assert iface.toolbar == [] and iface.menus == [] and iface.layer_actions == [] and iface.plugin_menus == []
        assert iface.window.findChildren(QDockWidget) == [] and iface.window.findChildren(QDialog) == []


def test_layer_context_menu_opens_the_profile_of_that_layer(qgis_app, fused_layer):
    import stsfusion

    iface = FakeIface()
    plugin = stsfusion.classFactory(iface)
    plugin.initGui()
    iface.active_layer = fused_layer  # QGIS makes the right-clicked layer the active one
    iface.layer_actions[0][0].trigger()
    assert plugin.gui.dock.layer_combo.currentLayer() is fused_layer
    assert iface.canvas.mapTool() is plugin.gui.tool
    plugin.unload()
    _flush_deletes()
    assert iface.layer_actions == [] and iface.canvas.mapTool() is None


def test_without_matplotlib_the_action_says_how_to_install_it(qgis_app, monkeypatch):
    import stsfusion

    monkeypatch.setitem(sys.modules, "stsfusion.ui.profile_dock", None)  # import fails as if absent
    iface = FakeIface()
    plugin = stsfusion.classFactory(iface)
    plugin.initGui()
    iface.toolbar[0].trigger()
    assert plugin.gui.dock is None and iface.docks == [] and not iface.toolbar[0].isChecked()
    ((title, text),) = iface.messages
    assert title == "STS Fusion" and "python3-matplotlib" in text
    plugin.unload()
    assert iface.toolbar == []


def _wait_for(dialog):
    from qgis.PyQt.QtCore import QCoreApplication

    assert dialog.wait(60000)
    QCoreApplication.processEvents()  # delivers the thread's queued signals


def test_install_dialog_installs_offline_and_cancels(qgis_app, tmp_path):
    from stsfusion.ui.install_dialog import InstallTorchDialog

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "torch", "0.0.1", {"torch/__init__.py": '__version__ = "0.0.fake"\n'})
    make_wheel(wheels, "scikit-learn", "0.0.1", {"sklearn/__init__.py": ""})
    target = tmp_path / "deps" / "3.x"
    gpu = [type("Gpu", (), {"name": "NVIDIA GeForce RTX 3080", "driver": "550.54.14"})()]
    dialog = InstallTorchDialog(str(target), gpus=gpu, python=sys.executable)
    if sys.platform != "darwin":  # the CUDA build matching the driver is preselected
        assert [dialog.build.itemData(i) for i in range(dialog.build.count())] == ["cpu", "cu124"]
        assert dialog.build.currentData() == "cu124"
    dialog.offline.setChecked(True)
    dialog.wheels.setFilePath(str(wheels))
    dialog.install()
    assert dialog.running() and not dialog.install_button.isEnabled() and dialog.cancel_button.isEnabled()
    _wait_for(dialog)
    assert "Restart QGIS" in dialog.status.text(), dialog.log.toPlainText()
    assert dialog.bar.value() == 100 and "Successfully installed" in dialog.log.toPlainText()
    assert (target / "torch" / "__init__.py").is_file() and dialog.install_button.isEnabled()

    before = sorted(os.listdir(target))
    dialog.install()
    dialog.cancel()
    _wait_for(dialog)
    assert dialog.status.text().startswith("Canceled") and sorted(os.listdir(target)) == before
    assert sorted(os.listdir(target.parent)) == ["3.x"]
    dialog.close()
    dialog.deleteLater()


HEADLESS = """
import sys
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
import stsfusion
plugin = stsfusion.classFactory(None)
plugin.initProcessing()
registry = QgsApplication.processingRegistry()
assert registry.providerById("stsfusion") is plugin.provider
loaded = sorted(m for m in sys.modules
                if m.startswith("stsfusion.ui") or m.startswith("matplotlib.backends.backend_qt"))
assert not loaded, loaded
plugin.unload()
assert registry.providerById("stsfusion") is None
print("HEADLESS OK")
"""


def test_headless_use_never_imports_the_gui(qgis_app):
    proc = subprocess.run(
        [sys.executable, "-c", HEADLESS], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert "HEADLESS OK" in proc.stdout, proc.stdout + proc.stderr
