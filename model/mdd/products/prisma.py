"""PRISMA L2D products (ASI), read from the ``.he5`` file, the ``.zip`` it is delivered in, or the
folder holding it, with GDAL's HDF5 driver only (no h5py: QGIS does not ship it).

A product is one HDF-EOS5 file ``PRS_L2D_STD_<start>_<stop>_0001.he5`` (``<start>``,``<stop>``:
YYYYMMDDhhmmss), delivered as ``PRS_L2D_STD_<start>_<stop>_0001.zip``. What is read from it:

- root attributes ``Processing_Level`` ("2D"; "1", "2B", "2C" are refused), ``Product_StartTime``
  (e.g. "2020-10-02T19:37:10.216000": the acquisition date), ``Epsg_Code`` (the UTM zone of the
  L2D grid), ``Product_ULcorner_easting``/``_northing``, ``Product_LLcorner_easting``,
  ``Product_URcorner_northing`` and ``Product_LRcorner_easting``/``_northing`` (pixel *centres* of the
  corner pixels; the L2D grid has 30 m pixels);
- ``List_Cw_Vnir``, ``List_Fwhm_Vnir``, ``List_Cw_Swir``, ``List_Fwhm_Swir`` (nm, in the cubes' band
  order, which is descending wavelength; 0 marks a band not delivered) and, where present,
  ``List_Cw_Vnir_Flags``/``List_Cw_Swir_Flags`` (1: band delivered);
- ``L2ScaleVnirMin``/``Max`` and ``L2ScaleSwirMin``/``Max``: reflectance = Min + DN * (Max - Min) / 65535;
- ``/HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube`` and ``SWIR_Cube``: uint16, (rows, bands, cols)
  (band-interleaved by line), row 0 the northern edge; DN 0 in every band outside the swath;
- ``.../Data Fields/VNIR_PIXEL_L2_ERR_MATRIX`` and ``SWIR_PIXEL_L2_ERR_MATRIX`` (uint8, shaped as the
  cubes): 0 ok, 1 pixel invalid in the L1 product, 2 negative value after the atmospheric
  correction, 4 saturated after it;
- ``.../Data Fields/Cloud_Mask`` (rows, cols) *when the product has one*: 0 clear, 1 cloudy, 10 not
  classified, 255 error.

Sources: a real L2D file's attribute and dataset listing (processor L2D 02.03, 2020; github.com/
JamesTownend/PRISMA-tools, PRISMA_HDFEOS_to_netCDF notebook), EnMAP-Box's ``Import PRISMA L2D product``
(enmapboxprocessing/algorithm/importprismal2dalgorithm.py: cube axes, dropping zero wavelengths,
corner attributes as pixel centres, nodata where all bands are 0, the error matrix values) and
prismaread (github.com/IREA-CNR-MI/prismaread: R/pr_convert.R, pr_create_vnir.R, pr_get_geoloc.R,
pr_setext_L2D.R: ``Processing_Level`` values, L2Scale formula, the L2D extent, VNIR/SWIR overlap);
the cloud-mask values from the PRISMA Product Specification (Is. 2.3, p. 132, as quoted in
EnMAP-Box issue 1015). The ASI Cloud_Mask (and LandCover_Mask, SunGlint_Mask) lives in the L1 product
(``PRS_L1_HCO/Data Fields``); the L2D listing above has none, and prismaread and EnMAP-Box read none
for L2. So ``cloud`` masks only where the L2D carries a ``Cloud_Mask``: by default a product without
one is read unmasked (the stack's ``QUALITY_NOTE`` says so); asking for ``cloud`` explicitly on it is
an error.

``read`` writes ``<product id>.tif`` into ``work_dir`` (a tiled GeoTIFF, not a VRT: the BIL cube puts
every image row in its own GDAL band in GDAL's classic view, which a VRT could only remap with one
source per row and band). The cubes are read with GDAL's multidimensional API, which keeps the
HDF5 axis order on every GDAL version (from GDAL 3.7 the classic view of an HDF-EOS5 swath may map
its axes to bands differently),
in blocks of rows, so memory stays bounded. The stack holds VNIR and SWIR bands in ascending
wavelength, without the zero-wavelength bands and, where the two spectrometers overlap (about
940-1000 nm), with the SWIR bands only (VNIR bands at or above the shortest SWIR wavelength are
dropped; prismaread's default ``join_priority = "SWIR"``: the VNIR silicon detector fades there).
The bands keep the DN (uint16) with the L2 scale and Min as GDAL scale/offset, nodata 0,
``wavelength``/``fwhm``/``wavelength_units`` band metadata and ``ACQUISITION_DATE``. A pixel that is
0 in every kept band is nodata; a 0 in some bands only (a dark or clipped value) becomes 1 DN,
as EnMAP-Box does, so that it does not turn the whole pixel into nodata.

Quality: ``<product id>_quality.tif`` on the stack's grid, uint8 bit flags (bit 0 ``cloud``:
Cloud_Mask 1; bit 1 ``invalid``, bit 2 ``negative``, bit 3 ``saturated``: a kept band's error
matrix is 1, 2 or 4 there), read with ``QualityRule("bits", {bit: name})`` of the chosen classes
(default: ``cloud``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import zipfile

import numpy as np

from . import ProductError, ProductLayer, QualityLayer, QualityRule, chosen_classes

FAMILY = "PRISMA L2D"
PIXEL = 30.0  # m, the L2D grid
SWATH = "PRS_L2D_HCO"
NODATA = 0
SENSORS = ("Vnir", "Swir")  # attribute spelling; datasets are VNIR_*/SWIR_*

# Quality class -> bit of the quality raster.
CLASSES = {"cloud": 0, "invalid": 1, "negative": 2, "saturated": 3}
DEFAULT_CLASSES = ("cloud",)
ALIASES = {"clouds": "cloud", "cloudy": "cloud", "defective": "invalid", "saturation": "saturated"}
CLASS_NAMES = tuple(CLASSES) + tuple(ALIASES)  # every name MASK_CLASSES may use for this family
CLOUDY = 1  # Cloud_Mask value of a cloudy pixel
ERR_VALUES = {"invalid": 1, "negative": 2, "saturated": 4}  # *_PIXEL_L2_ERR_MATRIX values

BLOCK_MEMORY = 96 * 2**20  # bytes of cube data read at once

_NAME = re.compile(r"^PRS_L(?P<level>1|2[A-D])_(?:[A-Z]+_)+(?P<start>\d{14})_(?P<stop>\d{14})_\d{4}", re.IGNORECASE)
_HE5 = (".he5", ".h5")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


# ---- finding the .he5 ---------------------------------------------------------------------------


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(base)[0]


def _is_he5_name(name: str) -> bool:
    return name.lower().endswith(_HE5)


def _prisma_name(name: str) -> bool:
    """True for a file name of a PRISMA product (any level): PRS_L2D_STD_<start>_<stop>_0001..."""
    return _NAME.match(_stem(name)) is not None


def _zip_entries(path: str) -> list:
    """The .he5 entries of the zip at ``path`` ([] when it cannot be read)."""
    try:
        with zipfile.ZipFile(path) as z:
            return [n for n in z.namelist() if _is_he5_name(n) and not n.endswith("/")]
    except (OSError, zipfile.BadZipFile):
        return []


def _folder_he5(path: str) -> list:
    """The .he5 files in the folder ``path`` or, failing that, in its only sub-folder."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []
    found = [os.path.join(path, n) for n in names if _is_he5_name(n) and os.path.isfile(os.path.join(path, n))]
    subs = [os.path.join(path, n) for n in names if os.path.isdir(os.path.join(path, n))]
    if not found and len(subs) == 1:
        return _folder_he5(subs[0])
    return found


def _root_attributes(he5: str) -> dict:
    """{name: value} of the file's root attributes (str, float, int or tuple), read with GDAL."""
    from osgeo import gdal

    gdal.UseExceptions()
    ds = gdal.OpenEx(he5, gdal.OF_MULTIDIM_RASTER)
    root = ds.GetRootGroup()
    out = {}
    for attribute in root.GetAttributes() or []:
        try:
            value = attribute.Read()
        except (RuntimeError, TypeError, ValueError):
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[attribute.GetName()] = value.strip("\x00 ") if isinstance(value, str) else value
    return out


def _says_prisma(he5: str) -> bool:
    try:
        attrs = _root_attributes(he5)
    except (RuntimeError, AttributeError):
        return False
    pid = str(attrs.get("Product_ID", ""))
    return pid.upper().startswith("PRS_L") or ("Processing_Level" in attrs and "List_Cw_Vnir" in attrs)


def recognise(path: str) -> bool:
    """True when ``path`` is a PRISMA product (its .he5, a zip or folder holding one), by the ASI file
    name ``PRS_L<level>_...`` or, for a renamed .he5, by its root attributes. Every level is
    recognised, so that ``read`` can say that only L2D is read."""
    path = str(path)
    if os.path.isfile(path) and _is_he5_name(path):
        return _prisma_name(path) or _says_prisma(path)
    if os.path.isfile(path) and path.lower().endswith(".zip"):
        entries = _zip_entries(path)
        return any(_prisma_name(e) for e in entries) or (_prisma_name(path) and bool(entries))
    if os.path.isdir(path):
        return any(_prisma_name(f) for f in _folder_he5(path))
    return False


def _locate(path: str, work_dir: str) -> tuple:
    """(path of the .he5 to open, product id, True when it was extracted into ``work_dir``)."""
    where = _stem(path) or path
    if os.path.isfile(path) and _is_he5_name(path):
        return path, _stem(path), False
    if os.path.isdir(path):
        files = _folder_he5(path)
        prisma = [f for f in files if _prisma_name(f)] or files
        if len(prisma) != 1:
            raise ProductError(
                f"Folder '{where}' holds {len(prisma)} PRISMA .he5 files: give one product (its .he5 or zip) per layer."
            )
        return prisma[0], _stem(prisma[0]), False
    if os.path.isfile(path) and path.lower().endswith(".zip"):
        entries = _zip_entries(path)
        prisma = [e for e in entries if _prisma_name(e)] or entries
        if len(prisma) != 1:
            raise ProductError(
                f"Zip '{where}' holds {len(prisma)} PRISMA .he5 files: give one product per layer "
                "(the zip ASI delivers holds one)."
            )
        entry = prisma[0]
        target = os.path.join(work_dir, entry.replace("\\", "/").rsplit("/", 1)[-1])
        try:  # HDF5 cannot read inside a zip: the .he5 is copied out (streamed, not held in memory)
            with zipfile.ZipFile(path) as z, z.open(entry) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 2**20)
        except (OSError, zipfile.BadZipFile) as e:
            raise ProductError(
                f"PRISMA zip '{where}' cannot be unpacked ({e}): download it again, or unzip it and give the .he5."
            ) from None
        return target, _stem(entry), True
    raise ProductError(f"'{path}' is no PRISMA product: give its .he5 file, or the zip it came in.")


# ---- attributes -----------------------------------------------------------------------------------


def _numbers(value) -> list:
    """A list of floats from an attribute value (tuple, number or text)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [float(v) for v in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", value)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in np.asarray(value).ravel()]
    return [float(value)]


def _short(value: float) -> float:
    """``value`` as the shortest decimal of its float32 (the attributes are float32: 452.1, not
    452.1000061035156), for metadata that reads as the product gives it."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def _number(attrs: dict, key: str, what: str, pid: str) -> float:
    values = _numbers(attrs.get(key))
    if len(values) != 1 or not np.isfinite(values[0]):
        raise ProductError(
            f"PRISMA L2D product {pid} has no numeric root attribute {key} ({what}): the .he5 is incomplete "
            "or not as ASI delivers it; use the original file."
        )
    return values[0]


def _level(attrs: dict, pid: str) -> str:
    """'1', '2B', '2C' or '2D' from Processing_Level, else from the file name; '' when neither says."""
    level = str(attrs.get("Processing_Level", "")).strip().upper().lstrip("L")
    if level:
        return level
    m = _NAME.match(pid)
    return m.group("level").upper() if m else ""


def _check_level(attrs: dict, pid: str) -> None:
    level = _level(attrs, pid)
    if level != "2D":
        what = f"level L{level}" if level else "of an unknown level (no Processing_Level attribute)"
        raise ProductError(
            f"PRISMA product {pid} is {what}: only L2D is read, because PRISMA L1, L2B and L2C are not "
            "geocoded onto a 30 m map grid. Order the L2D product (surface reflectance, geocoded), or "
            "georeference this one first (e.g. EnMAP-Box's 'Import PRISMA L2B/L2C product', or prismaread) "
            "and give the result as a raster layer."
        )


def _bands(attrs: dict, sensor: str, pid: str) -> list:
    """[(index in the cube, wavelength, fwhm)] of the delivered bands of ``sensor`` (Vnir or Swir)."""
    cw, fw = attrs.get(f"List_Cw_{sensor}"), attrs.get(f"List_Fwhm_{sensor}")
    if cw is None or fw is None:
        raise ProductError(
            f"PRISMA L2D product {pid} has no List_Cw_{sensor} / List_Fwhm_{sensor} root attribute, so its "
            f"{sensor.upper()} band wavelengths are unknown: use the original .he5 as ASI delivers it (a "
            "converted or subset file loses them), or convert it with EnMAP-Box's 'Import PRISMA L2D product'."
        )
    cw, fw = _numbers(cw), _numbers(fw)
    if len(cw) != len(fw):
        raise ProductError(
            f"PRISMA L2D product {pid}: List_Cw_{sensor} has {len(cw)} values but List_Fwhm_{sensor} {len(fw)}: "
            "the file is damaged; download it again."
        )
    flags = _numbers(attrs.get(f"List_Cw_{sensor}_Flags"))
    if len(flags) != len(cw):
        flags = [1.0] * len(cw)
    return [(i, _short(w), _short(f)) for i, (w, f, g) in enumerate(zip(cw, fw, flags)) if w > 0 and g != 0]


def _scale(attrs: dict, sensor: str, pid: str) -> tuple:
    """(scale, offset) of ``sensor``: reflectance = Min + DN * (Max - Min) / 65535."""
    lo = _short(_number(attrs, f"L2Scale{sensor}Min", "the reflectance scaling", pid))
    hi = _short(_number(attrs, f"L2Scale{sensor}Max", "the reflectance scaling", pid))
    if hi <= lo:
        raise ProductError(
            f"PRISMA L2D product {pid}: L2Scale{sensor}Max ({hi:g}) is not above L2Scale{sensor}Min ({lo:g}), "
            "so the reflectance scaling is unknown: use the original file."
        )
    return (hi - lo) / 65535.0, lo


def _date(attrs: dict, pid: str) -> str:
    import datetime

    candidates = [_DATE.search(str(attrs.get("Product_StartTime", "")))]
    m = _NAME.match(pid)
    if m:
        s = m.group("start")
        candidates.append(_DATE.search(f"{s[:4]}-{s[4:6]}-{s[6:8]}"))
    for found in candidates:
        if found:
            try:
                return datetime.date(*(int(v) for v in found.groups())).isoformat()
            except ValueError:
                continue
    raise ProductError(
        f"PRISMA L2D product {pid} has no Product_StartTime attribute and its name holds no date: give the "
        "date with DATES (layer_name=YYYY-MM-DD), or use the original file."
    )


def _grid(attrs: dict, pid: str, rows: int, cols: int) -> tuple:
    """(geotransform, WKT) of the L2D grid from Epsg_Code and the corner attributes (pixel centres)."""
    from osgeo import osr

    epsg = int(_number(attrs, "Epsg_Code", "the map projection", pid))
    srs = osr.SpatialReference()
    try:
        srs.ImportFromEPSG(epsg)
    except RuntimeError:
        raise ProductError(f"PRISMA L2D product {pid}: Epsg_Code {epsg} is no EPSG code GDAL knows.") from None
    what = "the grid's corner coordinates"
    west = _number(attrs, "Product_ULcorner_easting", what, pid)
    north = _number(attrs, "Product_ULcorner_northing", what, pid)
    east = _number(attrs, "Product_LRcorner_easting", what, pid)
    south = _number(attrs, "Product_LRcorner_northing", what, pid)
    if _numbers(attrs.get("Product_LLcorner_easting")):  # as prismaread: the outermost corner centres
        west = min(west, _number(attrs, "Product_LLcorner_easting", what, pid))
    if _numbers(attrs.get("Product_URcorner_northing")):
        north = max(north, _number(attrs, "Product_URcorner_northing", what, pid))
    spans = {"columns": ((east - west) / PIXEL + 1, cols), "rows": ((north - south) / PIXEL + 1, rows)}
    for axis, (from_corners, n) in spans.items():
        if abs(from_corners - n) > max(3.0, 0.02 * n):
            raise ProductError(
                f"PRISMA L2D product {pid}: its corner attributes span {from_corners:.0f} {axis} of {PIXEL:g} m "
                f"but its cubes have {n}: the file is not an L2D product as ASI delivers it (30 m grid); use the "
                "original file."
            )
    return (west - PIXEL / 2, PIXEL, 0.0, north + PIXEL / 2, 0.0, -PIXEL), srs.ExportToWkt()


# ---- classes ---------------------------------------------------------------------------------------


def _classes(classes) -> list:
    return chosen_classes(
        classes,
        CLASSES,
        ALIASES,
        DEFAULT_CLASSES,
        f"PRISMA L2D quality class: choose among {', '.join(CLASSES)} (default: cloud; "
        "invalid, negative and saturated come from the L2 error matrices of the bands read).",
    )


# ---- reading the cubes -------------------------------------------------------------------------------


def _array(root, name: str, pid: str, required: bool = True):
    """The MDArray ``/HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/<name>`` (None when absent and optional)."""
    for group in ("Data Fields", "Data_Fields"):
        try:
            return root.OpenMDArrayFromFullname(f"/HDFEOS/SWATHS/{SWATH}/{group}/{name}")
        except RuntimeError:
            continue
    if required:
        raise ProductError(
            f"PRISMA L2D product {pid} has no /HDFEOS/SWATHS/{SWATH}/Data Fields/{name}: the .he5 is incomplete "
            "or not an L2D product; download it again."
        )
    return None


def _shape(array) -> tuple:
    return tuple(int(d.GetSize()) for d in array.GetDimensions())


def _block_rows(rows: int, cols: int, bands: int) -> int:
    """Rows read at once: a multiple of 16 (the GeoTIFF tile height), 16 to 256, within BLOCK_MEMORY."""
    per_row = max(1, cols * bands * 2 * 2 + cols * bands)  # cubes, the kept copy, error matrices
    n = int(BLOCK_MEMORY // per_row) // 16 * 16
    return max(16, min(256, n))


def _write(he5: str, pid: str, work_dir: str, attrs: dict, chosen: list, explicit: bool) -> tuple:
    """Writes the stack and (when classes are chosen) the quality raster; returns (stack path, quality
    path or None, the classes masked, True when the product has no Cloud_Mask for a default 'cloud').
    ``explicit``: the classes were asked for (a missing Cloud_Mask is then an error)."""
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        root = gdal.OpenEx(he5, gdal.OF_MULTIDIM_RASTER).GetRootGroup()
    except (RuntimeError, AttributeError) as e:
        raise ProductError(f"PRISMA L2D product {pid} cannot be opened by GDAL's HDF5 driver ({e}).") from None
    cubes, errs, kept = {}, {}, []
    for sensor in SENSORS:
        cube = _array(root, f"{sensor.upper()}_Cube", pid)
        cubes[sensor] = cube
        shape = _shape(cube)
        bands = _bands(attrs, sensor, pid)
        n_listed = len(_numbers(attrs[f"List_Cw_{sensor}"]))
        if len(shape) != 3 or shape[1] != n_listed:
            raise ProductError(
                f"PRISMA L2D product {pid}: {sensor.upper()}_Cube is {' x '.join(map(str, shape))} but "
                f"List_Cw_{sensor} lists {n_listed} bands (expected rows x bands x columns): the file is "
                "damaged or not an L2D product; download it again."
            )
        scale, offset = _scale(attrs, sensor, pid)
        kept += [(sensor, i, wl, fw, scale, offset) for i, wl, fw in bands]
    rows, cols = _shape(cubes["Vnir"])[0], _shape(cubes["Vnir"])[2]
    if (_shape(cubes["Swir"])[0], _shape(cubes["Swir"])[2]) != (rows, cols):
        raise ProductError(
            f"PRISMA L2D product {pid}: VNIR_Cube and SWIR_Cube cover different grids "
            f"({' x '.join(map(str, _shape(cubes['Vnir'])))} and {' x '.join(map(str, _shape(cubes['Swir'])))})."
        )
    swir = [k for k in kept if k[0] == "Swir"]
    if swir:  # the overlap: SWIR kept, VNIR bands at or above the shortest SWIR wavelength dropped
        shortest = min(k[2] for k in swir)
        kept = [k for k in kept if k[0] == "Swir" or k[2] < shortest]
    kept.sort(key=lambda k: k[2])
    if not kept:
        raise ProductError(
            f"PRISMA L2D product {pid}: List_Cw_Vnir and List_Cw_Swir list no delivered band (all 0): nothing to read."
        )
    geotransform, wkt = _grid(attrs, pid, rows, cols)

    err_classes = [c for c in chosen if c in ERR_VALUES]
    cloud = _array(root, "Cloud_Mask", pid, required=False) if "cloud" in chosen else None
    if "cloud" in chosen and cloud is None and explicit:
        raise ProductError(
            f"PRISMA L2D product {pid} has no Cloud_Mask (ASI puts the cloud mask in the L1 product, not in "
            "L2D), so 'cloud' cannot be masked: leave cloud out of MASK_CLASSES for it (invalid, negative and "
            "saturated come from its error matrices), or mask clouds yourself and give the result as a raster layer."
        )
    if cloud is not None and _shape(cloud) != (rows, cols):
        raise ProductError(
            f"PRISMA L2D product {pid}: its Cloud_Mask is {' x '.join(map(str, _shape(cloud)))} but the cubes are "
            f"{rows} x {cols} pixels: the mask is not on the L2D grid; leave 'cloud' out of MASK_CLASSES."
        )
    if err_classes:
        for sensor in SENSORS:
            errs[sensor] = _array(root, f"{sensor.upper()}_PIXEL_L2_ERR_MATRIX", pid)
            if _shape(errs[sensor]) != _shape(cubes[sensor]):
                raise ProductError(
                    f"PRISMA L2D product {pid}: {sensor.upper()}_PIXEL_L2_ERR_MATRIX is not shaped as "
                    f"{sensor.upper()}_Cube: leave {', '.join(err_classes)} out of MASK_CLASSES."
                )
    masks = ([("cloud", None)] if cloud is not None else []) + [(c, ERR_VALUES[c]) for c in err_classes]

    os.makedirs(work_dir, exist_ok=True)
    stack_path = os.path.join(work_dir, f"{pid}.tif")
    quality_path = os.path.join(work_dir, f"{pid}_quality.tif") if masks else None
    block = _block_rows(rows, cols, sum(_shape(c)[1] for c in cubes.values()))
    options = [
        "TILED=YES",
        "BLOCKXSIZE=256",
        f"BLOCKYSIZE={max(16, block // 16 * 16)}",
        "COMPRESS=DEFLATE",
        "ZLEVEL=1",
        "PREDICTOR=2",
        "INTERLEAVE=BAND",
        "BIGTIFF=IF_SAFER",
    ]
    driver = gdal.GetDriverByName("GTiff")
    try:
        out = driver.Create(stack_path, cols, rows, len(kept), gdal.GDT_UInt16, options)
        qds = driver.Create(quality_path, cols, rows, 1, gdal.GDT_Byte, options[:-2]) if quality_path else None
    except RuntimeError as e:
        raise ProductError(f"PRISMA L2D product {pid}: its stack cannot be written into {work_dir} ({e}).") from None
    for ds in (out, qds):
        if ds is not None:
            ds.SetGeoTransform(geotransform)
            ds.SetProjection(wkt)
    used = {s: sorted({k[1] for k in kept if k[0] == s}) for s in SENSORS}
    try:
        for r0 in range(0, rows, block):
            n = min(block, rows - r0)
            data, flags = {}, {}
            for sensor in SENSORS:
                if not used[sensor]:
                    continue
                nb = _shape(cubes[sensor])[1]
                data[sensor] = cubes[sensor].ReadAsArray(array_start_idx=[r0, 0, 0], count=[n, nb, cols])
                if err_classes:
                    flags[sensor] = errs[sensor].ReadAsArray(array_start_idx=[r0, 0, 0], count=[n, nb, cols])
            values = np.empty((len(kept), n, cols), np.uint16)
            for b, (sensor, i, *_rest) in enumerate(kept):
                values[b] = data[sensor][:, i, :]
            empty = ~values.any(axis=0)
            values[values == 0] = 1  # a 0 in some bands only is a (clipped) dark value, not nodata
            values[:, empty] = NODATA
            for b in range(len(kept)):
                out.GetRasterBand(b + 1).WriteArray(values[b], 0, r0)
            if qds is not None:
                bits = np.zeros((n, cols), np.uint8)
                if cloud is not None:
                    cm = cloud.ReadAsArray(array_start_idx=[r0, 0], count=[n, cols])
                    bits |= (cm == CLOUDY).astype(np.uint8) << CLASSES["cloud"]
                for name in err_classes:
                    hit = np.zeros((n, cols), bool)
                    for sensor in SENSORS:
                        if used[sensor]:
                            hit |= (flags[sensor][:, used[sensor], :] == ERR_VALUES[name]).any(axis=1)
                    bits |= hit.astype(np.uint8) << CLASSES[name]
                qds.GetRasterBand(1).WriteArray(bits, 0, r0)
            out.FlushCache()
        for b, (sensor, i, wl, fw, scale, offset) in enumerate(kept):
            band = out.GetRasterBand(b + 1)
            band.SetNoDataValue(NODATA)
            band.SetScale(float(scale))
            band.SetOffset(float(offset))
            band.SetDescription(f"{sensor.upper()} band {i + 1} ({wl:g} nm)")
            band.SetMetadata({"wavelength": repr(float(wl)), "fwhm": repr(float(fw)), "wavelength_units": "nm"})
    except RuntimeError as e:
        raise ProductError(f"PRISMA L2D product {pid} cannot be read by GDAL ({e}).") from None
    finally:
        out = qds = None
        cubes = errs = cloud = root = None
    return (
        stack_path,
        quality_path,
        [m[0] for m in masks],
        "cloud" in chosen and not any(m[0] == "cloud" for m in masks),
    )


def read(path: str, work_dir: str, classes: list | None = None) -> ProductLayer:
    """The PRISMA L2D product at ``path`` (.he5, its zip, or a folder holding it) as a ProductLayer:
    ``<product id>.tif`` in ``work_dir`` (VNIR + SWIR in ascending wavelength, DN with the L2 scale as
    scale/offset, nodata 0, wavelengths, FWHM, ACQUISITION_DATE) and its quality raster for
    ``classes`` (names from ``CLASSES``; None: cloud where the product has a Cloud_Mask; []: none)."""
    from osgeo import gdal

    path = str(path)
    if gdal.GetDriverByName("HDF5") is None:
        raise ProductError(
            "This GDAL has no HDF5 driver, so PRISMA .he5 files cannot be read: use a QGIS/GDAL build with "
            "HDF5 (the OSGeo4W and official installers have it), or convert the product with EnMAP-Box's "
            "'Import PRISMA L2D product' and give the result as a raster layer."
        )
    chosen = _classes(classes)
    os.makedirs(work_dir, exist_ok=True)
    he5, pid, extracted = _locate(path, work_dir)
    try:
        try:
            attrs = _root_attributes(he5)
        except (RuntimeError, AttributeError) as e:
            raise ProductError(
                f"PRISMA product {pid} cannot be read by GDAL's HDF5 driver ({e}): download it again."
            ) from None
        _check_level(attrs, pid)
        date = _date(attrs, pid)
        stack_path, quality_path, masked, cloud_missing = _write(he5, pid, work_dir, attrs, chosen, classes is not None)
    finally:
        if extracted:
            with contextlib.suppress(OSError):  # else Build MDD stack removes work_dir afterwards
                os.remove(he5)
    ds = gdal.Open(stack_path, gdal.GA_Update)
    md = {"ACQUISITION_DATE": date, "PRODUCT_ID": pid, "PRODUCT_FAMILY": FAMILY}
    if cloud_missing:
        md["QUALITY_NOTE"] = "the product has no Cloud_Mask: clouds are not masked"
    for key in ("Product_StartTime", "Processing_Level", "Epsg_Code"):
        if key in attrs:
            md[key.upper()] = str(attrs[key]).strip()
    ds.SetMetadata(md)
    ds = None
    quality = None
    if quality_path is not None:
        quality = QualityLayer(rule=QualityRule("bits", {CLASSES[c]: c for c in masked}), path=quality_path)
    return ProductLayer(family=FAMILY, name=pid, stack_path=stack_path, date=date, quality=quality)
