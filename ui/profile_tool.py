"""The map tool of the spectral-temporal profile: a click (or a drag) on the canvas emits the point."""

from qgis.gui import QgsMapTool
from qgis.PyQt.QtCore import Qt, pyqtSignal


class ProfileMapTool(QgsMapTool):
    """Emits ``clicked(QgsPointXY, QgsCoordinateReferenceSystem)`` in the canvas CRS.

    Dragging with the left button held emits too, so a user can sweep across a field boundary.
    """

    clicked = pyqtSignal(object, object)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.setCursor(Qt.CrossCursor)
        self._pressed = False

    def canvasPressEvent(self, event):
        if event.button() == Qt.LeftButton:
            self._pressed = True
            self._emit(event)

    def canvasMoveEvent(self, event):
        if self._pressed:
            self._emit(event)

    def canvasReleaseEvent(self, event):
        self._pressed = False

    def deactivate(self):
        self._pressed = False
        super().deactivate()

    def _emit(self, event):
        point = self.toMapCoordinates(event.pos())
        self.clicked.emit(point, self.canvas().mapSettings().destinationCrs())
