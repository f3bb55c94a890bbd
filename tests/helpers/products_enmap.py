"""Tiny EnMAP L2A products made by code: the real folder layout and file names, a METADATA.XML of
the real structure (root ``level_X``), a 6-band int16 SPECTRAL_IMAGE (UTM 33N, 30 m, 8 x 10 px, a
few -32768 pixels) and the QL_* layers, the QL_QUALITY_* masks with known pixels set.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from helpers.rasters import make_raster

PRODUCT_ID = "ENMAP01-____L2A-DT0000004950_20220724T104517Z_001_V010303_20230922T131734Z"
START_TIME = "2022-07-24T10:45:17.000000Z"
DATE = "2022-07-24"
EPSG = 32633
ORIGIN = (366015.0, 5809965.0)
PIXEL = 30.0
SHAPE = (8, 10)  # rows, cols
NODATA = -32768
WAVELENGTHS = [418.24, 548.13, 664.43, 864.94, 1652.27, 2198.95]
FWHM = [6.99, 7.23, 7.88, 9.42, 9.64, 7.82]
# Per-band gain/offset (real L2A: 1e-4 and 0 everywhere; varied here so each band's own is checked).
GAINS = [1e-4, 1e-4, 2e-4, 1e-4, 5e-5, 1e-4]
OFFSETS = [0.0, 0.0, 0.0, -0.01, 0.0, 0.02]
NODATA_PIXELS = [(0, 0), (7, 9), (3, 6)]
# Quality class -> the pixels (row, col) its QL_QUALITY_* mask sets to 1.
MASKED = {
    "cloud": [(2, 3), (2, 4), (3, 3)],
    "cirrus": [(5, 1)],
    "haze": [(6, 6), (6, 7)],
    "snow": [(1, 8)],
    "cloud_shadow": [(4, 4), (4, 5)],
}
QUALITY_PARTS = {
    "cloud": "QL_QUALITY_CLOUD",
    "cirrus": "QL_QUALITY_CIRRUS",
    "haze": "QL_QUALITY_HAZE",
    "snow": "QL_QUALITY_SNOW",
    "cloud_shadow": "QL_QUALITY_CLOUDSHADOW",
}
OTHER_PARTS = ["QL_PIXELMASK", "QL_QUALITY_CLASSES", "QL_QUALITY_TESTFLAGS", "QL_SWIR", "QL_VNIR"]


def dn() -> np.ndarray:
    """The SPECTRAL_IMAGE's DN (band, row, col), int16, -32768 at NODATA_PIXELS."""
    b, r, c = np.mgrid[0 : len(WAVELENGTHS), 0 : SHAPE[0], 0 : SHAPE[1]]
    v = (1000 + 300 * b + 10 * r + c).astype(np.int16)
    for row, col in NODATA_PIXELS:
        v[:, row, col] = NODATA
    return v


def reflectance() -> np.ndarray:
    """The expected physical reflectance (band, row, col), NaN at the nodata pixels."""
    v = dn().astype(np.float64)
    out = v * np.array(GAINS)[:, None, None] + np.array(OFFSETS)[:, None, None]
    out[v == NODATA] = np.nan
    return out


def mask(name: str) -> np.ndarray:
    """The expected bool (row, col) mask of quality class ``name``."""
    m = np.zeros(SHAPE, bool)
    for row, col in MASKED[name]:
        m[row, col] = True
    return m


def metadata_xml(files: list, start_time: str | None = START_TIME, bands: int | None = None) -> str:
    """METADATA.XML text in the L2A structure; ``files``: the product's file names."""
    n = len(WAVELENGTHS) if bands is None else bands
    band_ids = "\n".join(
        f'      <bandID number="{i + 1}">\n'
        f"        <wavelengthCenterOfBand>{WAVELENGTHS[i]}</wavelengthCenterOfBand>\n"
        f"        <FWHMOfBand>{FWHM[i]}</FWHMOfBand>\n"
        f"        <GainOfBand>{GAINS[i]}</GainOfBand>\n"
        f"        <OffsetOfBand>{OFFSETS[i]}</OffsetOfBand>\n"
        "      </bandID>"
        for i in range(n)
    )
    time = (
        f"    <temporalCoverage>\n      <startTime>{start_time}</startTime>\n"
        "      <stopTime>2022-07-24T10:45:21.000000Z</stopTime>\n    </temporalCoverage>\n"
        if start_time
        else ""
    )
    file_info = "\n".join(
        f'      <file>\n        <name>{f}</name>\n        <size unit="Kbyte">1</size>\n'
        "        <version>01.03.03</version>\n        <format>binary/tif</format>\n      </file>"
        for f in files
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<level_X xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="L2A_Metadata.xsd">
  <metadata>
    <schema><processingLevel>L2A</processingLevel><versionSchema>01.03.03</versionSchema></schema>
    <name>{PRODUCT_ID}-METADATA.XML</name>
    <comment>EnMAP Level 2A Product of datatake DT0000004950</comment>
  </metadata>
  <base>
    <format>ENMAP_L2A</format>
    <level>L2A</level>
{time}    <spatialCoverage>
      <boundingPolygon>
        <point><frame>upper_left</frame><latitude>52.4234</latitude><longitude>13.0296</longitude></point>
      </boundingPolygon>
    </spatialCoverage>
  </base>
  <specific>
    <code>L2A</code>
    <numberOfBands>{n}</numberOfBands>
    <bandCharacterisation>
{band_ids}
    </bandCharacterisation>
  </specific>
  <product>
    <image>
      <merge>
        <name>{PRODUCT_ID}-SPECTRAL_IMAGE.TIF</name>
        <dimension><rows>{SHAPE[0]}</rows><columns>{SHAPE[1]}</columns></dimension>
      </merge>
    </image>
    <productFileInformation>
{file_info}
    </productFileInformation>
  </product>
</level_X>
"""


def make_enmap_product(
    d,
    omit: tuple = (),
    spectral: str = "TIF",
    start_time: str | None = START_TIME,
    xml_bands: int | None = None,
    xml_text: str | None = None,
    product_id: str = PRODUCT_ID,
) -> str:
    """Writes the product folder ``d/<product_id>`` and returns its path.

    omit: parts left out ("SPECTRAL_IMAGE", "METADATA", "QL_QUALITY_SNOW", ...); spectral: "TIF" or
    "BSQ" (ENVI with .HDR); start_time None: no temporalCoverage; xml_bands: bands described in the
    XML (default 6); xml_text: the METADATA.XML's text instead of the generated one."""
    folder = os.path.join(str(d), product_id)
    os.makedirs(folder, exist_ok=True)
    grid = dict(epsg=EPSG, origin_xy=ORIGIN, pixel_size=PIXEL)
    files = []
    if "SPECTRAL_IMAGE" not in omit:
        if spectral.upper() == "BSQ":
            make_raster(
                os.path.join(folder, f"{product_id}-SPECTRAL_IMAGE.BSQ"), dn(), nodata=NODATA, driver="ENVI", **grid
            )
            files += [f"{product_id}-SPECTRAL_IMAGE.BSQ", f"{product_id}-SPECTRAL_IMAGE.HDR"]
            hdr = os.path.join(folder, f"{product_id}-SPECTRAL_IMAGE.hdr")
            if os.path.exists(hdr):  # GDAL writes .hdr; the product names it .HDR
                os.replace(hdr, os.path.join(folder, f"{product_id}-SPECTRAL_IMAGE.HDR"))
        else:
            make_raster(os.path.join(folder, f"{product_id}-SPECTRAL_IMAGE.TIF"), dn(), nodata=NODATA, **grid)
            files.append(f"{product_id}-SPECTRAL_IMAGE.TIF")
    for name, part in QUALITY_PARTS.items():
        if part not in omit:
            make_raster(os.path.join(folder, f"{product_id}-{part}.TIF"), mask(name).astype(np.uint8), **grid)
            files.append(f"{product_id}-{part}.TIF")
    for part in OTHER_PARTS:
        bands = 3 if part in ("QL_SWIR", "QL_VNIR") else 1
        make_raster(os.path.join(folder, f"{product_id}-{part}.TIF"), np.zeros((bands, *SHAPE), np.uint8), **grid)
        files.append(f"{product_id}-{part}.TIF")
    if "METADATA" not in omit:
        files.append(f"{product_id}-METADATA.XML")
        text = xml_text if xml_text is not None else metadata_xml(files, start_time, xml_bands)
        with open(os.path.join(folder, f"{product_id}-METADATA.XML"), "w", encoding="utf-8") as f:
            f.write(text)
    return folder


def zip_product(folder: str, zip_path: str) -> str:
    """Zips the product folder as the DLR delivery does (the folder inside); returns ``zip_path``."""
    name = os.path.basename(folder.rstrip("/\\"))
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, f), f"{name}/{f}")
    return str(zip_path)


def make_enmap_zip(d, **kwargs) -> str:
    """The product of ``make_enmap_product(d / "src", **kwargs)`` zipped to ``d/<product id>.ZIP``."""
    folder = make_enmap_product(os.path.join(str(d), "src"), **kwargs)
    return zip_product(folder, os.path.join(str(d), os.path.basename(folder) + ".ZIP"))
