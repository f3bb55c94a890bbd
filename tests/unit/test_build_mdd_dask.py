"""Build MDD stack's windows as Dask tasks (``build_mdd_stack(executor=...)``): Dask threads in this
process and a LocalCluster of 2 worker processes build the values, masks and manifest of the loop;
a cancel and a failing window leave no file, and no task outlives the run."""

import json
import os

import numpy as np
import pytest
from helpers.rasters import make_raster
from helpers.rasters import make_three_role_inputs as make_inputs

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.fusion.distributed import dask_client
from stsfusion.model.mdd import build as build_module
from stsfusion.model.mdd.build import BuildMddError, build_mdd_stack

pytest.importorskip("distributed")


def _inputs(d):
    """The three roles, and an explicit mask per fine MS layer (a square each), so the tasks carry
    masks and their counts too."""
    fine, dense, hs = make_inputs(d)
    masks = []
    for k in range(2):
        m = np.zeros((1, 32, 32), np.uint8)
        m[0, 4 + 10 * k : 12 + 10 * k, 6:14] = 1
        masks.append(make_raster(d / f"cloud_{k}.tif", m))
    return fine, dense, hs, {"fine_ms": masks}


def _build(inputs, out, executor=None, **kw):
    fine, dense, hs, masks = inputs
    out.mkdir()
    # Windows of 8 px: 16 of each fine MS layer, so several tasks run at once (the coarser roles are
    # stored at their own pixel size: one window each).
    return build_mdd_stack(
        str(out / "m.json"), fine, dense, hs, masks=masks, block=8, block_memory_mb=0, executor=executor, **kw
    )


def _assert_same(a, b):
    for role in ("fine_ms", "dense_ms", "hs"):
        np.testing.assert_array_equal(a.read(role), b.read(role))  # NaN where nodata, in both
        np.testing.assert_array_equal(a.read_mask(role), b.read_mask(role))
    ja, jb = (json.load(open(m.path)) for m in (a, b))
    for j in (ja, jb):
        j.pop("created", None)
    text = json.dumps(jb, sort_keys=True).replace(os.path.dirname(b.path), os.path.dirname(a.path))
    assert json.dumps(ja, sort_keys=True) == text


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    d = tmp_path_factory.mktemp("build")
    inputs = _inputs(d)
    return inputs, _build(inputs, d / "loop")


def test_dask_threads_in_this_process_build_the_loops_values(loop, tmp_path):
    inputs, reference = loop
    assert reference.roles["fine_ms"].layers and json.load(open(reference.path))["inputs"]["fine_ms"][0]["masks"]
    messages = []
    with dask_client("threads", threads=2) as client:
        mdd = _build(inputs, tmp_path / "dask", client, callbacks=Callbacks(progress=lambda f, m: messages.append(m)))
    _assert_same(reference, mdd)
    assert any("valid: " in m and "masked" in m for m in messages)  # the masks' counts came back from the tasks
    assert build_module._OPENED == {}  # every thread's last layer closed: the inputs may be removed


@pytest.mark.slow
def test_a_local_cluster_of_two_worker_processes_builds_the_loops_values(loop, tmp_path):
    from distributed import Client, LocalCluster

    inputs, reference = loop
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        mdd = _build(inputs, tmp_path / "dask", client)
        still_open = client.run(lambda: len(__import__("stsfusion.model.mdd.build", fromlist=["_"])._OPENED))
        caches = client.run(lambda: __import__("osgeo.gdal", fromlist=["_"]).GetCacheMax())
    assert len(still_open) == 2 and not any(still_open.values())  # each worker closed the layers it read
    assert all(v <= build_module.BUILD_GDAL_CACHE_MB * 2**20 for v in caches.values())  # not 5 % of the RAM
    _assert_same(reference, mdd)


def test_a_cancel_while_tasks_run_leaves_no_file_and_no_task_running(tmp_path):
    calls = []

    def is_canceled():
        calls.append(1)
        return len(calls) > 5

    with dask_client("threads", threads=2) as client:
        with pytest.raises(Canceled):
            _build(_inputs(tmp_path), tmp_path / "out", client, callbacks=Callbacks(is_canceled=is_canceled))
        assert not any(client.processing().values())  # the windows in flight ended before the files went
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_a_failing_window_is_a_clear_error_that_leaves_no_file(tmp_path, monkeypatch):
    real = build_module.warp_window
    seen = []

    def failing(src, info, grid, window, method, *a, **kw):
        seen.append(window)
        if info.band_count == 4 and window[:2] == (8, 16):  # one fine MS window
            raise RuntimeError("ERROR 1: simulated read failure")
        return real(src, info, grid, window, method, *a, **kw)

    monkeypatch.setattr(build_module, "warp_window", failing)
    with dask_client("threads", threads=2) as client, pytest.raises(BuildMddError) as e:
        _build(_inputs(tmp_path), tmp_path / "out", client)
    assert "Warping a window failed: RuntimeError: ERROR 1: simulated read failure" in str(e.value)
    assert [p.name for p in (tmp_path / "out").iterdir()] == []
