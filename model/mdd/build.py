"""Build MDD stack: every input layer warped onto one common grid and written as an MDD.

``build_mdd_stack`` is the whole algorithm behind ``stsfusion:buildmdd``, on plain paths and values.
Memory stays bounded by a window: each layer is warped by GDAL onto the target grid one window
(256 rows by a memory-budgeted, tile-aligned width) at a time and written into the role's stack
(RoleStackWriter). The windows may be warped as Dask tasks (``executor``: in this process on every
core, or on a cluster), as many at once as there are threads; this process writes them in order.
Stacks are written under temporary names and renamed only when every layer is in; the manifest
comes last, so a failure or a cancel leaves no output file.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np

from ..core.callbacks import Callbacks, Canceled, callbacks_or_default
from ..core.grid import Grid
from ..core.memory import release_freed_memory
from ..core.tasks import portable_call
from ..core.vocabulary import ROLE_LABELS, ROLE_PARAMS, ROLES, iso_date
from .format import MDD, NODATA, RoleStack, RoleStackWriter, stack_paths, write_manifest
from .geotiff import cap_gdal_cache, with_gdal_cache
from .products import ProductError, QualityRule, open_product, readers, unknown_classes
from .products.quality import QualityMask, class_summary, explicit_mask, parse_mask_values
from .raster_io import (
    LayerInfo,
    RasterInputError,
    crs_from_user,
    extent_in_crs,
    inspect_layer,
    open_source,
    pixel_size_in_crs,
    same_crs,
    transform_bounds,
    warp_window,
)
from .resample import storage_ratio

WINDOW_ROWS = 256  # Build MDD stack's window height on a coarse role, in fine-grid px (RoleStack.stored_px)
MAX_WINDOW_COLUMNS = 512  # its widest window, in fine-grid px (at most): the same at every raster size from 512 px
# Each window's source blocks are read once (its neighbours share only their edges), and the written
# blocks are flushed window by window: a small cache is enough, and the same at every raster size.
BUILD_GDAL_CACHE_MB = 16
MAX_PIXELS = 2**31  # a grid larger than this is a unit mistake (PIXEL_SIZE in metres vs degrees)
_EPS = 1e-6  # in pixels: coordinates within this of a grid line are on it (float noise)


class BuildMddError(ValueError):
    """Bad input for Build MDD stack; the message names the layer or parameter and the fix."""


def parse_dates_override(text: str | dict | None) -> dict:
    """``"layer_a=2022-07-24; layer_b=2022-08-10"`` (or a dict) -> {layer name: ISO date}."""
    if not text:
        return {}
    items = (
        text.items()
        if isinstance(text, dict)
        else (e.rsplit("=", 1) if "=" in e else (e, None) for e in re.split(r"[;\n]+", str(text)) if e.strip())
    )
    out = {}
    for name, value in items:
        name, value = str(name).strip(), (str(value).strip() if value is not None else "")
        m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", value)
        if not name or not m or not iso_date(*m.groups()):
            raise BuildMddError(
                f"DATES entry '{name}={value}' is not layer_name=YYYY-MM-DD: write e.g. "
                "'S2_potsdam=2022-07-24;L8_potsdam=2022-08-10' (layer names as in QGIS)."
            )
        if out.get(name, value) != value:
            raise BuildMddError(f"DATES gives layer '{name}' two dates ({out[name]} and {value}): keep one.")
        out[name] = value
    return out


def _as_sources(layers) -> list:
    """Layers as (name, source): a path, or a (name, path) pair (QGIS layer name, source)."""
    out = []
    for item in layers or []:
        name, source = item if isinstance(item, (tuple, list)) else (None, item)
        out.append((name or os.path.splitext(os.path.basename(str(source)))[0], str(source)))
    return out


def empty_role_message(role: str) -> str:
    return (
        f"No {ROLE_LABELS[role]} layer was given: add at least one raster to {ROLE_PARAMS[role]} (one layer per "
        f"date), or a product to {ROLE_PARAMS[role]}_PRODUCTS."
    )


def _inspect_role(
    role,
    layers,
    overrides,
    work_dir=None,
    mask_classes=None,
    mask_buffer=0,
    masks=None,
    mask_rule=None,
    log=None,
    families=None,
) -> list:
    """The role's layers inspected and checked, sorted by date; ``masks`` (name, path) are matched
    to them (``_match_masks``), its log lines appended to ``log``."""
    label, param = ROLE_LABELS[role], ROLE_PARAMS[role]
    if not layers:
        raise BuildMddError(empty_role_message(role))
    infos = []
    for name, source in layers:
        try:
            product = open_product(source, work_dir, mask_classes) if work_dir else None
            if product is None:
                info = inspect_layer(source, name)
            else:
                info = inspect_layer(product.stack_path, name)
                info.origin, info.quality = source, product.quality
                if families is not None:
                    families.add(product.family)
                if product.quality is not None:
                    product.quality.rule.buffer_px = int(mask_buffer)
        except (RasterInputError, ProductError) as e:
            raise BuildMddError(str(e)) from None
        if not info.crs_wkt:
            raise BuildMddError(
                f"{label} layer '{name}' has no CRS: assign one (Raster > Projections > "
                "Assign Projection, or gdal_edit.py -a_srs EPSG:<code>) and run again."
            )
        if not info.georeferenced:
            raise BuildMddError(
                f"{label} layer '{name}' is not georeferenced (no geotransform): "
                "georeference it (Raster > Georeferencer, or gdal_edit.py -a_ullr) first."
            )
        if name in overrides:
            info.date, info.date_source = overrides[name], "DATES"
        if info.date is None:
            raise BuildMddError(
                f"{label} layer '{name}' has no date in its metadata or file name: add "
                f"'{name}=YYYY-MM-DD' to DATES, or put the date in the file name "
                "(e.g. ..._20220724.tif)."
            )
        infos.append(info)
    given_order = list(infos)
    infos.sort(key=lambda i: i.date)
    first = infos[0]
    for info in infos[1:]:
        if info.band_count != first.band_count:
            raise BuildMddError(
                f"{label} layers must have the same bands on every date, but '{info.name}' has "
                f"{info.band_count} bands and '{first.name}' has {first.band_count}: give {param} "
                "layers of one sensor (same bands), or subset them with Raster > Extraction first."
            )
    for a, b in zip(infos, infos[1:]):
        if a.date == b.date:
            raise BuildMddError(
                f"{label} layers '{a.name}' and '{b.name}' have the same date {a.date} ({a.date_source}; "
                f"{b.date_source}): a role holds one layer per date. Remove one, or correct its date "
                f"with DATES ('{b.name}=YYYY-MM-DD')."
            )
    if role == "hs":
        for info in infos:
            if info.wavelengths is None:
                raise BuildMddError(
                    f"HS layer '{info.name}' has no band wavelengths: the HS role needs them. Write band "
                    "metadata 'wavelength' and 'wavelength_units' (nm) per band, or give the raster an "
                    "ENVI header with 'wavelength = {...}' and 'wavelength units'."
                )
    if masks:
        lines = _match_masks(role, given_order, masks, mask_rule or parse_mask_values(None), mask_buffer)
        if log is not None:
            log.extend(lines)
    return infos


def _match_masks(role, infos, masks, rule: QualityRule, buffer_px) -> list:
    """Gives each layer of ``infos`` (in the order given) its explicit mask from ``masks`` ((name,
    path) pairs): by date when every mask has one (metadata or file name, as layers), else by
    position (the i-th mask to the i-th layer). Returns the log lines saying which went where."""
    label, key = ROLE_LABELS[role], ROLE_PARAMS[role] + "_MASKS"
    found = []
    for name, source in masks:
        try:
            m = inspect_layer(source, name)
        except RasterInputError as e:
            raise BuildMddError(f"{key}: {e}") from None
        m.name = os.path.basename(source)
        if not m.crs_wkt or not m.georeferenced:
            raise BuildMddError(
                f"{key} mask '{m.name}' has no CRS or no geotransform: give a georeferenced mask raster "
                "(assign one with gdal_edit.py -a_srs EPSG:<code> / -a_ullr, or Raster > Projections)."
            )
        found.append(m)
    undated = [m.name for m in found if m.date is None]
    pairs = []
    if not undated:
        by_date, taken = {i.date: i for i in infos}, {}
        for m in found:
            layer = by_date.get(m.date)
            if layer is None:
                raise BuildMddError(
                    f"{key} mask '{m.name}' has the date {m.date} (from its {m.date_source}), but no {label} "
                    f"layer has that date (theirs: {', '.join(sorted(by_date))}): give the mask of one of "
                    "these dates, correct the date in its file name, or remove it."
                )
            if m.date in taken:
                raise BuildMddError(
                    f"{key} masks '{taken[m.date].name}' and '{m.name}' are both for {label} layer "
                    f"'{layer.name}' ({m.date}): give one mask per layer (combine them first, e.g. with the "
                    "Raster Calculator), or remove one."
                )
            taken[m.date] = m
            pairs.append((layer, m, f"by date {m.date}"))
    else:
        if len(found) != len(infos):
            raise BuildMddError(
                f"{key} gives {len(found)} mask(s) for {len(infos)} {label} layer(s). Mask(s) without a date "
                f"in the file name or metadata ({', '.join(undated)}) are matched by position (the i-th "
                "mask to the i-th layer, in the order given), so give exactly one mask per layer, in the "
                "layers' order; or put each mask's date in its file name (e.g. mask_2022-07-24.tif) to "
                "match by date and mask only some layers."
            )
        pairs = [(layer, m, f"by position {k + 1}") for k, (layer, m) in enumerate(zip(infos, found))]
    lines = []
    for layer, m, how in pairs:
        e, le = extent_in_crs(m, layer.crs_wkt), layer.extent
        if e[0] >= le[2] or e[2] <= le[0] or e[1] >= le[3] or e[3] <= le[1]:
            raise BuildMddError(
                f"{key} mask '{m.name}' does not overlap its {label} layer '{layer.name}' ({how}): the mask's "
                f"extent is {_fmt(e)}, the layer's {_fmt(le)} (the layer's CRS). Give the mask of that "
                "layer's area, or check which layer it belongs to."
            )
        layer.masks.append(explicit_mask(m.source, rule, buffer_px))
        lines.append(f"{key}: mask '{m.name}' -> {label} layer '{layer.name}' ({how})")
    return lines


def _snap(lo, hi, anchor, px, inward) -> tuple:
    """Grid-line coordinates (anchor + k*px) enclosing [lo, hi] (outward) or inside it (inward)."""
    a, b = (lo - anchor) / px, (hi - anchor) / px
    if inward:
        ka, kb = math.ceil(a - _EPS), math.floor(b + _EPS)
    else:
        ka, kb = math.floor(a + _EPS), math.ceil(b - _EPS)
    return anchor + ka * px, anchor + kb * px, kb - ka


def _target_grid(roles, crs_wkt, pixel_size, target_extent, extent_crs) -> Grid:
    anchor_layer = roles["fine_ms"][0]
    # Snap to the fine MS pixel grid when it is in the target CRS: fine MS pixels then copy 1:1.
    anchor = (
        (anchor_layer.geotransform[0], anchor_layer.geotransform[3])
        if same_crs(anchor_layer.crs_wkt, crs_wkt)
        else (0.0, 0.0)
    )
    everyone = [(role, info) for role in ROLES for info in roles[role]]
    if target_extent is not None:
        bounds = tuple(float(v) for v in target_extent)
        if extent_crs and not same_crs(extent_crs, crs_wkt):
            bounds = transform_bounds(bounds, extent_crs, crs_wkt)
        if not (bounds[2] > bounds[0] and bounds[3] > bounds[1]):
            raise BuildMddError(f"TARGET_EXTENT {bounds} is empty: give xmin < xmax and ymin < ymax.")
        for role, info in everyone:
            e = extent_in_crs(info, crs_wkt)
            if e[0] >= bounds[2] or e[2] <= bounds[0] or e[1] >= bounds[3] or e[3] <= bounds[1]:
                raise BuildMddError(
                    f"{ROLE_LABELS[role]} layer '{info.name}' has no pixel inside TARGET_EXTENT "
                    f"{_fmt(bounds)} (its extent is {_fmt(e)} in the target CRS): choose an extent that "
                    "every layer covers, or leave TARGET_EXTENT empty for the inputs' overlap."
                )
        inward = False
    else:
        bounds = None
        for role, info in everyone:
            e = extent_in_crs(info, crs_wkt)
            new = (
                e
                if bounds is None
                else (max(bounds[0], e[0]), max(bounds[1], e[1]), min(bounds[2], e[2]), min(bounds[3], e[3]))
            )
            if new[0] >= new[2] or new[1] >= new[3]:
                raise BuildMddError(
                    f"{ROLE_LABELS[role]} layer '{info.name}' does not overlap the layers before it: its "
                    f"extent is {_fmt(e)}, theirs overlap in {_fmt(bounds)} (target CRS). Give layers of "
                    "the same area, or reproject/replace this one."
                )
            bounds = new
        inward = True
    x0, x1, w = _snap(bounds[0], bounds[2], anchor[0], pixel_size, inward)
    y0, y1, h = _snap(bounds[1], bounds[3], anchor[1], pixel_size, inward)
    if w < 1 or h < 1:
        raise BuildMddError(
            f"The area {_fmt(bounds)} is smaller than one {pixel_size:g} pixel: use a "
            "smaller PIXEL_SIZE or a larger TARGET_EXTENT."
        )
    if w * h > MAX_PIXELS:
        raise BuildMddError(
            f"The grid would be {w} x {h} pixels: PIXEL_SIZE {pixel_size:g} is in target "
            "CRS units (metres for UTM, degrees for EPSG:4326); check it and TARGET_EXTENT."
        )
    return Grid(crs_wkt, (x0, pixel_size, 0.0, y1, 0.0, -pixel_size), int(w), int(h))


def _fmt(b) -> str:
    return "(none)" if b is None else "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def _resampling(native: float, grid_px: float) -> str:
    # Finer source: a target pixel covers several source pixels; their area average is what a
    # coarser sensor would see, and it does not alias. Coarser (or equal) source: bilinear, which
    # interpolates smoothly between pixel centres without blocky steps (nearest) or overshoot
    # (cubic) and without inventing detail; on an aligned equal grid it copies values exactly.
    return "average" if native < grid_px * (1 - 1e-6) else "bilinear"


def _role_stack(role, infos, manifest, native_px) -> RoleStack:
    path, mask_path = stack_paths(manifest, role)
    with_wl = [i for i in infos if i.wavelengths]
    wl = with_wl[0].wavelengths if with_wl else None
    fwhm = with_wl[0].fwhm if with_wl else None
    bbls = [i.bbl for i in infos if i.bbl]
    # A band is bad if any date flags it (the stack has one band list for all dates).
    bbl = [int(all(b[k] for b in bbls)) for k in range(infos[0].band_count)] if bbls else None
    return RoleStack(
        role=role,
        path=path,
        mask_path=mask_path,
        dates=[i.date for i in infos],
        wavelengths=[float(v) for v in wl] if wl else None,
        fwhm=[float(v) for v in fwhm] if fwhm else None,
        native_pixel_size=native_px,
        layers=[i.name for i in infos],
        band_names=None if wl else list(infos[0].band_names),
        bbl=bbl,
    )


@with_gdal_cache(BUILD_GDAL_CACHE_MB)
def build_mdd_stack(
    output: str,
    fine_ms: Sequence[str | tuple[str, str]],
    dense_ms: Sequence[str | tuple[str, str]],
    hs: Sequence[str | tuple[str, str]],
    dates: str | dict | None = None,
    target_crs: str | None = None,
    pixel_size: float | None = None,
    target_extent: tuple | None = None,
    extent_crs: str | None = None,
    callbacks: Callbacks | None = None,
    block_memory_mb: int = 256,
    block: int = 256,
    mask_classes: Sequence[str] | None = None,
    mask_buffer: int = 0,
    masks: dict[str, Sequence[str | tuple[str, str]]] | None = None,
    mask_values: str | None = None,
    executor: object | None = None,
) -> MDD:
    """Builds the MDD whose manifest is ``output`` (.json); returns it opened.

    fine_ms, dense_ms, hs: lists of raster paths or (layer name, path) pairs, one layer per date.
    dates: {layer name: YYYY-MM-DD} or "name=YYYY-MM-DD;...", overriding metadata and file names.
    target_crs: EPSG code / WKT (default: the first fine MS layer's CRS); pixel_size: in target
    CRS units (default: the fine MS pixel size); target_extent: (xmin, ymin, xmax, ymax) in
    ``extent_crs`` (default the target CRS); default: the overlap of all inputs, snapped inward to
    the fine MS pixel grid. ``callbacks`` report progress and are checked for cancel per window.
    Windows are ``block`` rows (a multiple of the stacks' 64 px tiles) by as many columns as
    ``block_memory_mb`` allows. A path may also be a product (EnMAP L2A, Sentinel-2 L2A, Landsat C2 L2: model/mdd/
    products): it is read with its date, wavelengths and scaling, and its quality layer masks the
    classes ``mask_classes`` (None: the family's default), grown by ``mask_buffer`` source pixels.
    masks: role -> explicit MASK rasters (paths or (name, path) pairs) for that role's layers, matched
    by date (their metadata or file name) when every mask has one, else by position; ``mask_values``
    says which mask values are invalid (``parse_mask_values``: "" any non-zero, "3,8,9" those
    values, "bits:1,3,4" those bits); grown by ``mask_buffer`` mask pixels, added to a product's
    own quality layer. The mask's nodata and the area outside it are valid.
    executor: None warps the windows here, one after another; a ``distributed.Client`` (Dask in this
    process or on a cluster whose workers see the inputs at the same paths) or any executor with
    ``submit`` warps them as tasks, as many at once as it has threads, and this process writes them:
    the values are the same either way.
    Raises BuildMddError for bad input and Canceled on cancel, leaving no file behind.
    """
    cb = callbacks_or_default(callbacks)
    if pixel_size is not None and not (float(pixel_size) > 0 and math.isfinite(float(pixel_size))):
        raise BuildMddError(
            f"PIXEL_SIZE must be a positive number in target CRS units, not {pixel_size}: "
            "give e.g. 10 (metres), or leave it empty for the fine MS pixel size."
        )
    overrides = parse_dates_override(dates)
    try:
        mask_rule = parse_mask_values(mask_values)
    except ValueError as e:
        raise BuildMddError(str(e)) from None
    unknown_roles = sorted(set(masks or {}) - set(ROLES))
    if unknown_roles:
        raise BuildMddError(f"masks are given for {', '.join(unknown_roles)}: use the roles {', '.join(ROLES)}.")
    given_masks = {role: _as_sources((masks or {}).get(role)) for role in ROLES}
    if (mask_values or "").strip() and not any(given_masks.values()):
        cb.warn(
            f"MASK_VALUES '{mask_values}' is ignored: it applies to explicit masks (FINE_MS_MASKS, "
            "DENSE_MS_MASKS, HS_MASKS) and none is given; a product's quality classes are MASK_CLASSES."
        )
    given = {role: _as_sources(layers) for role, layers in zip(ROLES, (fine_ms, dense_ms, hs))}
    unknown = sorted(set(overrides) - {n for layers in given.values() for n, _ in layers})
    if unknown:
        names = ", ".join(sorted({n for layers in given.values() for n, _ in layers}))
        raise BuildMddError(
            f"DATES names {', '.join(unknown)}, which is not an input layer: use the layer "
            f"names as QGIS shows them ({names})."
        )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    # Product stacks (VRTs) live only while the MDD is built: its stacks hold the values.
    work_dir = tempfile.mkdtemp(prefix=".stsfusion_products_", dir=os.path.dirname(os.path.abspath(output)))
    try:
        progress = cb.progress
        mask_log, families = [], set()
        roles = {
            role: _inspect_role(
                role,
                given[role],
                overrides,
                work_dir,
                mask_classes,
                mask_buffer,
                given_masks[role],
                mask_rule,
                mask_log,
                families,
            )
            for role in ROLES
        }
        unknown = unknown_classes(mask_classes, families)
        if families and unknown:
            names = "; ".join(f"{r.FAMILY}: {', '.join(r.CLASS_NAMES)}" for r in readers() if r.FAMILY in families)
            raise BuildMddError(
                f"MASK_CLASSES names {', '.join(unknown)}, which none of the given products' families knows "
                f"({names}); each family uses the names it knows and ignores the others'."
            )

        try:
            crs_wkt = crs_from_user(str(target_crs)) if target_crs else roles["fine_ms"][0].crs_wkt
            ext_crs = crs_from_user(str(extent_crs)) if extent_crs else None
        except RasterInputError as e:
            raise BuildMddError(f"TARGET_CRS: {e}") from None
        px = float(pixel_size) if pixel_size is not None else pixel_size_in_crs(roles["fine_ms"][0], crs_wkt)
        grid = _target_grid(roles, crs_wkt, px, target_extent, ext_crs)
        progress(0.0, f"Target grid: {grid.width} x {grid.height} pixels of {px:g}, extent {_fmt(grid.extent)}")
        for line in mask_log:
            progress(0.0, line)

        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        stacks, native = {}, {}
        for role in ROLES:
            sizes = [pixel_size_in_crs(i, crs_wkt) for i in roles[role]]
            native[role] = sizes
            stacks[role] = _role_stack(role, roles[role], output, float(np.mean(sizes)))
            # Stored at its own pixel size (aligned with the grid), brought to the grid as it is read.
            stacks[role].pixel_ratio = storage_ratio(float(np.mean(sizes)), px) if role != "fine_ms" else 1.0
        writers, committed, inputs = [], [], {}
        try:
            for role in ROLES:
                writers.append(RoleStackWriter(stacks[role], grid))
            stored = {role: stacks[role].stored_grid(grid) for role in ROLES}
            jobs = []
            for role, writer in zip(ROLES, writers):
                for t, info in enumerate(roles[role]):
                    method = _resampling(native[role][t], stored[role].pixel_size)
                    header = (
                        f"{ROLE_LABELS[role]} {info.date} '{info.name}' (date from "
                        f"{info.date_source}): {native[role][t]:g} -> {stored[role].pixel_size:g}, {method}"
                        + (f" (stored at its own pixel size, {px:g} as read)" if stored[role] is not grid else "")
                    )
                    windows = list(
                        _windows(
                            stored[role],
                            info.band_count,
                            stacks[role].stored_px(WINDOW_ROWS) if stored[role] is not grid else block,
                            block_memory_mb,
                            stacks[role].stored_px(MAX_WINDOW_COLUMNS, within=True),
                        )
                    )
                    jobs.append(
                        _LayerJob(role, t, info, stored[role], method, writer, stacks[role].bbl, windows, header)
                    )
            for job in _copy_layers(jobs, executor, cb):
                entry = {
                    "layer": job.info.name,
                    "source": job.info.origin or job.info.source,
                    "date": job.info.date,
                    "date_source": job.info.date_source,
                    "resampling": job.method,
                    "valid_fraction": round(job.valid_fraction, 6),
                }
                if job.info.masks:  # only with explicit masks: without, the manifest stays as it was
                    entry["masks"] = [q.path for q in job.info.masks]
                    entry["masked_fraction"] = round(job.masked_fraction, 6)
                inputs.setdefault(job.role, []).append(entry)
            for w in writers:
                w.commit()
                committed.append(w.stack)
            write_manifest(output, grid, stacks, {"created_by": "stsfusion:buildmdd", "inputs": inputs})
        except BaseException:
            for w in writers:
                w.abort()
            for stack in committed:  # a failure after some renames: undo them
                for p in (stack.path, stack.mask_path):
                    if os.path.exists(p):
                        os.remove(p)
            raise
        progress(1.0, f"MDD written: {output}")
        return MDD.open(output)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _windows(grid, band_count, block, block_memory_mb, max_columns=MAX_WINDOW_COLUMNS):
    """Windows (xoff, yoff, xsize, ysize) of ``block`` rows and a multiple of ``block`` columns, at
    most ``max_columns`` (rounded down to ``block``, at least one block).

    With block a multiple of the GeoTIFF tile size (256 rows of 64 px tiles on the fine grid,
    ``RoleStack.stored_px`` on a coarse role's), every window fills whole tiles of every band, so
    each tile is compressed and written once; windows of a few rows across the full width would
    leave every tile of the strip half-written and make GDAL re-read them once its cache is full.
    A window holds about six float32 copies of its bands (raw, scaled, validity, written values,
    GDAL buffers): its width comes from the memory budget, at least one block.
    """
    per_col = band_count * block * 4 * 6
    # At most max_columns: the window, hence the memory, stops growing with the raster's width.
    cols = max(block, min(int(max_columns), block_memory_mb * 2**20 // per_col) // block * block)
    for y in range(0, grid.height, block):
        for x in range(0, grid.width, cols):
            yield x, y, min(cols, grid.width - x), min(block, grid.height - y)


@dataclass
class _LayerJob:
    """One layer to copy into its role's stack, window by window, and what its windows found."""

    role: str
    t: int  # its date's index in the role's stack
    info: LayerInfo
    grid: Grid  # the role's stored grid
    method: str
    writer: RoleStackWriter
    bbl: list | None
    windows: list
    header: str  # the log line that introduces it
    valid_fraction: float = 0.0
    masked_fraction: float = 0.0
    n_valid: int = 0
    n_masked: int = 0
    band_seen: np.ndarray | None = None
    counts: list = field(default_factory=list)  # per quality layer: class -> invalid pixels

    def task(self, window: tuple) -> bytes:
        """The window's task, as bytes for ``pickle.loads`` (``PortableCall``): a cluster's scheduler
        never needs the plugin, only its workers do."""
        return portable_call(_warp_task, self.info, self.grid, window, self.method, self.bbl, self.qualities)

    @property
    def qualities(self) -> list:
        """The layer's quality layer (a product's) and explicit masks, in the order of its counts."""
        return ([self.info.quality] if self.info.quality is not None else []) + list(self.info.masks)


def _warp_task(info: LayerInfo, grid: Grid, window: tuple, method: str, bbl: list | None, qualities: list) -> dict:
    """One window of a layer warped onto its stored grid (a Dask task, in this process or on a
    worker): the values ready to write (nodata where not finite or in a bad band), the valid pixels,
    the bands seen, and what the quality layers and masks flagged."""
    release_freed_memory()  # the last window's buffers: the peak stays that of the windows in flight
    cap_gdal_cache(BUILD_GDAL_CACHE_MB)  # a cluster's worker: bounded as this process is
    src, masks = _opened(info, grid, qualities)
    good = np.ones(info.band_count, bool) if not bbl else np.asarray(bbl, bool)
    # Bad bands (bbl = 0, e.g. EnMAP's water-vapour bands, nodata everywhere) do not count.
    covered = (lambda f: f[good].all(axis=0)) if good.any() else (lambda f: f.any(axis=0))
    under = None
    if method != "near":
        # Validity comes from the source pixel under each target pixel's centre (nearest): a cloud
        # keeps its true outline. The resampled values alone would not do: GDAL fills the rim of a
        # hole from the valid neighbours, shrinking it by up to a source pixel. Warped first and kept
        # as booleans only, so two float copies of a window never coexist.
        under = covered(np.isfinite(warp_window(src, info, grid, window, "near")))
    values = warp_window(src, info, grid, window, method)
    finite = np.isfinite(values)
    valid = covered(finite)
    if under is not None:
        valid &= under
    n_masked, counts = 0, []
    if masks:  # quality classes (clouds, shadows...) and explicit mask values are invalid
        for q in masks:
            q.counts = {}  # this window's counts only: the layer's sum is made by the caller
        hit = masks[0].invalid(window)
        for q in masks[1:]:
            hit |= q.invalid(window)
        valid &= ~hit
        n_masked, counts = int(hit.sum()), [q.counts for q in masks]
    band_seen = finite.any(axis=(1, 2))
    # A value that is not there (non-finite) or not to be trusted (a bad band) is nodata, also in a
    # valid pixel: it reads back as NaN, stays out of the PCA and comes out as nodata.
    finite &= good[:, None, None]
    np.copyto(values, NODATA, where=~finite)
    return {"values": values, "valid": valid, "band_seen": band_seen, "n_masked": n_masked, "counts": counts}


# Per thread, the layer it last warped: (key, GDAL dataset, QualityMasks). A layer's next window on
# that thread reuses them: a product's VRT (Sentinel-2's JP2 files, EnMAP's) is not opened and parsed
# again for every window (measured: 41 against 5 ms for a 64 px window of a Sentinel-2 product).
_OPENED: dict = {}
_OPENED_LOCK = threading.Lock()


def _opened(info: LayerInfo, grid: Grid, qualities: list) -> tuple:
    """The layer's GDAL dataset and its QualityMasks for this thread (``_OPENED``)."""
    key = (info.source, grid.geotransform, grid.width, grid.height, repr(qualities))
    me = threading.get_ident()
    with _OPENED_LOCK:
        entry = _OPENED.get(me)
    if entry is None or entry[0] != key:
        with _OPENED_LOCK:
            _OPENED.pop(me, None)  # the last layer's files are closed before the next ones open
        src = open_source(info)
        if src is None:
            raise BuildMddError(
                f"Cannot open '{info.source}' on {socket.gethostname()}: a Dask worker reads the inputs at the "
                "paths given here, so put them in a folder every worker sees at the same path, or build in this "
                "process (DASK_SCHEDULER none)."
            )
        entry = (key, src, [QualityMask(q, grid) for q in qualities])
        with _OPENED_LOCK:
            _OPENED[me] = entry
    return entry[1], entry[2]


def forget_opened() -> None:
    """Closes every thread's open layer in this process (no task may be running): the inputs and the
    product VRTs may then be removed, also on Windows."""
    with _OPENED_LOCK:
        _OPENED.clear()


def _copy_layers(jobs: list, executor, cb: Callbacks) -> Iterator[_LayerJob]:
    """Warps every window of every layer of ``jobs`` and writes it into its role's stack; yields
    each layer when its last window is written (in the order of ``jobs``).

    ``executor``: None warps here, one window after another; else anything with ``submit(fn,
    *args)`` (a ``distributed.Client``: Dask in this process or on a cluster; a
    ``concurrent.futures`` executor) warps them as tasks, as many at a time as it has threads (so
    the memory is that of as many windows). Their results are written here, in order,
    so the stacks' values are those of the loop, and a failure or a cancel waits for the windows in
    flight (never more than those) before the writers' files are removed."""
    stream = [(job, window) for job in jobs for window in job.windows]
    total = max(1, sum(w[2] * w[3] for _, w in stream))
    slots = _task_slots(executor)
    running: deque = deque()
    done = 0
    try:
        for k in range(len(stream)):
            while executor is not None and len(running) < slots and k + len(running) < len(stream):
                job, window = stream[k + len(running)]
                running.append(_submit(executor, job.task(window)))
            job, window = stream[k]
            if window is job.windows[0]:
                cb.progress(done / total, job.header)
            if executor is None:
                cb.check("Build MDD stack was canceled; no output was written.")
                result = pickle.loads(job.task(window))
            else:
                future = running.popleft()
                result = _result(future, cb)
            job.writer.write(job.t, result["values"], result["valid"], window, in_place=True)
            job.writer.flush()  # whole blocks: out of GDAL's cache now, so its memory does not grow
            _add_window(job, result)
            del result
            done += window[2] * window[3]
            cb.progress(done / total, "")
            if window is job.windows[-1]:
                _finish_layer(job)
                note = f"; masked {job.info.masked}" if job.info.masked is not None else ""
                cb.progress(done / total, f"  valid: {100 * job.valid_fraction:.1f} % of the grid{note}")
                yield job
    finally:
        _wait_for(running)  # no task runs now: the layers they opened can be closed
        forget_opened()
        if hasattr(executor, "run"):  # a distributed.Client: on each of its workers too
            with suppress(Exception):
                executor.run(forget_opened)


def _task_slots(executor) -> int:
    """How many tasks ``executor`` runs at once: its threads (a Dask client: all its workers')."""
    if executor is None:
        return 0
    if hasattr(executor, "nthreads"):
        return max(1, sum(executor.nthreads().values()))
    return max(1, int(getattr(executor, "_max_workers", 1)))


def _submit(executor, payload: bytes):
    if hasattr(executor, "scheduler_info"):  # a distributed.Client: every window its own task
        return executor.submit(pickle.loads, payload, pure=False)
    return executor.submit(pickle.loads, payload)


def _result(future, cb: Callbacks) -> dict:
    """The future's result; the cancel is read while it runs (a window takes a second or so)."""
    while not future.done():
        cb.check("Build MDD stack was canceled; no output was written.")
        time.sleep(0.02)
    cb.check("Build MDD stack was canceled; no output was written.")
    try:
        return future.result()
    except (BuildMddError, Canceled):
        raise
    except Exception as e:  # a worker's own error (GDAL, memory) or Dask's (a lost worker)
        raise BuildMddError(
            f"Warping a window failed: {type(e).__name__}: {e}. On a Dask cluster a worker may have died or lack "
            "the inputs; run again, or with DASK_SCHEDULER none to build in this process."
        ) from None


def _wait_for(running: deque) -> None:
    """Lets the windows in flight end (their results are dropped), so no task outlives the run."""
    while running:
        future = running.popleft()
        with suppress(Exception):
            future.result()


def _add_window(job: _LayerJob, result: dict) -> None:
    job.n_valid += int(result["valid"].sum())
    job.n_masked += result["n_masked"]
    job.band_seen = result["band_seen"] if job.band_seen is None else job.band_seen | result["band_seen"]
    for k, counts in enumerate(result["counts"]):
        if len(job.counts) <= k:
            job.counts.append({})
        for cls, n in counts.items():
            job.counts[k][cls] = job.counts[k].get(cls, 0) + n


def _finish_layer(job: _LayerJob) -> None:
    """The layer's valid and masked fractions (``info.masked`` says by what); BuildMddError when no
    pixel of it is valid on the grid."""
    info, grid = job.info, job.grid
    total = grid.width * grid.height
    qualities = job.qualities
    masked = "; ".join(
        f"{q.label}: {class_summary(job.counts[k] if k < len(job.counts) else {}, total)}"
        for k, q in enumerate(qualities)
    )
    if job.n_valid == 0 and any(any(c.values()) for c in job.counts):
        fixes = (["MASK_CLASSES"] if info.quality is not None else []) + (["MASK_VALUES"] if info.masks else [])
        fix = " or ".join(fixes) + (" (or check its mask)" if info.masks else "")
        raise BuildMddError(
            f"Layer '{info.name}' is masked everywhere on the target grid ({masked}): leave this date "
            f"out, or choose fewer {fix}."
        )
    if job.n_valid == 0:
        good = np.ones(info.band_count, bool) if not job.bbl else np.asarray(job.bbl, bool)
        seen = job.band_seen if job.band_seen is not None else np.zeros(info.band_count, bool)
        empty = [str(b + 1) for b in np.flatnonzero(~seen & good)]
        why = (
            f"bands {', '.join(empty[:10])}{'...' if len(empty) > 10 else ''} are nodata everywhere; "
            "mark such bands bad (band metadata bbl=0 or ENVI 'bbl') or remove them, "
            if seen.any() and empty
            else ""
        )
        raise BuildMddError(
            f"Layer '{info.name}' has no valid pixel on the target grid {_fmt(grid.extent)}: {why}"
            "choose a TARGET_EXTENT where it has data, or remove it."
        )
    if qualities:
        info.masked = f"{100.0 * job.n_masked / total:.1f} % ({masked})"
    job.valid_fraction, job.masked_fraction = job.n_valid / float(total), job.n_masked / float(total)
