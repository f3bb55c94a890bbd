"""Fuse on Dask (model/fusion/distributed.py): the DASK_SCHEDULER text and its environment
variable, the groups of dates, a LocalCluster of 2 worker processes writing the same bytes as the
in-process loop, the same through Dask's threads, SKIP_EXISTING and leftovers, a clear error for an
unreachable scheduler and for Dask missing, and cancel and failure leaving no partial file."""

import os
import socket
import time

import numpy as np
import pytest
from helpers.predictor import DATES, make_mdd
from osgeo import gdal

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.fusion import distributed as dist
from stsfusion.model.fusion.distributed import resolve_scheduler, split_dates
from stsfusion.model.fusion.fuse import FUSE_GDAL_CACHE_MB, fuse_time_series
from stsfusion.model.fusion.tiling import FusionError


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_partial(folder):
    return not [n for n in os.listdir(folder) if n.endswith((".partial", ".part.tif"))]


def _description(path):
    """Everything a reader sees of a fused GeoTIFF but the pixels: size, georeferencing, file and band
    metadata, nodata, scale, offset, descriptions, data type, blocks, compression."""
    ds = gdal.Open(str(path))
    bands = []
    for i in range(1, ds.RasterCount + 1):
        b = ds.GetRasterBand(i)
        bands.append(
            (
                b.GetDescription(),
                b.GetMetadata(),
                b.GetNoDataValue(),
                b.GetScale(),
                b.GetOffset(),
                b.DataType,
                b.GetBlockSize(),
            )
        )
    return (
        (ds.RasterXSize, ds.RasterYSize, ds.RasterCount),
        ds.GetGeoTransform(),
        ds.GetProjection(),
        ds.GetMetadata(),
        ds.GetMetadata("IMAGE_STRUCTURE"),
        bands,
    )


def _assert_same_outputs(paths, reference):
    assert [os.path.basename(p) for p in paths] == [os.path.basename(p) for p in reference]
    for a, b in zip(paths, reference):
        np.testing.assert_array_equal(gdal.Open(str(a)).ReadAsArray(), gdal.Open(str(b)).ReadAsArray())
        assert _description(a) == _description(b)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read(), f"{a} and {b} differ in their bytes"


# ---- the DASK_SCHEDULER text ------------------------------------------------------------------


def test_the_scheduler_text_and_the_environment_variable(monkeypatch):
    env = {"DASK_SCHEDULER": "tcp://10.0.0.5:8786"}
    assert resolve_scheduler("", env) == "tcp://10.0.0.5:8786"  # empty: the environment variable
    assert resolve_scheduler(None, env) == "tcp://10.0.0.5:8786"
    assert resolve_scheduler("threads", env) == "threads"  # the parameter wins
    assert resolve_scheduler(" NONE ", env) == "none"
    assert resolve_scheduler("local", {}) == "threads"
    assert resolve_scheduler("", {}) == "threads"  # Dask installed (requirements.txt): its threads
    assert resolve_scheduler("scheduler-host:8786", {}) == "scheduler-host:8786"
    assert dist.is_cluster("tcp://10.0.0.5:8786") and not dist.is_cluster("threads")
    with pytest.raises(FusionError, match="not a Dask scheduler address: give tcp://host:port"):
        resolve_scheduler("cluster", {})
    with pytest.raises(FusionError, match="The environment variable DASK_SCHEDULER is 'processes', not a Dask sch"):
        resolve_scheduler("", {"DASK_SCHEDULER": "processes"})

    monkeypatch.setattr(dist, "dask_available", lambda: False)
    assert resolve_scheduler("", {}) == "none"  # no Dask and none asked for: the loop
    for asked in ("tcp://10.0.0.5:8786", "threads"):
        with pytest.raises(
            FusionError, match=r'needs the Python packages dask and distributed.* pip install "dask\[distributed\]"'
        ):
            resolve_scheduler(asked, {})


def test_dates_are_grouped_to_keep_every_slot_busy():
    dates = [f"2022-01-{d:02d}" for d in range(1, 21)]
    assert [len(g) for g in split_dates(dates, 2)] == [5, 5, 5, 5]  # 4 tasks (<= 8 dates), 2 at a time
    assert [len(g) for g in split_dates(dates, 1)] == [7, 7, 6]  # the loop's 3 passes, balanced
    assert [len(g) for g in split_dates(dates, 16)] == [2] * 4 + [1] * 12
    assert [len(g) for g in split_dates(dates[:6], 2)] == [3, 3]
    assert [len(g) for g in split_dates(dates[:6], 2, per_task=4)] == [4, 2]
    assert sum(split_dates(dates, 3), []) == dates and split_dates([], 4) == []
    # In this process (networks taking turns) a task takes 2 dates at least, to share each tile's reads.
    assert [len(g) for g in split_dates(dates[:2], 2, at_least=2)] == [2]
    assert [len(g) for g in split_dates(dates[:5], 2, at_least=2)] == [3, 2]
    assert [len(g) for g in split_dates(dates, 16, at_least=2)] == [2] * 10
    assert [len(g) for g in split_dates(dates[:1], 2, at_least=2)] == [1]


def test_an_unreachable_scheduler_is_a_clear_error_and_writes_nothing(tmp_path):
    import dask
    import distributed  # noqa: F401 - its config defaults first: dask.config.set below must not drop them

    mdd = make_mdd(tmp_path / "m.json")
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    expected = f"Cannot reach the Dask scheduler at {address}.*dask scheduler"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), pytest.raises(FusionError, match=expected):
        fuse_time_series(mdd.path, str(tmp_path / "no-model.pt"), str(tmp_path / "out"), scheduler=address)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()  # failed before the model, the folder or any file


def test_without_dask_asking_for_a_scheduler_is_an_error_that_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "dask_available", lambda: False)
    mdd = make_mdd(tmp_path / "m.json")
    monkeypatch.setenv("DASK_SCHEDULER", "tcp://127.0.0.1:8786")
    with pytest.raises(FusionError, match=r"environment variable DASK_SCHEDULER .*pip install \"dask\[distributed\]\""):
        fuse_time_series(mdd.path, str(tmp_path / "m.pt"), str(tmp_path / "out"), DATES[:1])
    assert not (tmp_path / "out").exists()


# ---- with the real tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from helpers.predictor import trained_tiny_model

    return trained_tiny_model(tmp_path_factory.mktemp("dask"))


@pytest.fixture(scope="module")
def reference(real, tmp_path_factory):
    """Every date fused by the in-process loop, without Dask, PyTorch on 1 thread."""
    manifest, model = real
    out = tmp_path_factory.mktemp("loop")
    log = []
    paths = fuse_time_series(
        manifest,
        model,
        str(out),
        tile_size=16,
        device="cpu",
        threads=1,
        scheduler="none",
        callbacks=Callbacks(log=log.append),
    )
    assert not any("Dask" in m for m in log)
    return paths


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, 1 thread each (spawned: they get this sys.path, so they
    import stsfusion as this process does)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP server: not port 8787
        ) as c,
        Client(c, set_as_default=False) as client,
    ):
        yield c, client


@pytest.mark.slow
def test_without_dask_fuse_runs_the_loop_and_says_so_once(real, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "dask_available", lambda: False)
    monkeypatch.delenv("DASK_SCHEDULER", raising=False)
    manifest, model = real
    log = []
    paths = fuse_time_series(
        manifest, model, str(tmp_path), tile_size=16, device="cpu", threads=1, callbacks=Callbacks(log=log.append)
    )
    assert sum("is not installed: fusing in this process, one pass" in m for m in log) == 1
    assert any('pip install "dask[distributed]"' in m for m in log)
    _assert_same_outputs(paths, reference)


@pytest.mark.slow
def test_dask_threads_in_process_write_the_loops_bytes(real, reference, tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER", raising=False)
    manifest, model = real
    log, progress = [], []
    paths = fuse_time_series(
        manifest,
        model,
        str(tmp_path),
        tile_size=16,
        device="cpu",
        threads=1,
        callbacks=Callbacks(log=log.append, progress=lambda f, m: progress.append(f)),
    )
    assert any("Dask in this process: 2 task(s) of 3 date(s) on 2 worker thread(s)" in m for m in log)
    assert any("PyTorch 1 thread(s), one task's network at a time" in m for m in log)
    # The driver fits nothing, but says what each task's predictor does besides the network.
    assert any(m.startswith("Gaps (clouds) of a date's dense MS: filled from") for m in log)
    assert any(
        m.startswith("Fine MS predicted in time, put back in line with each date's dense MS: 2 steps") for m in log
    )
    _assert_same_outputs(paths, reference)
    assert len(progress) > 2 and progress == sorted(progress) and progress[-1] == pytest.approx(1.0)  # tiles, polled


@pytest.mark.slow
def test_one_task_at_a_time_runs_in_this_thread_with_the_same_bytes_progress_and_cancel(real, reference, tmp_path):
    """Three dates make one task (two dates at least a task): Dask's scheduler would add nothing but
    its overhead, so the task runs in the calling thread, and writes the loop's bytes."""
    manifest, model = real
    dates = [os.path.basename(p)[6:16] for p in reference][:3]

    def fuse(folder, callbacks):
        return fuse_time_series(
            manifest,
            model,
            str(tmp_path / folder),
            dates,
            tile_size=16,
            device="cpu",
            threads=1,
            scheduler="threads",
            callbacks=callbacks,
        )

    log, progress = [], []
    paths = fuse("ok", Callbacks(log=log.append, progress=lambda f, m: progress.append(f)))
    assert any("1 task(s) of 3 date(s), one at a time" in m and "run in this thread" in m for m in log), log
    assert not any("worker thread(s)" in m for m in log)
    _assert_same_outputs(paths, reference[:3])
    assert len(progress) > 2 and progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert _no_partial(tmp_path / "ok")

    calls = []
    with pytest.raises(Canceled):
        fuse("c", Callbacks(progress=lambda f, m: calls.append(f), is_canceled=lambda: len(calls) >= 3))
    assert os.listdir(tmp_path / "c") == []


@pytest.mark.slow
def test_a_local_cluster_of_two_workers_writes_the_same_bytes(real, reference, cluster, tmp_path):
    manifest, model = real
    c, client = cluster
    log, progress = [], []
    paths = fuse_time_series(
        manifest,
        model,
        str(tmp_path),
        tile_size=16,
        device="cpu",
        threads=1,
        scheduler=c.scheduler_address,
        callbacks=Callbacks(log=log.append, progress=lambda f, m: progress.append(f)),
    )
    assert any(f"Dask cluster {c.scheduler_address}: 2 worker(s), 2 thread(s) in all; 2 task(s)" in m for m in log)
    workers = {m.split("(worker ")[1].split(",")[0] for m in log if m.startswith("Written ")}
    assert workers == set(client.scheduler_info(n_workers=-1)["workers"])  # both workers fused a group
    assert progress == [pytest.approx(0.5), pytest.approx(1.0)]  # per completed task
    _assert_same_outputs(paths, reference)
    assert _no_partial(tmp_path)
    # Each worker's GDAL cache was capped as this process's is (not GDAL's 5 % of the RAM).
    caches = client.run(lambda: __import__("osgeo.gdal", fromlist=["_"]).GetCacheMax())
    assert caches and all(v <= FUSE_GDAL_CACHE_MB * 2**20 for v in caches.values()), caches


@pytest.mark.slow
def test_the_environment_variable_sends_fuse_to_the_cluster_with_skip_existing_and_leftovers(
    real, reference, cluster, tmp_path, monkeypatch
):
    manifest, model = real
    c, _ = cluster
    monkeypatch.setenv("DASK_SCHEDULER", c.scheduler_address)
    dates = [os.path.basename(p)[6:16] for p in reference]
    (tmp_path / f"fused_{dates[0]}.tif.partial").write_bytes(b"left by a killed run")
    log = []
    first = fuse_time_series(
        manifest,
        model,
        str(tmp_path),
        dates[:2],
        tile_size=16,
        device="cpu",
        threads=1,
        callbacks=Callbacks(log=log.append),
    )
    assert any(m.startswith(f"Dask cluster {c.scheduler_address}") for m in log)
    assert any("left by an earlier run" in m for m in log) and _no_partial(tmp_path)
    stamp = os.stat(first[0]).st_mtime_ns
    log.clear()
    paths = fuse_time_series(
        manifest,
        model,
        str(tmp_path),
        tile_size=16,
        device="cpu",
        threads=1,
        skip_existing=True,
        callbacks=Callbacks(log=log.append),
    )
    assert sum("complete: kept (SKIP_EXISTING)" in m for m in log) == 2 and os.stat(first[0]).st_mtime_ns == stamp
    assert any(m.startswith("Fusing 4 date(s)") for m in log)
    _assert_same_outputs(paths, reference)
    log.clear()  # the parameter wins over the variable
    fuse_time_series(
        manifest,
        model,
        str(tmp_path / "here"),
        dates[:1],
        tile_size=16,
        scheduler="threads",
        callbacks=Callbacks(log=log.append),
    )
    assert any(m.startswith("Dask in this process") for m in log) and not any("Dask cluster" in m for m in log)


@pytest.mark.slow
def test_a_cancel_on_the_cluster_stops_the_running_tasks_and_leaves_no_partial_file(real, cluster, tmp_path):
    from stsfusion.model.mdd.format import MDD

    manifest, model = real
    c, client = cluster
    mdd = MDD.open(manifest)
    earlier = tmp_path / f"fused_{mdd.dates[-1]}.tif"
    earlier.write_bytes(b"earlier run")  # must survive a canceled run

    def canceled():  # the cancel comes while a task is writing
        return any(n.endswith(".partial") for n in os.listdir(tmp_path))

    with pytest.raises(Canceled):
        dist.fuse_with_dask(
            mdd,
            model,
            str(tmp_path),
            mdd.dates,
            c.scheduler_address,
            tile_size=16,
            device="cpu",
            threads=1,
            callbacks=Callbacks(is_canceled=canceled),
            dates_per_task=1,
        )
    assert all(not keys for keys in client.processing().values())  # no task runs on any worker any more
    time.sleep(1.0)
    assert _no_partial(tmp_path)
    written = sorted(n for n in os.listdir(tmp_path) if n.endswith(".tif"))
    assert len(written) < len(mdd.dates)  # at most the 2 tasks under way could finish before the stop
    assert earlier.read_bytes() == b"earlier run"


@pytest.mark.slow
def test_in_process_cancel_and_failure_leave_no_partial_file(real, tmp_path, monkeypatch):
    from stsfusion.model.nn import predictor as predictor_module

    manifest, model = real
    calls = []
    with pytest.raises(Canceled):
        fuse_time_series(
            manifest,
            model,
            str(tmp_path / "c"),
            tile_size=16,
            device="cpu",
            scheduler="threads",
            callbacks=Callbacks(progress=lambda f, m: calls.append(f), is_canceled=lambda: len(calls) >= 3),
        )
    assert os.listdir(tmp_path / "c") == []  # 2 groups of 3 dates, both stopped before their end

    original = predictor_module.FusionPredictor.predict
    seen = []

    def failing(self, mdd, window, date, crop=None):
        seen.append(date)
        if len(seen) == 5:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, mdd, window, date, crop)

    monkeypatch.setattr(predictor_module.FusionPredictor, "predict", failing)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        fuse_time_series(manifest, model, str(tmp_path / "f"), tile_size=16, device="cpu", scheduler="threads")
    assert os.listdir(tmp_path / "f") == []  # the other task stopped at its next tile too
