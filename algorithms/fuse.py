"""Fuse time series (`stsfusion:fuse`): a trained model applied to an MDD, one fine HS GeoTIFF per date."""

import os

from qgis.core import (
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsRectangle,
)

from ..model.nn.options import DEVICES  # no torch import at module level
from .base import STSFusionAlgorithm, feedback_callbacks, require_torch

# The registry does not own post-processors: keep them alive until the GUI has loaded the layers.
# One per output path, so repeated runs replace rather than accumulate them.
_POST_PROCESSORS = {}


class RgbRendering(QgsProcessingLayerPostProcessorInterface):
    """Shows a fused layer in natural colours: the bands nearest 650/560/480 nm, 2–98 % stretch."""

    def __init__(self, red, green, blue):
        super().__init__()
        self.bands = (red, green, blue)

    def postProcessLayer(self, layer, context, feedback):
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            return
        layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), *self.bands))
        layer.setContrastEnhancement(
            QgsContrastEnhancement.StretchToMinimumMaximum, QgsRasterMinMaxOrigin.CumulativeCut, QgsRectangle(), 250000
        )
        layer.triggerRepaint()


class FuseTimeSeriesAlgorithm(STSFusionAlgorithm):
    NAME = "fuse"
    DISPLAY_NAME = "Fuse time series"
    MDD = "MDD"
    MODEL = "MODEL"
    DATES = "DATES"
    TILE_SIZE = "TILE_SIZE"
    DEVICE = "DEVICE"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    OUTPUT_LAYERS = "OUTPUT_LAYERS"

    def shortHelpString(self):
        return (
            "Applies a model made by 'Train fusion model' to an MDD made by 'Build MDD stack' and "
            "writes one fine-resolution hyperspectral GeoTIFF per date, fused_YYYY-MM-DD.tif: the "
            "MDD's grid and CRS, one band per HS band of the model (band metadata 'wavelength' and "
            "'fwhm' in nm, descriptions such as '650 nm'), float32, nodata -9999 where no input was "
            "valid on any date, tiled and DEFLATE-compressed. Pixels that are cloudy or missing in "
            "some inputs are filled by the model. In QGIS each file is added to the project in "
            "natural colours (bands nearest 650/560/480 nm).\n\n"
            "MDD: the .json manifest written by 'Build MDD stack'.\n"
            "Model file: the file written by 'Train fusion model'. It must have been trained on an "
            "MDD with the same bands and wavelengths; otherwise the error names what differs.\n"
            "Dates (optional): dates to fuse, YYYY-MM-DD separated by commas or semicolons. Empty "
            "(default): every date of the MDD.\n"
            "Tile size (advanced, pixels, default 256): the grid is processed in square tiles of "
            "this size, each with an overlap of the model's receptive field so that no seam shows. "
            "Memory grows with the square of the tile size, not with the raster size; lower it if "
            "memory runs out, raise it for speed on a GPU.\n"
            "Device: auto (default; CUDA if PyTorch sees a GPU, else CPU), cpu, or cuda.\n"
            "Output folder: where the GeoTIFFs are written. Files are written under temporary "
            "names and renamed at the end: a failure or a cancel leaves no new or half-written "
            "file, and existing files of the same names are only replaced on success.\n\n"
            "Outputs: Fused GeoTIFFs (the list of written files, for the graphical modeler) and "
            "the output folder."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(
            QgsProcessingParameterFile(self.MDD, "MDD (manifest .json from 'Build MDD stack')", extension="json")
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Model file (from 'Train fusion model')",
                fileFilter="STS Fusion model (*.pt);;All files (*.*)",
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.DATES, "Dates to fuse (YYYY-MM-DD, comma separated; empty = every date)", optional=True
            )
        )
        tile = QgsProcessingParameterNumber(
            self.TILE_SIZE, "Tile size (pixels)", QgsProcessingParameterNumber.Integer, 256, minValue=16, maxValue=8192
        )
        tile.setFlags(tile.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(tile)
        device = QgsProcessingParameterEnum(self.DEVICE, "Device", list(DEVICES), defaultValue="auto")
        device.setUsesStaticStrings(True)  # DEVICE=cpu on the command line, not an index
        self.addParameter(device)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputMultipleLayers(self.OUTPUT_LAYERS, "Fused GeoTIFFs"))

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
        device = self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto"
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        for label, path in (("MDD", mdd_path), ("Model file", model_path)):
            if not path or not os.path.isfile(path):
                raise QgsProcessingException(f"{label} '{path}' does not exist: choose an existing file.")
        require_torch(self.DISPLAY_NAME)
        from ..model.fusion.fuse import fuse_time_series, rgb_band_indices_of_file
        from ..model.nn.device import select_device

        device = select_device(device)
        feedback.pushInfo(
            f"MDD: {mdd_path}\nModel: {model_path}\nOutput folder: {folder}\nDevice: {device}; tile size {tile_size} px"
        )
        paths = fuse_time_series(
            mdd_path,
            model_path,
            folder,
            dates=dates or None,
            tile_size=tile_size,
            device=device,
            callbacks=feedback_callbacks(feedback),
        )

        for path in paths:
            feedback.pushInfo(f"Written: {path}")
            details = QgsProcessingContext.LayerDetails(
                os.path.splitext(os.path.basename(path))[0].replace("_", " "),
                context.project(),
                self.OUTPUT_LAYERS,
                QgsProcessingUtils.LayerHint.Raster,
            )
            _POST_PROCESSORS[path] = RgbRendering(*rgb_band_indices_of_file(path))
            details.setPostProcessor(_POST_PROCESSORS[path])
            context.addLayerToLoadOnCompletion(path, details)
        return {self.OUTPUT_LAYERS: paths, self.OUTPUT_FOLDER: folder}
