#!/usr/bin/env python3
"""Renders docs/temporal_controller.png: the fused series of a real run on the Temporal Controller.

    source scripts/env.sh
    .venv/bin/python scripts/render_desktop_screenshot.py --out docs/temporal_controller.png

The run is the desktop walkthrough's, as three qgis_process.bin calls on the bundled sample
(resources/sample; the calls of scripts/demo.sh): Build MDD stack, Train fusion model (--epochs,
default 3, without the self-check: the figure is about QGIS, not accuracy), Fuse time series, into a
temporary folder (or --work DIR, kept). The fused GeoTIFFs are then loaded as Fuse leaves them in a
desktop project: styled by its post-processor (algorithms/styles.py), natural colours and the date as
a fixed temporal range.

The figure, rendered offscreen: QGIS's own Temporal Controller panel (QgsTemporalControllerWidget),
set to the project's range, animated, one frame per source timestamp; below it map frames rendered
with the controller's frame ranges (QgsMapSettings.setTemporalRange, QgsMapRendererParallelJob).
Every frame renders all fused layers: the temporal range alone picks the one of that date.
--skip-run renders the fused folder an earlier run left in --work DIR.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, ".build", "plugins")
SAMPLE = os.path.join(ROOT, "resources", "sample")
ROLES = (("FINE_MS", "fine_ms"), ("DENSE_MS", "dense_ms"), ("HS", "hs"))


def _plugin_link():
    os.makedirs(PLUGINS, exist_ok=True)
    if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):
        os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))


def _qgis_process_env():
    """scripts/env.sh's environment: headless Qt, the plugin link, the venv's torch."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=PLUGINS)
    site = sorted(glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages")))
    env["PYTHONPATH"] = os.pathsep.join(site[:1] + [p for p in [env.get("PYTHONPATH", "")] if p])
    return env


def _step(label, *args):
    exe = shutil.which("qgis_process.bin")
    if exe is None:
        raise SystemExit("qgis_process.bin is not installed: run `make setup`.")
    print(f"== {label}", flush=True)
    proc = subprocess.run([exe, "--json", "run", *args], env=_qgis_process_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout[proc.stdout.find("{") :])["results"]


def run_pipeline(work, epochs):
    """Build MDD stack, Train fusion model, Fuse time series on the sample; returns (fused folder, MDD)."""
    subprocess.run(
        [shutil.which("qgis_process.bin") or "qgis_process.bin", "plugins", "enable", "stsfusion"],
        env=_qgis_process_env(),
        capture_output=True,
    )
    inputs = [
        f"{key}={path}" for key, prefix in ROLES for path in sorted(glob.glob(os.path.join(SAMPLE, f"{prefix}_*.tif")))
    ]
    if not inputs:
        raise SystemExit(f"No sample rasters in {SAMPLE}: regenerate them with scripts/make_sample.py.")
    mdd, model, fused = (os.path.join(work, n) for n in ("sample_mdd.json", "sample_model.pt", "fused"))
    _step("Build MDD stack", "stsfusion:buildmdd", "--", *inputs, f"OUTPUT={mdd}")
    _step(
        "Train fusion model",
        "stsfusion:train",
        "--",
        f"MDD={mdd}",
        f"EPOCHS={epochs}",
        "SELF_CHECK=false",
        f"OUTPUT_MODEL={model}",
    )
    _step("Fuse time series", "stsfusion:fuse", "--", f"MDD={mdd}", f"MODEL={model}", f"OUTPUT_FOLDER={fused}")
    return fused, mdd


def load_layers(paths):
    """The fused GeoTIFFs as raster layers styled as Fuse time series leaves them in the project:
    Processing's post-processor (algorithms/styles.py) gives each its natural colours and its date as
    a fixed temporal range. Without that module: the .qml beside the file, else a fixed range set
    here. Returns (layers, how they got their range)."""
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsRasterLayer

    try:
        from stsfusion.algorithms.styles import OutputStyle, StylePostProcessor
    except ImportError:
        OutputStyle = StylePostProcessor = None
    layers, how = [], set()
    for path in paths:
        layer = QgsRasterLayer(path, os.path.splitext(os.path.basename(path))[0].replace("_", " "))
        if not layer.isValid():
            raise SystemExit(f"QGIS cannot open {path}")
        if StylePostProcessor is not None:
            StylePostProcessor(OutputStyle.of_file(path)).postProcessLayer(
                layer, QgsProcessingContext(), QgsProcessingFeedback()
            )
            how.add("Fuse's post-processor, algorithms/styles.py")
        else:
            layer.loadDefaultStyle()  # the .qml beside the GeoTIFF (QGIS 3.22 skips its temporal part on open)
            how.add("the .qml beside each file")
        if not layer.temporalProperties().isActive():
            _set_day(layer, layer.name()[-10:])
            how.add("a fixed temporal range set by this script")
        layers.append(layer)
    return layers, ", ".join(sorted(how))


def _set_day(layer, date):
    """The fixed temporal range of the whole day ``date`` (UTC), as algorithms/styles.py sets it."""
    from qgis.core import QgsDateTimeRange, QgsRasterLayerTemporalProperties
    from qgis.PyQt.QtCore import QDate, QDateTime, Qt, QTime

    day = QDate.fromString(date, "yyyy-MM-dd")
    props = layer.temporalProperties()
    props.setMode(QgsRasterLayerTemporalProperties.ModeFixedTemporalRange)
    props.setFixedTemporalRange(
        QgsDateTimeRange(QDateTime(day, QTime(0, 0), Qt.UTC), QDateTime(day, QTime(23, 59, 59), Qt.UTC))
    )
    props.setIsActive(True)


def temporal_controller(layers):
    """QGIS's Temporal Controller panel on the project's layers: animated, the project's range, one
    frame per source timestamp (the fused dates)."""
    from qgis.core import QgsProject, QgsUnitTypes
    from qgis.gui import QgsTemporalControllerWidget
    from qgis.PyQt.QtWidgets import QComboBox, QToolButton

    QgsProject.instance().addMapLayers(layers)
    widget = QgsTemporalControllerWidget()
    widget.resize(1000, 104)
    widget.show()
    widget.findChild(QToolButton, "mNavigationAnimated").click()
    combo = widget.findChild(QComboBox, "mTimeStepsComboBox")
    combo.setCurrentIndex(combo.findData(QgsUnitTypes.TemporalIrregularStep))  # "source timestamps"
    combo.setMinimumWidth(combo.sizeHint().width() + 8)  # its whole text readable in the figure
    widget.findChild(QToolButton, "mSetRangeButton").click()  # set to the project's full range
    nav = widget.temporalController()
    if nav.totalFrameCount() != len(layers):
        raise SystemExit(
            f"The Temporal Controller has {nav.totalFrameCount()} frames for {len(layers)} dated layers: "
            "one frame per fused date was expected."
        )
    return widget, nav


def render_frame(layers, time_range, size):
    """All ``layers`` rendered for ``time_range``, as the map canvas does during the animation."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[0].crs())
    extent = layers[0].extent()
    settings.setExtent(extent)
    settings.setOutputSize(QSize(size, round(size * extent.height() / extent.width())))
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setIsTemporal(True)
    settings.setTemporalRange(time_range)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def compose(widget_image, frames, out, hs_dates, current, count):
    """The panel above a row of frames, each labelled with its date, the panel's current frame
    outlined; written as a PNG."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter, QPen

    pad, label_h = 12, 40
    tile_w, tile_h = frames[0][2].width(), frames[0][2].height()
    width = max(widget_image.width(), len(frames) * tile_w + (len(frames) - 1) * pad) + 2 * pad
    height = pad + widget_image.height() + pad + tile_h + label_h + pad
    image = QImage(width, height, QImage.Format_RGB32)
    image.fill(QColor(255, 255, 255))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.setRenderHint(QPainter.TextAntialiasing)
    painter.drawImage(pad, pad, widget_image)
    top = pad + widget_image.height() + pad
    left = (width - (len(frames) * tile_w + (len(frames) - 1) * pad)) // 2
    bold, small = QFont(), QFont()
    bold.setPixelSize(15)
    bold.setBold(True)
    small.setPixelSize(12)
    for i, (number, date, tile) in enumerate(frames):
        x = left + i * (tile_w + pad)
        painter.drawImage(x, top, tile)
        if number == current:  # the frame the panel shows: outlined in the slider's blue
            painter.setPen(QPen(QColor(38, 120, 200), 4))
            painter.drawRect(x - 2, top - 2, tile_w + 3, tile_h + 3)
        else:
            painter.setPen(QPen(QColor(120, 120, 120), 1))
            painter.drawRect(x, top, tile_w - 1, tile_h - 1)
        painter.setPen(QColor(20, 20, 20))
        painter.setFont(bold)
        painter.drawText(QRect(x, top + tile_h + 2, tile_w, 20), Qt.AlignHCenter | Qt.AlignVCenter, date)
        painter.setFont(small)
        painter.setPen(QColor(90, 90, 90))
        note = "HS image that day" if date in hs_dates else "no HS image that day"
        painter.drawText(
            QRect(x, top + tile_h + 21, tile_w, 17),
            Qt.AlignHCenter | Qt.AlignVCenter,
            f"frame {number}/{count} · {note}",
        )
    painter.end()
    tmp = out + ".part.png"
    if not image.save(tmp, "PNG", 0):  # PNG quality 0: the strongest zlib compression (lossless anyway)
        raise SystemExit(f"Could not write {out}")
    os.replace(tmp, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "temporal_controller.png"), help="PNG to write")
    ap.add_argument("--work", help="folder for the run's outputs, kept (default: a temporary folder, removed)")
    ap.add_argument("--skip-run", action="store_true", help="render the fused folder an earlier run left in --work")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    ap.add_argument("--frames", type=int, default=4, help="map frames shown (default 4, spread over the dates)")
    ap.add_argument("--tile", type=int, default=228, help="map frame width in pixels (default 228)")
    args = ap.parse_args(argv)
    if args.skip_run and not args.work:
        raise SystemExit("--skip-run needs --work DIR (the folder of an earlier run).")

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    _plugin_link()
    sys.path.insert(0, PLUGINS)
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="stsfusion-screenshot-")
    os.makedirs(work, exist_ok=True)
    try:
        if args.skip_run:
            fused, mdd = os.path.join(work, "fused"), os.path.join(work, "sample_mdd.json")
        else:
            fused, mdd = run_pipeline(work, args.epochs)
        paths = sorted(glob.glob(os.path.join(fused, "fused_????-??-??.tif")))
        if not paths:
            raise SystemExit(f"No fused_YYYY-MM-DD.tif in {fused}.")
        with open(mdd, encoding="utf-8") as f:
            hs_dates = set(json.load(f)["roles"]["hs"]["dates"])

        from qgis.core import QgsApplication, QgsProject

        app = QgsApplication([], True)
        app.initQgis()
        layers, how = load_layers(paths)
        widget, nav = temporal_controller(layers)
        count = nav.totalFrameCount()
        n = min(args.frames, count)
        picks = sorted({round(i * (count - 1) / max(n - 1, 1)) for i in range(n)})
        frames = []
        for k in picks:
            time_range = nav.dateTimeRangeForFrameNumber(k)
            frames.append(
                (k + 1, time_range.begin().date().toString("yyyy-MM-dd"), render_frame(layers, time_range, args.tile))
            )
        current = picks[1] if len(picks) > 1 else picks[0]
        nav.setCurrentFrameNumber(current)  # the panel shows one of the frames drawn below
        app.processEvents()
        compose(widget.grab().toImage(), frames, args.out, hs_dates, current + 1, count)
        print(
            f"{args.out}: {os.path.getsize(args.out) / 1024:.0f} KiB; {len(paths)} fused layers ({how}); "
            f"{count} frames on the Temporal Controller; shown: {', '.join(d for _, d, _ in frames)}"
        )
        widget.close()
        del widget
        QgsProject.instance().removeAllMapLayers()
        app.exitQgis()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
