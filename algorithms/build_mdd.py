"""Build MDD stack (stsfusion:buildmdd): parse the parameters, call model.build_mdd.build_mdd_stack."""

import os

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterCrs,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ..model.core.memory import release_freed_memory
from ..model.mdd.build import build_mdd_stack, empty_role_message
from ..model.mdd.raster_io import gdal_opens
from .base import STSFusionAlgorithm, feedback_callbacks


class BuildMddAlgorithm(STSFusionAlgorithm):
    NAME = "buildmdd"
    DISPLAY_NAME = "Build MDD stack"
    FINE_MS = "FINE_MS"
    DENSE_MS = "DENSE_MS"
    HS = "HS"
    DATES = "DATES"
    TARGET_CRS = "TARGET_CRS"
    PIXEL_SIZE = "PIXEL_SIZE"
    TARGET_EXTENT = "TARGET_EXTENT"
    OUTPUT = "OUTPUT"
    MASK_CLASSES = "MASK_CLASSES"
    MASK_BUFFER = "MASK_BUFFER"
    MASK_VALUES = "MASK_VALUES"
    DASK_SCHEDULER = "DASK_SCHEDULER"
    MASKS_SUFFIX = "_MASKS"  # FINE_MS_MASKS, DENSE_MS_MASKS, HS_MASKS
    _ROLES = (("fine_ms", FINE_MS), ("dense_ms", DENSE_MS), ("hs", HS))

    def shortHelpString(self):
        return self.tr(
            "Warps fine multispectral (MS), dense MS and hyperspectral (HS) layers onto one common grid "
            "and writes them as an MDD: a JSON manifest plus, beside it, one tiled compressed GeoTIFF "
            "per role (dates x bands, band descriptions 'YYYY-MM-DD <wavelength> nm', physical values "
            "with band scale/offset applied) and one validity mask per role (one band per date, 1 = valid). "
            "Nodata, non-finite values and areas outside a layer become mask 0. Sources finer than the "
            "grid are area-averaged, coarser ones bilinearly interpolated.\n\n"
            "FINE_MS: fine MS layers, one per date (few dates, finest pixels).\n"
            "DENSE_MS: dense MS layers, one per date (many dates, coarser pixels).\n"
            "HS: hyperspectral layers, one per date; need band wavelengths (band metadata "
            "'wavelength' + 'wavelength_units', or an ENVI header).\n"
            "FINE_MS_PRODUCTS, DENSE_MS_PRODUCTS, HS_PRODUCTS (optional): satellite products as paths, "
            "read directly with their date, wavelengths, reflectance scale/offset and quality layer: "
            "an EnMAP L2A folder or zip, a PRISMA L2D .he5 file (or its zip), a Sentinel-2 L2A .SAFE "
            "folder or zip, a Landsat Collection 2 L2 folder, tar or MTL file. Each role needs layers or "
            "products.\n"
            "MASK_CLASSES (optional): the product quality classes that make a pixel invalid, comma-"
            "separated (e.g. cloud,cloud_shadow,cirrus); default each product's usual set (EnMAP: "
            "cloud, cirrus, haze, snow, cloud_shadow; Sentinel-2 SCL: saturated, cloud_shadow, "
            "cloud_medium_probability, cloud_high_probability, cirrus, snow; Landsat QA_PIXEL: fill, "
            "dilated_cloud, cirrus, cloud, cloud_shadow; PRISMA: cloud, where the file has a Cloud_Mask). "
            "One list serves every family: each product uses the names its family knows (e.g. "
            "cloud_high_probability is Sentinel-2's alone); a name that none of the given products knows "
            "is an error.\n"
            "FINE_MS_MASKS, DENSE_MS_MASKS, HS_MASKS (optional): explicit mask rasters (class values or "
            "bit flags, band 1) for the role's layers or products, e.g. your own cloud masks. A mask is "
            "matched to the layer of its date (read like a layer's: ACQUISITION_DATE metadata or the file "
            "name), so only some dates may get one; when a mask has no date, the masks are matched by "
            "position (the i-th mask to the i-th layer, one per layer). It is read on the grid with "
            "nearest neighbour; its nodata and the area outside it are valid. A product's quality layer "
            "masks as well: both add up.\n"
            "MASK_VALUES (optional): which mask values are invalid: empty = any non-zero value (0 is "
            "valid); '3,8,9' = those class values; 'bits:1,3,4' = pixels with any of those bits set "
            "(bit 0 = least significant, up to 31).\n"
            "MASK_BUFFER (optional): grow the masked pixels by this many product or mask pixels (default "
            "0): clouds, shadows and every other chosen class or value, but not a product's no-data or fill "
            "(the footprint's edge is sharp). The log says per date what share was masked and by which "
            "class, value or bit.\n"
            "Each layer's date comes from DATES, else its metadata (ACQUISITION_DATE, start_time, "
            "SENSING_TIME, DATE_ACQUIRED, ENVI 'acquisition time', TIFFTAG_DATETIME, ...), else its "
            "file name (YYYYMMDD, YYYY-MM-DD, YYYY_MM_DD, Sentinel-2/Landsat/MODIS product names).\n"
            "DATES (optional): 'layer_name=YYYY-MM-DD;layer_name=YYYY-MM-DD' with the layer names as "
            "QGIS shows them (the file name without extension for files).\n"
            "TARGET_CRS (optional): CRS of the grid; default the first fine MS layer's CRS.\n"
            "PIXEL_SIZE (optional): grid pixel size in TARGET_CRS units (metres for UTM, degrees "
            "for EPSG:4326); default the fine MS pixel size.\n"
            "TARGET_EXTENT (optional): area of the grid, snapped outward to whole pixels; default the "
            "overlap of all inputs, snapped inward to the fine MS pixel grid.\n"
            "Dask scheduler (advanced): where the layers are warped, window by window. Empty (default): the "
            "environment variable DASK_SCHEDULER if it is set, else Dask tasks in this process on every core, "
            "or one window after another where the Python packages dask and distributed are not installed. "
            "'threads': Dask in this process; 'none': without Dask. tcp://host:port: the workers of a running "
            "dask.distributed cluster warp the windows and this process writes them, so the workers need GDAL's "
            "Python bindings and this plugin importable (PYTHONPATH=<the QGIS plugins folder holding "
            "stsfusion>) and must see the input layers at the same paths as QGIS (a shared folder). The MDD "
            "holds the same values whichever way it is built.\n"
            "OUTPUT: the MDD manifest (.json); the stacks <name>_<role>.tif and masks "
            "<name>_<role>_mask.tif are written beside it."
        )

    def initAlgorithm(self, config=None):
        for key, label in (
            (self.FINE_MS, "Fine multispectral layers (one per date)"),
            (self.DENSE_MS, "Dense multispectral layers (one per date)"),
            (self.HS, "Hyperspectral layers (one per date, with wavelengths)"),
        ):
            self.addParameter(
                QgsProcessingParameterMultipleLayers(key, self.tr(label), QgsProcessing.TypeRaster, optional=True)
            )
            # Products (a Sentinel-2 .SAFE folder or zip, a Landsat folder, tar or MTL, an EnMAP L2A
            # folder or zip, a PRISMA L2D .he5) are paths, not raster layers: read with their date, wavelengths,
            # scaling and quality layer by model/mdd/products.
            self.addParameter(
                QgsProcessingParameterMultipleLayers(
                    key + "_PRODUCTS",
                    self.tr(label.replace("layers", "products").split(" (")[0] + " (paths)"),
                    QgsProcessing.TypeFile,
                    optional=True,
                )
            )
        self.addParameter(
            QgsProcessingParameterString(
                self.DATES, self.tr("Dates override (layer_name=YYYY-MM-DD;...)"), optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterCrs(self.TARGET_CRS, self.tr("Target CRS [default: fine MS CRS]"), optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.PIXEL_SIZE,
                self.tr("Pixel size in target CRS units [default: fine MS pixel size]"),
                QgsProcessingParameterNumber.Double,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent(
                self.TARGET_EXTENT, self.tr("Target extent [default: overlap of all inputs]"), optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.MASK_CLASSES,
                self.tr("Product quality classes that mask pixels (comma-separated) [default: each product's own]"),
                optional=True,
            )
        )
        for key, label in (
            (self.FINE_MS, "Fine multispectral masks (class values or bit flags)"),
            (self.DENSE_MS, "Dense multispectral masks (class values or bit flags)"),
            (self.HS, "Hyperspectral masks (class values or bit flags)"),
        ):
            self.addParameter(
                QgsProcessingParameterMultipleLayers(
                    key + self.MASKS_SUFFIX, self.tr(label), QgsProcessing.TypeRaster, optional=True
                )
            )
        self.addParameter(
            QgsProcessingParameterString(
                self.MASK_VALUES,
                self.tr("Invalid mask values ('3,8,9' or 'bits:1,3,4') [default: any non-zero value]"),
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MASK_BUFFER,
                self.tr("Grow masked clouds and shadows by (product or mask pixels)"),
                QgsProcessingParameterNumber.Integer,
                0,
                minValue=0,
                maxValue=100,
            )
        )
        self.add_dask_scheduler_parameter()
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT, self.tr("MDD manifest"), self.tr("MDD manifest (*.json)")
            )
        )

    def _products(self, parameters, key, context):
        """The product paths given for a role (an unset list comes back as [''])."""
        return [p for p in self.parameterAsFileList(parameters, key + "_PRODUCTS", context) if p and p.strip()]

    def _layer_keys(self):
        return [key + suffix for _, key in self._ROLES for suffix in ("", self.MASKS_SUFFIX)]

    def checkParameterValues(self, parameters, context):
        # Before QGIS's own check, whose "Incorrect parameter value" does not say what to do.
        try:
            for role, key in self._ROLES:
                products = self._products(parameters, key, context)
                if not self._file_layers(parameters, key, context) and not products:
                    return False, empty_role_message(role)
                self._file_layers(parameters, key + self.MASKS_SUFFIX, context)
        except QgsProcessingException as e:
            return False, str(e)
        # QGIS's check of a layer list opens every file given by path as a map layer, whose renderer
        # reads statistics: memory growing with the raster (+30 to +60 MiB a role at 2048 x 2048 px,
        # measured) that Build never uses. The layers are checked above, with GDAL, instead.
        rest = {k: v for k, v in parameters.items() if k not in self._layer_keys()}
        return super().checkParameterValues(rest, context)

    def _file_layers(self, parameters, key, context):
        """(layer name, source) of the file rasters given for ``key``. A path to a file is used as
        it is, named as QGIS names a layer loaded from it (the file name up to its first dot); a
        layer of the project or of the run is taken as it is; anything else (an expression, a URI
        QGIS must resolve) goes through QGIS's own loading."""
        out = []
        for value in _raw_values(parameters, key):
            layer = value if isinstance(value, QgsMapLayer) else None
            if layer is None and isinstance(value, str) and value:
                layer = QgsProcessingUtils.mapLayerFromString(value, context, False)  # never loads a layer
                if layer is None and os.path.isfile(value):
                    if not gdal_opens(value):
                        raise QgsProcessingException(
                            f"{key}: GDAL cannot open {value} as a raster: give a GeoTIFF (or another raster "
                            "GDAL reads), or the product itself under the _PRODUCTS parameter."
                        )
                    out.append((os.path.basename(value).split(".")[0], value))
                    continue
            if layer is None:
                return self._loaded_layers(parameters, key, context)
            out.append(self._named_source(key, layer))
        return out

    def _loaded_layers(self, parameters, key, context):
        return [self._named_source(key, layer) for layer in self.parameterAsLayerList(parameters, key, context)]

    def _release_loaded(self, parameters, context):
        """qgis_process loads every file given by path as a map layer before the run starts, and
        the layer's renderer reads statistics: memory that grows with the raster (+30 to +60 MiB a
        role at 2048 x 2048 px, measured) while Build reads the files with GDAL. Such layers, held
        by this run's temporary store under the path given, are released: anything naming the path
        later loads it again. Layers of the project, or given as layers, are left alone."""
        paths = set()
        for key in self._layer_keys():
            for value in _raw_values(parameters, key):
                if isinstance(value, str) and os.path.isfile(value):
                    paths.add(os.path.normpath(value))
        store = context.temporaryLayerStore()
        for layer_id, layer in list(store.mapLayers().items()):
            if os.path.normpath(layer.source()) in paths:
                store.removeMapLayer(layer_id)
        release_freed_memory()

    @staticmethod
    def _named_source(key, layer):
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{key} layer '{layer.name()}' is not a file raster ({layer.providerType()}): "
                "save it as a GeoTIFF (Raster > Conversion > Translate) and use that."
            )
        return layer.name(), layer.source()

    def process(self, parameters, context, feedback):
        layers, masks = {}, {}
        for role, key in self._ROLES:
            layers[role] = self._file_layers(parameters, key, context)
            masks[role] = self._file_layers(parameters, key + self.MASKS_SUFFIX, context)
            for path in self._products(parameters, key, context):
                name = os.path.basename(os.path.normpath(path))
                layers[role].append(
                    (os.path.splitext(name)[0] if name.lower().endswith((".zip", ".tar")) else name, path)
                )
        self._release_loaded(parameters, context)
        classes = [c.strip() for c in (self.parameterAsString(parameters, self.MASK_CLASSES, context) or "").split(",")]
        crs = self.parameterAsCrs(parameters, self.TARGET_CRS, context)
        extent, extent_crs = None, None
        if parameters.get(self.TARGET_EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.TARGET_EXTENT, context)
            extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
            ecrs = self.parameterAsExtentCrs(parameters, self.TARGET_EXTENT, context)
            extent_crs = _wkt(ecrs) if ecrs.isValid() else None
        pixel_size = None
        if parameters.get(self.PIXEL_SIZE) not in (None, ""):
            pixel_size = self.parameterAsDouble(parameters, self.PIXEL_SIZE, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not output.lower().endswith(".json"):
            output += ".json"
        feedback.pushInfo(
            "Layers: " + "; ".join(f"{key}: {', '.join(n for n, _ in layers[role])}" for role, key in self._ROLES)
        )
        if any(masks.values()):
            feedback.pushInfo(
                "Masks: "
                + "; ".join(
                    f"{key}{self.MASKS_SUFFIX}: {', '.join(n for n, _ in masks[role])}"
                    for role, key in self._ROLES
                    if masks[role]
                )
            )
        from ..model.fusion.distributed import NO_DASK, THREADS, dask_client, resolve_scheduler

        mode = resolve_scheduler(self.parameterAsString(parameters, self.DASK_SCHEDULER, context))
        feedback.pushInfo(
            {
                NO_DASK: "Warping in this process, one window after another.",
                THREADS: "Warping as Dask tasks in this process.",
            }.get(mode, f"Warping on the Dask cluster {mode}; writing here.")
        )
        with dask_client(mode) as client:
            build_mdd_stack(
                output,
                layers["fine_ms"],
                layers["dense_ms"],
                layers["hs"],
                dates=self.parameterAsString(parameters, self.DATES, context) or None,
                target_crs=_wkt(crs) if crs.isValid() else None,
                pixel_size=pixel_size,
                target_extent=extent,
                extent_crs=extent_crs,
                callbacks=feedback_callbacks(feedback, log_progress_messages=True),
                mask_classes=[c for c in classes if c] or None,
                mask_buffer=self.parameterAsInt(parameters, self.MASK_BUFFER, context),
                masks={role: m for role, m in masks.items() if m} or None,
                mask_values=self.parameterAsString(parameters, self.MASK_VALUES, context) or None,
                executor=client,
            )
        return {self.OUTPUT: output}


def _raw_values(parameters, key) -> list:
    """The values given for a layer-list parameter as they were passed (paths, layer ids, layers)."""
    raw = parameters.get(key)
    return list(raw) if isinstance(raw, (list, tuple)) else ([] if raw in (None, "") else [raw])


def _wkt(crs: QgsCoordinateReferenceSystem) -> str:
    return crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)
