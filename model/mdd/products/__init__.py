"""Satellite products read directly (EnMAP L2A, PRISMA L2D, Sentinel-2 L2A, Landsat C2 L2), each
family in its own module behind one interface.

A reader recognises a product from its own files (``recognise(path)``) and turns it into a
``ProductLayer``: one GDAL-readable stack (a VRT, or for PRISMA's HDF5 cube a tiled GeoTIFF, written
into ``work_dir``) whose bands carry the
physical scale/offset, nodata, ``wavelength``/``fwhm`` (nm) band metadata and the acquisition date
(``ACQUISITION_DATE``), plus the product's quality layer and the rule that says which of its pixels
are invalid. Build MDD stack then reads the stack like any raster and masks the quality layer's
invalid pixels, so products and plain rasters follow one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np


class ProductError(ValueError):
    """A product that cannot be read; the message names the product and the fix."""


@dataclass
class QualityRule:
    """Which pixels of a quality layer are invalid, and why (for the log).

    kind "classes": the layer holds class values; ``classes`` maps each invalid value to its name.
    kind "bits": the layer holds bit flags; ``classes`` maps each invalid bit number to its name.
    kind "mask": any non-zero value is invalid (``classes`` maps 1 to the name).
    ``bands``: for multi-band masks (one band a class, as EnMAP's QL_QUALITY_* layers), the 1-based
    band of each class instead of one band with values.
    """

    kind: str
    classes: dict
    buffer_px: int = 0  # grow the invalid pixels (but NO_DATA_CLASSES) by this many source pixels


# The classes that say a pixel holds no data at all (outside the footprint, a swath's fill). Their
# edge is the data's own sharp edge, not a cloud's soft one, so MASK_BUFFER ("grow masked clouds and
# shadows") leaves them as they are: grown, they took a valid rim off every product's footprint.
NO_DATA_CLASSES = frozenset({"no_data", "fill"})


@dataclass
class QualityLayer:
    """A quality raster (GDAL-readable) and its rule. ``sources`` may hold several single-class
    masks (EnMAP's QL_QUALITY_CLOUD, _CIRRUS, ...): name -> path, each read with kind "mask".

    ``label`` names the layer in the log ("quality layer" for a product's own, "mask <file>" for an
    explicit MASK raster). ``nodata_valid``: the raster's nodata pixels are never invalid (explicit
    masks); otherwise every value, the nodata value too, is a class (a product's quality layer).
    """

    rule: QualityRule
    path: str | None = None
    sources: dict = field(default_factory=dict)
    label: str = "quality layer"
    nodata_valid: bool = False


@dataclass
class ProductLayer:
    """A recognised product, ready for Build MDD stack."""

    family: str  # "EnMAP L2A", "PRISMA L2D", "Sentinel-2 L2A", "Landsat C2 L2"
    name: str  # the layer name for the log and DATES overrides (the product's id)
    stack_path: str  # GDAL-readable stack (VRT) with scale/offset, nodata, wavelengths, date
    date: str  # ISO acquisition date
    quality: QualityLayer | None = None


def invalid_pixels(rule: QualityRule, values: np.ndarray) -> dict:
    """{class name: bool (row, col)} of the pixels each invalid class covers in ``values``
    (row, col) of the quality layer (before any buffer)."""
    v = np.asarray(values)
    if rule.kind == "classes":
        return {name: v == value for value, name in rule.classes.items()}
    if rule.kind == "bits":
        iv = v.astype(np.int64)
        return {name: (iv >> int(bit)) & 1 == 1 for bit, name in rule.classes.items()}
    if rule.kind == "mask":
        name = next(iter(rule.classes.values()), "masked")
        return {name: v != 0}
    raise ProductError(f"Unknown quality rule kind '{rule.kind}'.")


def readers() -> list:
    """The reader modules, each with ``FAMILY``, ``recognise(path) -> bool`` and
    ``read(path, work_dir, classes=None) -> ProductLayer``."""
    import importlib

    out = []
    for module in ("enmap", "prisma", "sentinel2", "landsat"):
        try:
            out.append(importlib.import_module(f"{__name__}.{module}"))
        except ImportError:  # a reader not written yet: its family is simply not recognised
            continue
    return out


def class_key(name: str) -> str:
    """A MASK_CLASSES name as the readers spell theirs: lower case, '_' for spaces and hyphens."""
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def chosen_classes(classes: list | None, known: dict, aliases: dict, default: tuple, unknown_hint: str) -> list:
    """The class names ``classes`` chooses (None: ``default``), each as ``class_key`` spells it and
    through ``aliases``, once each, in order; a name not in ``known`` raises ProductError with
    ``unknown_hint`` (the family and its choices)."""
    if classes is None:
        return list(default)
    out = []
    for c in classes:
        name = aliases.get(class_key(c), class_key(c))
        if name not in known:
            raise ProductError(f"'{c}' is no {unknown_hint}")
        if name not in out:
            out.append(name)
    return out


def family_classes(reader: ModuleType, classes: list | None) -> list | None:
    """The names of ``classes`` that ``reader``'s family knows (None stays None: its default).
    One MASK_CLASSES list serves every family of a build, so each takes its own names from it."""
    if classes is None:
        return None
    known = {class_key(c) for c in getattr(reader, "CLASS_NAMES", ())}
    return [c for c in classes if class_key(c) in known]


def unknown_classes(classes: list | None, families: set | None = None) -> list:
    """The names in ``classes`` that no product family knows (of ``families``; None: of any)."""
    chosen = [r for r in readers() if families is None or r.FAMILY in families]
    known = {class_key(c) for reader in chosen for c in getattr(reader, "CLASS_NAMES", ())}
    return [c for c in classes or [] if class_key(c) not in known]


def open_product(path: str, work_dir: str, classes: list | None = None) -> ProductLayer | None:
    """The product at ``path`` (folder, zip, tar, .he5 or MTL file) read by the first reader that
    recognises it, or None when ``path`` is no known product (then it is read as a plain raster).
    ``classes``: the quality classes that count as invalid (names; None: the family's default); a
    family uses the names it knows and ignores the others' (e.g. ``cloud_high_probability`` is
    Sentinel-2's alone), so none of its classes counts when none of its names is given."""
    for reader in readers():
        if reader.recognise(path):
            os.makedirs(work_dir, exist_ok=True)
            return reader.read(path, work_dir, family_classes(reader, classes))
    return None
