"""The MDD: every input on one fine grid, as a 4-D stack (time × band × row × col) per sensor role.

On disk an MDD is a JSON manifest plus, per role, two tiled GeoTIFFs beside it (ZSTD-compressed where
GDAL has it, which reads about twice as fast as DEFLATE, else DEFLATE):
- ``<stem>_<role>.tif``: float32, dates × bands as GeoTIFF bands (band index = date * n_bands + band),
  band descriptions ``YYYY-MM-DD <wavelength> nm``, physical values (scale/offset applied),
  ``NODATA`` where the input was invalid;
- ``<stem>_<role>_mask.tif``: uint8, one band per date, 1 where the input was valid.

Each role is stored at its own pixel size (format version 2): on a grid aligned with the fine grid,
same CRS and origin, pixels ``pixel_ratio`` times larger (``resample.role_grid``; 1 for the fine MS
and any role less than 1.5 times coarser). A coarse HS is so stored ratio² times smaller than on the
fine grid; ``MDD.read`` brings each window to the fine grid as it reads it (``resample.py``), so
every reader sees the fine grid.

Readers use windowed reads only, so an MDD larger than memory can be read tile by tile.
No QGIS import here: this module is used by the algorithms, the tests and the benchmarks alike.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from ..core.grid import Grid
from ..core.vocabulary import ROLE_LABELS, ROLES
from .geotiff import GeoTiffWriter, WriterGroup, fast_compression, write_text_atomic
from .resample import axis_taps, bilinear, nearest_mask, role_grid

gdal.UseExceptions()

FORMAT = "sts-fusion-mdd"
FORMAT_VERSION = 2  # 2: each role at its own pixel size (``pixel_ratio``); 1: every role on the fine grid
NODATA = -9999.0
# The stacks' compression level (ZSTD, or DEFLATE where GDAL lacks it): 3, not GDAL's default of 9,
# writes a 128-band HS stack 2-3x faster for files 0.4 % larger; reading is as fast at any level.
MDD_COMPRESSION_LEVEL = 3


class MDDError(ValueError):
    """An MDD that cannot be read or written; the message says what is wrong and how to fix it."""


@dataclass
class RoleStack:
    """One role's stack: its dates, bands and files, plus where its pixels came from."""

    role: str
    path: str  # absolute path of the data GeoTIFF
    mask_path: str  # absolute path of the validity GeoTIFF
    dates: list  # ISO dates, ascending
    wavelengths: list | None  # band centres in nm, or None when unknown (MS roles only)
    fwhm: list | None = None
    native_pixel_size: float = 0.0  # source pixel size, in the grid's CRS units
    layers: list = field(default_factory=list)  # source layer names, one per date
    band_names: list | None = None
    bbl: list | None = None  # bad band list (1 good, 0 bad): bad bands do not count for validity
    pixel_ratio: float = 1.0  # stored pixels are this many times the fine grid's (resample.role_grid)
    # date -> the valid share of the grid its layer had, as Build MDD stack recorded it in the manifest's
    # "inputs" (not written back by to_json: Build writes the inputs itself); empty where it did not.
    valid_fractions: dict = field(default_factory=dict)

    @property
    def n_dates(self) -> int:
        return len(self.dates)

    @property
    def n_bands(self) -> int:
        return len(self.wavelengths) if self.wavelengths else len(self.band_names or [])

    def to_json(self, base: str) -> dict:
        return {
            "file": os.path.relpath(self.path, base),
            "mask_file": os.path.relpath(self.mask_path, base),
            "dates": self.dates,
            "wavelengths": self.wavelengths,
            "fwhm": self.fwhm,
            "band_count": self.n_bands,
            "band_names": self.band_names,
            "native_pixel_size": self.native_pixel_size,
            "layers": self.layers,
            "bbl": self.bbl,
            "pixel_ratio": self.pixel_ratio,
        }

    def valid_shares(self) -> dict:
        """date -> its layer's valid pixels over those of the clearest date (``valid_fractions``): the
        area outside every image's footprint does not count. Empty where the manifest does not say."""
        top = max(self.valid_fractions.values(), default=0.0)
        return {d: v / top for d, v in self.valid_fractions.items()} if top > 0 else {}

    def stored_grid(self, grid: Grid) -> Grid:
        """The grid its files are on, given the MDD's fine grid."""
        return role_grid(grid, self.pixel_ratio)

    @property
    def block(self) -> int:
        """Its files' tile size: what 64 px of the fine grid cover of the stored grid, rounded up to
        a multiple of 16, at least 32. A fusion tile's window (256 px and a 20 px halo each side)
        then decompresses about 1.5² times its own pixels, not 3² times as with 256 px tiles, where
        it took slivers of its eight neighbours' whole tiles and GDAL's bounded cache could not keep
        them for the next tile row (1024² px: every window of a fusion read in 2.2 s against 6.1 s,
        the files 3 % larger)."""
        return max(32, min(64, 16 * math.ceil(64 / self.pixel_ratio / 16)))

    def stored_px(self, fine_px: int, within: bool = False) -> int:
        """What ``fine_px`` px of the fine grid cover of the stored grid, in whole tiles (``within``:
        the whole tiles that fit inside them, one at least). Build MDD stack's windows are
        ``stored_px(256)`` rows by ``stored_px(512, within=True)`` columns of a coarse role: a window
        fills whole tiles, is not one thin row of tiles, and is as large on a 512 px grid as on any
        larger one, so Build's memory stops growing there (a 30 m HS on a 10 m grid, 128 bands, Dask
        on 2 cores: peak +29 MiB from 512² to 2048² with 160 columns, +61 MiB with 192)."""
        if within:
            return self.block * max(1, math.floor(int(fine_px) / self.pixel_ratio / self.block))
        return self.block * math.ceil(int(fine_px) / self.pixel_ratio / self.block)


def _valid_fractions(inputs, role: str) -> dict:
    """date -> valid_fraction of ``role``'s entries in a manifest's "inputs" (Build MDD stack's record
    of its layers); {} where there is none or it is not in that form."""
    entries = inputs.get(role) if isinstance(inputs, dict) else None
    if not isinstance(entries, list):
        return {}
    return {
        e["date"]: float(e["valid_fraction"])
        for e in entries
        if isinstance(e, dict) and "date" in e and isinstance(e.get("valid_fraction"), (int, float))
    }


def band_description(date: str, wavelength: float | None, band_index: int) -> str:
    if wavelength is None:
        return f"{date} band {band_index + 1}"
    return f"{date} {wavelength:g} nm"


class MDD:
    """A read-only view of an MDD on disk. Open with ``MDD.open(manifest_path)``."""

    def __init__(self, path: str, grid: Grid, roles: dict) -> None:
        self.path = path
        self.grid = grid
        self.roles = roles  # role -> RoleStack, in ROLES order
        self.hidden = {}  # (role, date) -> window (xoff, yoff, xsize, ysize) read as invalid
        self.shifts = {}  # (role, date) -> (dy, dx) fine px: a coarse image's co-registration (``registered``)
        self._handles = threading.local()  # open datasets, per thread (a GDAL dataset is not shared)

    @contextlib.contextmanager
    def reading(self) -> Iterator[MDD]:
        """Within this block the stack files stay open (in this thread): GDAL's block cache belongs to
        the open dataset, so neighbouring windows (tiles and their halos) reuse what was decompressed,
        and a file with many tiles is not parsed again at every read. They are closed when the block
        ends, never left for the interpreter's exit (where QGIS may have shut GDAL down already)."""
        depth = getattr(self._handles, "depth", 0)
        self._handles.depth = depth + 1
        try:
            yield self
        finally:
            self._handles.depth = depth
            if depth == 0:
                self._handles.datasets = {}

    def _open(self, path: str) -> gdal.Dataset:
        """The stack file open for reading: kept within ``reading()``, else opened for this read."""
        if not getattr(self._handles, "depth", 0):
            return gdal.Open(path)
        opened = getattr(self._handles, "datasets", None)
        if opened is None:
            opened = self._handles.datasets = {}
        ds = opened.get(path)
        if ds is None:
            ds = opened[path] = gdal.Open(path)
        return ds

    def __getstate__(self) -> dict:  # open datasets stay behind (pickled views, e.g. for Dask)
        state = dict(self.__dict__)
        state.pop("_handles", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._handles = threading.local()

    def hiding(self, role: str, date: str, window: tuple | None = None) -> MDD:
        """A view of this MDD in which ``role``'s image of ``date`` reads as invalid inside
        ``window`` (None: everywhere): what a self-check withholds from training. The date stays
        listed, so the calendar (which fine MS pairs with it) is the same as in the MDD."""
        if date not in self.roles[role].dates:
            raise MDDError(f"{ROLE_LABELS[role]} has no image on {date} to hide.")
        view = self._view()
        whole = (0, 0, self.grid.width, self.grid.height)
        view.hidden[(role, date)] = whole if window is None else tuple(int(v) for v in window)
        return view

    def _view(self) -> MDD:
        view = MDD(self.path, self.grid, dict(self.roles))
        view.hidden, view.shifts = dict(self.hidden), dict(self.shifts)
        return view

    def registered(self, shifts: dict) -> MDD:
        """A view of this MDD in which each coarse image named in ``shifts`` ((role, date) -> (dy, dx)
        in fine pixels, ``registration.estimate_shifts``) is read moved by that much: fine pixel (y, x)
        takes what the image has at (y - dy, x - dx). Roles stored on the fine grid are read as they are."""
        view = self._view()
        view.shifts = {k: (float(v[0]), float(v[1])) for k, v in shifts.items() if any(v)}
        return view

    @classmethod
    def open(cls, manifest_path: str) -> MDD:
        try:
            with open(manifest_path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise MDDError(f"MDD manifest {manifest_path} does not exist: run 'Build MDD stack' first.") from None
        except (OSError, ValueError) as e:
            raise MDDError(
                f"MDD manifest {manifest_path} is not readable JSON ({e}): rebuild it with 'Build MDD stack'."
            ) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MDDError(
                f"{manifest_path} is not an STS Fusion MDD manifest: choose the .json written by 'Build MDD stack'."
            )
        if d.get("format_version") == 1:
            raise MDDError(
                f"MDD {manifest_path} was built by STS Fusion 0.2 or earlier, which stored every role on the "
                "fine grid; this version stores each role at its own pixel size (a coarse HS takes ratio² "
                "times less disk and reading): rebuild it with 'Build MDD stack' from the same layers."
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise MDDError(
                f"MDD {manifest_path} has format version {d.get('format_version')}, this "
                f"plugin reads version {FORMAT_VERSION}: rebuild it with 'Build MDD stack'."
            )
        base = os.path.dirname(os.path.abspath(manifest_path))
        roles = {}
        for role in ROLES:
            r = d["roles"].get(role)
            if r is None:
                continue
            stack = RoleStack(
                role=role,
                path=os.path.join(base, r["file"]),
                mask_path=os.path.join(base, r["mask_file"]),
                dates=list(r["dates"]),
                wavelengths=r.get("wavelengths"),
                fwhm=r.get("fwhm"),
                native_pixel_size=float(r.get("native_pixel_size") or 0.0),
                layers=list(r.get("layers") or []),
                band_names=r.get("band_names"),
                bbl=r.get("bbl"),
                pixel_ratio=float(r.get("pixel_ratio") or 1.0),
                valid_fractions=_valid_fractions(d.get("inputs"), role),
            )
            for p in (stack.path, stack.mask_path):
                if not os.path.exists(p):
                    raise MDDError(
                        f"The {ROLE_LABELS[role]} stack file {p} named by {manifest_path} is "
                        "missing: keep the manifest and its stacks together, or rebuild the MDD."
                    )
            roles[role] = stack
        grid = Grid.from_json(d["grid"])
        for stack in roles.values():
            want, ds = stack.stored_grid(grid), gdal.Open(stack.path)
            if (ds.RasterXSize, ds.RasterYSize) != (want.width, want.height):
                raise MDDError(
                    f"The {ROLE_LABELS[stack.role]} stack {stack.path} is {ds.RasterXSize}x{ds.RasterYSize} px, "
                    f"its manifest says {want.width}x{want.height}: the files do not belong together; rebuild "
                    "the MDD with 'Build MDD stack'."
                )
        return cls(os.path.abspath(manifest_path), grid, roles)

    @property
    def dates(self) -> list:
        """Every date of the series (the union over roles), ascending."""
        return sorted({d for s in self.roles.values() for d in s.dates})

    def scale_ratio(self, role: str) -> float:
        """How many fine-grid pixels one source pixel of this role spans (>= 1 for coarse roles)."""
        s = self.roles[role]
        return max(1.0, s.native_pixel_size / self.grid.pixel_size) if s.native_pixel_size else 1.0

    def _window(self, window):
        if window is None:
            return 0, 0, self.grid.width, self.grid.height
        xoff, yoff, xsize, ysize = (int(v) for v in window)
        if xoff < 0 or yoff < 0 or xoff + xsize > self.grid.width or yoff + ysize > self.grid.height:
            raise MDDError(f"Window {window} lies outside the {self.grid.width}x{self.grid.height} grid.")
        return xoff, yoff, xsize, ysize

    def _date_indices(self, stack: RoleStack, dates):
        if dates is None:
            return list(range(stack.n_dates))
        missing = [d for d in dates if d not in stack.dates]
        if missing:
            raise MDDError(f"{ROLE_LABELS[stack.role]} has no image on {', '.join(missing)}.")
        return [stack.dates.index(d) for d in dates]

    def _taps(self, stack: RoleStack, xoff: int, yoff: int, xs: int, ys: int, shift=(0.0, 0.0)) -> tuple:
        """The bilinear/nearest taps of a fine window on a role stored at a coarser pixel size."""
        stored = stack.stored_grid(self.grid)
        return (
            axis_taps(yoff, ys, stack.pixel_ratio, stored.height, shift[0]),
            axis_taps(xoff, xs, stack.pixel_ratio, stored.width, shift[1]),
        )

    def _by_shift(self, stack: RoleStack, idx: list) -> list:
        """[(positions in ``idx``, their date indices, (dy, dx))]: the dates read with the same taps."""
        groups = {}
        for i, t in enumerate(idx):
            groups.setdefault(self.shifts.get((stack.role, stack.dates[t]), (0.0, 0.0)), []).append(i)
        return [(pos, [idx[i] for i in pos], shift) for shift, pos in groups.items()]

    def _coarse_reads(self, stack: RoleStack, idx: list, xoff: int, yoff: int, xs: int, ys: int) -> Iterator:
        """Per group of dates read with the same taps (``_by_shift``): (positions in ``idx``, taps
        (ty, tx), stored values, stored validity) of the coarse pixels a fine window needs."""
        for pos, group, shift in self._by_shift(stack, idx):
            ty, tx = self._taps(stack, xoff, yoff, xs, ys, shift)
            cx, cy, cw, ch = tx.start, ty.start, tx.stop - tx.start, ty.stop - ty.start
            yield (
                pos,
                ty,
                tx,
                self._stored_values(stack, group, cx, cy, cw, ch),
                self._stored_mask(stack, group, cx, cy, cw, ch),
            )

    def _stored_mask(self, stack: RoleStack, idx: list, xoff: int, yoff: int, xs: int, ys: int) -> np.ndarray:
        ds = self._open(stack.mask_path)
        out = np.empty((len(idx), ys, xs), dtype=bool)
        for i, t in enumerate(idx):
            out[i] = ds.GetRasterBand(t + 1).ReadAsArray(xoff, yoff, xs, ys) > 0
        return out

    def _stored_values(self, stack: RoleStack, idx: list, xoff: int, yoff: int, xs: int, ys: int) -> np.ndarray:
        nb = stack.n_bands
        ds = self._open(stack.path)
        out = np.empty((len(idx), nb, ys, xs), dtype=np.float32)
        for i, t in enumerate(idx):
            for b in range(nb):
                out[i, b] = ds.GetRasterBand(t * nb + b + 1).ReadAsArray(xoff, yoff, xs, ys)
        return out

    def read_mask(self, role: str, window: tuple | None = None, dates: list[str] | None = None) -> np.ndarray:
        """Validity, bool (time, row, col): True where the role's input was valid."""
        stack = self.roles[role]
        xoff, yoff, xs, ys = self._window(window)
        idx = self._date_indices(stack, dates)
        if stack.pixel_ratio == 1:
            out = self._stored_mask(stack, idx, xoff, yoff, xs, ys)
        else:
            out = np.empty((len(idx), ys, xs), dtype=bool)
            for pos, group, shift in self._by_shift(stack, idx):
                ty, tx = self._taps(stack, xoff, yoff, xs, ys, shift)
                coarse = self._stored_mask(stack, group, tx.start, ty.start, tx.stop - tx.start, ty.stop - ty.start)
                out[pos] = nearest_mask(coarse, ty, tx)
        return self._hide(out, role, dates, (xoff, yoff, xs, ys))

    def _hide(self, out: np.ndarray, role: str, dates: list | None, window: tuple) -> np.ndarray:
        """``out`` (time, row, col) validity of ``window`` with the hidden windows (``hiding``) invalid."""
        stack, (xoff, yoff, xs, ys) = self.roles[role], window
        for (r, date), (hx, hy, hw, hh) in self.hidden.items():
            if r == role and date in (dates if dates is not None else stack.dates):
                i = (dates if dates is not None else stack.dates).index(date)
                x0, y0 = max(hx, xoff) - xoff, max(hy, yoff) - yoff
                x1, y1 = min(hx + hw, xoff + xs) - xoff, min(hy + hh, yoff + ys) - yoff
                if x1 > x0 and y1 > y0:
                    out[i, y0:y1, x0:x1] = False
        return out

    def read(self, role: str, window: tuple | None = None, dates: list[str] | None = None) -> np.ndarray:
        """Values, float32 (time, band, row, col), NaN where the role's input was invalid."""
        stack = self.roles[role]
        xoff, yoff, xs, ys = self._window(window)
        idx = self._date_indices(stack, dates)
        if stack.pixel_ratio == 1:
            out = self._stored_values(stack, idx, xoff, yoff, xs, ys)
            valid = self.read_mask(role, (xoff, yoff, xs, ys), dates)
        else:  # bilinear from the valid coarse pixels; a band's NODATA (no value there) is not used
            out = np.empty((len(idx), stack.n_bands, ys, xs), dtype=np.float32)
            valid = np.empty((len(idx), ys, xs), dtype=bool)
            for pos, ty, tx, coarse, stored_valid in self._coarse_reads(stack, idx, xoff, yoff, xs, ys):
                usable = stored_valid[:, None]  # (time, 1, rows, cols)
                missing = usable & (coarse == NODATA)  # a band without a value in a valid pixel
                if missing.any():
                    usable = usable & ~missing
                out[pos] = bilinear(coarse, usable, ty, tx, NODATA)
                valid[pos] = nearest_mask(stored_valid, ty, tx)  # the stored mask read once
            valid = self._hide(valid, role, dates, (xoff, yoff, xs, ys))
        out[~np.broadcast_to(valid[:, None], out.shape)] = np.nan
        return out

    def read_projected(
        self,
        role: str,
        project: Callable[[np.ndarray], np.ndarray],
        window: tuple | None = None,
        dates: list[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(``project`` of the values on the fine grid (time, k, row, col) float32, 0 where invalid;
        validity (time, row, col)), with ``project`` applied to the stored pixels before they are
        brought to the fine grid.

        ``project`` maps values (time, band, rows, cols), NaN where invalid or without a value, to
        (time, k, rows, cols), finite, and must be affine per pixel (a PCA of the bands): the
        bilinear weights sum to 1, so projecting then interpolating equals interpolating then
        projecting, at ratio² times fewer pixels and k instead of band channels (the HS of a
        30 m sensor on a 10 m grid: 1/9 of the pixels, 12 components instead of 200 bands)."""
        stack = self.roles[role]
        xoff, yoff, xs, ys = self._window(window)
        idx = self._date_indices(stack, dates)
        if stack.pixel_ratio == 1:
            values = read_values(self, role, (xoff, yoff, xs, ys), dates)
            valid = self.read_mask(role, (xoff, yoff, xs, ys), dates)
            out = np.asarray(project(values), dtype=np.float32)
        else:
            out, valid = None, np.empty((len(idx), ys, xs), dtype=bool)
            for pos, ty, tx, coarse, stored_valid in self._coarse_reads(stack, idx, xoff, yoff, xs, ys):
                coarse[(coarse == NODATA) | ~stored_valid[:, None]] = np.nan
                projected = np.asarray(project(coarse), dtype=np.float32)
                fine = bilinear(projected, stored_valid[:, None], ty, tx, 0.0)
                if out is None:
                    out = np.empty((len(idx),) + fine.shape[1:], dtype=np.float32)
                out[pos] = fine
                valid[pos] = nearest_mask(stored_valid, ty, tx)
            if out is None:  # no date asked for
                k = np.asarray(project(np.full((1, stack.n_bands, 1, 1), np.nan, np.float32))).shape[1]
                out = np.empty((0, k, ys, xs), dtype=np.float32)
            valid = self._hide(valid, role, dates, (xoff, yoff, xs, ys))
        out[~np.broadcast_to(valid[:, None], out.shape)] = 0.0
        return out, valid


def read_values(mdd: MDD, role: str, window: tuple | None = None, dates: list | None = None) -> np.ndarray:
    """``mdd.read``, with NODATA inside valid pixels (a band without data, e.g. an absorption band)
    as NaN."""
    values = mdd.read(role, window=window, dates=dates)
    values[values == NODATA] = np.nan
    return values


class RoleStackWriter:
    """Writes one role's stack and mask under temporary names; ``commit()`` renames them into place.

    Writes go by window (``write(date_index, values, valid, window)``), so a role is never held in
    memory whole. ``abort()`` removes the temporary files (used on error and on cancel).
    """

    def __init__(self, stack: RoleStack, grid: Grid) -> None:
        """``grid``: the MDD's fine grid; the files are written on ``stack.stored_grid(grid)``."""
        self.stack = stack
        grid = stack.stored_grid(grid)
        nb = stack.n_bands
        descriptions, band_md = [], []
        for date in stack.dates:
            for b in range(nb):
                wl = stack.wavelengths[b] if stack.wavelengths else None
                descriptions.append(band_description(date, wl, b))
                md = {"date": date}
                if wl is not None:
                    md.update(wavelength=f"{wl:g}", wavelength_units="nm")
                    if stack.fwhm:
                        md["fwhm"] = f"{stack.fwhm[b]:g}"
                if stack.bbl:
                    md["bbl"] = str(stack.bbl[b])
                band_md.append(md)
        role_md = {"STSFUSION_ROLE": stack.role}
        self._data = GeoTiffWriter(
            stack.path,
            grid,
            stack.n_dates * nb,
            gdal.GDT_Float32,
            NODATA,
            descriptions,
            band_md,
            role_md,
            compression=fast_compression(),
            level=MDD_COMPRESSION_LEVEL,
            block=stack.block,
        )
        try:
            self._mask = GeoTiffWriter(
                stack.mask_path,
                grid,
                stack.n_dates,
                gdal.GDT_Byte,
                None,
                [f"{d} valid" for d in stack.dates],
                None,
                role_md,
                compression=fast_compression(),
                level=MDD_COMPRESSION_LEVEL,
                block=stack.block,
            )
        except BaseException:
            self._data.abort()
            raise

    def write(
        self,
        date_index: int,
        values: np.ndarray,
        valid: np.ndarray,
        window: tuple | None = None,
        in_place: bool = False,
    ) -> None:
        """values (band, row, col); valid (row, col) bool; window (xoff, yoff, xsize, ysize).
        ``in_place``: the invalid pixels of ``values`` (float32) are set to nodata in it, not in a copy."""
        if in_place and values.dtype == np.float32:
            v = values
            np.copyto(v, NODATA, where=~valid[None])
        else:
            v = np.where(valid[None], values, NODATA).astype(np.float32, copy=False)
        self._data.write(v, window, first_band=date_index * self.stack.n_bands)
        self._mask.write(valid[None].astype(np.uint8), window, first_band=date_index)

    def flush(self) -> None:
        """Writes out the blocks written so far (whole blocks: windows are block-aligned), so GDAL's
        cache does not fill with them."""
        self._data.flush()
        self._mask.flush()

    def commit(self) -> None:
        self._data.commit()
        self._mask.commit()

    def abort(self) -> None:
        self._data.abort()
        self._mask.abort()


def stack_paths(manifest_path: str, role: str) -> tuple:
    stem = os.path.splitext(os.path.abspath(manifest_path))[0]
    return f"{stem}_{role}.tif", f"{stem}_{role}_mask.tif"


def write_manifest(manifest_path: str, grid: Grid, stacks: dict, extra: dict | None = None) -> None:
    """Writes the manifest atomically (temporary name, then rename)."""
    base = os.path.dirname(os.path.abspath(manifest_path))
    d = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "grid": grid.to_json(),
        "dates": sorted({t for s in stacks.values() for t in s.dates}),
        "nodata": NODATA,
        "roles": {role: stacks[role].to_json(base) for role in ROLES if role in stacks},
    }
    if extra:
        d.update(extra)
    write_text_atomic(manifest_path, json.dumps(d, indent=1))


def write_mdd_from_arrays(manifest_path: str, grid: Grid, roles: dict) -> MDD:
    """Writes a whole MDD from in-memory arrays (tests, samples, simulations).

    ``roles``: role -> dict(dates=[...], values=float32 (time, band, row, col) with NaN where
    invalid, wavelengths=[...] or None, fwhm=None, native_pixel_size=float, layers=None, bbl=None,
    pixel_ratio=1.0). With a ``pixel_ratio`` other than 1, ``values`` lie on ``role_grid(grid,
    pixel_ratio)`` (the role at its own pixel size), else on ``grid``.
    """
    stacks = {}
    with WriterGroup() as writers:
        for role, r in roles.items():
            values = np.asarray(r["values"], dtype=np.float32)
            path, mask_path = stack_paths(manifest_path, role)
            wl = r.get("wavelengths")
            stack = RoleStack(
                role=role,
                path=path,
                mask_path=mask_path,
                dates=list(r["dates"]),
                wavelengths=[float(w) for w in wl] if wl is not None else None,
                fwhm=r.get("fwhm"),
                native_pixel_size=float(r.get("native_pixel_size", 0.0)),
                layers=list(r.get("layers") or r["dates"]),
                band_names=None if wl is not None else [f"band {b + 1}" for b in range(values.shape[1])],
                bbl=[int(v) for v in r["bbl"]] if r.get("bbl") is not None else None,
                pixel_ratio=float(r.get("pixel_ratio", 1.0)),
            )
            stored = stack.stored_grid(grid)
            if values.shape[2:] != (stored.height, stored.width):
                raise MDDError(
                    f"{ROLE_LABELS[role]} values are {values.shape[3]}x{values.shape[2]} px, its grid (pixel ratio "
                    f"{stack.pixel_ratio:g}) is {stored.width}x{stored.height}."
                )
            w = RoleStackWriter(stack, grid)
            writers.append(w)
            for t in range(values.shape[0]):
                valid = np.all(np.isfinite(values[t]), axis=0)
                w.write(t, np.nan_to_num(values[t], nan=NODATA), valid)
            stacks[role] = stack
    write_manifest(manifest_path, grid, stacks)
    return MDD.open(manifest_path)
