"""EnMAP L2A products (DLR), read from the product folder or its zip.

A product holds, every file named ``<product id>-<part>``, e.g.
``ENMAP01-____L2A-DT0000004950_20220724T104517Z_001_V010303_20230922T131734Z-SPECTRAL_IMAGE.TIF``:

- ``-SPECTRAL_IMAGE.TIF`` (or ``.BSQ`` with its ``.HDR``): the int16 reflectance cube, nodata -32768;
- ``-METADATA.XML`` (root ``level_X``): ``base/temporalCoverage/startTime`` (the acquisition),
  ``specific/bandCharacterisation/bandID[@number]`` with ``wavelengthCenterOfBand``, ``FWHMOfBand``
  (nm), ``GainOfBand`` and ``OffsetOfBand`` (reflectance = DN * gain + offset; 1e-4 and 0 in L2A),
  and ``product/productFileInformation/file/name``, the names of all the product's files;
- ``-QL_QUALITY_CLOUD``, ``_CIRRUS``, ``_HAZE``, ``_SNOW`` and ``_CLOUDSHADOW`` (``.TIF``): one 0/1
  mask each, on the spectral image's grid (same size and geotransform).

The product is given as its folder (or a folder holding only it in one sub-folder, as the unpacked
zip), its ``.zip`` (read through ``/vsizip/``), or its METADATA.XML or SPECTRAL_IMAGE file.

``read`` writes ``<product id>.vrt`` into ``work_dir``: the SPECTRAL_IMAGE with each band's gain and
offset as GDAL scale/offset, nodata, ``wavelength``/``fwhm`` (``wavelength_units`` nm) band metadata
and ``ACQUISITION_DATE``. Its quality layer is several single-class masks:
``QualityLayer(sources={"cloud": path, "cirrus": ..., "haze": ..., "snow": ..., "cloud_shadow": ...})``
holding only the chosen classes, and ``path`` None.

How Build MDD stack combines them: for each ``name, path`` in ``quality.sources``, read band 1 of
``path`` (its pixel (row, col) is the stack's pixel (row, col)) and take
``invalid_pixels(QualityRule("mask", {1: name}), values)[name]`` (``source_rules`` gives these
rules, with the layer rule's ``buffer_px``); a pixel is invalid when any source flags it, and the log
names each source's share. ``quality.rule`` (kind "mask") only sums the chosen names up for a reader
that ignores ``sources``.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from osgeo import gdal

from . import ProductError, ProductLayer, QualityLayer, QualityRule, chosen_classes

gdal.UseExceptions()

FAMILY = "EnMAP L2A"

# User-facing class name -> the quality layer's file name part.
CLASSES = {
    "cloud": "QL_QUALITY_CLOUD",
    "cirrus": "QL_QUALITY_CIRRUS",
    "haze": "QL_QUALITY_HAZE",
    "snow": "QL_QUALITY_SNOW",
    "cloud_shadow": "QL_QUALITY_CLOUDSHADOW",
}
DEFAULT_CLASSES = ("cloud", "cirrus", "haze", "snow", "cloud_shadow")
ALIASES = {"shadow": "cloud_shadow", "cloudshadow": "cloud_shadow", "clouds": "cloud"}
CLASS_NAMES = tuple(CLASSES) + tuple(ALIASES)  # every name MASK_CLASSES may use for this family
NODATA = -32768.0  # the L2A fill value, when the SPECTRAL_IMAGE does not say
DEFAULT_GAIN, DEFAULT_OFFSET = 1e-4, 0.0  # the L2A values, when a bandID does not give them

_SPECTRAL = re.compile(r"-SPECTRAL_IMAGE\.(tif|tiff|bsq|bil|bip)$", re.IGNORECASE)
_METADATA = re.compile(r"-METADATA\.XML$", re.IGNORECASE)
_L2A_NAME = re.compile(r"^ENMAP.*L2A", re.IGNORECASE)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_NAME_DATE = re.compile(r"_(\d{4})(\d{2})(\d{2})T\d{6}Z?_")


# ---- finding the product's files --------------------------------------------------------------


def _is_zip(path: str) -> bool:
    return path.lower().endswith(".zip") and os.path.isfile(path)


def _listing(path: str) -> list:
    """The product's candidate file paths (GDAL-openable: plain or /vsizip/), or [] when ``path`` is
    neither a folder, a zip, nor a METADATA.XML / SPECTRAL_IMAGE file."""
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path))]
        if any(_METADATA.search(f) or _SPECTRAL.search(f) for f in files):
            return [f for f in files if os.path.isfile(f)]
        subs = [f for f in files if os.path.isdir(f)]
        if len(subs) == 1:  # the unpacked zip: <folder>/<product id>/<files>
            inner = [os.path.join(subs[0], f) for f in sorted(os.listdir(subs[0]))]
            return [f for f in inner if os.path.isfile(f)]
        return []
    if _is_zip(path):
        root = "/vsizip/" + os.path.abspath(path).replace("\\", "/")
        try:
            entries = gdal.ReadDirRecursive(root) or []
        except RuntimeError:
            return []
        return [f"{root}/{e}" for e in entries if not e.endswith("/")]
    if os.path.isfile(path) and (_METADATA.search(path) or _SPECTRAL.search(path)):
        folder = os.path.dirname(os.path.abspath(path))
        return [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    return []


def _basename(p: str) -> str:
    return p.replace("\\", "/").rsplit("/", 1)[-1]


def _dirname(p: str) -> str:
    return p.replace("\\", "/").rsplit("/", 1)[0] if "/" in p.replace("\\", "/") else ""


def _candidates(path: str) -> tuple:
    """(METADATA.XML paths, SPECTRAL_IMAGE paths) found for ``path``."""
    files = _listing(path)
    return [f for f in files if _METADATA.search(f)], [f for f in files if _SPECTRAL.search(f)]


def _read_text(path: str) -> str:
    """A (possibly /vsizip/) file's text."""
    stat = gdal.VSIStatL(path)
    if stat is None:
        raise ProductError(f"EnMAP L2A metadata '{path}' cannot be read: the file is missing.")
    f = gdal.VSIFOpenL(path, "rb")
    if f is None:
        raise ProductError(f"EnMAP L2A metadata '{path}' cannot be opened.")
    try:
        data = gdal.VSIFReadL(1, stat.size, f)
    finally:
        gdal.VSIFCloseL(f)
    return bytes(data).decode("utf-8", errors="replace")


def _parse_xml(path: str) -> ET.Element:
    try:
        root = ET.fromstring(_read_text(path))
    except ET.ParseError as e:
        raise ProductError(
            f"EnMAP L2A metadata '{_basename(path)}' is not readable XML ({e}): download the product again."
        ) from None
    for el in root.iter():  # drop namespaces, should a processor version add one
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def _xml_says_l2a(path: str) -> bool:
    try:
        root = _parse_xml(path)
    except (ProductError, RuntimeError):
        return False
    for key in ("base/level", "specific/code", "base/format"):
        el = root.find(key)
        if el is not None and el.text and "L2A" in el.text.upper():
            return True
    return False


def recognise(path: str) -> bool:
    """True when ``path`` is an EnMAP L2A product: its folder or zip (a METADATA.XML or a
    SPECTRAL_IMAGE named ENMAP...L2A..., or both whose metadata says level L2A), or one of those two
    files of it."""
    path = str(path)
    try:
        metas, spectra = _candidates(path)
    except OSError:
        return False
    if any(_L2A_NAME.match(_basename(f)) for f in metas + spectra):
        return True
    return bool(metas and spectra and _xml_says_l2a(metas[0]))


# ---- reading --------------------------------------------------------------------------------


def _text(el: ET.Element, key: str) -> str | None:
    found = el.find(key)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _bands(root: ET.Element, meta_name: str) -> list:
    """[(wavelength, fwhm, gain, offset)] in band order, from specific/bandCharacterisation."""
    items = root.findall("specific/bandCharacterisation/bandID") or root.findall(".//bandCharacterisation/bandID")
    if not items:
        raise ProductError(
            f"EnMAP L2A metadata '{meta_name}' has no specific/bandCharacterisation/bandID entries, so "
            "the band wavelengths are unknown: download the product's METADATA.XML again."
        )
    out = []
    for k, item in enumerate(items):
        number = item.get("number")
        try:
            order = int(number) if number is not None else k + 1
            wl, fw = float(_text(item, "wavelengthCenterOfBand")), float(_text(item, "FWHMOfBand"))
            gain = _text(item, "GainOfBand")
            offset = _text(item, "OffsetOfBand")
            gain = float(gain) if gain is not None else DEFAULT_GAIN
            offset = float(offset) if offset is not None else DEFAULT_OFFSET
        except (TypeError, ValueError):
            raise ProductError(
                f"EnMAP L2A metadata '{meta_name}': bandID {number or k + 1} lacks a numeric "
                "wavelengthCenterOfBand / FWHMOfBand / GainOfBand / OffsetOfBand."
            ) from None
        out.append((order, wl, fw, gain if gain != 0 else DEFAULT_GAIN, offset))
    out.sort(key=lambda t: t[0])
    return [t[1:] for t in out]


def _date(root: ET.Element, product_id: str, meta_name: str) -> str:
    for key in ("base/temporalCoverage/startTime", ".//temporalCoverage/startTime"):
        value = _text(root, key)
        m = _DATE.search(value or "")
        if m:
            return "-".join(m.groups())
    m = _NAME_DATE.search(product_id + "_")
    if m:
        return "-".join(m.groups())
    raise ProductError(
        f"EnMAP L2A metadata '{meta_name}' has no base/temporalCoverage/startTime and the product name "
        "holds no date: give the date with DATES (layer_name=YYYY-MM-DD) or use the original METADATA.XML."
    )


def _classes(classes) -> list:
    return chosen_classes(
        classes,
        CLASSES,
        ALIASES,
        DEFAULT_CLASSES,
        f"EnMAP L2A quality class: choose among {', '.join(CLASSES)} (default: all five).",
    )


def _quality_file(part: str, folder: str, listed: list, names: list) -> str | None:
    """The path of the ``-<part>.TIF`` quality file: named in the metadata, else found in the folder."""
    pattern = re.compile(rf"[-_]{part}\.(tif|tiff|bsq)$", re.IGNORECASE)
    present = {_basename(f): f for f in listed}
    for name in names:
        if pattern.search(name) and _basename(name) in present:
            return present[_basename(name)]
    for f in listed:
        if pattern.search(f) and _dirname(f) == folder:
            return f
    return None


def _open(path: str, what: str) -> gdal.Dataset:
    try:
        return gdal.Open(path)
    except RuntimeError as e:
        raise ProductError(f"EnMAP L2A {what} '{_basename(path)}' cannot be read by GDAL ({e}).") from None


def read(path: str, work_dir: str, classes: list | None = None) -> ProductLayer:
    """The EnMAP L2A product at ``path`` as a ProductLayer: ``<product id>.vrt`` in ``work_dir``
    (scale/offset, nodata, wavelengths, FWHM, ACQUISITION_DATE) and its QL_QUALITY_* masks for
    ``classes`` (names from ``CLASSES``; None: all five; []: no quality layer)."""
    path = str(path)
    chosen = _classes(classes)
    metas, spectra = _candidates(path)
    where = _basename(path.rstrip("/\\")) or path
    if len(metas) > 1:
        raise ProductError(
            f"'{where}' holds {len(metas)} EnMAP METADATA.XML files: give one product (folder or zip) per layer."
        )
    if not metas:
        raise ProductError(
            f"EnMAP L2A product '{where}' has no *-METADATA.XML: the band wavelengths, gains and date come "
            "from it; use the complete product folder or zip."
        )
    meta = metas[0]
    folder = _dirname(meta)
    product_id = _METADATA.sub("", _basename(meta))
    spectra = [s for s in spectra if _dirname(s) == folder]
    if not spectra:
        raise ProductError(
            f"EnMAP L2A product '{product_id}' has no *-SPECTRAL_IMAGE.TIF (or .BSQ) beside its "
            "METADATA.XML: use the complete product folder or zip."
        )
    spectral = sorted(spectra, key=lambda s: not s.lower().endswith((".tif", ".tiff")))[0]
    root = _parse_xml(meta)
    meta_name = _basename(meta)
    bands = _bands(root, meta_name)
    date = _date(root, product_id, meta_name)

    src = _open(spectral, "SPECTRAL_IMAGE")
    if src.RasterCount != len(bands):
        raise ProductError(
            f"EnMAP L2A product '{product_id}': the SPECTRAL_IMAGE has {src.RasterCount} bands but "
            f"METADATA.XML describes {len(bands)}: the two files are not of one product."
        )
    width, height = src.RasterXSize, src.RasterYSize
    nodata = src.GetRasterBand(1).GetNoDataValue()
    nodata = NODATA if nodata is None else nodata
    src = None

    os.makedirs(work_dir, exist_ok=True)
    vrt_path = os.path.join(work_dir, f"{product_id}.vrt")
    try:
        gdal.Translate(vrt_path, spectral, format="VRT")
        ds = gdal.Open(vrt_path, gdal.GA_Update)
    except RuntimeError as e:
        raise ProductError(f"EnMAP L2A product '{product_id}': its stack cannot be written ({e}).") from None
    for b, (wl, fw, gain, offset) in enumerate(bands):
        band = ds.GetRasterBand(b + 1)
        band.SetNoDataValue(float(nodata))
        band.SetScale(float(gain))
        band.SetOffset(float(offset))
        band.SetDescription(f"band {b + 1} ({wl:g} nm)")
        md = dict(band.GetMetadata() or {})
        md.update(wavelength=repr(float(wl)), fwhm=repr(float(fw)), wavelength_units="nm")
        band.SetMetadata(md)
    md = dict(ds.GetMetadata() or {})
    md.update(ACQUISITION_DATE=date, PRODUCT_ID=product_id, PRODUCT_FAMILY=FAMILY)
    ds.SetMetadata(md)
    ds.FlushCache()
    ds = None

    quality = None
    if chosen:
        listed = _listing(path)
        names = [el.text.strip() for el in root.iter("name") if el.text and el.text.strip()]
        sources, missing = {}, []
        for name in chosen:
            found = _quality_file(CLASSES[name], folder, listed, names)
            if found is None:
                missing.append(f"-{CLASSES[name]}.TIF ({name})")
                continue
            q = _open(found, f"quality layer {CLASSES[name]}")
            if (q.RasterXSize, q.RasterYSize) != (width, height):
                raise ProductError(
                    f"EnMAP L2A quality layer '{_basename(found)}' is {q.RasterXSize} x {q.RasterYSize} pixels "
                    f"but the SPECTRAL_IMAGE is {width} x {height}: the files are not of one product."
                )
            sources[name] = found
        if missing:
            raise ProductError(
                f"EnMAP L2A product '{product_id}' lacks the quality layer(s) {', '.join(missing)}: use the "
                "complete product, or leave these classes out of MASK_CLASSES."
            )
        quality = QualityLayer(rule=QualityRule("mask", {1: ", ".join(chosen)}), path=None, sources=sources)
    return ProductLayer(family=FAMILY, name=product_id, stack_path=vrt_path, date=date, quality=quality)


def source_rules(quality: QualityLayer) -> dict:
    """{class name: (mask path, QualityRule("mask", {1: name}))} for each of ``quality.sources``,
    with ``quality.rule.buffer_px``: how each QL_QUALITY_* mask is read."""
    return {
        name: (src, QualityRule("mask", {1: name}, quality.rule.buffer_px)) for name, src in quality.sources.items()
    }
