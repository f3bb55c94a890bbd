"""QGIS conventions: help links to README sections, Toolbox groups, one icon per algorithm, tr()
texts, the model chain in the provider, and the outputs' style (natural colours, the date as a fixed
temporal range for the Temporal Controller) through the post-processor and the .qml beside each
GeoTIFF."""

import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from helpers.assess import HS_WAVELENGTHS, hs_cube, utm_grid, write_hs_int16
from helpers.paths import ROOT

pytestmark = pytest.mark.usefixtures("qgis_app")

GROUP_NAMES = {"Prepare", "Model", "Evaluate"}
CHAIN_ID = "stsfusion:STS Fusion chain"  # the provider's id + the model name stored in the .model3
OWNED_BY_DEVICE_OPTIONS = {"DEVICE", "THREADS"}  # parameters whose labels are not translated (yet)


def _homepage():
    with open(os.path.join(ROOT, "metadata.txt"), encoding="utf-8") as f:
        return re.search(r"^homepage=(.+)$", f.read(), re.M).group(1).strip().rstrip("/")


def _readme_anchors():
    """The anchors GitHub makes of README.md's headings (code blocks left out): the heading's text in
    lower case, characters other than letters, digits, spaces, '-' and '_' dropped, spaces -> '-';
    a repeated anchor gets -1, -2, ..."""
    anchors, seen, fence = set(), {}, False
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        for line in f:
            if line.lstrip().startswith("```"):
                fence = not fence
            m = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            anchor = "".join(c for c in m.group(1).lower() if c.isalnum() or c in " -_").replace(" ", "-")
            n = seen.get(anchor, 0)
            seen[anchor] = n + 1
            anchors.add(anchor if n == 0 else f"{anchor}-{n}")
    return anchors


def _algorithms():
    from qgis.core import QgsApplication

    from stsfusion.algorithms.base import STSFusionAlgorithm

    provider = QgsApplication.processingRegistry().providerById("stsfusion")
    algs = [a for a in provider.algorithms() if isinstance(a, STSFusionAlgorithm)]
    assert {a.name() for a in algs} >= {"buildmdd", "train", "fuse", "assess", "simulate", "baseline"}
    return algs


def test_help_urls_point_to_readme_sections():
    homepage, anchors = _homepage(), _readme_anchors()
    assert "build-mdd-stack-stsfusionbuildmdd" in anchors  # the GitHub rule, on a known heading
    for alg in _algorithms():
        url = alg.helpUrl()
        assert url.startswith(homepage + "#"), (alg.name(), url)
        assert url.split("#", 1)[1] in anchors, f"{alg.name()}: {url} names no README heading"


def test_groups_and_icons():
    from qgis.PyQt.QtSvg import QSvgRenderer

    from stsfusion.algorithms.base import ALGORITHM_GROUPS, icon_path

    groups = {}
    for alg in _algorithms():
        assert alg.group() in GROUP_NAMES and alg.groupId() == alg.group().lower(), alg.name()
        groups.setdefault(alg.group(), set()).add(alg.name())
        path = alg.svgIconPath()
        assert path == icon_path(alg.name()) and os.path.isfile(path), alg.name()
        assert not alg.icon().isNull()
    assert groups["Prepare"] >= {"buildmdd", "simulate"} and groups["Evaluate"] >= {"assess"}
    assert groups["Model"] >= {"train", "fuse", "baseline"}
    for name in ALGORITHM_GROUPS:  # the icons of algorithms the provider may not list here too
        root = ET.parse(icon_path(name)).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", name
        assert QSvgRenderer(icon_path(name)).isValid(), name


def test_user_texts_go_through_tr():
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QCoreApplication, QTranslator

    class Marking(QTranslator):  # "text" -> "§text" for the plugin's context
        def translate(self, context, text, disambiguation=None, n=-1):
            return "§" + text if context == "STSFusion" else ""

        def isEmpty(self):
            return False

    translator = Marking()
    QCoreApplication.installTranslator(translator)
    try:
        provider = QgsApplication.processingRegistry().providerById("stsfusion")
        assert provider.name().startswith("§") and provider.longName().startswith("§")
        for alg in _algorithms():
            fresh = alg.create()  # initAlgorithm runs again, under the translator
            texts = {"display name": fresh.displayName(), "group": fresh.group(), "help": fresh.shortHelpString()}
            for d in fresh.parameterDefinitions():
                if d.name() not in OWNED_BY_DEVICE_OPTIONS:
                    texts[d.name()] = d.description()
            for d in fresh.outputDefinitions():
                if d.description() != d.name():  # e.g. assess's metric outputs are named by their id
                    texts["output " + d.name()] = d.description()
            untranslated = [k for k, v in texts.items() if not v.startswith("§")]
            assert not untranslated, f"{alg.name()}: {untranslated} not through tr()"
    finally:
        QCoreApplication.removeTranslator(translator)


def test_the_model_chain_is_in_the_provider():
    from qgis.core import QgsApplication

    chain = QgsApplication.processingRegistry().algorithmById(CHAIN_ID)
    assert chain is not None and chain.provider().id() == "stsfusion"
    assert chain.groupId() == ""  # at the top of the provider, beside the three groups
    names = {d.name() for d in chain.parameterDefinitions()}
    # its steps' outputs are there too: the chain was completed once the provider was registered
    assert {"FINE_MS", "DENSE_MS", "HS", "EPOCHS", "buildmdd:MDD", "train:MODEL", "fuse:FUSED_FOLDER"} <= names


def test_day_range_is_the_whole_day_in_utc():
    from qgis.PyQt.QtCore import QDate, QDateTime, Qt, QTime

    from stsfusion.algorithms.styles import day_range, output_date

    r = day_range("2022-05-15")
    assert r.begin() == QDateTime(QDate(2022, 5, 15), QTime(0, 0, 0), Qt.UTC)
    assert r.end() == QDateTime(QDate(2022, 5, 15), QTime(23, 59, 59), Qt.UTC)
    assert r.includeBeginning() and r.includeEnd() and not r.overlaps(day_range("2022-05-16"))
    assert output_date("/x/two_stage_2022-05-15.tif") == "2022-05-15" and output_date("/x/fused_2022-13-45.tif") is None


def _check_style(tif, date, bands=None, context=None, details=None):
    """The .qml beside ``tif`` (and the post-processor, if given) show the natural colours and the
    date as a fixed temporal range; returns the renderer's bands."""
    from qgis.core import (
        QgsMultiBandColorRenderer,
        QgsProcessingFeedback,
        QgsRasterLayer,
        QgsRasterLayerTemporalProperties,
    )

    from stsfusion.algorithms.styles import day_range

    qml = os.path.splitext(tif)[0] + ".qml"
    assert os.path.isfile(qml), f"no {qml}"
    temporal = ET.parse(qml).getroot().find("temporal")
    assert temporal is not None and temporal.get("enabled") == "1"
    assert temporal.find("fixedRange/start").text == f"{date}T00:00:00Z"
    layers = {}
    by_hand = QgsRasterLayer(tif, "by hand")  # as a user adds the file: QGIS loads the .qml beside it
    assert by_hand.loadDefaultStyle()[1]
    layers["qml"] = by_hand
    if details is not None:
        loaded = QgsRasterLayer(tif, details.name)
        details.postProcessor().postProcessLayer(loaded, context, QgsProcessingFeedback())
        layers["post-processor"] = loaded
    seen = []
    for how, layer in layers.items():
        props = layer.temporalProperties()
        assert props.isActive() and props.mode() == QgsRasterLayerTemporalProperties.ModeFixedTemporalRange, how
        assert props.fixedTemporalRange() == day_range(date), how
        assert props.fixedTemporalRange().begin().date().toString("yyyy-MM-dd") == date
        renderer = layer.renderer()
        assert isinstance(renderer, QgsMultiBandColorRenderer), how
        red = renderer.redContrastEnhancement()
        assert red.minimumValue() < red.maximumValue(), how
        seen.append(((renderer.redBand(), renderer.greenBand(), renderer.blueBand()), red.minimumValue()))
    # the same bands and stretch either way (the .qml keeps about 6 significant digits)
    assert all(b == seen[0][0] and np.isclose(low, seen[0][1], rtol=1e-5) for b, low in seen), seen
    if bands is not None:
        assert seen[0][0] == bands
    return seen[0]


@pytest.mark.slow
def test_fused_layers_get_their_date_and_a_qml(tmp_path_factory, tmp_path):
    import processing
    from helpers.predictor import trained_tiny_model
    from osgeo import gdal
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    manifest, model = trained_tiny_model(tmp_path_factory.mktemp("conventions"))
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    out = tmp_path / "fused"
    res = processing.run(
        "stsfusion:fuse",
        {"MDD": manifest, "MODEL": model, "DATES": "2022-05-15", "DEVICE": "cpu", "OUTPUT_FOLDER": str(out)},
        context=context,
        feedback=QgsProcessingFeedback(),
    )
    tif = str(out / "fused_2022-05-15.tif")
    assert res["OUTPUT_LAYERS"] == [tif]
    assert sorted(os.listdir(out)) == ["fused_2022-05-15.qml", "fused_2022-05-15.tif"]  # no .aux.xml, no .part
    details = context.layersToLoadOnCompletion()[tif]
    # tiny MDD bands every 50.77 nm from 420 nm: nearest 650 is 673.8 (6), 560 is 572.3 (4), 480 is 470.8 (2)
    _, red_low = _check_style(tif, "2022-05-15", (6, 4, 2), context, details)
    ds = gdal.Open(tif)  # keep the dataset alive while its band is read
    band6 = ds.GetRasterBand(6).ReadAsArray()
    assert np.isclose(red_low, np.percentile(band6[band6 != -9999], 2), rtol=1e-5)  # the 2-98 % stretch


def test_simulated_and_baseline_outputs_are_styled(tmp_path):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    from stsfusion.model.mdd.format import write_mdd_from_arrays

    dates = ["2022-05-01", "2022-05-21"]
    grid = utm_grid(24, 24)
    hs = [write_hs_int16(str(tmp_path / f"truth_{d}.tif"), hs_cube(i, 24, 24), grid) for i, d in enumerate(dates)]
    sim = processing.run(
        "stsfusion:simulate",
        {"INPUT": hs, "FINE_MS_SENSOR": "sentinel2_msi_10m", "OUTPUT_FOLDER": str(tmp_path / "sim")},
    )
    assert len(sim["OUTPUT_LAYERS"]) == 6
    for path in sim["OUTPUT_LAYERS"]:
        _check_style(path, re.search(r"\d{4}-\d{2}-\d{2}", os.path.basename(path)).group(0))
    # Sentinel-2 10 m bands B2, B3, B4, B8 (490/560/665/842 nm): red B4, green B3, blue B2
    assert _check_style(sim["FINE_MS_LAYERS"][0], dates[0])[0] == (3, 2, 1)

    cube = np.stack([hs_cube(i, 24, 24) for i in range(len(dates))])
    mdd = write_mdd_from_arrays(
        str(tmp_path / "m.json"),
        grid,
        {
            "fine_ms": dict(dates=dates, values=cube[:, :4], wavelengths=[490.0, 560.0, 665.0, 842.0]),
            "dense_ms": dict(dates=dates, values=cube[:, :4], wavelengths=[490.0, 560.0, 665.0, 842.0]),
            "hs": dict(dates=dates, values=cube, wavelengths=list(HS_WAVELENGTHS)),
        },
    )
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    out = processing.run(
        "stsfusion:baseline",
        {"MDD": mdd.path, "METHOD": "interpolation", "DATES": dates[1], "OUTPUT_FOLDER": str(tmp_path / "b")},
        context=context,
        feedback=QgsProcessingFeedback(),
    )
    tif = out["OUTPUT_LAYERS"][0]
    assert sorted(os.listdir(tmp_path / "b")) == [f"interpolation_{dates[1]}.qml", f"interpolation_{dates[1]}.tif"]
    _check_style(tif, dates[1], context=context, details=context.layersToLoadOnCompletion()[tif])
