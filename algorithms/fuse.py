"""Fuse time series (`stsfusion:fuse`): a trained model applied to an MDD, one fine HS GeoTIFF per date."""

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..model.nn.options import DEFAULT_DEVICE  # no torch import at module level
from .base import STSFusionAlgorithm, feedback_callbacks, require_torch
from .styles import load_on_completion, style_outputs


class FuseTimeSeriesAlgorithm(STSFusionAlgorithm):
    NAME = "fuse"
    DISPLAY_NAME = "Fuse time series"
    MDD = "MDD"
    MODEL = "MODEL"
    DATES = "DATES"
    TILE_SIZE = "TILE_SIZE"
    DEVICE = "DEVICE"
    THREADS = "THREADS"
    OUTPUT_TYPE = "OUTPUT_TYPE"
    COMPRESSION = "COMPRESSION"
    SKIP_EXISTING = "SKIP_EXISTING"
    SUBPIXEL_CHANGE = "SUBPIXEL_CHANGE"
    DASK_SCHEDULER = "DASK_SCHEDULER"
    OUTPUT_TYPES = ("float32", "int16")
    COMPRESSIONS = ("DEFLATE", "ZSTD")
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    OUTPUT_LAYERS = "OUTPUT_LAYERS"

    def shortHelpString(self):
        return self.tr(
            "Applies a model made by 'Train fusion model' to an MDD made by 'Build MDD stack' and "
            "writes one fine-resolution hyperspectral GeoTIFF per date, fused_YYYY-MM-DD.tif: the "
            "MDD's grid and CRS, one band per HS band of the model (band metadata 'wavelength' and "
            "'fwhm' in nm, descriptions such as '650 nm'), float32 with nodata -9999 (or int16, see Output "
            "type) where no input was valid on any date, tiled and compressed. Pixels that are cloudy or missing in "
            "some inputs are filled by the model. In QGIS each file is added to the project in "
            "natural colours (bands nearest 650/560/480 nm, 2-98 % stretch) with its date as a fixed "
            "temporal range, so the Temporal Controller steps through the dates; the same style is "
            "written beside each GeoTIFF as fused_YYYY-MM-DD.qml, which QGIS applies when you add the "
            "file yourself.\n\n"
            "MDD: the .json manifest written by 'Build MDD stack'.\n"
            "Model file: the file written by 'Train fusion model'. It must have been trained on an "
            "MDD with the same bands and wavelengths; otherwise the error names what differs.\n"
            "Dates (optional): dates to fuse, YYYY-MM-DD separated by commas or semicolons. Empty "
            "(default): every date of the MDD.\n"
            "Tile size (advanced, pixels, default 256): the grid is processed in square tiles of "
            "this size, each with an overlap of the model's receptive field so that no seam shows. "
            "Memory grows with the square of the tile size, not with the raster size; lower it if "
            "memory runs out, raise it for speed on a GPU.\n"
            "Device: auto (default; the first CUDA GPU if PyTorch sees one, else Apple MPS, else the CPU), "
            "cpu, cuda (= cuda:0), cuda:N (CUDA GPU number N) or mps (Apple silicon). A CUDA GPU with native "
            "bfloat16 (compute capability 8.0 and later) fuses in bfloat16, an older one in float16; the CPU "
            "and MPS use float32. The log states the device, the precision and why.\n"
            "CPU threads (advanced): threads PyTorch uses; 0 (default) = every core (in this process the groups "
            "of dates fused at once read and write in parallel and their networks take turns).\n"
            "Output type: float32 (default; the HS's own units, nodata -9999) or int16 (half the size: "
            "the value / scale, rounded, nodata -32768, with the band scale set so GDAL, QGIS and the "
            "EnMAP-Box read physical values; the scale is 0.0001 for reflectance in 0-1, as EnMAP L2A "
            "ships, and is chosen from the model for other units; values beyond the int16 range are "
            "clipped with a warning).\n"
            "Compression (advanced): DEFLATE (default) or ZSTD (faster to write and read, QGIS 3.22 and "
            "GDAL 2.3 or later); compression runs on every core.\n"
            "Skip dates already fused: keep each fused_YYYY-MM-DD.tif that an earlier run of the same "
            "model and MDD completed (same size, bands and type), and fuse only the others: rerun a "
            "killed or cancelled job with it to resume.\n"
            "Change below the dense pixel (advanced, default on): on the dates predicted in time from "
            "another date's fine MS, put the dense MS change below the dense MS pixel as well, from how it "
            "follows the fine MS of the other dates in each neighbourhood (a field smaller than a dense pixel "
            "that changes unlike its neighbours keeps its own change). More accurate on the held-out dates "
            "of the project's benchmark scenes (CC up to +0.0014, SSIM up to +0.004), for 4-8 % more "
            "fusion time; switch it off to save that. It needs a dense MS coarser than the grid; the log "
            "says when it is used.\n"
            "Output folder: where the GeoTIFFs are written. Dates are fused in passes of up to 8, "
            "each written under temporary names (*.tif.partial) and renamed when the pass is complete: "
            "a failure or a cancel loses only the pass under way, never leaves a half-written GeoTIFF, "
            "and replaces an existing file of the same name only with a complete one. Partial files a "
            "killed run left behind are removed by the next run.\n"
            "Dask scheduler (advanced): where the dates are fused. Empty (default): the environment variable "
            "DASK_SCHEDULER if it is set, else Dask tasks in this process on every core (groups of dates fused "
            "at once, their networks taking turns on every core; one at a time on a GPU), or, where the Python "
            "packages dask and distributed are not installed, one pass after another as before (the log says "
            "so). 'threads': Dask in this process even if DASK_SCHEDULER is set; 'none': without Dask. "
            "tcp://host:port: the scheduler of a running dask.distributed cluster ('dask scheduler', then "
            "'dask worker tcp://host:port' on each machine): each worker fuses whole groups of dates and writes "
            "them itself, so the workers need GDAL's Python bindings, PyTorch and this plugin importable "
            "(PYTHONPATH=<the QGIS plugins folder holding stsfusion>; the scheduler needs none of them), and "
            "must see the MDD (with its GeoTIFFs), the model file and the output folder at the same paths as "
            "QGIS (a shared folder); DEVICE is then chosen by each worker, and CPU threads means PyTorch's "
            "threads per task (0: each machine's cores shared out among its Dask threads). The workers are "
            "checked first, and the error names what one lacks. A cancel stops the running tasks at their next "
            'tile; the dates already written stay. Dask itself: python -m pip install "dask[distributed]" '
            "with the Python QGIS runs. The files are the same bytes whichever way they are fused, given the "
            "same CPU threads per task.\n\n"
            "Before fusing, the log says for each date what its image rests on (the fine MS observed that day, "
            "or predicted from which fine MS dates and how many days away; the dense MS acquired that day or "
            "interpolated; the HS of that day or the nearest), and each GeoTIFF keeps it in its metadata "
            "(STSFUSION_FINE_MS, STSFUSION_DENSE_MS, STSFUSION_HS), with an image's valid pixels against its "
            "role's clearest date where it has clouds or gaps. A date with no fine MS of its own gets a warning "
            "when no dense MS image lies within the model's MAX_DAYS_APART days (its image is an interpolation "
            "in time of the images around it) or when its dense MS image has less than half the valid pixels "
            "of the clearest (most of its image comes from the other dates).\n\n"
            "Outputs: Fused GeoTIFFs (the list of written files, for the graphical modeler) and "
            "the output folder."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(
            QgsProcessingParameterFile(
                self.MDD, self.tr("MDD (manifest .json from 'Build MDD stack')"), extension="json"
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                self.tr("Model file (from 'Train fusion model')"),
                fileFilter=self.tr("STS Fusion model (*.pt);;All files (*.*)"),
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.DATES, self.tr("Dates to fuse (YYYY-MM-DD, comma separated; empty = every date)"), optional=True
            )
        )
        tile = QgsProcessingParameterNumber(
            self.TILE_SIZE,
            self.tr("Tile size (pixels)"),
            QgsProcessingParameterNumber.Integer,
            256,
            minValue=16,
            maxValue=8192,
        )
        tile.setFlags(tile.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(tile)
        self.add_device_parameters()
        self.addParameter(
            QgsProcessingParameterEnum(
                self.OUTPUT_TYPE, self.tr("Output type"), options=list(self.OUTPUT_TYPES), defaultValue=0
            )
        )
        compression = QgsProcessingParameterEnum(
            self.COMPRESSION, self.tr("Compression"), options=list(self.COMPRESSIONS), defaultValue=0
        )
        compression.setFlags(compression.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(compression)
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.SKIP_EXISTING, self.tr("Skip dates already fused (resume an interrupted run)"), False
            )
        )
        subpixel = QgsProcessingParameterBoolean(
            self.SUBPIXEL_CHANGE, self.tr("Put the dense MS change below the dense pixel"), True
        )
        subpixel.setFlags(subpixel.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(subpixel)
        self.add_dask_scheduler_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Output folder")))
        self.addOutput(QgsProcessingOutputMultipleLayers(self.OUTPUT_LAYERS, self.tr("Fused GeoTIFFs")))

    def canceled_outputs(self, parameters, context):
        return {
            self.OUTPUT_LAYERS: [],
            self.OUTPUT_FOLDER: self.parameterAsString(parameters, self.OUTPUT_FOLDER, context),
        }

    def process(self, parameters, context, feedback):
        mdd_path = self.parameterAsFile(parameters, self.MDD, context)
        model_path = self.parameterAsFile(parameters, self.MODEL, context)
        dates = self.parameterAsString(parameters, self.DATES, context)
        tile_size = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        device = self.parameterAsString(parameters, self.DEVICE, context).strip() or DEFAULT_DEVICE
        threads = self.parameterAsInt(parameters, self.THREADS, context)
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        output_type = self.OUTPUT_TYPES[self.parameterAsEnum(parameters, self.OUTPUT_TYPE, context)]
        compression = self.COMPRESSIONS[self.parameterAsEnum(parameters, self.COMPRESSION, context)]
        skip_existing = self.parameterAsBoolean(parameters, self.SKIP_EXISTING, context)
        subpixel_change = self.parameterAsBoolean(parameters, self.SUBPIXEL_CHANGE, context)
        scheduler = (self.parameterAsString(parameters, self.DASK_SCHEDULER, context) or "").strip()
        for label, path in (("MDD", mdd_path), ("Model file", model_path)):
            if not path or not os.path.isfile(path):
                raise QgsProcessingException(f"{label} '{path}' does not exist: choose an existing file.")
        require_torch(self.DISPLAY_NAME, sklearn=False)
        from ..model.fusion.distributed import is_cluster, resolve_scheduler
        from ..model.fusion.fuse import fuse_time_series
        from ..model.nn.device import select_device

        mode = resolve_scheduler(scheduler)  # the parameter, else the environment variable DASK_SCHEDULER
        if is_cluster(mode):
            where = f"; Dask scheduler {mode} (each worker chooses its device)"
        else:
            device = select_device(device)
            where = "; Dask tasks in this process" if mode == "threads" else ""
        feedback.pushInfo(
            f"MDD: {mdd_path}\nModel: {model_path}\nOutput folder: {folder}\nDevice: {device}; tile size "
            f"{tile_size} px; output {output_type}, {compression}"
            + ("; skipping dates already fused" if skip_existing else "")
            + ("; the dense MS change put below the dense pixel" if subpixel_change else "")
            + where
        )
        paths = fuse_time_series(
            mdd_path,
            model_path,
            folder,
            dates=dates or None,
            tile_size=tile_size,
            device=device,
            threads=threads,
            callbacks=feedback_callbacks(feedback),
            output_type=output_type,
            compression=compression,
            skip_existing=skip_existing,
            scheduler=mode,
            subpixel_change=subpixel_change,
        )

        styles = style_outputs(paths, feedback)  # the .qml beside each GeoTIFF, now that all exist
        for path in paths:
            feedback.pushInfo(f"Written: {path}")
            load_on_completion(context, path, self.OUTPUT_LAYERS, styles.get(path))
        return {self.OUTPUT_LAYERS: paths, self.OUTPUT_FOLDER: folder}
