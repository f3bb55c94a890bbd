"""Tiny PRISMA L2D products made by code (h5py; the reader itself uses GDAL only): an HDF-EOS5 file
``PRS_L2D_STD_<start>_<stop>_0001.he5`` with the real root attribute names (band lists in descending
wavelength with zeros for bands not delivered, L2Scale*, corners as pixel centres, Epsg_Code,
Product_StartTime, Processing_Level "2D") and datasets under /HDFEOS/SWATHS/PRS_L2D_HCO: a 6-band
VNIR_Cube and a 6-band SWIR_Cube (uint16, rows x bands x columns, 12 x 10 px, UTM 32N, 30 m), their
*_PIXEL_L2_ERR_MATRIX, a Cloud_Mask (which real L2D files lack; ``cloud_mask=False`` leaves it out),
Latitude/Longitude; and the zip ASI delivers it in.

VNIR holds one zero-wavelength band and one band (975.2 nm) above the shortest SWIR band (948.1 nm),
SWIR one zero-wavelength band: the reader keeps 4 VNIR + 5 SWIR bands, in ascending wavelength.
"""

from __future__ import annotations

import os
import zipfile

import h5py
import numpy as np

PRODUCT_ID = "PRS_L2D_STD_20200612102345_20200612102350_0001"
START_TIME = "2020-06-12T10:23:45.123000"
DATE = "2020-06-12"
EPSG = 32632
ORIGIN = (500010.0, 5100020.0)  # outer corner of the upper-left pixel
PIXEL = 30.0
SHAPE = (12, 10)  # rows, cols
SWATH = "/HDFEOS/SWATHS/PRS_L2D_HCO"

# In the cubes' band order (descending wavelength), as the List_Cw_* attributes give them.
CW = {
    "Vnir": [0.0, 975.2, 865.5, 660.3, 559.8, 452.1],
    "Swir": [2195.3, 1650.7, 1240.4, 1020.9, 948.1, 0.0],
}
FWHM = {
    "Vnir": [0.0, 13.1, 12.6, 10.4, 9.2, 8.9],
    "Swir": [11.0, 12.9, 14.2, 12.5, 9.8, 0.0],
}
SCALE_MIN = {"Vnir": 0.0, "Swir": -0.02}
SCALE_MAX = {"Vnir": 1.0, "Swir": 0.9}
# The stack's bands, ascending: (sensor, index in its cube).
KEPT = [("Vnir", 5), ("Vnir", 4), ("Vnir", 3), ("Vnir", 2), ("Swir", 4), ("Swir", 3), ("Swir", 2), ("Swir", 1)]
KEPT += [("Swir", 0)]
WAVELENGTHS = [CW[s][i] for s, i in KEPT]
FWHMS = [FWHM[s][i] for s, i in KEPT]

NODATA_PIXELS = [(0, 0), (0, 1), (11, 9)]  # 0 in every band of both cubes (outside the swath)
ZERO_PIXEL = (6, 3)  # 0 in one kept band only (VNIR 660.3 nm): read as 1 DN, not nodata
ZERO_BAND = ("Vnir", 3)
CLOUD_PX = [(3, 4), (3, 5), (4, 4), (8, 2)]  # Cloud_Mask 1
UNCLASSIFIED_PX, ERROR_PX = (6, 6), (9, 9)  # Cloud_Mask 10 and 255: not clouds
# Error matrix flags in kept bands: class -> (sensor, band index, pixel, value).
ERR_FLAGS = {
    "invalid": ("Vnir", 2, (5, 7), 1),
    "negative": ("Swir", 1, (2, 2), 2),
    "saturated": ("Vnir", 4, (10, 3), 4),
}
# Flags in bands the reader drops (the VNIR overlap band, the SWIR zero band): never masked.
DROPPED_FLAGS = [("Vnir", 1, (7, 1), 1), ("Swir", 5, (1, 1), 4)]


def corners() -> dict:
    """The corner attributes: pixel centres of the corner pixels, easting/northing in EPSG."""
    x0, y0 = ORIGIN[0] + PIXEL / 2, ORIGIN[1] - PIXEL / 2
    x1, y1 = x0 + (SHAPE[1] - 1) * PIXEL, y0 - (SHAPE[0] - 1) * PIXEL
    return {"UL": (x0, y0), "UR": (x1, y0), "LL": (x0, y1), "LR": (x1, y1)}


def dn(sensor: str) -> np.ndarray:
    """The cube's DN, (rows, bands, cols) uint16, 0 at NODATA_PIXELS and at ZERO_PIXEL in ZERO_BAND."""
    r, b, c = np.mgrid[0 : SHAPE[0], 0 : len(CW[sensor]), 0 : SHAPE[1]]
    v = (1000 + 2000 * b + 50 * r + 3 * c) if sensor == "Vnir" else (1500 + 1700 * b + 40 * r + 7 * c)
    v = v.astype(np.uint16)
    for row, col in NODATA_PIXELS:
        v[row, :, col] = 0
    if sensor == ZERO_BAND[0]:
        v[ZERO_PIXEL[0], ZERO_BAND[1], ZERO_PIXEL[1]] = 0
    return v


def reflectance() -> np.ndarray:
    """The expected stack in reflectance, (band, row, col) in ascending wavelength, NaN at nodata."""
    out = []
    for sensor, i in KEPT:
        v = dn(sensor)[:, i, :].astype(np.float64)
        v[v == 0] = 1.0  # a single 0 is read as 1 DN
        scale = (SCALE_MAX[sensor] - SCALE_MIN[sensor]) / 65535.0
        out.append(SCALE_MIN[sensor] + v * scale)
    out = np.stack(out)
    for row, col in NODATA_PIXELS:
        out[:, row, col] = np.nan
    return out


def cloud_mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    for row, col in CLOUD_PX:
        m[row, col] = 1
    m[UNCLASSIFIED_PX] = 10
    m[ERROR_PX] = 255
    return m


def err_matrix(sensor: str) -> np.ndarray:
    e = np.zeros((SHAPE[0], len(CW[sensor]), SHAPE[1]), np.uint8)
    for s, band, (row, col), value in list(ERR_FLAGS.values()) + DROPPED_FLAGS:
        if s == sensor:
            e[row, band, col] = value
    return e


def mask(name: str) -> np.ndarray:
    """The expected bool (row, col) of quality class ``name``."""
    m = np.zeros(SHAPE, bool)
    pixels = CLOUD_PX if name == "cloud" else [ERR_FLAGS[name][2]]
    for row, col in pixels:
        m[row, col] = True
    return m


def _string(text: str) -> np.bytes_:
    return np.bytes_(text.encode("ascii"))


def root_attributes(level: str = "2D", start_time: str | None = START_TIME, name: str = PRODUCT_ID) -> dict:
    c = corners()
    attrs = {
        "Product_ID": _string(f"PRS_L{level}_STD"),
        "Processing_Level": _string(level),
        "Product_Name": _string(f"{name}.he5"),
        "Processor_Name": _string(f"L{level}"),
        "Processor_Version": _string("02.05"),
        "Epsg_Code": np.int32(EPSG),
        "Projection_Id": _string("32"),
        "Projection_Name": _string("UTM"),
        "Reference_Ellipsoid": _string("WGS84"),
        "Product_StopTime": _string("2020-06-12T10:23:50.456000"),
        "Cloudy_pixels_percentage": np.float32(100.0 * len(CLOUD_PX) / (SHAPE[0] * SHAPE[1])),
        "Sun_zenith_angle": np.float32(31.2),
        "Sun_azimuth_angle": np.float32(143.7),
    }
    if start_time is not None:
        attrs["Product_StartTime"] = _string(start_time)
    for corner, (e, n) in c.items():
        attrs[f"Product_{corner}corner_easting"] = np.float32(e)
        attrs[f"Product_{corner}corner_northing"] = np.float32(n)
    for sensor in ("Vnir", "Swir"):
        attrs[f"List_Cw_{sensor}"] = np.array(CW[sensor], np.float32)
        attrs[f"List_Fwhm_{sensor}"] = np.array(FWHM[sensor], np.float32)
        attrs[f"List_Cw_{sensor}_Flags"] = np.array([1 if w > 0 else 0 for w in CW[sensor]], np.int8)
        attrs[f"L2Scale{sensor}Min"] = np.float32(SCALE_MIN[sensor])
        attrs[f"L2Scale{sensor}Max"] = np.float32(SCALE_MAX[sensor])
    return attrs


def make_prisma_he5(
    d,
    name: str = PRODUCT_ID,
    level: str = "2D",
    omit: tuple = (),
    cloud_mask_present: bool = True,
    start_time: str | None = START_TIME,
    attrs: dict | None = None,
    shape: tuple = SHAPE,
) -> str:
    """Writes ``d/<name>.he5`` and returns its path.

    level: Processing_Level ("2D"; "2C" etc. give the other levels' swath name too); omit: root
    attributes or Data Fields datasets left out ("List_Cw_Swir", "SWIR_PIXEL_L2_ERR_MATRIX", ...);
    cloud_mask_present False: no Cloud_Mask, as in real L2D files; attrs: root attributes replacing
    or adding to the generated ones; shape: (rows, cols) of the cubes (others than SHAPE only to make
    them disagree with the corners)."""
    os.makedirs(str(d), exist_ok=True)
    path = os.path.join(str(d), f"{name}.he5")
    swath = SWATH.replace("L2D", f"L{level}")
    root = root_attributes(level, start_time, name)
    root.update(attrs or {})
    with h5py.File(path, "w") as f:
        for key, value in root.items():
            if key not in omit:
                f.attrs[key] = value
        fields = f.create_group(f"{swath}/Data Fields")
        for sensor in ("Vnir", "Swir"):
            cube, err = dn(sensor), err_matrix(sensor)
            if shape != SHAPE:
                cube = np.ones((shape[0], cube.shape[1], shape[1]), np.uint16)
                err = np.zeros(cube.shape, np.uint8)
            for dataset, data in ((f"{sensor.upper()}_Cube", cube), (f"{sensor.upper()}_PIXEL_L2_ERR_MATRIX", err)):
                if dataset not in omit:
                    fields.create_dataset(dataset, data=data, chunks=(1, data.shape[1], data.shape[2]))
        if cloud_mask_present and "Cloud_Mask" not in omit:
            fields.create_dataset("Cloud_Mask", data=cloud_mask())
        geo = f.create_group(f"{swath}/Geolocation Fields")
        rows, cols = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
        geo.create_dataset("Latitude", data=(46.0 - 0.00027 * rows).astype(np.float32))
        geo.create_dataset("Longitude", data=(9.0 + 0.00039 * cols).astype(np.float32))
        geo.create_dataset("Time", data=np.linspace(0.0, 4.3, SHAPE[0]).astype(np.float64))
        angles = f.create_group(f"{swath}/Geometric Fields")
        for angle in ("Observing_Angle", "Rel_Azimuth_Angle", "Solar_Zenith_Angle"):
            angles.create_dataset(angle, data=np.full(SHAPE, 12.5, np.float32))
        f.create_group(f"{swath}/Geocoding Model")
        f.create_group("KDP_AUX").create_dataset("Cw_Vnir_Matrix", data=np.tile(CW["Vnir"], (SHAPE[1], 1)))
    return path


def make_prisma_zip(d, nested: bool = False, **kwargs) -> str:
    """The .he5 of ``make_prisma_he5(d / "src", **kwargs)`` zipped to ``d/<name>.zip`` as ASI delivers it
    (the .he5 at the top; ``nested``: inside a folder of the product's name)."""
    he5 = make_prisma_he5(os.path.join(str(d), "src"), **kwargs)
    name = os.path.splitext(os.path.basename(he5))[0]
    zip_path = os.path.join(str(d), f"{name}.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(he5, f"{name}/{name}.he5" if nested else f"{name}.he5")
    return zip_path
