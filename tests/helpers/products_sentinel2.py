"""Tiny Sentinel-2 L2A products made by code: the real .SAFE layout, file names and MTD_MSIL2A.xml
elements, with JPEG 2000 band files (GDAL's JP2OpenJPEG driver, lossless) a few pixels wide.

``make_s2_l2a(tmp_path)`` writes ``S2A_MSIL2A_20220724T102041_N0400_R065_T33UUU_20220724T170140.SAFE``
(baseline 04.00, offsets -1000); ``baseline="03.01"`` writes an S2B product of 2021 without offsets;
``as_zip=True`` zips the folder. The returned ``S2Fixture`` holds the DNs and the SCL written.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from .rasters import crs_wkt

gdal.UseExceptions()

EPSG = 32633  # tile 33UUU: UTM zone 33 north
ORIGIN = (300000.0, 5900040.0)
SIZE_10M = 12  # 10 m bands: 12 x 12 px; 20 m: 6 x 6; 60 m: 2 x 2

BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")  # as in R20m
BANDS_60M = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")
BAND_IDS = {"B01": 0, "B02": 1, "B03": 2, "B04": 3, "B05": 4, "B06": 5, "B07": 6, "B08": 7, "B8A": 8}
BAND_IDS.update({"B09": 9, "B10": 10, "B11": 11, "B12": 12})

# The SCL (20 m, 6 x 6): vegetation everywhere but one pixel of each other class.
SCL_PIXELS = {
    (0, 0): 9,  # cloud high probability
    (0, 1): 8,  # cloud medium probability
    (1, 0): 3,  # cloud shadow
    (1, 1): 10,  # cirrus
    (2, 2): 11,  # snow
    (3, 3): 1,  # saturated
    (4, 4): 6,  # water
    (5, 5): 0,  # no data
    (2, 0): 2,  # dark area
    (0, 5): 7,  # unclassified
    (5, 0): 5,  # not vegetated
}


@dataclass
class S2Fixture:
    path: str  # the .SAFE folder or the zip
    name: str  # the product id (no .SAFE)
    date: str
    baseline: str
    spacecraft: str
    dn: dict = field(default_factory=dict)  # band -> DN array at its native resolution
    scl: np.ndarray | None = None


def _write_jp2(path: str, values: np.ndarray, pixel: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = values.shape
    mem = gdal.GetDriverByName("MEM").Create(
        "", w, h, 1, gdal.GDT_Byte if values.dtype == np.uint8 else gdal.GDT_UInt16
    )
    mem.SetGeoTransform((ORIGIN[0], pixel, 0.0, ORIGIN[1], 0.0, -pixel))
    mem.SetProjection(crs_wkt(EPSG))
    mem.GetRasterBand(1).WriteArray(values)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(path, mem, options=["QUALITY=100", "REVERSIBLE=YES"])
    mem = None
    aux = path + ".aux.xml"
    if os.path.exists(aux):
        os.remove(aux)


def band_dn(band: str, size: int) -> np.ndarray:
    """Distinct, known DNs for a band at a resolution (never 0: 0 is nodata)."""
    k = BAND_IDS[band]
    rows, cols = np.mgrid[0:size, 0:size]
    return (1500 + 200 * k + 13 * rows + cols + (3 if size != SIZE_10M else 0)).astype(np.uint16)


def _offsets_xml(baseline: str) -> str:
    if float(baseline) < 4.0:
        return ""
    items = "\n".join(f'        <BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
    return f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{items}\n      </BOA_ADD_OFFSET_VALUES_LIST>\n"


def mtd_xml(name: str, start: str, baseline: str, spacecraft: str, image_files: list) -> str:
    """An MTD_MSIL2A.xml with the elements of a real one that a reader needs (and a few more)."""
    files = "\n".join(f"              <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    res = [60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20]
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{n}"><RESOLUTION>{r}</RESOLUTION>'
        "</Spectral_Information>"
        for i, (n, r) in enumerate(zip(names, res))
    )
    ns = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{name}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{start}</GENERATION_TIME>
      <Datatake datatakeIdentifier="G{name[:3]}_{name[11:26]}_037069_N{baseline}">
        <SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>65</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
{_offsets_xml(baseline)}      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def make_s2_l2a(
    directory,
    baseline: str = "04.00",
    as_zip: bool = False,
    omit: tuple = (),
    nodata_pixel: tuple | None = (11, 11),
) -> S2Fixture:
    """Writes a tiny L2A product into ``directory``. baseline "04.00": S2A, 2022-07-24, offsets
    -1000; otherwise S2B, 2021-06-15, no offsets. ``omit``: file stems left out (e.g. "B11_20m").
    ``nodata_pixel``: a (row, col) of the 10 m grid set to DN 0 in every band."""
    if float(baseline) >= 4.0:
        name = f"S2A_MSIL2A_20220724T102041_N{baseline.replace('.', '')}_R065_T33UUU_20220724T170140"
        start, craft, granule = "2022-07-24T10:20:41.024Z", "Sentinel-2A", "L2A_T33UUU_A037069_20220724T102508"
        stem = "T33UUU_20220724T102041"
    else:
        name = f"S2B_MSIL2A_20210615T101559_N{baseline.replace('.', '')}_R065_T33UUU_20210615T120312"
        start, craft, granule = "2021-06-15T10:15:59.024Z", "Sentinel-2B", "L2A_T33UUU_A022360_20210615T101908"
        stem = "T33UUU_20210615T101559"
    date = start[:10]
    safe = os.path.join(str(directory), name + ".SAFE")
    img = os.path.join(safe, "GRANULE", granule, "IMG_DATA")
    fx = S2Fixture(path=safe, name=name, date=date, baseline=baseline, spacecraft="S2" + craft[-1])
    image_files = []
    for res, bands in ((10, BANDS_10M), (20, BANDS_20M), (60, BANDS_60M)):
        size = SIZE_10M * 10 // res
        extra = ("AOT", "WVP", "TCI") if res < 60 else ("AOT", "WVP")
        for band in bands + extra + (("SCL",) if res > 10 else ()):
            if f"{band}_{res}m" in omit:
                continue
            if band == "SCL":
                values = np.full((size, size), 4, np.uint8)
                if res == 20:
                    for (r, c), v in SCL_PIXELS.items():
                        values[r, c] = v
                    fx.scl = values
            elif band in ("AOT", "WVP", "TCI"):
                values = np.full((size, size), 100, np.uint16 if band != "TCI" else np.uint8)
            else:
                values = band_dn(band, size)
                if nodata_pixel is not None:
                    r, c = nodata_pixel
                    values[r * size // SIZE_10M, c * size // SIZE_10M] = 0
                if (res == 10) or (res == 20 and band not in BANDS_10M):
                    fx.dn[band] = values
            rel = f"R{res}m/{stem}_{band}_{res}m"
            image_files.append(f"GRANULE/{granule}/IMG_DATA/{rel}")
            _write_jp2(os.path.join(img, f"{rel}.jp2"), values, float(res))
    for sub in ("QI_DATA", "AUX_DATA"):
        os.makedirs(os.path.join(safe, "GRANULE", granule, sub), exist_ok=True)
    with open(os.path.join(safe, "GRANULE", granule, "MTD_TL.xml"), "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-2A_Tile_ID xmlns:n1="x"/>\n')
    for sub in ("DATASTRIP", "HTML", "rep_info", "AUX_DATA"):
        os.makedirs(os.path.join(safe, sub), exist_ok=True)
    with open(os.path.join(safe, "manifest.safe"), "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1"/>\n')
    if "MTD_MSIL2A" not in omit:
        with open(os.path.join(safe, "MTD_MSIL2A.xml"), "w", encoding="utf-8") as f:
            f.write(mtd_xml(name, start, baseline, craft, image_files))
    if as_zip:
        zpath = os.path.join(str(directory), name + ".zip")
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            for folder, _dirs, names in os.walk(safe):
                rel = os.path.relpath(folder, str(directory)).replace(os.sep, "/")
                z.writestr(rel + "/", "")
                for n in names:
                    z.write(os.path.join(folder, n), f"{rel}/{n}")
        shutil.rmtree(safe)
        fx.path = zpath
    return fx


def reflectance(fx: S2Fixture, band: str) -> np.ndarray:
    """The expected reflectance of ``band`` on the 10 m grid (NaN where DN is 0)."""
    dn = fx.dn[band].astype(np.float64)
    if dn.shape[0] != SIZE_10M:
        dn = np.repeat(np.repeat(dn, SIZE_10M // dn.shape[0], axis=0), SIZE_10M // dn.shape[1], axis=1)
    offset = -1000.0 if float(fx.baseline) >= 4.0 else 0.0
    out = (dn + offset) / 10000.0
    out[dn == 0] = np.nan
    return out
