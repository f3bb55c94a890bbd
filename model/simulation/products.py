"""Simulated images written as satellite products that Build MDD stack reads directly.

``model/mdd/products`` reads Sentinel-2 L2A, Landsat Collection 2 Level-2 and EnMAP L2A products
with their own quality layers. To test that path on the simulated series, the writers here put a
simulated image (band, row, col) of float reflectance on a ``Grid`` (NaN = nodata), with its date,
into each family's own layout, so that the readers accept it as they accept a download:

- ``write_sentinel2_l2a``: a ``<id>.SAFE`` folder with ``MTD_MSIL2A.xml`` (acquisition time,
  spacecraft, processing baseline 05.09, BOA_QUANTIFICATION_VALUE 10000, BOA_ADD_OFFSET -1000 per
  band) and lossless JPEG 2000 band files ``GRANULE/<granule>/IMG_DATA/R10m|R20m|R60m/
  T<tile>_<time>_<band>_<res>m.jp2``: each band in the folder of its resolution class (B02, B03,
  B04, B08 in R10m; B05, B06, B07, B8A, B11, B12 in R20m; B01, B09, B10 in R60m), the scene
  classification ``..._SCL_20m.jp2`` in R20m. DN = reflectance x 10000 + 1000, 0 = nodata.
- ``write_landsat_c2_l2``: a ``<product id>`` folder (``LC08_L2SP_<path><row>_<acquired>_<processed>
  _02_T1``) with ``_SR_B<n>.TIF`` (uint16, reflectance = DN x 2.75e-05 - 0.2, 0 = fill),
  ``_QA_PIXEL.TIF`` (bits 0 fill, 3 cloud, 4 cloud shadow, 6 clear, the confidence bits as USGS
  writes them) and the ODL ``_MTL.txt``.
- ``write_enmap_l2a``: a ``<product id>`` folder (``ENMAP01-____L2A-DT..._<time>Z_001_V010303_...``)
  with the int16 ``-SPECTRAL_IMAGE.TIF`` (gain 1e-4, offset 0, nodata -32768), ``-METADATA.XML``
  (acquisition time, each band's centre, FWHM, gain and offset, the file list), the 0/1 masks
  ``-QL_QUALITY_CLOUD``, ``_CIRRUS``, ``_HAZE``, ``_SNOW``, ``_CLOUDSHADOW`` and ``-QL_PIXELMASK``.

The pixel size is the grid's, whatever it is (the readers take it from the files): a 30 m grid
gives "10 m" Sentinel-2 band files of 30 m pixels. What a reader needs is the writer's caller's to
give: the Sentinel-2 reader stacks B02-B08, B8A, B11 and B12 and fails without any of them; the
Landsat reader stacks all SR bands of the sensor (1-7 for OLI).

Clouds: in a cloudy product the DATA look like clouds (``simulate_clouds``, ``apply_clouds``): bright
and nearly flat (0.4-0.8 reflectance, a little lower in the SWIR), with a thin semi-transparent rim
and a dark shadow beside each cloud. Only the quality layer (SCL classes 9 and 3, QA_PIXEL bits 3 and
4, QL_QUALITY_CLOUD and _CLOUDSHADOW) says which pixels those are; nodata stays for pixels without
data. The rim is left unflagged, as a cloud detector misses thin cloud edges: a one-pixel mask
buffer catches it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from osgeo import gdal
from scipy import ndimage

from ..core.grid import Grid
from ..mdd.products import sentinel2 as _sentinel2
from .sensors import cloud_mask
from .synthetic_scene import smooth_field

gdal.UseExceptions()

# ---- clouds ------------------------------------------------------------------------------------

EDGE_OPACITY = 0.15  # the thin cloud rim (one fine pixel wide) that no quality layer flags
FLAG_SHARE = 0.2  # a sensor pixel is flagged once this share of its footprint is cloud (or shadow)
SHADOW_DARKENING = 0.7  # a shadow keeps 30 % of the light (the diffuse sky)
CLOUD_LEVEL = (0.4, 0.8)  # visible reflectance of a cloud top
SHADOW_SHIFT_PX = (4.0, 10.0)  # shadow offset from its cloud, fine pixels (low clouds, high sun)


@dataclass
class CloudScene:
    """Clouds and their shadows over one image, on the fine grid (row, col).

    ``core``: under a cloud (what a detector flags); ``opacity``: the share of the light the cloud
    reflects, 1 on the core and ``EDGE_OPACITY`` on its one-pixel rim; ``shadow``: in a cloud's shadow
    and not under the cloud; ``texture``: the cloud top's brightness variation (around 1);
    ``level``: the cloud top's visible reflectance; ``shift_px``: (rows, cols) from cloud to shadow.
    """

    core: np.ndarray
    opacity: np.ndarray
    shadow: np.ndarray
    texture: np.ndarray
    level: float
    shift_px: tuple[float, float]


def simulate_clouds(shape: tuple[int, int], cover: float, rng: np.random.Generator) -> CloudScene:
    """Clouds covering ``cover`` of a fine grid of ``shape`` (blobs of a smoothed random field,
    ``sensors.cloud_mask``), their rims, textures and shadows, cast to the north-west (a morning
    sun in the south-east) by 4-10 fine pixels."""
    core = cloud_mask(shape, float(cover), rng)
    rim = ndimage.binary_dilation(core, structure=np.ones((3, 3), bool)) & ~core
    opacity = np.where(core, 1.0, np.where(rim, EDGE_OPACITY, 0.0)).astype(np.float32)
    angle = np.deg2rad(rng.uniform(120.0, 160.0))  # sun azimuth, clockwise from north
    dist = rng.uniform(*SHADOW_SHIFT_PX)
    dy, dx = float(dist * np.cos(angle)), float(-dist * np.sin(angle))  # away from the sun; rows run south
    shadow = ndimage.shift(core.astype(np.float32), (dy, dx), order=0, mode="constant", cval=0.0) > 0.5
    shadow &= ~core & ~rim
    texture = np.clip(1.0 + 0.08 * smooth_field(shape, 3.0, rng), 0.8, 1.2).astype(np.float32)
    level = float(rng.uniform(*CLOUD_LEVEL))
    return CloudScene(core, opacity, shadow, texture, level, (dy, dx))


def cloud_spectrum(wavelengths: Sequence[float] | np.ndarray, level: float) -> np.ndarray:
    """A cloud top's reflectance per band: ``level`` across the VNIR, falling to 0.7 x ``level`` at
    2200 nm (ice and water absorb in the SWIR)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    return level * (1.0 - 0.3 * np.clip((wl - 900.0) / 1300.0, 0.0, 1.0))


def block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """(row, col) means over ``factor`` x ``factor`` blocks (remainder rows/cols dropped)."""
    f = int(factor)
    if f == 1:
        return np.asarray(a, dtype=np.float32)
    h, w = a.shape[0] // f, a.shape[1] // f
    return a[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3)).astype(np.float32)


def apply_clouds(
    values: np.ndarray, wavelengths: Sequence[float] | np.ndarray, factor: int, scene: CloudScene
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloudy values, cloud flags, shadow flags) of an image (band, row, col) on the grid
    ``factor`` times coarser than the scene's: each pixel mixes its surface (darkened by the shadow
    share of its footprint) with the cloud by the cloud's mean opacity over its footprint. A pixel is
    flagged cloud when more than ``FLAG_SHARE`` of it is cloud core, shadow when more than that is
    shadow and it is no cloud. NaN (no data) stays NaN."""
    opacity = block_mean(scene.opacity, factor)
    shadow = block_mean(scene.shadow.astype(np.float32), factor)
    texture = block_mean(scene.texture, factor)
    cloud_flag = block_mean(scene.core.astype(np.float32), factor) > FLAG_SHARE
    shadow_flag = (shadow > FLAG_SHARE) & ~cloud_flag
    top = cloud_spectrum(wavelengths, scene.level).astype(np.float32)[:, None, None] * texture[None]
    lit = values * (1.0 - SHADOW_DARKENING * shadow)[None]
    out = (1.0 - opacity)[None] * lit + opacity[None] * top
    return out.astype(np.float32), cloud_flag, shadow_flag


# ---- shared file writing -------------------------------------------------------------------------


def _check(values: np.ndarray, grid: Grid, names: Sequence) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[1:] != (grid.height, grid.width):
        raise ValueError(f"values of shape {v.shape} do not fit the {grid.width} x {grid.height} px grid")
    if len(names) != v.shape[0]:
        raise ValueError(f"{v.shape[0]} bands but {len(names)} band names")
    return v


def _flags(flag: np.ndarray | None, grid: Grid) -> np.ndarray:
    if flag is None:
        return np.zeros((grid.height, grid.width), bool)
    f = np.asarray(flag, bool)
    if f.shape != (grid.height, grid.width):
        raise ValueError(f"a quality flag of shape {f.shape} does not fit the {grid.width} x {grid.height} px grid")
    return f


def _mem(array: np.ndarray, grid: Grid, gdal_type: int, nodata: float | None) -> gdal.Dataset:
    a = array if array.ndim == 3 else array[None]
    ds = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, a.shape[0], gdal_type)
    ds.SetGeoTransform(tuple(grid.geotransform))
    ds.SetProjection(grid.crs_wkt)
    for b in range(a.shape[0]):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(a[b])
        if nodata is not None:
            band.SetNoDataValue(float(nodata))
    return ds


def _write_tif(path: str, array: np.ndarray, grid: Grid, gdal_type: int, nodata: float | None = None) -> None:
    ds = _mem(array, grid, gdal_type, nodata)
    gdal.GetDriverByName("GTiff").CreateCopy(path, ds, options=["COMPRESS=DEFLATE", "TILED=YES"])
    ds = None


def _write_jp2(path: str, array: np.ndarray, grid: Grid, gdal_type: int) -> None:
    ds = _mem(array, grid, gdal_type, None)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(path, ds, options=["QUALITY=100", "REVERSIBLE=YES"])
    ds = None
    if os.path.exists(path + ".aux.xml"):  # a real product has none
        os.remove(path + ".aux.xml")


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _stamp(date: str) -> str:
    return _dt.date.fromisoformat(date).strftime("%Y%m%d")


def _later(date: str, days: int) -> str:
    return (_dt.date.fromisoformat(date) + _dt.timedelta(days=days)).strftime("%Y%m%d")


# ---- Sentinel-2 L2A --------------------------------------------------------------------------------

S2_RESOLUTION_CLASS = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B10": 60,
    "B11": 20,
    "B12": 20,
}
S2_BAND_IDS = {b: i for i, b in enumerate(S2_RESOLUTION_CLASS)}  # 0-based, B8A after B08
S2_READER_BANDS = tuple(b for b, _res, _id in _sentinel2.BANDS)  # what the reader stacks, in its order
S2_BOA_OFFSET = -1000.0  # baseline 04.00 on
S2_QUANTIFICATION = 10000.0
SCL = {name: value for value, name in _sentinel2.SCL_CLASSES.items()}


def s2_band_name(name: str) -> str:
    """'2', 'B2', 'b02' -> 'B02'; '8A' -> 'B8A' (the names of a response file or of a product)."""
    m = re.fullmatch(r"\s*[Bb]?0*(\d{1,2})([Aa]?)\s*", str(name))
    if not m:
        raise ValueError(f"'{name}' is no Sentinel-2 band name (B01-B12, B8A)")
    out = f"B{int(m.group(1)):02d}" if not m.group(2) else f"B{int(m.group(1))}A"
    if out not in S2_RESOLUTION_CLASS:
        raise ValueError(f"'{name}' is no Sentinel-2 band name (B01-B12, B8A)")
    return out


def scl_layer(
    values: np.ndarray, band_names: Sequence[str], cloud: np.ndarray | None = None, shadow: np.ndarray | None = None
) -> np.ndarray:
    """The scene classification (uint8, row, col) of reflectance ``values`` (band, row, col): no_data
    where a band is NaN, cloud_high_probability under ``cloud``, cloud_shadow under ``shadow``,
    otherwise vegetation (NDVI > 0.3, from B04 and B08 when given) or not_vegetated."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape[1:], SCL["not_vegetated"], np.uint8)
    names = [s2_band_name(n) for n in band_names]
    if "B04" in names and "B08" in names:
        red, nir = v[names.index("B04")], v[names.index("B08")]
        with np.errstate(invalid="ignore", divide="ignore"):
            ndvi = (nir - red) / (nir + red)
        out[ndvi > 0.3] = SCL["vegetation"]
    if shadow is not None:
        out[np.asarray(shadow, bool)] = SCL["cloud_shadow"]
    if cloud is not None:
        out[np.asarray(cloud, bool)] = SCL["cloud_high_probability"]
    out[~np.all(np.isfinite(v), axis=0)] = SCL["no_data"]
    return out


def _s2_mtd(name: str, start: str, baseline: str, spacecraft: str, files: list) -> str:
    images = "\n".join(f"              <IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)
    offsets = "\n".join(
        f'        <BOA_ADD_OFFSET band_id="{i}">{S2_BOA_OFFSET:.0f}</BOA_ADD_OFFSET>' for i in S2_BAND_IDS.values()
    )
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}">'
        f"<RESOLUTION>{S2_RESOLUTION_CLASS[b]}</RESOLUTION></Spectral_Information>"
        for b, i in S2_BAND_IDS.items()
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
      <Datatake>
        <SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule imageFormat="JPEG2000">
{images}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">{S2_QUANTIFICATION:.0f}</BOA_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      <BOA_ADD_OFFSET_VALUES_LIST>
{offsets}
      </BOA_ADD_OFFSET_VALUES_LIST>
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def write_sentinel2_l2a(
    directory: str,
    values: np.ndarray,
    band_names: Sequence[str],
    grid: Grid,
    date: str,
    cloud: np.ndarray | None = None,
    shadow: np.ndarray | None = None,
    spacecraft: str = "S2A",
    tile: str = "33UUU",
) -> str:
    """Writes reflectance ``values`` (band, row, col; NaN = nodata) on ``grid`` as the Sentinel-2 L2A
    product of ``date`` into ``directory``; returns the ``.SAFE`` folder's path. ``band_names``: one
    Sentinel-2 band name per band ('B02', '2', '8A'...); every band goes into the folder of its
    resolution class at the grid's own pixel size. ``cloud`` / ``shadow``: bool (row, col) written
    into the SCL (classes 9 and 3) and nowhere else."""
    names = [s2_band_name(n) for n in band_names]
    v = _check(values, grid, names)
    if len(set(names)) != len(names):
        raise ValueError(f"band names repeat: {names}")
    cloud, shadow = _flags(cloud, grid), _flags(shadow, grid)
    craft = spacecraft.upper()
    if craft not in ("S2A", "S2B"):
        raise ValueError(f"spacecraft '{spacecraft}' is neither S2A nor S2B")
    sensing = f"{_stamp(date)}T102041"
    name = f"{craft}_MSIL2A_{sensing}_N0509_R065_T{tile}_{_stamp(date)}T150000"
    granule = f"L2A_T{tile}_A000000_{sensing}"
    safe = os.path.join(directory, name + ".SAFE")
    img = os.path.join(safe, "GRANULE", granule, "IMG_DATA")
    for res in (10, 20, 60):
        os.makedirs(os.path.join(img, f"R{res}m"), exist_ok=True)
    dn = np.where(np.isfinite(v), np.round(v * S2_QUANTIFICATION - S2_BOA_OFFSET), 0.0)
    dn = np.where(np.isfinite(v), np.clip(dn, 1, 65535), 0).astype(np.uint16)
    stem = f"T{tile}_{sensing}"
    files = []
    for b, band in enumerate(names):
        res = S2_RESOLUTION_CLASS[band]
        rel = f"R{res}m/{stem}_{band}_{res}m"
        _write_jp2(os.path.join(img, rel + ".jp2"), dn[b], grid, gdal.GDT_UInt16)
        files.append(f"GRANULE/{granule}/IMG_DATA/{rel}")
    rel = f"R20m/{stem}_SCL_20m"
    _write_jp2(os.path.join(img, rel + ".jp2"), scl_layer(v, names, cloud, shadow), grid, gdal.GDT_Byte)
    files.append(f"GRANULE/{granule}/IMG_DATA/{rel}")
    os.makedirs(os.path.join(safe, "GRANULE", granule, "QI_DATA"), exist_ok=True)
    _write_text(
        os.path.join(safe, "GRANULE", granule, "MTD_TL.xml"),
        '<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-2A_Tile_ID xmlns:n1="x"/>\n',
    )
    _write_text(
        os.path.join(safe, "manifest.safe"),
        '<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1"/>\n',
    )
    start = f"{date}T10:20:41.024Z"
    spacecraft_name = "Sentinel-2A" if craft == "S2A" else "Sentinel-2B"
    _write_text(os.path.join(safe, _sentinel2.MTD_NAME), _s2_mtd(name, start, "05.09", spacecraft_name, files))
    return safe


# ---- Landsat Collection 2 Level-2 ------------------------------------------------------------------

LANDSAT_SCALE, LANDSAT_OFFSET = 2.75e-05, -0.2
QA_FILL = 1  # bit 0
QA_CLEAR = 21824  # bit 6 clear, low cloud/shadow/snow/cirrus confidences (bits 8-15), as USGS writes it
QA_CLOUD = 22280  # bit 3 cloud, high cloud confidence
QA_SHADOW = 23888  # bit 4 cloud shadow, high shadow confidence
LANDSAT_SENSORS = {"LC08": ("LANDSAT_8", "OLI_TIRS"), "LC09": ("LANDSAT_9", "OLI_TIRS")}


def qa_pixel(nodata: np.ndarray, cloud: np.ndarray | None = None, shadow: np.ndarray | None = None) -> np.ndarray:
    """QA_PIXEL (uint16, row, col): fill where ``nodata``, cloud (bit 3) under ``cloud``, cloud
    shadow (bit 4) under ``shadow`` (cloud wins), clear elsewhere."""
    out = np.full(np.shape(nodata), QA_CLEAR, np.uint16)
    if shadow is not None:
        out[np.asarray(shadow, bool)] = QA_SHADOW
    if cloud is not None:
        out[np.asarray(cloud, bool)] = QA_CLOUD
    out[np.asarray(nodata, bool)] = QA_FILL
    return out


def _odl(groups: list) -> str:
    lines = []

    def emit(name: str, items: list, depth: int) -> None:
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
    return "\n".join(lines + ["END"]) + "\n"


def write_landsat_c2_l2(
    directory: str,
    values: np.ndarray,
    bands: Sequence[int | str],
    grid: Grid,
    date: str,
    cloud: np.ndarray | None = None,
    shadow: np.ndarray | None = None,
    sensor: str = "LC08",
    path_row: str = "193023",
) -> str:
    """Writes reflectance ``values`` (band, row, col; NaN = fill) on ``grid`` as the Landsat 8/9
    Collection 2 Level-2 product of ``date`` into ``directory``; returns its folder's path.
    ``bands``: the OLI band number of each band (1-7; the reader needs all seven); ``cloud`` /
    ``shadow``: bool (row, col) written into QA_PIXEL (bits 3 and 4) and nowhere else."""
    numbers = [int(str(b).strip().upper().lstrip("B")) for b in bands]
    v = _check(values, grid, numbers)
    sensor = sensor.upper()
    if sensor not in LANDSAT_SENSORS:
        raise ValueError(f"sensor '{sensor}' is not one of {', '.join(LANDSAT_SENSORS)}")
    cloud, shadow = _flags(cloud, grid), _flags(shadow, grid)
    pid = f"{sensor}_L2SP_{path_row}_{_stamp(date)}_{_later(date, 9)}_02_T1"
    folder = os.path.join(directory, pid)
    os.makedirs(folder, exist_ok=True)
    nodata = ~np.all(np.isfinite(v), axis=0)
    dn = np.clip(np.round((np.nan_to_num(v) - LANDSAT_OFFSET) / LANDSAT_SCALE), 1, 65535)
    dn = np.where(nodata[None] | ~np.isfinite(v), 0, dn).astype(np.uint16)
    for b, n in enumerate(numbers):
        _write_tif(os.path.join(folder, f"{pid}_SR_B{n}.TIF"), dn[b], grid, gdal.GDT_UInt16, 0)
    qa = qa_pixel(nodata, cloud, shadow)
    _write_tif(os.path.join(folder, f"{pid}_QA_PIXEL.TIF"), qa, grid, gdal.GDT_UInt16, QA_FILL)
    valid = ~nodata
    cover = 100.0 * float((cloud & valid).sum()) / max(int(valid.sum()), 1)
    spacecraft, sensor_id = LANDSAT_SENSORS[sensor]
    contents = [("LANDSAT_PRODUCT_ID", f'"{pid}"'), ("PROCESSING_LEVEL", '"L2SP"'), ("COLLECTION_NUMBER", "02")]
    contents += [(f"FILE_NAME_BAND_{n}", f'"{pid}_SR_B{n}.TIF"') for n in numbers]
    contents += [
        ("FILE_NAME_QUALITY_L1_PIXEL", f'"{pid}_QA_PIXEL.TIF"'),
        ("FILE_NAME_METADATA_ODL", f'"{pid}_MTL.txt"'),
    ]
    image = [
        ("SPACECRAFT_ID", f'"{spacecraft}"'),
        ("SENSOR_ID", f'"{sensor_id}"'),
        ("WRS_PATH", str(int(path_row[:3]))),
        ("WRS_ROW", str(int(path_row[3:]))),
        ("DATE_ACQUIRED", date),
        ("SCENE_CENTER_TIME", '"10:05:12.7720980Z"'),
        ("CLOUD_COVER", f"{cover:.2f}"),
    ]
    projection = [
        ("GRID_CELL_SIZE_REFLECTIVE", f"{grid.pixel_size:.2f}"),
        ("REFLECTIVE_LINES", str(grid.height)),
        ("REFLECTIVE_SAMPLES", str(grid.width)),
    ]
    sr = []
    for n in numbers:
        sr += [
            (f"REFLECTANCE_MULT_BAND_{n}", f"{LANDSAT_SCALE:.4E}"),
            (f"REFLECTANCE_ADD_BAND_{n}", f"{LANDSAT_OFFSET:f}"),
        ]
    groups = [
        (
            "LANDSAT_METADATA_FILE",
            [
                ("PRODUCT_CONTENTS", contents),
                ("IMAGE_ATTRIBUTES", image),
                ("PROJECTION_ATTRIBUTES", projection),
                ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", sr),
            ],
        )
    ]
    _write_text(os.path.join(folder, f"{pid}_MTL.txt"), _odl(groups))
    return folder


# ---- EnMAP L2A ---------------------------------------------------------------------------------------

ENMAP_GAIN, ENMAP_OFFSET, ENMAP_NODATA = 1e-4, 0.0, -32768
ENMAP_QUALITY = (
    "QL_QUALITY_CLOUD",
    "QL_QUALITY_CIRRUS",
    "QL_QUALITY_HAZE",
    "QL_QUALITY_SNOW",
    "QL_QUALITY_CLOUDSHADOW",
)


def _enmap_xml(product_id: str, start: str, wavelengths: np.ndarray, fwhm: np.ndarray, files: list, shape) -> str:
    bands = "\n".join(
        f'      <bandID number="{i + 1}">\n'
        f"        <wavelengthCenterOfBand>{w:.3f}</wavelengthCenterOfBand>\n"
        f"        <FWHMOfBand>{f:.3f}</FWHMOfBand>\n"
        f"        <GainOfBand>{ENMAP_GAIN:g}</GainOfBand>\n"
        f"        <OffsetOfBand>{ENMAP_OFFSET:g}</OffsetOfBand>\n"
        "      </bandID>"
        for i, (w, f) in enumerate(zip(wavelengths, fwhm))
    )
    file_info = "\n".join(
        f"      <file>\n        <name>{f}</name>\n        <format>binary/tif</format>\n      </file>" for f in files
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<level_X xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="L2A_Metadata.xsd">
  <metadata>
    <schema><processingLevel>L2A</processingLevel><versionSchema>01.03.03</versionSchema></schema>
    <name>{product_id}-METADATA.XML</name>
    <comment>EnMAP Level 2A product, SIMULATED</comment>
  </metadata>
  <base>
    <format>ENMAP_L2A</format>
    <level>L2A</level>
    <temporalCoverage>
      <startTime>{start}</startTime>
      <stopTime>{start}</stopTime>
    </temporalCoverage>
  </base>
  <specific>
    <code>L2A</code>
    <numberOfBands>{len(wavelengths)}</numberOfBands>
    <bandCharacterisation>
{bands}
    </bandCharacterisation>
  </specific>
  <product>
    <image>
      <merge>
        <name>{product_id}-SPECTRAL_IMAGE.TIF</name>
        <dimension><rows>{shape[0]}</rows><columns>{shape[1]}</columns></dimension>
      </merge>
    </image>
    <productFileInformation>
{file_info}
    </productFileInformation>
  </product>
</level_X>
"""


def write_enmap_l2a(
    directory: str,
    values: np.ndarray,
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray,
    grid: Grid,
    date: str,
    cloud: np.ndarray | None = None,
    shadow: np.ndarray | None = None,
    datatake: int = 1000,
) -> str:
    """Writes reflectance ``values`` (band, row, col; NaN = nodata) on ``grid`` as the EnMAP L2A
    product of ``date`` into ``directory``; returns its folder's path. ``wavelengths`` / ``fwhm``:
    nm per band; ``cloud`` / ``shadow``: bool (row, col) written into QL_QUALITY_CLOUD and
    QL_QUALITY_CLOUDSHADOW and nowhere else (cirrus, haze and snow stay 0)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    fw = np.asarray(fwhm, dtype=np.float64)
    v = _check(values, grid, list(wl))
    if fw.shape != wl.shape:
        raise ValueError(f"{wl.size} wavelengths but {fw.size} FWHM")
    cloud, shadow = _flags(cloud, grid), _flags(shadow, grid)
    stamp = f"{_stamp(date)}T104517Z"
    product_id = f"ENMAP01-____L2A-DT{int(datatake):010d}_{stamp}_001_V010303_{_later(date, 10)}T120000Z"
    folder = os.path.join(directory, product_id)
    os.makedirs(folder, exist_ok=True)
    nodata = ~np.all(np.isfinite(v), axis=0)
    dn = np.clip(np.round((np.nan_to_num(v) - ENMAP_OFFSET) / ENMAP_GAIN), -32767, 32767)
    dn = np.where(nodata[None], ENMAP_NODATA, dn).astype(np.int16)
    files = [f"{product_id}-SPECTRAL_IMAGE.TIF"]
    _write_tif(os.path.join(folder, files[0]), dn, grid, gdal.GDT_Int16, ENMAP_NODATA)
    masks = {"QL_QUALITY_CLOUD": cloud, "QL_QUALITY_CLOUDSHADOW": shadow & ~cloud, "QL_PIXELMASK": nodata}
    for part in (*ENMAP_QUALITY, "QL_PIXELMASK"):
        m = masks.get(part, np.zeros_like(nodata))
        files.append(f"{product_id}-{part}.TIF")
        _write_tif(os.path.join(folder, files[-1]), m.astype(np.uint8), grid, gdal.GDT_Byte)
    files.append(f"{product_id}-METADATA.XML")
    start = f"{date}T10:45:17.000000Z"
    _write_text(os.path.join(folder, files[-1]), _enmap_xml(product_id, start, wl, fw, files, v.shape[1:]))
    return folder


# ---- any family --------------------------------------------------------------------------------------

FAMILIES = ("Sentinel-2 L2A", "Landsat C2 L2", "EnMAP L2A")
OLI_BANDS = (1, 2, 3, 4, 5, 6, 7)  # the SR bands the Landsat reader stacks for Landsat 8/9


def write_product(
    family: str,
    directory: str,
    values: np.ndarray,
    band_names: Sequence[str],
    wavelengths: Sequence[float] | np.ndarray,
    fwhm: Sequence[float] | np.ndarray,
    grid: Grid,
    date: str,
    cloud: np.ndarray | None = None,
    shadow: np.ndarray | None = None,
) -> str:
    """Writes an image as a product of ``family`` (one of ``FAMILIES``); returns its path.
    ``band_names``: Sentinel-2 band names, Landsat band numbers, or anything for EnMAP (which
    keeps ``wavelengths`` and ``fwhm``; the other two families' readers know their own)."""
    if family == "Sentinel-2 L2A":
        return write_sentinel2_l2a(directory, values, band_names, grid, date, cloud, shadow)
    if family == "Landsat C2 L2":
        return write_landsat_c2_l2(directory, values, band_names, grid, date, cloud, shadow)
    if family == "EnMAP L2A":
        return write_enmap_l2a(directory, values, wavelengths, fwhm, grid, date, cloud, shadow)
    raise ValueError(f"Unknown product family '{family}': choose one of {', '.join(FAMILIES)}")
