"""The spectral-temporal profile dock: a pixel's spectrum on every date, and one wavelength over time.

Top plot: one curve a date (wavelength on x, legend by date); the observed MDD inputs at the same
pixel are drawn in the date's colour (fine MS squares, dense MS triangles, HS dotted). Bottom plot:
the chosen wavelength over time, the series as a line and each observed input whose band covers
that wavelength as markers. Plots are matplotlib figures on Qt canvases (the Qt5Agg backend).
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_qt5agg import FigureCanvasQTAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QGridLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ..model.core.vocabulary import ROLE_LABELS, ROLES, as_date
from .profile_data import ProfileError, ProfileSource, write_csv

TITLE = "STS Fusion spectral-temporal profile"
PREFERRED_WAVELENGTH_NM = 865.0  # near infrared: where vegetation's season shows most
ROLE_STYLE = {  # observed inputs: hollow markers so the fused curve stays visible beneath them
    "fine_ms": dict(marker="s", linestyle="none", markersize=7, markerfacecolor="none", mew=1.5),
    "dense_ms": dict(marker="^", linestyle="none", markersize=7, markerfacecolor="none", mew=1.5),
    "hs": dict(marker=".", linestyle=":", markersize=3, linewidth=1.2),
}
ROLE_TIME_STYLE = {  # over time every input is a marker; colour and shape by role
    "fine_ms": dict(marker="s", color="tab:red"),
    "dense_ms": dict(marker="^", color="tab:green"),
    "hs": dict(marker="D", color="tab:purple"),
}


def nm(wavelength: float) -> str:
    """A wavelength for labels: at most one decimal (HS band centres carry float noise)."""
    return f"{float(wavelength):.1f}".rstrip("0").rstrip(".")


def date_colours(dates) -> dict:
    """One colour a date along viridis (time order reads as colour order); yellow end left out."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(dates) - 1, 1)
    return {d: cmap(0.9 * i / n) for i, d in enumerate(dates)}


def with_gaps(wavelengths, values):
    """The curve broken (NaN inserted) where bands are missing, e.g. dropped water-vapour bands,
    so a line never bridges a spectral region that was not measured."""
    wl = np.asarray(wavelengths, dtype=float)
    v = np.asarray(values, dtype=float)
    if len(wl) < 3:
        return wl, v
    steps = np.diff(wl)
    cut = np.flatnonzero(steps > 4 * np.median(steps)) + 1
    return np.insert(wl, cut, np.nan), np.insert(v, cut, np.nan)


def draw_spectra(ax, profile, wavelength=None):
    """Top plot: every spectrum of the pixel, coloured by date."""
    colours = date_colours(profile.dates)
    for s in profile.spectra:
        ax.plot(*with_gaps(s.wavelengths, s.values), color=colours.get(s.date, "black"), linewidth=1.4)
    roles = []
    for s in profile.observed:
        if np.isfinite(s.values).any():
            ax.plot(*with_gaps(s.wavelengths, s.values), color=colours.get(s.date, "black"), **ROLE_STYLE[s.series])
            if s.series not in roles:
                roles.append(s.series)
    if wavelength is not None:
        ax.axvline(wavelength, color="0.5", linestyle="--", linewidth=0.8)
    handles = [Line2D([], [], color=colours[d], linewidth=2, label=d) for d in profile.dates]
    handles += [
        Line2D([], [], color="black", linewidth=2, label=f"{s.series} (no date)") for s in profile.spectra if not s.date
    ]
    handles += [Line2D([], [], color="0.3", label=f"{ROLE_LABELS[r]} (observed)", **ROLE_STYLE[r]) for r in roles]
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            frameon=False,
            ncol=1 if len(handles) <= 16 else 2,
        )
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("value")
    ax.set_title("Spectrum per date", fontsize=10)
    ax.grid(True, alpha=0.3)


def draw_time(ax, profile, wavelength):
    """Bottom plot: one wavelength over time, the series as a line, observed inputs as markers."""
    if wavelength is None:
        ax.text(0.5, 0.5, "no wavelength to follow", ha="center", va="center", transform=ax.transAxes)
        return
    series, observed = profile.at_wavelength(wavelength)
    dated = [(d, v) for d, v in series if as_date(d)]
    if dated:
        xs = [as_date(d) for d, _ in dated]
        name = profile.spectra[0].series if profile.spectra else "series"
        ax.plot(
            xs,
            [v for _, v in dated],
            "o-",
            color="0.15",
            markersize=4,
            linewidth=1.4,
            label=f"{name} {nm(wavelength)} nm",
        )
    for role in ROLES:
        pts = [(d, wl, v) for r, d, wl, v in observed if r == role and as_date(d) and np.isfinite(v)]
        if pts:
            centres = sorted({wl for _, wl, _ in pts})
            label = f"{ROLE_LABELS[role]} {', '.join(nm(c) for c in centres)} nm"
            ax.plot(
                [as_date(d) for d, _, _ in pts],
                [v for _, _, v in pts],
                linestyle="none",
                markersize=8,
                markerfacecolor="none",
                mew=1.5,
                label=label,
                **ROLE_TIME_STYLE[role],
            )
    ax.set_title(f"{nm(wavelength)} nm over time", fontsize=10)
    if not ax.get_lines():  # an undated raster, or nothing valid here
        ax.text(0.5, 0.5, "no dated value at this wavelength", ha="center", va="center", transform=ax.transAxes)
        return
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.set_xlabel("date")
    ax.set_ylabel(f"value at {nm(wavelength)} nm")
    ax.grid(True, alpha=0.3)
    locator = AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


class _PlotCanvas(FigureCanvasQTAgg):
    def __init__(self, parent=None):
        super().__init__(Figure(figsize=(6, 3), dpi=90, layout="constrained"))
        self.setParent(parent)
        self.setMinimumHeight(160)
        self.ax = self.figure.add_subplot(1, 1, 1)

    def redraw(self, draw, *args):
        self.figure.clear()
        self.ax = self.figure.add_subplot(1, 1, 1)
        draw(self.ax, *args)
        self.draw()


class ProfileDock(QDockWidget):
    """The dock. Feed it points with ``show_point(point, crs)`` (the map tool's signal does)."""

    def __init__(self, parent=None):
        super().__init__(TITLE, parent)
        self.setObjectName("STSFusionProfileDock")
        self.profile = None
        self._source = None
        self._source_path = None
        self._last_point = None

        body = QWidget(self)
        grid = QGridLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        self.layer_combo.setToolTip(
            "The raster to sample: a fused output (its whole series is read), "
            "an MDD stack, or any raster with band wavelengths."
        )
        self.manifest_widget = QgsFileWidget(body)
        self.manifest_widget.setFilter("STS Fusion MDD manifest (*.json)")
        self.manifest_widget.setToolTip(
            "Optional: the MDD whose inputs (fine MS, dense MS, HS) are "
            "shown as markers. Found by itself when the fused files name it."
        )
        self.wavelength_combo = QComboBox(body)
        self.wavelength_combo.setToolTip("The wavelength followed over time in the lower plot.")
        self.export_button = QPushButton("Export CSV…", body)
        self.export_button.setEnabled(False)
        grid.addWidget(QLabel("Layer"), 0, 0)
        grid.addWidget(self.layer_combo, 0, 1, 1, 3)
        grid.addWidget(QLabel("MDD inputs"), 1, 0)
        grid.addWidget(self.manifest_widget, 1, 1, 1, 3)
        grid.addWidget(QLabel("Wavelength"), 2, 0)
        grid.addWidget(self.wavelength_combo, 2, 1)
        grid.addWidget(self.export_button, 2, 3)
        grid.setColumnStretch(2, 1)
        self.status = QLabel("Click a pixel on the map.", body)
        self.status.setWordWrap(True)
        self.spectrum_canvas = _PlotCanvas(body)
        self.time_canvas = _PlotCanvas(body)
        splitter = QSplitter(Qt.Vertical, body)
        splitter.addWidget(self.spectrum_canvas)
        splitter.addWidget(self.time_canvas)
        layout = QVBoxLayout()
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addWidget(splitter, 1)
        body.setLayout(layout)
        self.setWidget(body)

        self.layer_combo.layerChanged.connect(self._layer_changed)
        self.manifest_widget.fileChanged.connect(self._manifest_changed)
        # The spectrum plot marks the chosen wavelength too: both plots are redrawn.
        self.wavelength_combo.currentIndexChanged.connect(lambda _: self._redraw())
        self.export_button.clicked.connect(lambda: self.export_csv())
        self._layer_changed(self.layer_combo.currentLayer())  # the combo may have picked one already

    # ---- inputs ----------------------------------------------------------------------------
    def set_layer(self, layer):
        self.layer_combo.setLayer(layer)

    def set_source_path(self, path):
        """Samples this file (and its series) regardless of the layer combo."""
        self._source_path = path
        self._reset_source()

    def set_manifest(self, path):
        self.manifest_widget.setFilePath(path or "")
        self._manifest_changed(path or "")

    def set_wavelength(self, nm: float):
        values = [self.wavelength_combo.itemData(i) for i in range(self.wavelength_combo.count())]
        if values:
            self.wavelength_combo.setCurrentIndex(int(np.argmin([abs(v - nm) for v in values])))

    def current_wavelength(self):
        return self.wavelength_combo.currentData()

    def _layer_changed(self, layer):
        self._source_path = layer.source() if layer is not None else None
        self._reset_source()

    def _manifest_changed(self, path):
        if self._source is not None:
            try:
                self._source.set_manifest(path or None)
            except ProfileError as e:
                self.status.setText(str(e))
                return
        self._resample()

    def _reset_source(self):
        if self._source is not None:
            self._source.close()
        self._source = None
        self._resample()

    def _get_source(self):
        if self._source is not None and self._source.is_stale():  # e.g. fusion was run again
            self._source.close()
            self._source = None
        if self._source is None and self._source_path:
            manifest = self.manifest_widget.filePath() or None
            self._source = ProfileSource.from_path(self._source_path, manifest)
            found = self._source.mdd.path if self._source.mdd is not None and not manifest else None
            self.manifest_widget.lineEdit().setPlaceholderText(
                f"found: {found}" if found else "optional: an MDD manifest (.json)"
            )
        return self._source

    # ---- sampling and drawing --------------------------------------------------------------
    def show_point(self, point, crs=None):
        """Samples the source at a map point (QgsPointXY or (x, y)) given in ``crs``."""
        x, y = (point.x(), point.y()) if hasattr(point, "x") else point
        self._last_point = (x, y, crs)
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            source = self._get_source()
            if source is None:
                self.status.setText("Choose a raster layer to sample.")
                return None
            self.profile = source.sample(x, y, crs)
        except (ProfileError, RuntimeError, OSError) as e:  # RuntimeError: GDAL could not read a file
            self.profile = None
            self.status.setText(str(e))
            self.export_button.setEnabled(False)
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self._update_wavelengths()
        self._update_status(source)
        self.export_button.setEnabled(not self.profile.is_empty)
        self._redraw()
        return self.profile

    def _resample(self):
        if self._last_point is not None:
            self.show_point(self._last_point[:2], self._last_point[2])

    def _update_status(self, source):
        p = self.profile
        where = f"pixel (col {p.pixel[0]}, row {p.pixel[1]})" if p.pixel else "no pixel"
        text = f"{where} of {source.name}: {len(p.spectra)} date(s) of the series"
        if p.observed:
            text += f", {len(p.observed)} observed input image(s) from {os.path.basename(source.mdd.path)}"
        if p.is_empty:
            text += "; no valid value at this pixel"
        if p.notes:
            text += "; " + "; ".join(sorted(set(p.notes)))
        self.status.setText(text + ".")

    def _update_wavelengths(self):
        choices = self.profile.wavelength_choices()
        old = self.current_wavelength()
        current = [self.wavelength_combo.itemData(i) for i in range(self.wavelength_combo.count())]
        if current == choices:
            return
        self.wavelength_combo.blockSignals(True)
        self.wavelength_combo.clear()
        for wl in choices:
            self.wavelength_combo.addItem(f"{nm(wl)} nm", wl)
        self.wavelength_combo.blockSignals(False)
        if choices:
            target = old if old is not None else PREFERRED_WAVELENGTH_NM
            if old is None and not (choices[0] <= target <= choices[-1]):
                target = choices[len(choices) // 2]
            self.set_wavelength(target)

    def _redraw(self):
        if self.profile is None:
            return
        self.spectrum_canvas.redraw(draw_spectra, self.profile, self.current_wavelength())
        self.time_canvas.redraw(draw_time, self.profile, self.current_wavelength())

    # ---- output ----------------------------------------------------------------------------
    def export_csv(self, path=None):
        """Writes the plotted values; asks for a file name when none is given. Returns the path."""
        if self.profile is None:
            return None
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Export profile values", "profile.csv", "CSV (*.csv)")
            if not path:
                return None
        try:
            write_csv(path, self.profile)
        except OSError as e:
            self.status.setText(f"Cannot write {path}: {e.strerror}. Choose another folder.")
            return None
        self.status.setText(f"Profile values written to {path}.")
        return path

    def save_png(self, path: str):
        """Renders the whole dock (controls and plots) to a PNG."""
        self.spectrum_canvas.draw()
        self.time_canvas.draw()
        QApplication.processEvents()
        return self.grab().save(path, "PNG")

    def closeEvent(self, event):
        if self._source is not None:
            self._source.close()  # release the GDAL datasets (file locks on Windows)
            self._source = None
        super().closeEvent(event)
