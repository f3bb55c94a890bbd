"""Build MDD stack: every input layer warped onto one common grid and written as an MDD.

``build_mdd_stack`` is the whole algorithm behind ``stsfusion:buildmdd``, on plain paths and values.
Memory stays bounded by a window: each layer is warped by GDAL onto the target grid one window
(256 rows by a memory-budgeted, tile-aligned width) at a time and written into the role's stack
(RoleStackWriter). Stacks are written under temporary names and renamed only when every layer
is in; the manifest comes last, so a failure or a cancel leaves no output file.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np

from ..core.callbacks import Callbacks, callbacks_or_default
from ..core.grid import Grid
from ..core.vocabulary import ROLE_LABELS, ROLE_PARAMS, ROLES, iso_date
from .format import MDD, NODATA, RoleStack, RoleStackWriter, stack_paths, write_manifest
from .products import ProductError, open_product
from .products.quality import QualityMask
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


def _inspect_role(role, layers, overrides, work_dir=None, mask_classes=None, mask_buffer=0) -> list:
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
    return infos


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
) -> MDD:
    """Builds the MDD whose manifest is ``output`` (.json); returns it opened.

    fine_ms, dense_ms, hs: lists of raster paths or (layer name, path) pairs, one layer per date.
    dates: {layer name: YYYY-MM-DD} or "name=YYYY-MM-DD;...", overriding metadata and file names.
    target_crs: EPSG code / WKT (default: the first fine MS layer's CRS); pixel_size: in target
    CRS units (default: the fine MS pixel size); target_extent: (xmin, ymin, xmax, ymax) in
    ``extent_crs`` (default the target CRS); default: the overlap of all inputs, snapped inward to
    the fine MS pixel grid. ``callbacks`` report progress and are checked for cancel per window.
    Windows are ``block`` rows (the GeoTIFF tile size) by as many columns as ``block_memory_mb``
    allows. A path may also be a product (EnMAP L2A, Sentinel-2 L2A, Landsat C2 L2: model/mdd/
    products): it is read with its date, wavelengths and scaling, and its quality layer masks the
    classes ``mask_classes`` (None: the family's default), grown by ``mask_buffer`` source pixels.
    Raises BuildMddError for bad input and Canceled on cancel, leaving no file behind.
    """
    cb = callbacks_or_default(callbacks)
    if pixel_size is not None and not (float(pixel_size) > 0 and math.isfinite(float(pixel_size))):
        raise BuildMddError(
            f"PIXEL_SIZE must be a positive number in target CRS units, not {pixel_size}: "
            "give e.g. 10 (metres), or leave it empty for the fine MS pixel size."
        )
    overrides = parse_dates_override(dates)
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
        roles = {
            role: _inspect_role(role, given[role], overrides, work_dir, mask_classes, mask_buffer) for role in ROLES
        }

        try:
            crs_wkt = crs_from_user(str(target_crs)) if target_crs else roles["fine_ms"][0].crs_wkt
            ext_crs = crs_from_user(str(extent_crs)) if extent_crs else None
        except RasterInputError as e:
            raise BuildMddError(f"TARGET_CRS: {e}") from None
        px = float(pixel_size) if pixel_size is not None else pixel_size_in_crs(roles["fine_ms"][0], crs_wkt)
        grid = _target_grid(roles, crs_wkt, px, target_extent, ext_crs)
        progress(0.0, f"Target grid: {grid.width} x {grid.height} pixels of {px:g}, extent {_fmt(grid.extent)}")

        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        stacks, native = {}, {}
        for role in ROLES:
            sizes = [pixel_size_in_crs(i, crs_wkt) for i in roles[role]]
            native[role] = sizes
            stacks[role] = _role_stack(role, roles[role], output, float(np.mean(sizes)))
        writers, committed, inputs = [], [], {}
        try:
            for role in ROLES:
                writers.append(RoleStackWriter(stacks[role], grid))
            pixels = grid.width * grid.height
            total = sum(len(roles[r]) for r in ROLES) * pixels
            done = 0
            for role, writer in zip(ROLES, writers):
                inputs[role] = []
                for t, info in enumerate(roles[role]):
                    method = _resampling(native[role][t], px)
                    progress(
                        done / total,
                        f"{ROLE_LABELS[role]} {info.date} '{info.name}' (date from "
                        f"{info.date_source}): {native[role][t]:g} -> {px:g}, {method}",
                    )
                    valid_fraction = _copy_layer(
                        info,
                        grid,
                        method,
                        writer,
                        t,
                        stacks[role].bbl,
                        block_memory_mb,
                        block,
                        cb,
                        lambda n, done=done: progress((done + n) / total, ""),
                    )
                    done += pixels
                    inputs[role].append(
                        {
                            "layer": info.name,
                            "source": info.origin or info.source,
                            "date": info.date,
                            "date_source": info.date_source,
                            "resampling": method,
                            "valid_fraction": round(valid_fraction, 6),
                        }
                    )
                    note = f"; masked by its quality layer: {info.masked}" if info.masked is not None else ""
                    progress(done / total, f"  valid: {100 * valid_fraction:.1f} % of the grid{note}")
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


def _windows(grid, band_count, block, block_memory_mb):
    """Windows (xoff, yoff, xsize, ysize) of ``block`` rows and a multiple of ``block`` columns.

    With block = the GeoTIFF tile size (256), every window fills whole tiles of every band, so
    each tile is compressed and written once; windows of a few rows across the full width would
    leave every tile of the strip half-written and make GDAL re-read them once its cache is full.
    A window holds about six float32 copies of its bands (raw, scaled, validity, written values,
    GDAL buffers): its width comes from the memory budget, at least one block.
    """
    per_col = band_count * block * 4 * 6
    cols = max(block, (block_memory_mb * 2**20 // per_col) // block * block)
    for y in range(0, grid.height, block):
        for x in range(0, grid.width, cols):
            yield x, y, min(cols, grid.width - x), min(block, grid.height - y)


def _copy_layer(
    info: LayerInfo, grid, method, writer, t, bbl, block_memory_mb, block, cb: Callbacks, on_pixels
) -> float:
    """Warps one layer onto the grid and writes it window by window; returns its valid fraction."""
    src = open_source(info)
    good = np.ones(info.band_count, bool) if not bbl else np.asarray(bbl, bool)
    n_valid, band_seen, done = 0, np.zeros(info.band_count, bool), 0
    quality = QualityMask(info.quality, grid) if info.quality is not None else None
    for window in _windows(grid, info.band_count, block, block_memory_mb):
        cb.check("Build MDD stack was canceled; no output was written.")
        values = warp_window(src, info, grid, window, method)
        finite = np.isfinite(values)
        # Bad bands (bbl = 0, e.g. EnMAP's water-vapour bands, nodata everywhere) do not count.
        valid = finite[good].all(axis=0) if good.any() else finite.any(axis=0)
        if method != "near":
            # Validity comes from the source pixel under each target pixel's centre (nearest):
            # a cloud keeps its true outline. The resampled values alone would not do: GDAL fills
            # the rim of a hole from the valid neighbours, shrinking it by up to a source pixel.
            under = np.isfinite(warp_window(src, info, grid, window, "near"))
            valid &= under[good].all(axis=0) if good.any() else under.any(axis=0)
        if quality is not None:  # the product's own quality classes (clouds, shadows...) are invalid
            valid &= ~quality.invalid(window)
        band_seen |= finite.any(axis=(1, 2))
        # A value that is not there (non-finite) or not to be trusted (a bad band) is nodata, also in
        # a valid pixel: it reads back as NaN, stays out of the PCA and comes out as nodata.
        writer.write(t, np.where(finite & good[:, None, None], values, NODATA), valid, window)
        n_valid += int(valid.sum())
        done += window[2] * window[3]
        on_pixels(done)
    if n_valid == 0 and quality is not None and any(quality.counts.values()):
        raise BuildMddError(
            f"Layer '{info.name}' is masked everywhere on the target grid by its quality layer "
            f"({quality.summary(grid.width * grid.height)}): leave this date out, or choose fewer "
            "MASK_CLASSES."
        )
    if n_valid == 0:
        empty = [str(b + 1) for b in np.flatnonzero(~band_seen & good)]
        why = (
            f"bands {', '.join(empty[:10])}{'...' if len(empty) > 10 else ''} are nodata everywhere; "
            "mark such bands bad (band metadata bbl=0 or ENVI 'bbl') or remove them, "
            if band_seen.any() and empty
            else ""
        )
        raise BuildMddError(
            f"Layer '{info.name}' has no valid pixel on the target grid {_fmt(grid.extent)}: {why}"
            "choose a TARGET_EXTENT where it has data, or remove it."
        )
    if quality is not None:
        info.masked = quality.summary(grid.width * grid.height)
    return n_valid / float(grid.width * grid.height)
