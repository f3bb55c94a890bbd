"""Tiny Landsat Collection 2 Level-2 products made by code: the real folder layout and file names
(``<id>_SR_B<n>.TIF``, ``<id>_ST_B10.TIF``, ``<id>_QA_PIXEL.TIF``, ``<id>_MTL.txt`` / ``.xml``), the
MTL's ODL key layout (``GROUP = ... END_GROUP``, quoted strings) and its XML twin, and the .tar
USGS delivers. 6 x 8 pixels of 30 m in UTM 33N; a few QA_PIXEL pixels carry clouds, shadows, fill.
"""

from __future__ import annotations

import os
import tarfile

import numpy as np

from helpers.rasters import make_raster

LC09_ID = "LC09_L2SP_193023_20220724_20230406_02_T1"
LT05_ID = "LT05_L2SP_193023_20070715_20200830_02_T1"
ORIGIN = (399885.0, 5800215.0)  # UTM 33N, the 15 m offset of Landsat grids
H, W = 6, 8
EPSG = 32633
SCALE, OFFSET = 2.75e-05, -0.2

# QA_PIXEL values as USGS writes them (the confidence bits 8-15 included).
QA_CLEAR = 21824  # bit 6 clear, low confidences
QA_FILL = 1  # bit 0
QA_DILATED = 21826  # bit 1 dilated cloud (+ clear)
QA_CLOUD = 22280  # bit 3 cloud, high cloud confidence
QA_SHADOW = 23888  # bit 4 cloud shadow (+ clear)
QA_SNOW = 30048  # bit 5 snow (+ clear)
QA_WATER = 21952  # bit 7 water (+ clear)

# Pixels (row, col) of each class in the fixture's QA_PIXEL.
CLOUD_PX = [(1, 2), (1, 3), (2, 2)]
SHADOW_PX = [(3, 5), (4, 5)]
FILL_PX = [(0, 0), (5, 7)]
DILATED_PX = [(2, 3)]
SNOW_PX = [(5, 0)]
WATER_PX = [(4, 1)]

OLI_BANDS = [1, 2, 3, 4, 5, 6, 7]
TM_BANDS = [1, 2, 3, 4, 5, 7]


def qa_values() -> np.ndarray:
    """The fixture's QA_PIXEL (rows, cols), uint16."""
    qa = np.full((H, W), QA_CLEAR, np.uint16)
    for pixels, value in (
        (CLOUD_PX, QA_CLOUD),
        (SHADOW_PX, QA_SHADOW),
        (FILL_PX, QA_FILL),
        (DILATED_PX, QA_DILATED),
        (SNOW_PX, QA_SNOW),
        (WATER_PX, QA_WATER),
    ):
        for r, c in pixels:
            qa[r, c] = value
    return qa


def sr_dn(band: int) -> np.ndarray:
    """The SR digital numbers of ``band`` (rows, cols), uint16; 0 (fill) where QA_PIXEL says fill.
    Reflectance = DN * 2.75e-05 - 0.2: band 1 col 0 row 0 (if not fill) ~ 0.05."""
    rows, cols = np.mgrid[0:H, 0:W]
    dn = 9091 + 1000 * band + 100 * cols + 10 * rows
    for r, c in FILL_PX:
        dn[r, c] = 0
    return dn.astype(np.uint16)


def reflectance(band: int) -> np.ndarray:
    return sr_dn(band).astype(np.float64) * SCALE + OFFSET


def _odl(groups: list) -> str:
    """ODL text of [(group, [(key, value or nested groups list)])], indented by two spaces as USGS."""
    lines = []

    def emit(name, items, depth):
        pad = "  " * depth
        lines.append(f"{pad}GROUP = {name}")
        for key, value in items:
            if isinstance(value, list):
                emit(key, value, depth + 1)
            else:
                lines.append(f"{pad}  {key} = {value}")
        lines.append(f"{pad}END_GROUP = {name}")

    for name, items in groups:
        emit(name, items, 0)
    lines.append("END")
    return "\n".join(lines) + "\n"


def _xml(groups: list) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>']

    def emit(name, items, depth):
        pad = "  " * depth
        out.append(f"{pad}<{name}>")
        for key, value in items:
            if isinstance(value, list):
                emit(key, value, depth + 1)
            else:
                out.append(f"{pad}  <{key}>{str(value).strip(chr(34))}</{key}>")
        out.append(f"{pad}</{name}>")

    for name, items in groups:
        emit(name, items, 0)
    return "\n".join(out) + "\n"


def mtl_groups(pid: str, date: str, bands: list, scale: float = SCALE, offset: float = OFFSET) -> list:
    """The MTL's groups (a shortened real C2 L2 MTL: the groups and keys the reader needs, and the
    Level-1 rescaling group whose REFLECTANCE_MULT/ADD must not be taken for the SR ones)."""
    oli = pid.startswith(("LC08", "LC09"))
    spacecraft = {"LC09": "LANDSAT_9", "LC08": "LANDSAT_8", "LE07": "LANDSAT_7", "LT05": "LANDSAT_5"}[pid[:4]]
    sensor = {"LC09": "OLI_TIRS", "LC08": "OLI_TIRS", "LE07": "ETM", "LT05": "TM"}[pid[:4]]
    thermal = "ST_B10" if oli else "ST_B6"
    contents = [
        ("ORIGIN", '"Image courtesy of the U.S. Geological Survey"'),
        ("DIGITAL_OBJECT_IDENTIFIER", '"https://doi.org/10.5066/P9OGBGM6"'),
        ("LANDSAT_PRODUCT_ID", f'"{pid}"'),
        ("PROCESSING_LEVEL", '"L2SP"'),
        ("COLLECTION_NUMBER", "02"),
        ("COLLECTION_CATEGORY", '"T1"'),
        ("OUTPUT_FORMAT", '"GEOTIFF"'),
    ]
    contents += [(f"FILE_NAME_BAND_{b}", f'"{pid}_SR_B{b}.TIF"') for b in bands]
    contents += [
        (f"FILE_NAME_BAND_{thermal}", f'"{pid}_{thermal}.TIF"'),
        ("FILE_NAME_QUALITY_L1_PIXEL", f'"{pid}_QA_PIXEL.TIF"'),
        ("FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", f'"{pid}_QA_RADSAT.TIF"'),
        ("FILE_NAME_METADATA_ODL", f'"{pid}_MTL.txt"'),
        ("FILE_NAME_METADATA_XML", f'"{pid}_MTL.xml"'),
    ]
    image = [
        ("SPACECRAFT_ID", f'"{spacecraft}"'),
        ("SENSOR_ID", f'"{sensor}"'),
        ("WRS_TYPE", "2"),
        ("WRS_PATH", "193"),
        ("WRS_ROW", "23"),
        ("DATE_ACQUIRED", date),
        ("SCENE_CENTER_TIME", '"10:05:12.7720980Z"'),
        ("CLOUD_COVER", "12.34"),
        ("CLOUD_COVER_LAND", "12.34"),
        ("SUN_AZIMUTH", "151.33296514"),
        ("SUN_ELEVATION", "54.86327591"),
    ]
    projection = [
        ("DATUM", '"WGS84"'),
        ("ELLIPSOID", '"WGS84"'),
        ("MAP_PROJECTION", '"UTM"'),
        ("GRID_CELL_SIZE_REFLECTIVE", "30.00"),
        ("REFLECTIVE_LINES", str(H)),
        ("REFLECTIVE_SAMPLES", str(W)),
        ("UTM_ZONE", "33"),
    ]
    sr = []
    for b in bands:
        sr += [(f"REFLECTANCE_MAXIMUM_BAND_{b}", "1.602213"), (f"REFLECTANCE_MINIMUM_BAND_{b}", "-0.199972")]
    for b in bands:
        sr += [(f"QUANTIZE_CAL_MAX_BAND_{b}", "65535"), (f"QUANTIZE_CAL_MIN_BAND_{b}", "1")]
    for b in bands:
        sr += [(f"REFLECTANCE_MULT_BAND_{b}", f"{scale:g}"), (f"REFLECTANCE_ADD_BAND_{b}", f"{offset:g}")]
    level1 = []
    for b in bands:
        level1 += [(f"REFLECTANCE_MULT_BAND_{b}", "2.0000E-05"), (f"REFLECTANCE_ADD_BAND_{b}", "-0.100000")]
    return [
        (
            "LANDSAT_METADATA_FILE",
            [
                ("PRODUCT_CONTENTS", contents),
                ("IMAGE_ATTRIBUTES", image),
                ("PROJECTION_ATTRIBUTES", projection),
                (
                    "LEVEL2_PROCESSING_RECORD",
                    [
                        ("ORIGIN", '"Image courtesy of the U.S. Geological Survey"'),
                        ("PROCESSING_SOFTWARE_VERSION", '"LPGS_16.2.0"'),
                    ],
                ),
                ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", sr),
                (
                    "LEVEL2_SURFACE_TEMPERATURE_PARAMETERS",
                    [(f"TEMPERATURE_MULT_BAND_{thermal}", "0.00341802"), (f"TEMPERATURE_ADD_BAND_{thermal}", "149.0")],
                ),
                ("LEVEL1_PROCESSING_RECORD", [("LANDSAT_SCENE_ID", '"LC91930232022205LGN00"')]),
                ("LEVEL1_RADIOMETRIC_RESCALING", level1),
            ],
        )
    ]


def make_landsat_product(
    d,
    pid: str = LC09_ID,
    date: str = "2022-07-24",
    mtl: tuple = ("txt",),
    omit: tuple = (),
    scale: float = SCALE,
    offset: float = OFFSET,
) -> str:
    """Writes the product folder ``d/<pid>`` and returns its path. ``mtl``: which MTL files to write
    ("txt", "xml"); ``omit``: file suffixes to leave out (e.g. "SR_B4.TIF", "QA_PIXEL.TIF")."""
    folder = os.path.join(str(d), pid)
    os.makedirs(folder, exist_ok=True)
    bands = OLI_BANDS if pid.startswith(("LC08", "LC09")) else TM_BANDS
    thermal = "ST_B10" if pid.startswith(("LC08", "LC09")) else "ST_B6"
    files = {f"SR_B{b}.TIF": sr_dn(b) for b in bands}
    files[f"{thermal}.TIF"] = np.full((H, W), 44000, np.uint16)
    files["QA_PIXEL.TIF"] = qa_values()
    files["QA_RADSAT.TIF"] = np.zeros((H, W), np.uint16)
    for suffix, values in files.items():
        if suffix in omit:
            continue
        nodata = 1 if suffix == "QA_PIXEL.TIF" else 0
        make_raster(os.path.join(folder, f"{pid}_{suffix}"), values, EPSG, ORIGIN, 30.0, nodata=nodata)
    groups = mtl_groups(pid, date, bands, scale, offset)
    if "txt" in mtl:
        with open(os.path.join(folder, f"{pid}_MTL.txt"), "w", encoding="utf-8") as f:
            f.write(_odl(groups))
    if "xml" in mtl:
        with open(os.path.join(folder, f"{pid}_MTL.xml"), "w", encoding="utf-8") as f:
            f.write(_xml(groups))
    return folder


def make_landsat_tar(d, pid: str = LC09_ID, nested: bool = False, **kwargs) -> str:
    """The product as the .tar USGS delivers (its files at the top, or in ``<pid>/`` if ``nested``);
    returns the tar's path. The folder it was made from is written under ``d/src``."""
    folder = make_landsat_product(os.path.join(str(d), "src"), pid, **kwargs)
    path = os.path.join(str(d), f"{pid}.tar")
    with tarfile.open(path, "w") as tar:
        for name in sorted(os.listdir(folder)):
            tar.add(os.path.join(folder, name), arcname=f"{pid}/{name}" if nested else name)
    return path
