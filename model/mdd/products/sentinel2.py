"""Sentinel-2 Level-2A products (Sen2Cor, ESA's .SAFE format), read from the band files.

A product is a ``<id>.SAFE`` folder, or a .zip holding one (read through GDAL's /vsizip/), with
``MTD_MSIL2A.xml`` at its top and the bands in ``GRANULE/<granule>/IMG_DATA/R10m|R20m|R60m/``
(``T33UUU_20220724T102041_B02_10m.jp2``, ..., ``..._SCL_20m.jp2``).

Read: the date (``PRODUCT_START_TIME``, else ``DATATAKE_SENSING_START``, else the product name),
the spacecraft (``SPACECRAFT_NAME``: the centre wavelengths and FWHM of S2A or S2B), the processing
baseline and the radiometry: reflectance = (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE, where
the offsets (``BOA_ADD_OFFSET_VALUES_LIST``, one per ``band_id``) are -1000 from baseline 04.00 on and
absent (0) before. DN 0 is nodata. The bands are B02, B03, B04, B08 (10 m) and B05, B06, B07, B8A,
B11, B12 (20 m), each from the file at its native resolution; B01, B09 (60 m) are left out. The
quality layer is the scene classification (SCL, 20 m).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
import zipfile

from osgeo import gdal

from . import ProductError, ProductLayer, QualityLayer, QualityRule

gdal.UseExceptions()

FAMILY = "Sentinel-2 L2A"

MTD_NAME = "MTD_MSIL2A.xml"

# The bands read, in stack order, with their native resolution (m) and their band_id in the
# metadata (0-based over B01..B12 with B8A after B08, as in Spectral_Information_List).
BANDS = (
    ("B02", 10, 1),
    ("B03", 10, 2),
    ("B04", 10, 3),
    ("B05", 20, 4),
    ("B06", 20, 5),
    ("B07", 20, 6),
    ("B08", 10, 7),
    ("B8A", 20, 8),
    ("B11", 20, 11),
    ("B12", 20, 12),
)

# Centre wavelength and FWHM (nm) of the spectral responses (ESA, S2 MSI technical guide).
SPECTRAL = {
    "S2A": {
        "B02": (492.4, 66.0),
        "B03": (559.8, 36.0),
        "B04": (664.6, 31.0),
        "B05": (704.1, 15.0),
        "B06": (740.5, 15.0),
        "B07": (782.8, 20.0),
        "B08": (832.8, 106.0),
        "B8A": (864.7, 21.0),
        "B11": (1613.7, 91.0),
        "B12": (2202.4, 175.0),
    },
    "S2B": {
        "B02": (492.1, 66.0),
        "B03": (559.0, 36.0),
        "B04": (664.9, 31.0),
        "B05": (703.8, 16.0),
        "B06": (739.1, 15.0),
        "B07": (779.7, 20.0),
        "B08": (832.9, 106.0),
        "B8A": (864.0, 22.0),
        "B11": (1610.4, 94.0),
        "B12": (2185.7, 185.0),
    },
}

# Scene classification (SCL) values and their names, as used by MASK_CLASSES.
SCL_CLASSES = {
    0: "no_data",
    1: "saturated",
    2: "dark_area",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "cirrus",
    11: "snow",
}
# Default invalid classes (issue 14): saturated, cloud shadow, cloud medium and high probability,
# cirrus and snow, plus no_data.
DEFAULT_CLASSES = (
    "no_data",
    "saturated",
    "cloud_shadow",
    "cloud_medium_probability",
    "cloud_high_probability",
    "cirrus",
    "snow",
)
# Names shared with the other families (and the SCL's own wording), each for one or more classes.
ALIASES = {
    "cloud": ("cloud_medium_probability", "cloud_high_probability"),
    "shadow": ("cloud_shadow",),
    "fill": ("no_data",),
    "nodata": ("no_data",),
    "thin_cirrus": ("cirrus",),
    "snow_ice": ("snow",),
    "defective": ("saturated",),
    "dark_area_pixels": ("dark_area",),
    "dark_features": ("dark_area",),
}
CLASS_NAMES = tuple(SCL_CLASSES.values()) + tuple(ALIASES)  # every name MASK_CLASSES may use for this family

_BAND_FILE = re.compile(
    r"(?:^|/)GRANULE/[^/]+/IMG_DATA/R(10|20|60)m/[^/]*_(B\d\d|B8A|SCL)_(\d\d)m\.jp2$", re.IGNORECASE
)


# ---- where the product's files are ------------------------------------------------------------


class _Source:
    """A .SAFE folder or a zip of one: its list of files (relative to the .SAFE root), its files'
    bytes and the GDAL path of each."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.zip = None
        self.prefix = ""  # the .SAFE folder inside the zip ("" when MTD_MSIL2A.xml is at its root)
        if os.path.isdir(path):
            self.root = os.path.abspath(path)
        elif os.path.basename(path) == MTD_NAME:
            self.root = os.path.dirname(os.path.abspath(path))
        else:
            self.root = None
            self.zip = os.path.abspath(path)
            self.prefix = _zip_prefix(self.zip)
            if self.prefix is None:
                raise ProductError(f"'{path}' holds no {MTD_NAME}: it is no Sentinel-2 L2A product.")

    def files(self) -> list:
        if self.zip is None:
            out = []
            granule = os.path.join(self.root, "GRANULE")
            for folder, _dirs, names in os.walk(granule):
                rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
                out += [f"{rel}/{n}" for n in names]
            return out
        with zipfile.ZipFile(self.zip) as z:
            n = len(self.prefix)
            return [m[n:] for m in z.namelist() if m.startswith(self.prefix) and not m.endswith("/")]

    def read(self, rel: str) -> bytes:
        if self.zip is None:
            with open(os.path.join(self.root, rel), "rb") as f:
                return f.read()
        with zipfile.ZipFile(self.zip) as z:
            return z.read(self.prefix + rel)

    def gdal_path(self, rel: str) -> str:
        if self.zip is None:
            return os.path.join(self.root, *rel.split("/"))
        return "/vsizip/" + self.zip.replace("\\", "/") + "/" + self.prefix + rel

    def name(self) -> str:
        if self.zip is None:
            base = os.path.basename(self.root)
        else:
            base = self.prefix.rstrip("/") or os.path.basename(self.zip)
            base = re.sub(r"\.zip$", "", base, flags=re.IGNORECASE)
        return re.sub(r"\.SAFE$", "", base, flags=re.IGNORECASE)


def _zip_prefix(path: str) -> str | None:
    """The folder ("X.SAFE/" or "") of MTD_MSIL2A.xml in the zip at ``path``, or None."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    for m in sorted(names, key=len):
        parts = m.split("/")
        if parts[-1] == MTD_NAME and len(parts) <= 2:
            return "/".join(parts[:-1]) + "/" if len(parts) == 2 else ""
    return None


def recognise(path: str) -> bool:
    """True for a Sentinel-2 L2A .SAFE folder (MTD_MSIL2A.xml at its top), its MTD_MSIL2A.xml, or a
    .zip holding one."""
    path = str(path)
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, MTD_NAME))
    if os.path.isfile(path):
        if os.path.basename(path) == MTD_NAME:
            return True
        if path.lower().endswith(".zip"):
            return _zip_prefix(path) is not None
    return False


# ---- metadata -----------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _first_text(root: ET.Element, *tags: str) -> str | None:
    for tag in tags:
        for el in root.iter():
            if _local(el.tag) == tag and el.text and el.text.strip():
                return el.text.strip()
    return None


def _baseline_number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def read_metadata(xml_bytes: bytes, name: str = "product") -> dict:
    """What the reader needs from MTD_MSIL2A.xml: date, spacecraft ("S2A"/"S2B"), baseline,
    quantification value and BOA offsets ({band_id: offset})."""
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as e:
        raise ProductError(f"Sentinel-2 product '{name}': {MTD_NAME} cannot be read ({e}).") from None
    start = _first_text(root, "PRODUCT_START_TIME", "DATATAKE_SENSING_START")
    m = re.match(r"(\d{4})-(\d{2})-(\d{2})", start or "") or re.search(r"MSIL2A_(\d{4})(\d{2})(\d{2})T", name)
    if m is None:
        raise ProductError(
            f"Sentinel-2 product '{name}': {MTD_NAME} has no PRODUCT_START_TIME or DATATAKE_SENSING_START "
            "and the name holds no date: give the date with the DATES parameter or use an unaltered product."
        )
    date = "-".join(m.groups())
    craft_text = _first_text(root, "SPACECRAFT_NAME") or name
    craft = "S2B" if re.search(r"(Sentinel-2B|^S2B)", craft_text, re.IGNORECASE) else "S2A"
    baseline_text = _first_text(root, "PROCESSING_BASELINE")
    if baseline_text is None:
        m = re.search(r"_N(\d\d)(\d\d)_", name)
        baseline_text = f"{m.group(1)}.{m.group(2)}" if m else None
    baseline = _baseline_number(baseline_text)
    quant_text = _first_text(root, "BOA_QUANTIFICATION_VALUE")
    try:
        quant = float(quant_text) if quant_text else 10000.0
    except ValueError:
        raise ProductError(
            f"Sentinel-2 product '{name}': BOA_QUANTIFICATION_VALUE '{quant_text}' is no number."
        ) from None
    if quant <= 0:
        raise ProductError(f"Sentinel-2 product '{name}': BOA_QUANTIFICATION_VALUE is {quant:g}.")
    offsets = {}
    for el in root.iter():
        if _local(el.tag) == "BOA_ADD_OFFSET" and el.get("band_id") is not None and el.text:
            try:
                offsets[int(el.get("band_id"))] = float(el.text)
            except ValueError:
                raise ProductError(f"Sentinel-2 product '{name}': BOA_ADD_OFFSET '{el.text}' is no number.") from None
    if not offsets and baseline is not None and baseline >= 4.0:
        # Baseline 04.00 on always writes the list; a product stripped of it still has the offset.
        offsets = {band_id: -1000.0 for _b, _r, band_id in BANDS}
    return {
        "date": date,
        "spacecraft": craft,
        "baseline": baseline_text,
        "quantification": quant,
        "offsets": offsets,
    }


# ---- quality classes ----------------------------------------------------------------------------


def scl_rule(classes: list | None = None) -> QualityRule:
    """The SCL rule for the chosen class names (None: ``DEFAULT_CLASSES``); aliases such as "cloud"
    (medium and high probability) are expanded."""
    chosen = list(DEFAULT_CLASSES) if classes is None else [str(c).strip().lower() for c in classes]
    by_name = {v: k for k, v in SCL_CLASSES.items()}
    out = {}
    unknown = []
    for name in chosen:
        for real in ALIASES.get(name, (name,)):
            if real in by_name:
                out[by_name[real]] = real
            else:
                unknown.append(name)
    if unknown:
        valid = ", ".join(list(SCL_CLASSES.values()) + sorted(ALIASES))
        raise ProductError(
            f"Unknown Sentinel-2 SCL class(es) {', '.join(sorted(set(unknown)))}: valid names are {valid}."
        )
    return QualityRule(kind="classes", classes=dict(sorted(out.items())))


# ---- read ---------------------------------------------------------------------------------------


def _band_files(files: list) -> dict:
    """{(band, resolution): relative path} of the granule's band and SCL files."""
    out = {}
    for rel in sorted(files):
        m = _BAND_FILE.search(rel)
        if m and m.group(1) == m.group(3):
            out.setdefault((m.group(2).upper(), int(m.group(3))), rel)
    return out


def read(path: str, work_dir: str, classes: list | None = None) -> ProductLayer:
    """The product as a 10-band VRT (reflectance scale/offset, nodata 0, wavelengths, date) in
    ``work_dir`` and its SCL quality layer."""
    path = str(path)
    rule = scl_rule(classes)
    source = _Source(path)
    name = source.name()
    try:
        xml_bytes = source.read(MTD_NAME)
    except (OSError, KeyError) as e:
        raise ProductError(f"Sentinel-2 product '{name}': {MTD_NAME} cannot be read ({e}).") from None
    meta = read_metadata(xml_bytes, name)
    files = _band_files(source.files())
    missing = [f"{b}_{r}m" for b, r, _i in BANDS if (b, r) not in files]
    if ("SCL", 20) not in files:
        missing.append("SCL_20m")
    if missing:
        raise ProductError(
            f"Sentinel-2 product '{name}' ({path}) lacks the band file(s) {', '.join(missing)} under "
            "GRANULE/<granule>/IMG_DATA/R10m|R20m: use the complete product as downloaded."
        )
    sources = [source.gdal_path(files[(b, r)]) for b, r, _i in BANDS]
    os.makedirs(work_dir, exist_ok=True)
    stack = os.path.join(work_dir, f"{name}_L2A.vrt")
    # A VRT has one grid: resolution="highest" puts every band on the 10 m grid, so the 20 m bands
    # are resampled there by the VRT with nearest neighbour (each 20 m pixel becomes 2x2). That is
    # lossless; Build MDD stack resamples all bands onto the target grid afterwards anyway.
    try:
        vrt = gdal.BuildVRT(stack, sources, separate=True, resolution="highest", resampleAlg="nearest")
    except RuntimeError as e:
        raise ProductError(f"Sentinel-2 product '{name}': its band files cannot be read by GDAL ({e}).") from None
    if vrt is None or vrt.RasterCount != len(BANDS):
        raise ProductError(f"Sentinel-2 product '{name}': its band files cannot be stacked by GDAL.")
    spectral = SPECTRAL[meta["spacecraft"]]
    quant = meta["quantification"]
    for i, (band_name, _res, band_id) in enumerate(BANDS):
        band = vrt.GetRasterBand(i + 1)
        band.SetDescription(band_name)
        band.SetNoDataValue(0)
        band.SetScale(1.0 / quant)
        band.SetOffset(meta["offsets"].get(band_id, 0.0) / quant)
        centre, fwhm = spectral[band_name]
        band.SetMetadata({"wavelength": f"{centre:g}", "fwhm": f"{fwhm:g}", "wavelength_units": "nm"})
    vrt.SetMetadata(
        {
            "ACQUISITION_DATE": meta["date"],
            "SPACECRAFT": meta["spacecraft"],
            "PROCESSING_BASELINE": meta["baseline"] or "",
            "PRODUCT": name,
        }
    )
    vrt.FlushCache()
    vrt = None
    quality = QualityLayer(rule=rule, path=source.gdal_path(files[("SCL", 20)]))
    return ProductLayer(family=FAMILY, name=name, stack_path=stack, date=meta["date"], quality=quality)
