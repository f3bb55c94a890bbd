"""How the raster outputs look in QGIS: natural colours, and their date on the Temporal Controller.

Fuse time series, Baseline fusion and Simulate sensors write one GeoTIFF per date. For each of them
the algorithm (not model/) computes an ``OutputStyle`` and writes it as a QGIS style file beside the
GeoTIFF, ``<name>.qml``, the file QGIS reads when a user adds the GeoTIFF by hand:

- a multiband-colour renderer on the bands nearest 650/560/480 nm (``rgb_band_indices``; spread over
  the range when the bands do not cover the visible) with a 2–98 % cumulative-cut stretch;
- the file's date (``..._YYYY-MM-DD.tif``) as a fixed temporal range, 00:00:00 to 23:59:59 UTC with
  both ends included, so the Temporal Controller steps through the series one date a frame.
  QGIS 3.22 stores it in the .qml (``<temporal>``, style category Temporal); opening the GeoTIFF
  restores the renderer from the .qml but not the range, which ``loadNamedStyle`` (Layer Properties
  ▸ Style ▸ Load Style…) does restore.
  (QGIS 3.22's range overlap test ignores a frame's excluded end, so with one-day steps a layer also
  shows in the frame of the day before its own; later QGIS versions honour the excluded end.)

Layers that Processing loads into the project at the end get the same style from
``StylePostProcessor``. The stretch limits are computed once, in the algorithm's thread, with GDAL on
a decimated read (in the post-processor QGIS's own histogram would run in the GUI thread), and the
layer the algorithm opens to export the style is opened with GDAL's .aux.xml files switched off in
its thread, so no ``.aux.xml`` (QGIS's default-rendering histograms) is left beside the outputs.
A .qml is written after its GeoTIFF exists, under a temporary name and renamed
(``write_text_atomic``); one that cannot be written is a warning, since the GeoTIFFs are complete.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager

import numpy as np
from osgeo import gdal
from qgis.core import (
    QgsContrastEnhancement,
    QgsDateTimeRange,
    QgsMultiBandColorRenderer,
    QgsProcessingContext,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsRasterLayerTemporalProperties,
    QgsRasterMinMaxOrigin,
)
from qgis.PyQt.QtCore import QDate, QDateTime, Qt, QTime
from qgis.PyQt.QtXml import QDomDocument

from ..model.fusion.fuse import rgb_band_indices_of_file
from ..model.mdd.geotiff import write_text_atomic

CUMULATIVE_CUT = (0.02, 0.98)  # the stretch: QGIS's default cumulative cut
SAMPLE_SIDE = 1024  # the stretch limits come from a read decimated to at most this many pixels a side
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")

# The registry does not own post-processors: keep them alive until the GUI has loaded the layers.
# One per output path, so repeated runs replace rather than accumulate them.
_POST_PROCESSORS = {}


class OutputStyle:
    """The style of one output GeoTIFF: 1-based (red, green, blue) bands, their (low, high) stretch
    limits in physical values, and the date (YYYY-MM-DD, or None: no temporal range)."""

    def __init__(self, path: str, bands: tuple, limits: list, date):
        self.path, self.bands, self.limits, self.date = path, tuple(bands), list(limits), date

    @classmethod
    def of_file(cls, path: str) -> OutputStyle:
        bands = rgb_band_indices_of_file(path)
        return cls(path, bands, stretch_limits(path, bands), output_date(path))


def style_path(path: str) -> str:
    """The .qml QGIS loads by default for a raster file: its name with the extension replaced."""
    return os.path.splitext(path)[0] + ".qml"


def output_date(path: str):
    """The date in an output's file name (the last YYYY-MM-DD), else its ACQUISITION_DATE metadata,
    else None."""
    candidates = _DATE.findall(os.path.basename(path))
    if not candidates:
        ds = gdal.Open(path)
        candidates = _DATE.findall((ds.GetMetadataItem("ACQUISITION_DATE") or "") if ds is not None else "")
        ds = None
    if candidates and QDate.fromString(candidates[-1], "yyyy-MM-dd").isValid():
        return candidates[-1]
    return None


def day_range(date: str) -> QgsDateTimeRange:
    """The whole day ``date`` (YYYY-MM-DD): 00:00:00 to 23:59:59 UTC, both ends included, so
    consecutive days never overlap."""
    day = QDate.fromString(date, "yyyy-MM-dd")
    return QgsDateTimeRange(
        QDateTime(day, QTime(0, 0, 0), Qt.UTC), QDateTime(day, QTime(23, 59, 59), Qt.UTC), True, True
    )


def stretch_limits(path: str, bands) -> list:
    """(low, high) physical values (band scale/offset applied) at the 2 % and 98 % cumulative cut of
    each band, from a read decimated to at most SAMPLE_SIDE pixels a side; nodata and non-finite
    values are left out. (0, 1) for a band with no valid value."""
    ds = gdal.Open(path)
    if ds is None:
        raise OSError(f"GDAL cannot open {path}")
    step = max(1, math.ceil(max(ds.RasterXSize, ds.RasterYSize) / SAMPLE_SIDE))
    width, height = max(1, ds.RasterXSize // step), max(1, ds.RasterYSize // step)
    limits = []
    for b in bands:
        band = ds.GetRasterBand(int(b))
        values = band.ReadAsArray(buf_xsize=width, buf_ysize=height).astype(np.float64)
        valid = np.isfinite(values)
        nodata = band.GetNoDataValue()
        if nodata is not None:
            valid &= values != nodata
        values = values[valid] * (band.GetScale() or 1.0) + (band.GetOffset() or 0.0)
        if values.size == 0:
            limits.append((0.0, 1.0))
            continue
        low, high = (float(v) for v in np.quantile(values, CUMULATIVE_CUT))
        if not high > low:
            high = low + max(abs(low) * 1e-6, 1e-12)
        limits.append((low, high))
    ds = None
    return limits


def apply_style(layer: QgsRasterLayer, style: OutputStyle) -> None:
    """Sets ``layer``'s renderer (natural colours, stretched) and, when the style has a date, its
    fixed temporal range."""
    provider = layer.dataProvider()
    renderer = QgsMultiBandColorRenderer(provider, *style.bands)
    setters = (
        renderer.setRedContrastEnhancement,
        renderer.setGreenContrastEnhancement,
        renderer.setBlueContrastEnhancement,
    )
    for band, (low, high), set_enhancement in zip(style.bands, style.limits, setters):
        enhancement = QgsContrastEnhancement(provider.dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(low)
        enhancement.setMaximumValue(high)
        set_enhancement(enhancement)  # the renderer takes ownership
    origin = QgsRasterMinMaxOrigin()  # records how the limits were found (shown in Layer Properties)
    origin.setLimits(QgsRasterMinMaxOrigin.CumulativeCut)
    origin.setCumulativeCutLower(CUMULATIVE_CUT[0])
    origin.setCumulativeCutUpper(CUMULATIVE_CUT[1])
    origin.setExtent(QgsRasterMinMaxOrigin.WholeRaster)
    origin.setStatAccuracy(QgsRasterMinMaxOrigin.Estimated)
    renderer.setMinMaxOrigin(origin)
    layer.setRenderer(renderer)
    if style.date:
        temporal = layer.temporalProperties()
        temporal.setMode(QgsRasterLayerTemporalProperties.ModeFixedTemporalRange)
        temporal.setFixedTemporalRange(day_range(style.date))
        temporal.setIsActive(True)


@contextmanager
def _no_aux_xml():
    """GDAL's .aux.xml side files off for the datasets this thread opens meanwhile."""
    if not hasattr(gdal, "SetThreadLocalConfigOption"):  # older bindings: an .aux.xml may appear
        yield
        return
    previous = gdal.GetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "NO")
    try:
        yield
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", previous)


def write_style(style: OutputStyle) -> str:
    """Writes ``style`` as the .qml beside its GeoTIFF (atomically); returns the .qml's path."""
    with _no_aux_xml():
        layer = QgsRasterLayer(style.path, os.path.basename(style.path), "gdal")
        if not layer.isValid():
            raise OSError(f"QGIS cannot open {style.path}")
        apply_style(layer, style)
        doc = QDomDocument()
        error = layer.exportNamedStyle(doc)
        del layer  # closes the file (before anything renames it, on Windows)
    if error:
        raise OSError(error)
    qml = style_path(style.path)
    write_text_atomic(qml, doc.toString())
    return qml


def style_outputs(paths, feedback) -> dict:
    """Computes and writes the style of each GeoTIFF in ``paths`` (after they are complete); returns
    path -> OutputStyle. A style that cannot be made is reported as a warning and left out."""
    styles = {}
    for path in paths:
        try:
            style = OutputStyle.of_file(path)
            write_style(style)
        except (OSError, RuntimeError, ValueError) as e:
            feedback.pushWarning(f"No style file for {os.path.basename(path)}: {e}")
            continue
        styles[path] = style
    return styles


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies an OutputStyle to the layer Processing loads for it (natural colours, temporal range)."""

    def __init__(self, style: OutputStyle):
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback):
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            return
        apply_style(layer, self.style)
        layer.triggerRepaint()


def load_on_completion(context, path: str, output_name: str, style) -> None:
    """Asks Processing to add ``path`` to the project at the end, named after the file, styled by
    ``style`` (an OutputStyle, or None: QGIS's default rendering)."""
    details = QgsProcessingContext.LayerDetails(
        os.path.splitext(os.path.basename(path))[0].replace("_", " "),
        context.project(),
        output_name,
        QgsProcessingUtils.LayerHint.Raster,
    )
    if style is not None:
        _POST_PROCESSORS[path] = StylePostProcessor(style)
        details.setPostProcessor(_POST_PROCESSORS[path])
    context.addLayerToLoadOnCompletion(path, details)
