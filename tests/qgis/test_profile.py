"""The spectral-temporal profile: values at a clicked map point (any CRS), markers, CSV, rendering.

Fixture rasters encode where each value comes from: source*10000 + date*1000 + band*100 + row*10
+ col, so a test can say exactly which value a click must return.
"""

import csv
import os
import shutil

import numpy as np
import pytest
from osgeo import osr

from stsfusion.model.mdd.format import NODATA, Grid, write_mdd_from_arrays
from stsfusion.model.mdd.geotiff import spectral_band_metadata, write_geotiff

W, H = 8, 6
X0, Y0, PX = 370000.0, 5810000.0, 30.0
HS_WL = [450.0, 550.0, 650.0, 750.0, 865.0]
FUSED_DATES = ["2022-05-01", "2022-06-01", "2022-07-01"]
ROLES = {  # role: (code, dates, wavelengths, fwhm)
    "fine_ms": (2, ["2022-05-01", "2022-07-01"], [560.0, 665.0, 865.0], None),
    "dense_ms": (3, ["2022-05-01", "2022-05-15", "2022-06-01", "2022-07-01"], [560.0, 865.0], None),
    "hs": (4, ["2022-05-01", "2022-07-01"], HS_WL, [10.0] * 5),
}


def _srs_wkt(epsg):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


GRID = Grid(_srs_wkt(32633), (X0, PX, 0.0, Y0, 0.0, -PX), W, H)


def coded(source, n_dates, n_bands):
    t, b, r, c = np.meshgrid(np.arange(n_dates), np.arange(n_bands), np.arange(H), np.arange(W), indexing="ij")
    return (source * 10000 + t * 1000 + b * 100 + r * 10 + c).astype(np.float32)


def expected(source, t, b, col, row):
    return source * 10000 + t * 1000 + b * 100 + row * 10 + col


def centre(col, row):
    return X0 + PX * (col + 0.5), Y0 - PX * (row + 0.5)


@pytest.fixture
def series(tmp_path):
    """mdd.json (+ stacks) and fused/fused_<date>.tif naming it; a baseline beside the fused files."""
    roles = {}
    for role, (code, dates, wl, fwhm) in ROLES.items():
        values = coded(code, len(dates), len(wl))
        if role == "hs":
            values[1, :, 2, 3] = np.nan  # HS invalid (cloud) at pixel (3, 2) on its second date
        roles[role] = dict(dates=dates, values=values, wavelengths=wl, fwhm=fwhm)
    manifest = str(tmp_path / "mdd.json")
    write_mdd_from_arrays(manifest, GRID, roles)
    folder = tmp_path / "fused"
    folder.mkdir()
    fused = coded(1, len(FUSED_DATES), len(HS_WL))
    fused[1, :, 0, 0] = NODATA
    for t, date in enumerate(FUSED_DATES):
        write_geotiff(
            str(folder / f"fused_{date}.tif"),
            fused[t],
            GRID,
            nodata=NODATA,
            band_metadata=spectral_band_metadata(HS_WL, [10.0] * 5, {"date": date}),
            metadata={"STSFUSION_MDD": "mdd.json", "ACQUISITION_DATE": date},
        )
    write_geotiff(
        str(folder / "twostage_2022-06-01.tif"),
        coded(9, 1, 5)[0],
        GRID,
        nodata=NODATA,
        band_metadata=spectral_band_metadata(HS_WL),
    )
    return tmp_path


def _fused(series, date="2022-06-01"):
    return str(series / "fused" / f"fused_{date}.tif")


def test_fused_layer_gives_its_whole_series_at_the_clicked_pixel(qgis_app, series):
    from stsfusion.ui.profile_data import ProfileSource

    source = ProfileSource.from_path(_fused(series))
    assert source.kind == "series" and source.name == "fused"
    profile = source.sample(*centre(3, 2), "EPSG:32633")
    assert profile.pixel == (3, 2)
    assert [s.date for s in profile.spectra] == FUSED_DATES  # the baseline file is not part of it
    for t, s in enumerate(profile.spectra):
        assert s.wavelengths == HS_WL
        np.testing.assert_array_equal(s.values, [expected(1, t, b, 3, 2) for b in range(5)])
    # A click near the pixel's corner still falls in that pixel.
    assert source.sample(X0 + PX * 3 + 0.1, Y0 - PX * 2 - 0.1, "EPSG:32633").pixel == (3, 2)


@pytest.mark.parametrize("epsg", [4326, 3857])
def test_click_in_another_crs_reads_the_same_pixel(qgis_app, series, epsg):
    from qgis.core import QgsCoordinateReferenceSystem

    from stsfusion.ui.profile_data import ProfileSource

    # The map point computed independently of QGIS (GDAL/PROJ), in lon/lat order for EPSG:4326.
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromEPSG(32633)
    dst.ImportFromEPSG(epsg)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x, y, _ = osr.CoordinateTransformation(src, dst).TransformPoint(*centre(6, 4))
    source = ProfileSource.from_path(_fused(series))
    for crs in (f"EPSG:{epsg}", QgsCoordinateReferenceSystem(f"EPSG:{epsg}")):
        profile = source.sample(x, y, crs)
        assert profile.pixel == (6, 4)
        np.testing.assert_array_equal(profile.spectra[2].values, [expected(1, 2, b, 6, 4) for b in range(5)])


def test_nodata_is_nan_and_a_click_outside_reads_nothing(qgis_app, series):
    from stsfusion.ui.profile_data import ProfileSource

    source = ProfileSource.from_path(_fused(series))
    profile = source.sample(*centre(0, 0))
    assert np.isnan(profile.spectra[1].values).all()
    assert np.isfinite(profile.spectra[0].values).all()
    outside = source.sample(X0 - 100.0, Y0 + 100.0)
    assert outside.spectra == [] and outside.observed == [] and outside.is_empty
    assert any("outside" in n for n in outside.notes)


def test_fused_layer_finds_its_mdd_and_shows_inputs_at_their_band_centres(qgis_app, series):
    from stsfusion.ui.profile_data import ProfileSource

    source = ProfileSource.from_path(_fused(series))  # the MDD is named by STSFUSION_MDD, one folder up
    assert source.mdd is not None and source.mdd.path == str(series / "mdd.json")
    profile = source.sample(*centre(3, 2))
    assert [(s.series, s.date) for s in profile.observed] == [
        (role, d) for role, (_, dates, _, _) in ROLES.items() for d in dates
    ]
    hs_cloudy = [s for s in profile.observed if s.series == "hs"][1]
    assert np.isnan(hs_cloudy.values).all()

    series_pts, observed = profile.at_wavelength(865.0)
    assert series_pts == [(d, expected(1, t, 4, 3, 2)) for t, d in enumerate(FUSED_DATES)]
    by_role = {}
    for role, date, centre_nm, value in observed:
        by_role.setdefault(role, []).append((date, centre_nm, value))
    assert by_role["fine_ms"] == [
        ("2022-05-01", 865.0, expected(2, 0, 2, 3, 2)),
        ("2022-07-01", 865.0, expected(2, 1, 2, 3, 2)),
    ]
    assert [d for d, _, _ in by_role["dense_ms"]] == ROLES["dense_ms"][1]
    assert by_role["hs"][0] == ("2022-05-01", 865.0, expected(4, 0, 4, 3, 2))
    assert np.isnan(by_role["hs"][1][2])

    # 650 nm: the fine MS 665 nm band covers it; the dense MS bands (560, 865 nm) do not.
    _, observed = profile.at_wavelength(650.0)
    assert {(r, c) for r, _, c, _ in observed} == {("fine_ms", 665.0), ("hs", 650.0)}


def test_mdd_stack_layer_shows_every_role(qgis_app, series):
    from stsfusion.ui.profile_data import ProfileSource

    source = ProfileSource.from_path(str(series / "mdd_dense_ms.tif"))
    assert source.kind == "mdd"
    profile = source.sample(*centre(5, 1))
    assert profile.spectra == [] and profile.pixel == (5, 1)
    assert profile.dates == sorted({d for _, dates, _, _ in ROLES.values() for d in dates})
    dense = [s for s in profile.observed if s.series == "dense_ms"]
    np.testing.assert_array_equal(dense[3].values, [expected(3, 3, b, 5, 1) for b in range(2)])
    assert profile.wavelength_choices() == sorted({560.0, 665.0, 865.0, *HS_WL})


def test_stack_without_manifest_and_single_rasters(qgis_app, series, tmp_path_factory):
    from stsfusion.ui.profile_data import ProfileError, ProfileSource

    other = tmp_path_factory.mktemp("loose")
    shutil.copy(series / "mdd_hs.tif", other / "mdd_hs.tif")  # no manifest beside it
    profile = ProfileSource.from_path(str(other / "mdd_hs.tif")).sample(*centre(1, 1))
    assert [s.date for s in profile.spectra] == ROLES["hs"][1]  # bands grouped by their date
    np.testing.assert_array_equal(profile.spectra[1].values, [expected(4, 1, b, 1, 1) for b in range(5)])

    scene = str(other / "S2A_MSIL2A_20220724T102031_T33UUU.tif")
    microns = [{"wavelength": w, "wavelength_units": "micrometers"} for w in ("0.49", "0.56", "0.665")]
    write_geotiff(scene, coded(5, 1, 3)[0], GRID, band_metadata=microns)
    (s,) = ProfileSource.from_path(scene).sample(*centre(2, 3)).spectra
    assert s.date == "2022-07-24" and s.wavelengths == pytest.approx([490.0, 560.0, 665.0])

    plain = str(other / "plain.tif")
    write_geotiff(plain, coded(6, 1, 3)[0], GRID)
    with pytest.raises(ProfileError, match="no band wavelengths"):
        ProfileSource.from_path(plain)


def test_chosen_manifest_and_csv_export(qgis_app, series, tmp_path_factory):
    from stsfusion.ui.profile_data import ProfileError, ProfileSource, write_csv

    other = tmp_path_factory.mktemp("baseline")
    shutil.copy(series / "fused" / "twostage_2022-06-01.tif", other / "twostage_2022-06-01.tif")
    source = ProfileSource.from_path(str(other / "twostage_2022-06-01.tif"))
    assert source.mdd is None and source.name == "twostage"
    source.set_manifest(str(series / "mdd.json"))
    profile = source.sample(*centre(3, 2))
    assert len(profile.spectra) == 1 and len(profile.observed) == 8
    with pytest.raises(ProfileError, match="does not exist"):
        source.set_manifest(str(series / "absent.json"))

    path = str(other / "profile.csv")
    write_csv(path, profile)
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    assert len(rows) == 5 + sum(len(d) * len(wl) for _, d, wl, _ in ROLES.values())
    first = rows[0]
    assert (first["series"], first["kind"], first["date"], first["wavelength_nm"]) == (
        "twostage",
        "series",
        "2022-06-01",
        "450",
    )
    assert float(first["value"]) == expected(9, 0, 0, 3, 2)
    cloudy = [r for r in rows if r["series"] == "hs" and r["date"] == "2022-07-01"]
    assert len(cloudy) == 5 and all(r["value"] == "" for r in cloudy)
    assert not os.path.exists(path + ".part")


def test_matching_band_uses_fwhm_or_neighbour_spacing():
    from stsfusion.ui.profile_data import matching_band

    assert matching_band([450, 550, 650], [10, 10, 10], 554) == 1
    assert matching_band([450, 550, 650], [10, 10, 10], 556) is None
    assert matching_band([490, 560, 665, 842], None, 580) == 1  # within min(35, 30) nm
    assert matching_band([490, 560, 665, 842], None, 600) is None
    assert matching_band([], None, 600) is None


def test_dock_renders_both_plots(qgis_app, series, tmp_path):
    from qgis.core import QgsPointXY
    from qgis.PyQt.QtGui import QImage

    from stsfusion.ui.profile_dock import ProfileDock

    dock = ProfileDock()
    dock.resize(800, 700)
    dock.show()
    dock.set_source_path(_fused(series))
    profile = dock.show_point(QgsPointXY(*centre(3, 2)), "EPSG:32633")
    assert profile is not None and profile.pixel == (3, 2)
    assert dock.current_wavelength() == 865.0  # near infrared by default
    assert "3 date(s)" in dock.status.text() and "8 observed" in dock.status.text()
    spectrum_ax, time_ax = dock.spectrum_canvas.ax, dock.time_canvas.ax
    assert [t.get_text() for t in spectrum_ax.get_legend().get_texts()][:4] == [
        "2022-05-01",
        "2022-05-15",
        "2022-06-01",
        "2022-07-01",
    ]
    series_line = time_ax.get_lines()[0]
    np.testing.assert_array_equal(series_line.get_ydata(), [expected(1, t, 4, 3, 2) for t in range(3)])
    labels = [t.get_text() for t in time_ax.get_legend().get_texts()]
    assert labels == ["fused 865 nm", "fine MS 865 nm", "dense MS 865 nm", "HS 865 nm"]

    dock.set_wavelength(550.0)
    assert dock.time_canvas.ax.get_title() == "550 nm over time"

    png = os.environ.get("STSFUSION_TEST_PNG") or str(tmp_path / "dock.png")
    assert dock.save_png(png)
    image = QImage(png).convertToFormat(QImage.Format_RGB888)
    assert image.width() >= 700 and image.height() >= 600
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    pixels = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine())
    plots = pixels[image.height() // 3 :, : image.width() * 3]
    assert plots.std() > 20  # curves, axes and text drawn, not a blank canvas
    assert len(np.unique(plots.reshape(-1, 3), axis=0)) > 50  # many colours: the date curves

    csv_path = dock.export_csv(str(tmp_path / "values.csv"))
    assert csv_path and sum(1 for _ in open(csv_path)) == 1 + 3 * 5 + (2 * 3 + 4 * 2 + 2 * 5)
    dock.close()


def test_dock_reports_a_layer_it_cannot_read(qgis_app, tmp_path):
    from stsfusion.ui.profile_dock import ProfileDock

    plain = str(tmp_path / "plain.tif")
    write_geotiff(plain, coded(6, 1, 3)[0], GRID)
    dock = ProfileDock()
    dock.set_source_path(plain)
    assert dock.show_point(centre(1, 1)) is None
    assert "no band wavelengths" in dock.status.text()
    assert not dock.export_button.isEnabled()
    dock.close()


def test_dock_on_an_mdd_stack_plots_inputs_only(qgis_app, series):
    from stsfusion.ui.profile_dock import ProfileDock

    dock = ProfileDock()
    dock.set_source_path(str(series / "mdd_hs.tif"))
    profile = dock.show_point(centre(2, 2))
    assert profile.spectra == [] and len(profile.observed) == 8
    assert dock.current_wavelength() == 865.0
    labels = [t.get_text() for t in dock.time_canvas.ax.get_legend().get_texts()]
    assert labels == ["fine MS 865 nm", "dense MS 865 nm", "HS 865 nm"]
    hs_points = dock.time_canvas.ax.get_lines()[2]
    np.testing.assert_array_equal(hs_points.get_ydata(), [expected(4, t, 4, 2, 2) for t in range(2)])
    dock.close()


def test_dock_on_an_undated_raster_draws_one_spectrum(qgis_app, tmp_path):
    from stsfusion.ui.profile_dock import ProfileDock

    path = str(tmp_path / "scene.tif")
    write_geotiff(path, coded(7, 1, 5)[0], GRID, band_metadata=spectral_band_metadata(HS_WL))
    dock = ProfileDock()
    dock.set_source_path(path)
    profile = dock.show_point(centre(4, 3))
    assert [s.date for s in profile.spectra] == [None]
    np.testing.assert_array_equal(
        dock.spectrum_canvas.ax.get_lines()[0].get_ydata(), [expected(7, 0, b, 4, 3) for b in range(5)]
    )
    assert dock.time_canvas.ax.texts[0].get_text() == "no dated value at this wavelength"
    dock.close()


def test_dock_sees_a_date_added_by_a_new_fusion_run(qgis_app, series):
    from stsfusion.ui.profile_dock import ProfileDock

    dock = ProfileDock()
    dock.set_source_path(_fused(series))
    assert len(dock.show_point(centre(1, 1)).spectra) == 3
    os.utime(series / "fused", ns=(1, 1))  # an mtime surely different from the next write's
    write_geotiff(
        str(series / "fused" / "fused_2022-08-01.tif"),
        coded(1, 4, 5)[3],
        GRID,
        nodata=NODATA,
        band_metadata=spectral_band_metadata(HS_WL, [10.0] * 5),
    )
    profile = dock.show_point(centre(1, 1))
    assert [s.date for s in profile.spectra] == FUSED_DATES + ["2022-08-01"]
    np.testing.assert_array_equal(profile.spectra[3].values, [expected(1, 3, b, 1, 1) for b in range(5)])
    dock.close()


def test_screenshot_script_renders_the_dock(qgis_app, series):
    import subprocess
    import sys

    from qgis.PyQt.QtGui import QImage

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = str(series / "profile.png")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "scripts", "render_profile_screenshot.py"),
            str(series / "fused"),
            "--mdd",
            str(series / "mdd.json"),
            "--out",
            out,
            "--size",
            "700",
            "600",
        ],
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "of 3 fused date(s), 8 observed input image(s), 865 nm over time" in proc.stdout
    image = QImage(out)
    assert (image.width(), image.height()) == (700, 600)
    assert not os.path.exists(out + ".part.png")
