"""Landsat Collection 2 Level-2 (surface reflectance) products: Landsat 8/9 OLI and 4-7 TM/ETM+.

A product is a folder (or the ``.tar`` USGS delivers, read through GDAL's ``/vsitar/``) with one
GeoTIFF per band, ``<id>_SR_B<n>.TIF``, the quality bits ``<id>_QA_PIXEL.TIF`` and the metadata
``<id>_MTL.txt`` (ODL: ``GROUP = ... END_GROUP``) or ``<id>_MTL.xml``; the MTL file itself stands
for its folder. The reader stacks the SR bands into one VRT with the MTL's surface-reflectance
scale and offset (``REFLECTANCE_MULT_BAND_n`` / ``REFLECTANCE_ADD_BAND_n`` of the group
LEVEL2_SURFACE_REFLECTANCE_PARAMETERS, 2.75e-05 and -0.2), nodata 0 (fill), the band centres and
FWHM, and ``DATE_ACQUIRED``. QA_PIXEL is the quality layer (bit flags).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from . import ProductError, ProductLayer, QualityLayer, QualityRule

FAMILY = "Landsat C2 L2"

# Product id: sensor, level, path/row, acquisition and processing dates, collection, category.
_ID = re.compile(
    r"^(?P<sensor>L[COTE]0[4-9])_(?P<level>L[12][A-Z]{1,2})_(?P<pathrow>\d{6})_(?P<acq>\d{8})_(?P<proc>\d{8})"
    r"_(?P<collection>\d{2})_(?P<category>[A-Z0-9]{2})$",
    re.IGNORECASE,
)
_MTL = re.compile(r"^(?P<id>.+)_MTL\.(txt|xml)$", re.IGNORECASE)
_TAR = (".tar", ".tar.gz", ".tgz")

# SR bands per sensor: band number -> (centre, FWHM) in nm.
_OLI = {1: (443.0, 16.0), 2: (482.0, 60.0), 3: (561.5, 57.0), 4: (654.5, 37.0), 5: (865.0, 28.0)}
_OLI.update({6: (1608.5, 85.0), 7: (2200.5, 187.0)})
_TM = {1: (485.0, 70.0), 2: (560.0, 80.0), 3: (660.0, 60.0), 4: (830.0, 140.0), 5: (1650.0, 200.0), 7: (2215.0, 270.0)}
_ETM = {1: (482.5, 65.0), 2: (565.0, 80.0), 3: (660.0, 60.0), 4: (837.5, 125.0), 5: (1650.0, 200.0), 7: (2220.0, 260.0)}
_BANDS = {"LC08": _OLI, "LC09": _OLI, "LO08": _OLI, "LO09": _OLI, "LT04": _TM, "LT05": _TM, "LE07": _ETM}

# QA_PIXEL bits (https://www.usgs.gov/landsat-missions/landsat-collection-2-quality-assessment-bands).
QA_BITS = {0: "fill", 1: "dilated_cloud", 2: "cirrus", 3: "cloud", 4: "cloud_shadow", 5: "snow", 7: "water"}
DEFAULT_CLASSES = ("fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow")
CLASS_NAMES = tuple(QA_BITS.values())  # every name MASK_CLASSES may use for this family
NODATA = 0  # SR fill


# ---- finding the product's files ----------------------------------------------------------------


def _is_tar(path: str) -> bool:
    return str(path).lower().endswith(_TAR) and os.path.isfile(path)


def _list(folder: str) -> list:
    """File names in ``folder`` (a plain or /vsitar/ folder); [] when it cannot be listed."""
    if folder.startswith("/vsi"):
        from osgeo import gdal

        return [n for n in (gdal.ReadDir(folder) or []) if n not in (".", "..")]
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _is_dir(path: str) -> bool:
    if path.startswith("/vsi"):
        from osgeo import gdal

        st = gdal.VSIStatL(path)
        return st is not None and st.IsDirectory()
    return os.path.isdir(path)


def _landsat_id(mtl_name: str) -> str | None:
    """The product id of an MTL file name (LC09_L2SP_..._T1_MTL.txt), or None when no Landsat C2 MTL."""
    m = _MTL.match(os.path.basename(mtl_name))
    if not m or not _ID.match(m.group("id")):
        return None
    return m.group("id")


def _find_mtls(folder: str) -> list:
    """Paths of the Landsat MTL files in ``folder`` or one folder below it (a tar may hold one)."""
    names = _list(folder)
    found = [f"{folder}/{n}" for n in sorted(names) if _landsat_id(n)]
    if found:
        return found
    for n in sorted(names):
        sub = f"{folder}/{n}"
        if _is_dir(sub):
            found += [f"{sub}/{m}" for m in sorted(_list(sub)) if _landsat_id(m)]
    return found


def _root(path: str) -> str:
    """The folder to look for MTL files in: the folder itself, the MTL's folder or /vsitar/<tar>."""
    path = os.path.abspath(str(path))
    if _is_tar(path):
        return "/vsitar/" + path.replace("\\", "/")
    if os.path.isfile(path):
        return os.path.dirname(path)
    return path


def recognise(path: str) -> bool:
    """True for a Landsat Collection 2 product: a folder or .tar holding ``<id>_MTL.txt`` (or .xml)
    and ``<id>_SR_B<n>.TIF`` files, or such an MTL file itself."""
    path = str(path)
    if os.path.isfile(path) and not _is_tar(path):
        return _landsat_id(path) is not None
    if not (os.path.isdir(path) or _is_tar(path)):
        return False
    for mtl in _find_mtls(_root(path)):
        folder, pid = os.path.dirname(mtl), _landsat_id(mtl)
        names = [n.upper() for n in _list(folder)]
        if any(re.match(re.escape(pid.upper()) + r"_SR_B\d+\.TIF+$", n) for n in names):
            return True
    return False


# ---- the MTL ---------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    if path.startswith("/vsi"):
        from osgeo import gdal

        f = gdal.VSIFOpenL(path, "rb")
        if f is None:
            raise OSError(f"cannot open {path}")
        try:
            gdal.VSIFSeekL(f, 0, 2)
            size = gdal.VSIFTellL(f)
            gdal.VSIFSeekL(f, 0, 0)
            data = gdal.VSIFReadL(1, size, f)
        finally:
            gdal.VSIFCloseL(f)
        return bytes(data).decode("utf-8", errors="replace")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def parse_mtl(text: str) -> dict:
    """{group name: {key: value}} of an MTL file, ODL text (``GROUP = X`` ... ``END_GROUP = X``,
    quoted strings) or XML; values are strings without quotes, groups flattened to their own name."""
    text = text.lstrip("\ufeff")
    out: dict = {}
    if text.lstrip().startswith("<"):
        root = ET.fromstring(text)

        def walk(node):
            values = {child.tag: (child.text or "").strip() for child in node if len(child) == 0}
            if values:
                out.setdefault(node.tag, {}).update(values)
            for child in node:
                if len(child):
                    walk(child)

        walk(root)
        return out
    stack: list = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "END" or "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if key == "GROUP":
            stack.append(value)
        elif key == "END_GROUP":
            if stack:
                stack.pop()
        else:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.setdefault(stack[-1] if stack else "", {})[key] = value
    return out


def _value(mtl: dict, group: str, key: str, what: str, where: str) -> str:
    value = mtl.get(group, {}).get(key)
    if value in (None, ""):
        raise ProductError(
            f"Landsat product {where}: its MTL file has no {key} in {group} ({what}); the MTL is incomplete."
        )
    return value


# ---- reading ---------------------------------------------------------------------------------------


def _choose(classes) -> dict:
    """{bit: name} of the chosen QA_PIXEL classes (None: the default set)."""
    names = list(DEFAULT_CLASSES) if classes is None else [str(c).strip().lower() for c in classes]
    valid = set(QA_BITS.values())
    unknown = [c for c in names if c not in valid]
    if unknown:
        raise ProductError(
            f"Unknown Landsat QA_PIXEL class(es) {', '.join(unknown)}: choose from {', '.join(QA_BITS.values())}."
        )
    return {bit: name for bit, name in QA_BITS.items() if name in names}


def _find_file(folder: str, names: list, wanted: str) -> str | None:
    """``folder/<the name in names equal to wanted, ignoring case>`` or None."""
    for n in names:
        if n.upper() == wanted.upper():
            return f"{folder}/{n}"
    return None


def read(path: str, work_dir: str, classes: list | None = None) -> ProductLayer:
    """The Landsat C2 L2 product at ``path`` (folder, .tar or MTL file) as a VRT of its SR bands in
    ``work_dir``, with QA_PIXEL as its quality layer; ``classes``: the QA_PIXEL classes that count as
    invalid (None: fill, dilated_cloud, cirrus, cloud, cloud_shadow)."""
    from osgeo import gdal

    gdal.UseExceptions()
    path = str(path)
    chosen = _choose(classes)
    if os.path.isfile(path) and not _is_tar(path):
        mtls = [os.path.abspath(path)]
    else:
        mtls = _find_mtls(_root(path))
    if not mtls:
        raise ProductError(f"Landsat product {path}: no <product id>_MTL.txt or _MTL.xml file found in it.")
    ids = sorted({_landsat_id(m) for m in mtls})
    if len(ids) > 1:
        raise ProductError(
            f"Landsat product {path} holds {len(ids)} products ({', '.join(ids)}): give each product's folder, "
            "tar or MTL file as its own input."
        )
    pid = ids[0]
    mtl_path = sorted(mtls, key=lambda m: not m.lower().endswith(".txt"))[0]  # ODL text first, as USGS
    folder = os.path.dirname(mtl_path)
    m = _ID.match(pid)
    sensor, level = m.group("sensor").upper(), m.group("level").upper()
    if not level.startswith("L2") or m.group("collection") != "02":
        raise ProductError(
            f"Landsat product {pid} is {level} collection {m.group('collection')}: only Collection 2 Level-2 "
            "surface reflectance (L2SP or L2SR, '_02_' in the name) is read; order the Level-2 product."
        )
    try:
        mtl = parse_mtl(_read_text(mtl_path))
    except (OSError, ET.ParseError, RuntimeError) as e:
        raise ProductError(f"Landsat product {pid}: its MTL file {mtl_path} cannot be read ({e}).") from None
    sr = "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"
    if sr not in mtl:
        raise ProductError(
            f"Landsat product {pid}: its MTL file {mtl_path} has no {sr} group; it is not a Level-2 surface "
            "reflectance MTL."
        )
    date = _value(mtl, "IMAGE_ATTRIBUTES", "DATE_ACQUIRED", "the acquisition date", pid)
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", date):
        raise ProductError(f"Landsat product {pid}: DATE_ACQUIRED '{date}' in its MTL is no YYYY-MM-DD date.")

    bands = _BANDS[sensor]
    names = _list(folder)
    contents = mtl.get("PRODUCT_CONTENTS", {})
    files, missing = [], []
    for b in bands:
        wanted = f"{pid}_SR_B{b}.TIF"
        listed = contents.get(f"FILE_NAME_BAND_{b}", "")
        found = _find_file(folder, names, listed) if "_SR_B" in listed.upper() else None
        found = found or _find_file(folder, names, wanted)
        (files if found else missing).append(found or wanted)
    qa_name = contents.get("FILE_NAME_QUALITY_L1_PIXEL") or f"{pid}_QA_PIXEL.TIF"
    qa = _find_file(folder, names, qa_name) or _find_file(folder, names, f"{pid}_QA_PIXEL.TIF")
    if qa is None:
        missing.append(f"{pid}_QA_PIXEL.TIF")
    if missing:
        raise ProductError(
            f"Landsat product {pid} ({path}) is missing {', '.join(missing)}: give the complete product."
        )
    scale, offset = [], []
    for b in bands:
        for key, out in (("MULT", scale), ("ADD", offset)):
            text = _value(mtl, sr, f"REFLECTANCE_{key}_BAND_{b}", "the reflectance scale and offset", pid)
            try:
                out.append(float(text))
            except ValueError:
                raise ProductError(
                    f"Landsat product {pid}: REFLECTANCE_{key}_BAND_{b} '{text}' in its MTL is no number."
                ) from None

    os.makedirs(work_dir, exist_ok=True)
    vrt_path = os.path.join(work_dir, f"{pid}_SR.vrt")
    try:
        ds = gdal.BuildVRT(vrt_path, files, separate=True)
    except RuntimeError as e:
        raise ProductError(f"Landsat product {pid}: its SR bands cannot be read by GDAL ({e}).") from None
    if ds is None or ds.RasterCount != len(files):
        raise ProductError(f"Landsat product {pid}: its SR bands cannot be stacked (do they share one grid?).")
    for i, b in enumerate(bands):
        band = ds.GetRasterBand(i + 1)
        band.SetScale(scale[i])
        band.SetOffset(offset[i])
        band.SetNoDataValue(NODATA)
        band.SetDescription(f"SR_B{b}")
        wl, fw = bands[b]
        band.SetMetadata({"wavelength": f"{wl:g}", "fwhm": f"{fw:g}", "wavelength_units": "nm"})
    attrs = mtl.get("IMAGE_ATTRIBUTES", {})
    md = {"ACQUISITION_DATE": date, "LANDSAT_PRODUCT_ID": pid, "PRODUCT_FAMILY": FAMILY}
    for key in ("SPACECRAFT_ID", "SENSOR_ID", "CLOUD_COVER", "SCENE_CENTER_TIME"):
        if attrs.get(key):
            md[key] = attrs[key]
    ds.SetMetadata(md)
    ds.FlushCache()
    ds = None
    quality = QualityLayer(rule=QualityRule("bits", chosen), path=qa)
    return ProductLayer(family=FAMILY, name=pid, stack_path=vrt_path, date=date, quality=quality)
