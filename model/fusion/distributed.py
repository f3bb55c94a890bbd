"""Fuse on Dask: groups of dates as tasks, in this process or on a dask.distributed cluster.

    fuse_time_series(mdd, model, folder)                                  # Dask threads, every core
    fuse_time_series(mdd, model, folder, scheduler="tcp://host:8786")     # an existing cluster
    DASK_SCHEDULER=tcp://host:8786 qgis_process.bin run stsfusion:fuse -- ...

One task is one group of dates fused completely, every tile (``fuse.fuse_date_group``): it opens
the MDD and loads the model itself from a ``FusionJob`` (paths and small parameters), writes its
dates under ``*.tif.partial`` and renames them when they are all complete. No two tasks write the
same file, a task's commit is the pass's commit of the in-process loop, and the bytes are the same
(given the same PyTorch threads per task: oneDNN's sums depend on the thread count).

Where the tasks run (``resolve_scheduler``), always through a ``distributed.Client``:

- in this process (the default where Dask is installed): a ``LocalCluster(processes=False)``
  started for the run, one worker with a thread per task up to the cores (one at a time on a GPU);
  the tasks read, project and write in parallel while their networks take turns on all of PyTorch's
  threads (``predictor.NETWORK_LOCK``: memory of one network evaluation, not one per task); the
  tasks report each tile to the client through memory;
- on a cluster (an address): each worker is checked first (the plugin importable, torch installed,
  the MDD, the model and the output folder at the same paths), and reports per completed task.

The client submits the groups, at most as many at a time as the workers have threads, and polls
them from the calling thread, which also reports the progress and reads the cancel (so a Qt slot
connected to the progress runs where it was connected). A cancel, or a failed task, stops submitting
and sets a stop that the running tasks check before each tile (in this process a flag, on a cluster
a Dask ``Event``): they remove their partial files and end, the client waits for them, then
releases every future left. So a cancel keeps the groups already committed and leaves no partial
file. The scheduler never needs the plugin: a task goes to it as ``pickle.loads`` of bytes
(``core.tasks.portable_call``), only the workers unpickle it.

dask and distributed are imported only here and only when used: QGIS's Python may lack them
(``DASK_MISSING_NOTE``; the fusion then runs the loop of ``fuse.py``). No QGIS import here.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

from ..core.callbacks import Callbacks, Canceled, callbacks_or_default
from ..core.tasks import portable_call
from ..mdd.format import MDD
from ..mdd.geotiff import gdal_cache
from .fuse import (
    DATES_PER_PASS,
    FUSE_GDAL_CACHE_MB,
    FusionJob,
    OutputFormat,
    fuse_date_group,
    output_path,
    prepare_outputs,
    report_date_sources,
    report_fused,
)
from .tiling import FusionError, tile_windows

__all__ = [
    "DASK_MISSING_NOTE",
    "INSTALL_HINT",
    "NO_DASK",
    "SCHEDULER_ENV",
    "THREADS",
    "dask_available",
    "dask_client",
    "fuse_with_dask",
    "is_cluster",
    "resolve_scheduler",
    "split_dates",
]

SCHEDULER_ENV = "DASK_SCHEDULER"
NO_DASK = "none"  # the in-process loop of fuse.py, without Dask
THREADS = "threads"  # a LocalCluster of threads in this process
_ALIASES = {"none": NO_DASK, "off": NO_DASK, "threads": THREADS, "threading": THREADS, "local": THREADS}
INSTALL_HINT = (
    'python -m pip install "dask[distributed]" run with the Python that QGIS runs (the OSGeo4W Shell on Windows; '
    "QGIS.app/Contents/MacOS/bin/python3 on macOS)"
)
DASK_MISSING_NOTE = (
    "Dask (the Python packages dask and distributed) is not installed: fusing in this process, one pass of dates "
    f"after another. For tasks on every core or on a Dask cluster, install it: {INSTALL_HINT}."
)
POLL_S = 0.1  # how often the client reports progress and looks at the cancel while the tasks run
STOP_GRACE_S = 300.0  # after a cancel, how long running tasks get to reach their next tile and clean up
MEMORY_SHARE = 0.5  # in-process tasks may hold at most this share of the available memory together


def dask_available() -> bool:
    """Whether ``dask`` and ``distributed`` can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("dask", "distributed"))


def is_cluster(mode: str) -> bool:
    """Whether a ``resolve_scheduler`` result is a cluster address (not an in-process mode)."""
    return mode not in (NO_DASK, THREADS)


def resolve_scheduler(value: str | None = None, environ: dict | None = None) -> str:
    """Where Fuse runs, from the DASK_SCHEDULER parameter ``value``; empty: the environment
    variable DASK_SCHEDULER (of ``environ``, default ``os.environ``) if set, else "threads" where
    Dask is installed and "none" where it is not. Returns "none" (the loop of fuse.py), "threads"
    (Dask in this process) or a scheduler address (tcp://host:port, tls://..., host:port;
    ``is_cluster``). FusionError for a text that is none of these, and when Dask is asked for but
    not installed."""
    text = (value or "").strip()
    origin = "DASK_SCHEDULER"
    if not text:
        text = (os.environ if environ is None else environ).get(SCHEDULER_ENV, "").strip()
        origin = "The environment variable DASK_SCHEDULER"
    if not text:
        return THREADS if dask_available() else NO_DASK
    mode = _ALIASES.get(text.lower())
    if mode == NO_DASK:
        return NO_DASK
    if mode is None and ("://" not in text and ":" not in text):
        raise FusionError(
            f"{origin} is '{text}', not a Dask scheduler address: give tcp://host:port (the address "
            "'dask scheduler' prints, or a LocalCluster's scheduler_address), threads (this process), none "
            "(no Dask), or leave it empty."
        )
    if not dask_available():
        raise FusionError(
            f"{origin} is '{text}', which needs the Python packages dask and distributed, not installed here: "
            f"install them ({INSTALL_HINT}), or leave DASK_SCHEDULER empty to run without Dask."
        )
    return mode or text


def split_dates(dates: list[str], slots: int, per_task: int | None = None, at_least: int = 1) -> list[list[str]]:
    """The dates cut into consecutive groups, one task each. ``per_task``: that many dates a group;
    else as few groups as keep ``slots`` tasks busy at once (a multiple of ``slots``, at least
    ``at_least`` dates each where there are that many) and no group over DATES_PER_PASS dates; the
    sizes differ by one at most."""
    n = len(dates)
    if not n:
        return []
    if per_task:
        size = max(1, int(per_task))
        return [list(dates[i : i + size]) for i in range(0, n, size)]
    slots = max(1, int(slots))
    rounds = math.ceil(math.ceil(n / DATES_PER_PASS) / slots)
    count = max(1, min(n // max(1, int(at_least)), slots * rounds))
    base, extra = divmod(n, count)
    groups, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        groups.append(list(dates[start : start + size]))
        start += size
    return groups


def fuse_with_dask(
    mdd: MDD,
    model_path: str,
    output_folder: str,
    dates: list[str],
    scheduler: str = THREADS,
    tile_size: int = 256,
    device: str = "auto",
    callbacks: Callbacks | None = None,
    threads: int = 0,
    output_format: OutputFormat | None = None,
    skip_existing: bool = False,
    gdal_cache_mb: int = FUSE_GDAL_CACHE_MB,
    dates_per_task: int | None = None,
    subpixel_change: bool | None = None,
) -> list:
    """``fuse_time_series`` on Dask, for a resolved ``scheduler`` ("threads" or an address).

    The client loads the model on the CPU for the checks (``check_compatible``, the self-check
    report) and the plan (``prepare_outputs``: leftovers, SKIP_EXISTING, metadata, int16 scale);
    the tasks fuse. ``threads``: PyTorch's threads, 0 = in this process every core (the tasks'
    networks take turns), on a cluster each worker host's cores over its workers' threads. ``dates_per_task``: a fixed group size instead of ``split_dates``'s.
    Returns the paths of every requested date, in date order."""
    from ..nn.device import DeviceError, select_device
    from ..nn.predictor import load_predictor
    from .self_check import report_self_check

    cb = callbacks_or_default(callbacks)
    fmt = output_format or OutputFormat()
    threads = int(threads or 0)
    if threads < 0:
        raise DeviceError(f"THREADS must be 0 (torch's default: every core) or a positive number, not {threads}.")
    tile_size = int(tile_size)
    if not is_cluster(scheduler):
        device = select_device(device)  # DeviceError before anything is written; a worker chooses its own
    with ExitStack() as stack:
        client = stack.enter_context(_connect(scheduler)) if is_cluster(scheduler) else None  # unreachable: fail first
        # checks and plan only (its halo sizes the tasks): each task loads its own
        predictor = load_predictor(model_path, device="cpu", subpixel_change=subpixel_change)
        predictor.check_compatible(mdd)
        report_self_check(predictor.meta, cb)
        for line in predictor.fusion_notes():
            cb.log(line)
        scale, file_md, todo = prepare_outputs(mdd, predictor, output_folder, dates, cb, model_path, fmt, skip_existing)
        paths = [output_path(output_folder, d) for d in dates]
        grid = mdd.grid
        tiles = tile_windows(grid.width, grid.height, tile_size)
        n_bands = len(predictor.hs_wavelengths)
        cb.log(
            f"Fusing {len(todo)} date(s) on the {grid.width}x{grid.height} px grid, {n_bands} HS bands, "
            f"{len(tiles)} tile(s) of {tile_size} px with a {int(predictor.halo)} px halo, {fmt.data_type} "
            f"{fmt.compression}, as Dask tasks."
        )
        report_date_sources(mdd, todo, predictor, cb)
        if not todo:
            cb.progress(1.0, "every date was already complete")
            return paths
        job = FusionJob(
            mdd_path=os.path.abspath(mdd.path),
            model_path=os.path.abspath(model_path),
            output_folder=os.path.abspath(output_folder),
            tile_size=tile_size,
            output_format=fmt,
            scale=scale,
            file_md=file_md,
            device=device,
            gdal_cache_mb=int(gdal_cache_mb),
            subpixel_change=subpixel_change,
        )
        started = time.monotonic()
        if client is not None:
            clipped = _fuse_on_cluster(client, scheduler, job, todo, len(tiles), cb, threads, dates_per_task)
        else:
            per_task = _task_bytes(mdd, tile_size, int(predictor.halo))
            with gdal_cache(gdal_cache_mb):
                clipped = _fuse_in_process(job, todo, len(tiles), cb, threads, dates_per_task, per_task)
        report_fused(cb, grid, n_bands, len(todo), time.monotonic() - started, clipped, scale)
        return paths


# ---- in this process: a LocalCluster of threads -------------------------------------------------


def _task_bytes(mdd: MDD, tile_size: int, halo: int) -> int:
    """A rough bound of what one task holds at once: the tile's window of every role, date and
    band as float32, about four times over (the read memo, the gap-filled dense MS, the network's
    inputs and activations)."""
    side_x = min(tile_size + 2 * halo, mdd.grid.width)  # expand_window's window: full size, within the grid
    side_y = min(tile_size + 2 * halo, mdd.grid.height)
    layers = sum(stack.n_dates * (stack.n_bands + 1) for stack in mdd.roles.values())
    return 4 * 4 * side_x * side_y * layers


def _available_bytes() -> int | None:
    try:
        import psutil  # comes with distributed; without it, no memory bound on the thread count
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


class _LocalRun:
    """What the tasks of a run in this process share with its client, found by run id
    (``_LOCAL_RUNS``): the fraction each task has done (by its first date), for the client to
    report, and the stop flag."""

    def __init__(self) -> None:
        self.fractions: dict = {}
        self.stop = threading.Event()

    def callbacks(self, dates: list[str], log: Callable[[str], None]) -> Callbacks:
        """A task's callbacks: its progress kept here, this run's stop as its cancel."""

        def progress(fraction: float, message: str) -> None:
            self.fractions[dates[0]] = fraction

        return Callbacks(progress=progress, is_canceled=self.stop.is_set, log=log)

    def done(self, groups: list[list[str]], n_tiles: int) -> int:
        """Tile-dates done over all the tasks."""
        return sum(int(round(self.fractions.get(g[0], 0.0) * n_tiles * len(g))) for g in groups)


_LOCAL_RUNS: dict = {}  # run id -> _LocalRun, for the tasks of runs in this process


def _fuse_in_process(
    job: FusionJob,
    todo: list[str],
    n_tiles: int,
    cb: Callbacks,
    threads: int,
    dates_per_task: int | None,
    task_bytes: int,
) -> int:
    """The groups on a LocalCluster of threads in this process; returns the values clipped to
    int16. PyTorch's thread count is process-wide: set once for all the tasks, and set back to
    ``threads`` (0: PyTorch's default) afterwards."""
    from dask.system import CPU_COUNT

    from ..nn.device import configure_threads, describe_device

    device = job.device
    cores = max(1, int(CPU_COUNT))
    if device != "cpu":
        slots, why = 1, f"one at a time on {device}"
    else:
        slots = max(1, cores // threads) if threads else cores
        why = f"{cores} cores"
        available = _available_bytes()
        if available is not None and slots > 1:
            fit = max(1, int(MEMORY_SHARE * available // max(1, task_bytes)))
            if fit < slots:
                slots = fit
                why += f", {fit} task(s) fit in half the available memory ({available / 2**30:.1f} GiB)"
    # Here the tasks' networks take turns: two tasks overlap only reading and writing, while the
    # dates of one task share each tile's reads and reference residuals. So a task takes two dates
    # at least (2 dates on 2 cores, three paired runs each: 1024² px 20.0 / 21.2 / 20.9 s against
    # 21.0 / 22.1 / 21.6 s as two one-date tasks; 512² px 5.3 / 5.3 / 5.6 against 5.5 / 5.7 / 5.6 s).
    groups = split_dates(todo, slots, dates_per_task, at_least=2)
    workers = max(1, min(slots, len(groups)))
    # The tasks' networks take turns (predictor.NETWORK_LOCK), each on every core.
    torch_threads = configure_threads(threads or (cores if device == "cpu" else 0))
    sizes = sorted({len(g) for g in groups})
    tasks = f"{len(groups)} task(s) of {'-'.join(str(s) for s in sizes)} date(s)"
    try:
        if workers == 1:
            # One task at a time: Dask's scheduler would only add its event loop and polling to the
            # same work (2048² px, 2 dates: 3-7 % slower than the same task in this thread).
            cb.log(f"Dask in this process: {tasks}, one at a time ({why}): run in this thread, without a scheduler.")
            cb.log(describe_device(device, torch_threads, training=False))
            return _fuse_in_this_thread(job, groups, n_tiles, cb)
        cb.log(
            f"Dask in this process: {tasks} on {workers} worker thread(s) ({why}), PyTorch {torch_threads} "
            "thread(s), one task's network at a time."
        )
        cb.log(describe_device(device, torch_threads, training=False))
        distributed = _import_distributed(THREADS)  # only here: importing it takes 0.6 s
        with _local_client(workers) as client:
            return _run_futures(client, distributed, THREADS, job, groups, None, 0, workers, n_tiles, cb)
    finally:
        configure_threads(threads)


def _fuse_in_this_thread(job: FusionJob, groups: list[list[str]], n_tiles: int, cb: Callbacks) -> int:
    """The tasks one after another in the calling thread (the same ``fuse_date_group`` a worker
    runs, so the same bytes); progress over all of them, the cancel read before each tile.
    Returns the values clipped to int16."""
    total = max(1, n_tiles * sum(len(g) for g in groups))
    done = clipped = 0
    for dates in groups:
        before = done

        def progress(fraction: float, message: str, before: int = before, size: int = n_tiles * len(dates)) -> None:
            cb.progress(
                min(1.0, (before + fraction * size) / total),
                f"{before + round(fraction * size)}/{total} tile-dates done",
            )

        result = fuse_date_group(job, dates, Callbacks(progress=progress, is_canceled=cb.is_canceled, log=cb.log))
        done += n_tiles * len(dates)
        clipped += int(result["clipped"])
        names = ", ".join(os.path.basename(output_path(job.output_folder, d)) for d in dates)
        cb.log(f"Written {names} ({result['seconds']:.1f} s).")
    return clipped


@contextmanager
def _local_client(threads: int) -> Iterator[Any]:
    """A ``distributed.Client`` of a LocalCluster in this process: one worker of ``threads`` threads."""
    distributed = _import_distributed(THREADS)
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=max(1, int(threads)),
            processes=False,
            dashboard_address=None,
            memory_limit=0,  # no memory monitor pausing the worker on this process's (QGIS's) own memory
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP server: a free local port
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@contextmanager
def dask_client(mode: str, threads: int = 0) -> Iterator[Any]:
    """A ``distributed.Client`` for a ``resolve_scheduler`` mode, closed on exit: "threads" a
    LocalCluster in this process (``threads`` threads, 0: one per core), an address that cluster
    (FusionError when it cannot be reached or has no worker); None for "none". For steps that hand
    their own tasks to Dask (Build MDD stack's windows); Fuse plans its own (``fuse_with_dask``)."""
    if mode == NO_DASK:
        yield None
    elif is_cluster(mode):
        with _connect(mode) as client:
            yield client
    else:
        from dask.system import CPU_COUNT

        with _local_client(int(threads) or int(CPU_COUNT)) as client:
            yield client


# ---- on a dask.distributed cluster ------------------------------------------------------------


def _import_distributed(address: str) -> Any:
    """The ``distributed`` module; FusionError (how to install it, or to go without) when it or
    dask does not import, e.g. a broken install."""
    try:
        importlib.import_module("dask")
        return importlib.import_module("distributed")
    except ImportError as e:
        where = "Dask in this process" if address == THREADS else f"DASK_SCHEDULER '{address}'"
        raise FusionError(
            f"{where} needs the Python packages dask and distributed, which do not import here ({e}): install "
            f"them ({INSTALL_HINT}), or set DASK_SCHEDULER to none to run without Dask."
        ) from None


def _connect_timeout() -> float:
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect", "30s"), default="seconds"))


def _reachable(address: str, timeout: float) -> None:
    """FusionError when nothing listens at a tcp:// or tls:// address (a plain socket: quick, and
    no half-made Client left to tidy up); other protocols are left to distributed."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp", "tls"):
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port.split("/")[0])
    except ValueError:
        raise FusionError(
            f"DASK_SCHEDULER '{address}' has no port number: give tcp://host:port (the address 'dask scheduler' "
            "prints)."
        ) from None
    try:
        socket.create_connection((host, number), timeout=timeout).close()
    except OSError as e:
        raise FusionError(
            f"Cannot reach the Dask scheduler at {address} ({e}): start one ('dask scheduler', then 'dask worker "
            f"{address}' on each machine), check the host and port, or leave DASK_SCHEDULER empty to run in this "
            "process."
        ) from None


def _check_worker(mdd_path: str, model_path: str, folder: str) -> dict:
    """Run on each worker before any task: what it lacks to fuse (its host and cores too)."""
    from dask.system import CPU_COUNT

    problems = []
    if importlib.util.find_spec("torch") is None:
        problems.append("PyTorch is not installed in its Python")
    for label, path in (("the MDD", mdd_path), ("the model file", model_path)):
        if not os.path.isfile(path):
            problems.append(f"it does not see {label} at {path}")
    if not os.path.isdir(folder):
        problems.append(f"it does not see the output folder {folder}")
    elif not os.access(folder, os.W_OK):
        problems.append(f"it may not write into the output folder {folder}")
    return {"host": socket.gethostname(), "cpus": int(CPU_COUNT), "problems": problems}


def _dask_task(job: FusionJob, dates: list[str], run_id: str, threads: int | dict) -> dict:
    """One task, on a worker of this process or of a cluster: PyTorch's threads set (``threads``:
    a count, a count per worker address, or 0: leave them), the stop read before each tile (the
    run's flag in this process, else the Dask Event ``stsfusion-stop-<run_id>``), log lines
    returned with the result ({"canceled": True} when stopped: no file of the group is left)."""
    from distributed import Event, get_worker

    from ..nn.device import configure_threads

    address = get_worker().address
    count = threads if isinstance(threads, int) else int(threads.get(address, 1))
    if count > 0:
        configure_threads(count)
    lines: list[str] = []
    run = _LOCAL_RUNS.get(run_id)
    if run is not None:
        cb = run.callbacks(dates, lines.append)
    else:
        cb = Callbacks(is_canceled=Event(f"stsfusion-stop-{run_id}").is_set, log=lines.append)
    try:
        result = fuse_date_group(job, dates, cb)
    except Canceled:  # the client asked: not a failure for the worker to log
        return {"dates": list(dates), "canceled": True, "worker": address, "log": lines}
    return dict(result, worker=address, log=lines)


def _worker_threads(client: Any, checks: dict, threads: int) -> tuple[list[str], int | dict, int]:
    """(usable workers, PyTorch threads per task (THREADS, or per worker: its host's cores over
    the Dask threads of the usable workers on that host), task slots = their Dask threads)."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    usable = [a for a, c in checks.items() if isinstance(c, dict) and not c["problems"] and a in info]
    per_host: dict = {}
    for address in usable:
        host = info[address].get("host", address)
        per_host[host] = per_host.get(host, 0) + int(info[address].get("nthreads", 1))
    slots = sum(int(info[a].get("nthreads", 1)) for a in usable)
    if threads:
        return usable, threads, slots
    plan = {a: max(1, checks[a]["cpus"] // max(1, per_host[info[a].get("host", a)])) for a in usable}
    return usable, plan, slots


@contextmanager
def _connect(address: str) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``address`` with at least one worker, closed
    on exit; FusionError (with the fix) when there is none within Dask's connect timeout."""
    distributed = _import_distributed(address)
    timeout = _connect_timeout()
    _reachable(address, timeout)
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError) as e:
        raise FusionError(
            f"Cannot connect to the Dask scheduler at {address} ({e}): check the address, or leave "
            "DASK_SCHEDULER empty to run in this process."
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise FusionError(
                f"The Dask scheduler at {address} has no worker: start some with 'dask worker {address}'."
            ) from None
        yield client
    finally:
        client.close()


def _fuse_on_cluster(
    client: Any,
    address: str,
    job: FusionJob,
    todo: list[str],
    n_tiles: int,
    cb: Callbacks,
    threads: int,
    dates_per_task: int | None,
) -> int:
    """The groups as futures on the cluster at ``address``; returns the values clipped to int16."""
    distributed = _import_distributed(address)
    checks = client.run(_check_worker, job.mdd_path, job.model_path, job.output_folder, on_error="return")
    usable, plan, slots = _worker_threads(client, checks, threads)
    _report_checks(cb, address, checks, usable)
    groups = split_dates(todo, slots, dates_per_task)
    sizes = sorted({len(g) for g in groups})
    cb.log(
        f"Dask cluster {address}: {len(usable)} worker(s), {slots} thread(s) in all; {len(groups)} task(s) "
        f"of {'-'.join(str(s) for s in sizes)} date(s); PyTorch "
        + (f"{plan} thread(s) per task." if isinstance(plan, int) else _plan_text(plan))
    )
    workers = None if len(usable) == len(checks) else usable
    return _run_futures(client, distributed, address, job, groups, workers, plan, slots, n_tiles, cb)


def _plan_text(plan: dict) -> str:
    counts = sorted(set(plan.values()))
    return f"{'-'.join(str(c) for c in counts)} thread(s) per task (each host's cores over its Dask threads)."


def _report_checks(cb: Callbacks, address: str, checks: dict, usable: list[str]) -> None:
    """FusionError when no worker can fuse (with what each lacks and the fix); a warning naming
    the workers left out otherwise."""
    problems = []
    for worker, check in sorted(checks.items()):
        if isinstance(check, BaseException):
            text = f"{type(check).__name__}: {check}"
            if isinstance(check, ImportError) or "No module named" in text:
                text += (
                    " (start the workers where the plugin is importable: PYTHONPATH=<the folder holding the "
                    "stsfusion plugin folder>, with GDAL's Python bindings and PyTorch)"
                )
            problems.append(f"{worker}: {text}")
        elif check["problems"]:
            problems.append(f"{worker} ({check['host']}): {'; '.join(check['problems'])}")
    if not usable:
        raise FusionError(
            f"No worker of the Dask cluster at {address} can fuse: "
            + " | ".join(problems)
            + ". Workers need the plugin importable as 'stsfusion' (PYTHONPATH), PyTorch, and the MDD, the "
            "model and the output folder at the same paths as here (a shared folder)."
        )
    if problems:
        cb.warn("Dask workers left out: " + " | ".join(problems))


def _run_futures(
    client: Any,
    distributed: Any,
    address: str,
    job: FusionJob,
    groups: list[list[str]],
    workers: list[str] | None,
    plan: int | dict,
    slots: int,
    n_tiles: int,
    cb: Callbacks,
) -> int:
    """Submits the groups, at most ``slots`` at a time, and collects them, from the calling thread
    (progress, cancel, log); stops on a cancel or a failure (see the module docstring). ``address``:
    the cluster's, or THREADS for this process's. Returns the values clipped to int16."""
    run_id = uuid.uuid4().hex[:12]
    local = _LocalRun() if address == THREADS else None
    if local is not None:
        _LOCAL_RUNS[run_id] = local
    stop = None if local is not None else distributed.Event(f"stsfusion-stop-{run_id}", client=client)
    queue = list(groups)
    running: dict = {}
    total = max(1, n_tiles * sum(len(g) for g in groups))
    done = clipped = finished = reported = 0
    error: BaseException | None = None
    canceled = False
    devices: set = set()
    wake = threading.Event()  # set by each future as it completes: no wait beyond that

    def halt() -> None:
        if stop is None:
            local.stop.set()
        else:
            stop.set()

    try:
        while queue or running:
            while queue and len(running) < max(1, slots) and error is None and not canceled:
                dates = queue.pop(0)
                call = portable_call(_dask_task, job, dates, run_id, plan)
                future = client.submit(
                    pickle.loads, call, key=f"stsfusion-fuse-{dates[0]}-{run_id}", pure=False, workers=workers
                )
                future.add_done_callback(lambda _: wake.set())
                running[future] = dates
            if local is not None and error is None and not canceled and local.done(groups, n_tiles) > reported:
                reported = local.done(groups, n_tiles)
                cb.progress(min(1.0, reported / total), f"{reported}/{total} tile-dates done")
            if error is None and not canceled and cb.is_canceled():
                canceled = True
                halt()
                _wait_stopped(running, cb)
                break
            if not running:
                break
            ready = [f for f in running if f.done()]
            if not ready:
                wake.wait(POLL_S)
                wake.clear()
                continue
            for future in ready:
                dates = running.pop(future)
                try:
                    result = future.result()
                except BaseException as e:  # re-raised below, once the other tasks stopped
                    if error is None and not canceled:
                        error = _task_error(e, address, dates)
                        halt()
                    continue
                if result.get("canceled"):
                    continue
                finished += 1
                done += n_tiles * len(dates)
                clipped += int(result["clipped"])
                for line in result.get("log", []):
                    cb.log(line)
                names = ", ".join(os.path.basename(output_path(job.output_folder, d)) for d in dates)
                if local is None:
                    if result["device"] not in devices:
                        devices.add(result["device"])
                        cb.log(f"Worker {result['worker']}: {result['device']}")
                    cb.log(f"Written {names} (worker {result['worker']}, {result['seconds']:.1f} s).")
                    cb.progress(done / total, f"{finished}/{len(groups)} task(s) done")
                else:
                    cb.log(f"Written {names} ({result['seconds']:.1f} s).")
            if error is not None:
                _wait_stopped(running, cb)
                break
        if local is not None and error is None and not canceled and reported < total:
            cb.progress(1.0, f"{total}/{total} tile-dates done")
    finally:
        _LOCAL_RUNS.pop(run_id, None)
        with suppress(Exception):  # the run's outcome matters, not this tidying
            if running:  # left after the grace time, or the client itself failed: stop, then release
                halt()
                client.cancel(list(running), force=True)
            if stop is not None:
                stop.clear()  # the scheduler forgets the event
    if canceled:
        raise Canceled("Fusion canceled: the dates under way were not written.")
    if error is not None:
        raise error
    return clipped


def _wait_stopped(running: dict, cb: Callbacks) -> None:
    """After the stop event: waits for the running tasks to end (each at its next tile, its partial
    files removed), at most STOP_GRACE_S; what is left is then released by the caller."""
    deadline = time.monotonic() + STOP_GRACE_S
    while running and time.monotonic() < deadline:
        for future in [f for f in running if f.done()]:
            del running[future]
        if running:
            time.sleep(POLL_S / 4)
    if running:
        cb.warn(
            f"{len(running)} Dask task(s) did not stop within {STOP_GRACE_S:.0f} s; their futures are released "
            "(a task that still ends writes no file once it sees the stop)."
        )


def _task_error(error: BaseException, address: str, dates: list[str]) -> BaseException:
    """A task's own error as it is (the in-process run raises the same); Dask's (a lost worker or
    scheduler) as a FusionError that says what happened."""
    module = type(error).__module__ or ""
    if isinstance(error, (ValueError, Canceled)) or not (
        module.startswith(("distributed", "asyncio", "concurrent")) or isinstance(error, OSError)
    ):
        return error
    where = "Dask in this process" if address == THREADS else f"The Dask cluster at {address}"
    return FusionError(
        f"{where} failed while fusing {', '.join(dates)}: {type(error).__name__}: {error}. "
        "A worker may have died (memory: lower TILE_SIZE, or start workers with fewer threads) or the "
        "scheduler may be gone; run again with SKIP_EXISTING to keep the dates already written."
    )
