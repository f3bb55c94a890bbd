"""Tiled inference with a window-independent stand-in model: tiles, halos, seams, nodata, memory,
cancel and failure (no partial GeoTIFF), date selection, int16 output, passes and resuming."""

import numpy as np
import pytest
from helpers.predictor import DATES, HS_WAVELENGTHS, ConvPredictor, make_mdd
from osgeo import gdal

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.core.vocabulary import DateError, parse_date_list
from stsfusion.model.fusion.fuse import OutputFormat, fuse_with_predictor, int16_scale, rgb_band_indices
from stsfusion.model.fusion.tiling import FusionError, expand_window, requested_dates, select_dates, tile_windows
from stsfusion.model.mdd.format import MDD, NODATA


def _read(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray().astype(np.float32)


def test_tiles_cover_the_grid_once_and_the_last_reach_the_edge():
    tiles = tile_windows(37, 29, 16)
    assert len(tiles) == 3 * 2
    cover = np.zeros((29, 37), dtype=int)
    for x, y, w, h in tiles:
        cover[y : y + h, x : x + w] += 1
    assert (cover == 1).all()
    assert tiles[-1] == (32, 16, 5, 13)
    assert tile_windows(32, 32, 16)[-1] == (16, 16, 16, 16)
    with pytest.raises(FusionError):
        tile_windows(10, 10, 0)


def test_halo_is_shifted_inward_at_the_edge_and_the_crop_gives_the_tile_back():
    # at the top-left corner the window keeps its 16 + 2*3 px, all of them right of / below the tile
    assert expand_window((0, 0, 16, 16), 3, 37, 29) == ((0, 0, 22, 22), (slice(0, 16), slice(0, 16)))
    window, crop = expand_window((16, 16, 16, 13), 3, 37, 29)
    assert window == (13, 10, 22, 19)  # 3 px each side across; up by 6 px where the bottom edge stops it
    assert crop == (slice(6, 19), slice(3, 19))
    a = np.arange(29 * 37).reshape(29, 37)
    x, y, w, h = window
    np.testing.assert_array_equal(a[y : y + h, x : x + w][crop], a[16:29, 16:32])
    # every full tile of a grid gets one window shape; a grid smaller than that is taken whole
    shapes = {expand_window(t, 5, 64, 48)[0][2:] for t in [(0, 0, 16, 16), (48, 32, 16, 16), (16, 16, 16, 16)]}
    assert shapes == {(26, 26)}
    assert expand_window((0, 0, 8, 8), 5, 12, 10) == ((0, 0, 12, 10), (slice(0, 8), slice(0, 8)))


def test_seams_tiled_output_equals_one_tile_output(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    one = fuse_with_predictor(mdd, ConvPredictor(), str(tmp_path / "one"), DATES, tile_size=64)
    tiled = fuse_with_predictor(mdd, ConvPredictor(), str(tmp_path / "tiled"), DATES, tile_size=16)
    for a, b in zip(one, tiled):
        np.testing.assert_array_equal(_read(b), _read(a))  # bit for bit: same context, same sums
    # Without the halo the borders of interior tiles are wrong: the seam test can fail.
    no_halo = ConvPredictor(halo=0)
    bad = fuse_with_predictor(mdd, no_halo, str(tmp_path / "bad"), DATES[:1], tile_size=16)
    diff = np.abs(_read(bad[0]) - _read(one[0])).max(axis=0)
    assert diff[15:17, 20].max() > 1e-3 and diff[5, 5] < 1e-6


def test_outputs_grid_bands_wavelengths_nodata(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    paths = fuse_with_predictor(mdd, ConvPredictor(), str(tmp_path / "out"), DATES, tile_size=16)
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"fused_{d}.tif" for d in DATES]
    ds = gdal.Open(paths[1])
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (37, 29, len(HS_WAVELENGTHS))
    assert ds.GetGeoTransform() == mdd.grid.geotransform
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32633"
    b5 = ds.GetRasterBand(5)
    assert b5.GetMetadataItem("wavelength") == "650" and b5.GetMetadataItem("wavelength_units") == "nm"
    assert b5.GetMetadataItem("fwhm") == "10" and b5.GetDescription() == "650 nm"
    assert b5.GetNoDataValue() == NODATA and b5.GetBlockSize() == [256, 256]
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
    assert ds.GetMetadataItem("ACQUISITION_DATE") == DATES[1]
    data = ds.ReadAsArray()
    assert (data[:, :3, :4] == NODATA).all()  # invalid in every role on every date
    assert (data[:, 3:, :] != NODATA).all() and (data[:, :, 4:] != NODATA).all()
    assert np.isfinite(data[:, 10, 10]).all() and data[0, 10, 10] != NODATA  # one role only
    assert not list((tmp_path / "out").glob("*.part*"))


def test_reads_and_predictions_are_window_sized(tmp_path, monkeypatch):
    mdd = make_mdd(tmp_path / "m.json", width=64, height=48)
    reads = []
    for name in ("read", "read_mask"):
        original = getattr(mdd, name)

        def recording(role, window=None, dates=None, _original=original):
            assert window is not None, "a whole-raster read"
            reads.append(window)
            return _original(role, window, dates)

        monkeypatch.setattr(mdd, name, recording)
    p = ConvPredictor()
    fuse_with_predictor(mdd, p, str(tmp_path / "out"), DATES[:2], tile_size=16)
    limit = 16 + 2 * p.halo
    assert len(p.windows) == 12 * 2
    assert max(w[2] for w in reads) <= limit and max(w[3] for w in reads) <= limit
    assert max(w[2] * w[3] for w in p.windows) <= limit * limit


def test_progress_per_tile_and_cancel_leaves_nothing(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fused_2022-05-01.tif").write_bytes(b"earlier run")  # must survive a canceled run
    calls = []
    with pytest.raises(Canceled):
        fuse_with_predictor(
            mdd,
            ConvPredictor(),
            str(out),
            DATES,
            tile_size=16,
            callbacks=Callbacks(progress=lambda f, m: calls.append(f), is_canceled=lambda: len(calls) >= 3),
        )
    assert calls == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert sorted(p.name for p in out.iterdir()) == ["fused_2022-05-01.tif"]
    assert (out / "fused_2022-05-01.tif").read_bytes() == b"earlier run"


def test_a_failing_model_leaves_no_file(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")

    class Broken(ConvPredictor):
        def predict(self, mdd, window, date, crop=None):
            if len(self.windows) == 4:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return super().predict(mdd, window, date, crop)

    with pytest.raises(RuntimeError, match="illegal memory access"):
        fuse_with_predictor(mdd, Broken(), str(tmp_path / "out"), DATES, tile_size=16)
    assert list((tmp_path / "out").iterdir()) == []


def test_date_parsing_and_selection(tmp_path):
    mdd = make_mdd(tmp_path / "m.json", width=8, height=8, dead_corner=False)
    assert parse_date_list("") is None and parse_date_list(None) is None
    assert parse_date_list(" 2022-07-01; 2022-05-01,2022-07-01 ") == ["2022-07-01", "2022-05-01"]
    assert select_dates(mdd, None) == DATES
    assert select_dates(mdd, ["2022-07-01", "2022-05-01"]) == ["2022-05-01", "2022-07-01"]
    with pytest.raises(FusionError, match="no date 2023-01-01; its dates are 2022-05-01, 2022-06-01"):
        select_dates(mdd, ["2023-01-01"])
    with pytest.raises(DateError, match="YYYY-MM-DD.*'1/5/2022'"):
        parse_date_list("1/5/2022")
    # a fusion run asked for dates: text or list, checked against the MDD; bad text is a FusionError
    assert requested_dates(mdd, "2022-07-01,2022-05-01") == ["2022-05-01", "2022-07-01"]
    assert requested_dates(mdd, "") == DATES
    with pytest.raises(FusionError, match="YYYY-MM-DD.*'1/5/2022'"):
        requested_dates(mdd, "1/5/2022")


def test_rgb_bands_follow_the_wavelengths():
    assert rgb_band_indices(HS_WAVELENGTHS) == (5, 3, 2)  # 650, 560, 480 nm
    enmap_like = np.linspace(420, 2440, 224)
    r, g, b = rgb_band_indices(enmap_like)
    assert abs(enmap_like[r - 1] - 650) < 6 and abs(enmap_like[b - 1] - 480) < 6
    assert rgb_band_indices([1000, 1500, 2000, 2200]) == (4, 2, 1)  # no visible bands: spread
    assert rgb_band_indices([700]) == (1, 1, 1)


# ---- the same checks with a real model trained on the tiny synthetic MDD ----------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from helpers.predictor import trained_tiny_model

    return trained_tiny_model(tmp_path_factory.mktemp("real"))


@pytest.mark.slow
def test_real_model_tiles_without_seams_and_window_sized_reads(real, tmp_path, monkeypatch):
    from stsfusion.model.fusion.fuse import fuse_time_series
    from stsfusion.model.nn import predictor as predictor_module

    manifest, model = real
    dates = ["2022-03-26", "2022-05-15"]  # no fine MS, no HS: the model predicts from dense MS
    one = fuse_time_series(manifest, model, str(tmp_path / "one"), dates, tile_size=64, device="cpu")
    windows = []
    original = predictor_module.FusionPredictor.predict

    def recording(self, mdd, window, date, crop=None):
        windows.append(window)
        return original(self, mdd, window, date, crop)

    monkeypatch.setattr(predictor_module.FusionPredictor, "predict", recording)
    tiled = fuse_time_series(manifest, model, str(tmp_path / "tiled"), ",".join(dates), tile_size=16, device="cpu")
    for a, b in zip(one, tiled):
        np.testing.assert_allclose(_read(b), _read(a), rtol=0, atol=1e-5)
    halo = predictor_module.load_predictor(model, "cpu").halo
    grid = MDD.open(manifest).grid
    assert len(windows) == 9 * 2
    assert max(max(w[2], w[3]) for w in windows) == min(16 + 2 * halo, max(grid.width, grid.height))
    # An HS date (its own map's detail step, which needs the extra halo) tiles without seams too.
    hs_date = MDD.open(manifest).roles["hs"].dates[0]
    a = fuse_time_series(manifest, model, str(tmp_path / "hs64"), hs_date, tile_size=64, device="cpu")[0]
    b = fuse_time_series(manifest, model, str(tmp_path / "hs16"), hs_date, tile_size=16, device="cpu")[0]
    np.testing.assert_allclose(_read(b), _read(a), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_real_model_outputs_match_the_mdd_and_approach_the_truth(real, tmp_path):
    from helpers.mdd import truth_path

    from stsfusion.model.fusion.fuse import fuse_time_series
    from stsfusion.model.mdd.format import MDD

    manifest, model = real
    mdd = MDD.open(manifest)
    paths = fuse_time_series(manifest, model, str(tmp_path), "2022-05-15", device="cpu")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["fused_2022-05-15.tif"]
    ds = gdal.Open(paths[0])
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (48, 48, 40)
    assert ds.GetGeoTransform() == mdd.grid.geotransform
    wl = [float(ds.GetRasterBand(b + 1).GetMetadataItem("wavelength")) for b in range(40)]
    np.testing.assert_allclose(wl, mdd.roles["hs"].wavelengths, atol=0.01)  # written with 6 digits
    fused = ds.ReadAsArray()
    truth = np.load(truth_path(manifest))[mdd.dates.index("2022-05-15")]
    assert (fused != NODATA).all()
    rmse = float(np.sqrt(np.mean((fused - truth) ** 2)))
    assert rmse < 0.1 * float(truth.mean())  # measured 0.011 (6 % of the mean) after 1 epoch


@pytest.mark.slow
def test_real_model_refuses_another_mdd_naming_what_differs(real, tmp_path):
    from helpers.mdd import make_tiny_mdd

    from stsfusion.model.fusion.fuse import fuse_time_series
    from stsfusion.model.nn.predictor import ModelError

    other = make_tiny_mdd(tmp_path, n_hs=30, name="other")
    with pytest.raises(ModelError, match="HS has 30 bands, the model was trained on 40"):
        fuse_time_series(other, real[1], str(tmp_path / "out"), device="cpu")
    assert not (tmp_path / "out").exists()


def test_int16_output_holds_the_float_values_at_its_scale(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    floats = fuse_with_predictor(mdd, ConvPredictor(), str(tmp_path / "f"), DATES[:1], tile_size=16)
    fmt = OutputFormat("int16", "ZSTD", scale=1e-3)
    ints = fuse_with_predictor(mdd, ConvPredictor(), str(tmp_path / "i"), DATES[:1], tile_size=16, output_format=fmt)
    ds = gdal.Open(ints[0])
    band = ds.GetRasterBand(3)
    assert band.DataType == gdal.GDT_Int16 and band.GetNoDataValue() == -32768
    assert band.GetScale() == pytest.approx(1e-3) and band.GetOffset() == 0
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "ZSTD"
    raw = ds.ReadAsArray()
    ref = _read(floats[0])
    assert ((raw == -32768) == (ref == NODATA)).all()  # the same pixels are nodata
    valid = ref != NODATA
    assert np.abs(raw[valid] * 1e-3 - ref[valid]).max() <= 0.5e-3 + 1e-6  # rounded to the scale
    assert not list((tmp_path / "i").glob("*.partial"))


def test_int16_scale_follows_the_units_and_clipping_warns(tmp_path):
    assert int16_scale(0.6) == pytest.approx(1e-4)  # reflectance 0-1: EnMAP L2A's x 10000
    assert int16_scale(6000.0) == pytest.approx(1.0)  # already x 10000
    assert int16_scale(60.0) == pytest.approx(1e-2)  # percent
    assert int16_scale(0.0) == pytest.approx(1e-4) and int16_scale(float("nan")) == pytest.approx(1e-4)
    mdd = make_mdd(tmp_path / "m.json")
    warnings = []
    fmt = OutputFormat("int16", scale=1e-6)  # far too fine for these values: most overflow
    path = fuse_with_predictor(
        mdd,
        ConvPredictor(),
        str(tmp_path / "o"),
        DATES[:1],
        tile_size=16,
        output_format=fmt,
        callbacks=Callbacks(warn=warnings.append),
    )[0]
    raw = gdal.Open(path).ReadAsArray()
    assert raw.max() == 32767 or raw[raw != -32768].min() == -32767
    assert len(warnings) == 1 and "clipped" in warnings[0] and "float32" in warnings[0]
    with pytest.raises(FusionError, match="float32 or int16"):
        OutputFormat("uint8")
    with pytest.raises(FusionError, match="DEFLATE or ZSTD"):
        OutputFormat("float32", "JPEG")


def test_a_cancel_keeps_the_passes_already_complete_and_skip_existing_resumes(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    whole = fuse_with_predictor(mdd, ConvPredictor(), str(tmp_path / "whole"), DATES, tile_size=16)
    out = tmp_path / "out"
    calls = []
    with pytest.raises(Canceled):  # 6 tiles a date, one date a pass: canceled during the second
        fuse_with_predictor(
            mdd,
            ConvPredictor(),
            str(out),
            DATES,
            tile_size=16,
            dates_per_pass=1,
            callbacks=Callbacks(progress=lambda f, m: calls.append(f), is_canceled=lambda: len(calls) >= 8),
        )
    assert sorted(p.name for p in out.iterdir()) == [f"fused_{DATES[0]}.tif"]  # nothing partial left
    first = out / f"fused_{DATES[0]}.tif"
    np.testing.assert_array_equal(_read(first), _read(whole[0]))
    stamp = first.stat().st_mtime_ns
    log = []
    p = ConvPredictor()
    paths = fuse_with_predictor(
        mdd, p, str(out), DATES, tile_size=16, dates_per_pass=1, skip_existing=True, callbacks=Callbacks(log=log.append)
    )
    assert first.stat().st_mtime_ns == stamp and any("complete: kept" in m for m in log)
    assert len(p.windows) == 6 * (len(DATES) - 1)  # only the missing dates were predicted
    for a, b in zip(paths, whole):
        np.testing.assert_array_equal(_read(a), _read(b))


def test_skip_existing_fuses_again_what_another_run_made(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    out = tmp_path / "out"
    fuse_with_predictor(mdd, ConvPredictor(), str(out), DATES[:1], tile_size=16)
    log = []
    fmt = OutputFormat("int16")  # another output type: not the file this run would write
    fuse_with_predictor(
        mdd,
        ConvPredictor(),
        str(out),
        DATES[:1],
        tile_size=16,
        skip_existing=True,
        output_format=fmt,
        callbacks=Callbacks(log=log.append),
    )
    assert any("fused again: its data type differs" in m for m in log)
    assert gdal.Open(str(out / f"fused_{DATES[0]}.tif")).GetRasterBand(1).DataType == gdal.GDT_Int16
    (out / f"fused_{DATES[0]}.tif").write_bytes(b"not a GeoTIFF")
    log.clear()
    fuse_with_predictor(
        mdd, ConvPredictor(), str(out), DATES[:1], tile_size=16, skip_existing=True, callbacks=Callbacks(log=log.append)
    )
    assert any("fused again: it cannot be read" in m for m in log)
    assert gdal.Open(str(out / f"fused_{DATES[0]}.tif")).RasterCount == len(HS_WAVELENGTHS)


def test_partial_files_never_end_in_tif_and_leftovers_are_removed(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fused_2022-01-01.tif.part.tif").write_bytes(b"killed by version 0.1")
    (out / "fused_2022-01-02.tif.partial").write_bytes(b"killed")
    (out / "notes.tif.partial").write_bytes(b"not ours: stays")
    seen = []

    class Watching(ConvPredictor):
        def predict(self, mdd, window, date, crop=None):
            seen.append(sorted(p.name for p in out.iterdir()))
            return super().predict(mdd, window, date, crop)

    log = []
    fuse_with_predictor(mdd, Watching(), str(out), DATES[:2], tile_size=16, callbacks=Callbacks(log=log.append))
    during = seen[0]
    assert f"fused_{DATES[0]}.tif.partial" in during and not [
        n for n in during if n.startswith("fused_") and n.endswith(".tif")
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.tif.partial"] + [f"fused_{d}.tif" for d in DATES[:2]]
    )
    assert sum("left by an earlier run" in m for m in log) == 2


class OutOfMemory(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError (a RuntimeError whose text says "out of memory")."""


def test_gpu_out_of_memory_halves_the_tiles_and_gives_the_same_output(tmp_path):
    mdd = make_mdd(tmp_path / "m.json")
    reference = fuse_with_predictor(mdd, ConvPredictor(), str(tmp_path / "ref"), DATES[:2], tile_size=64)

    class SmallGpu(ConvPredictor):
        device = "cuda:0"

        def predict(self, mdd, window, date, crop=None):
            if window[2] * window[3] > 24 * 24:  # the whole 37 x 29 grid does not fit
                raise OutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().predict(mdd, window, date, crop)

    log = []
    p = SmallGpu()
    paths = fuse_with_predictor(
        mdd, p, str(tmp_path / "o"), DATES[:2], tile_size=64, callbacks=Callbacks(log=log.append)
    )
    for a, b in zip(paths, reference):
        np.testing.assert_array_equal(_read(a), _read(b))
    halved = [m for m in log if "Out of memory on cuda:0" in m]
    assert halved == ["Out of memory on cuda:0 for a 37x29 px tile: tiles of 19 px from now on."]  # once, then kept

    class NoGpu(ConvPredictor):
        device = "cuda:0"

        def predict(self, mdd, window, date, crop=None):
            raise OutOfMemory("CUDA out of memory")

    with pytest.raises(FusionError, match="ran out of memory even on a 16x"):
        fuse_with_predictor(mdd, NoGpu(), str(tmp_path / "n"), DATES[:1], tile_size=64)
    assert not list((tmp_path / "n").iterdir())


def test_a_failed_write_in_the_background_stops_fusion_and_leaves_no_file(tmp_path, monkeypatch):
    from stsfusion.model.mdd import geotiff

    mdd = make_mdd(tmp_path / "m.json")
    original, calls = geotiff.GeoTiffWriter.write, []

    def failing(self, values, window=None, first_band=0):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return original(self, values, window, first_band)

    monkeypatch.setattr(geotiff.GeoTiffWriter, "write", failing)
    p = ConvPredictor()
    with pytest.raises(OSError, match="No space left"):
        fuse_with_predictor(mdd, p, str(tmp_path / "out"), DATES, tile_size=16)
    assert list((tmp_path / "out").iterdir()) == []
    assert len(p.windows) < 6 * len(DATES)  # it stopped soon after, not at the end
