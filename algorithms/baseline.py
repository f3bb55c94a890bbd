"""Baseline fusion (`stsfusion:baseline`): the simpler methods the fusion network is compared with,
run like the fusion (an MDD in, one fine HS GeoTIFF per date out)."""

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..model.core.calendar import MAX_DAYS_APART
from ..model.fusion.baselines import METHODS, run_baseline
from .base import STSFusionAlgorithm, feedback_callbacks
from .styles import load_on_completion, style_outputs


class BaselineFusionAlgorithm(STSFusionAlgorithm):
    NAME = "baseline"
    DISPLAY_NAME = "Baseline fusion (for comparison)"
    HELP_HEADING = "Baseline fusion (`stsfusion:baseline`): for comparison, not the STS Fusion method"
    MDD = "MDD"
    METHOD = "METHOD"
    DATES = "DATES"
    TILE_SIZE = "TILE_SIZE"
    MAX_DAYS_APART = "MAX_DAYS_APART"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    OUTPUT_LAYERS = "OUTPUT_LAYERS"

    def shortHelpString(self):
        return self.tr(
            "Baselines, not the STS Fusion method: simple ways to get fine hyperspectral (HS) "
            "images on every date, to compare the fusion network with ('Assess fusion accuracy'). "
            "Like 'Fuse time series' they read an MDD and write one GeoTIFF per date, "
            "<method>_YYYY-MM-DD.tif: the MDD's grid, the HS bands (band metadata 'wavelength' and "
            "'fwhm' in nm), float32, nodata -9999 where nothing could be predicted, tiled and "
            "DEFLATE-compressed. No training, no PyTorch.\n\n"
            "MDD: the .json manifest written by 'Build MDD stack'.\n"
            "Method:\n"
            "- interpolation: for each date and pixel, the HS image of the nearest date (in days; "
            "the earlier on a tie) that is valid there, taken back to its native pixel size and "
            "upsampled bicubically to the fine grid. Needs the HS role only.\n"
            "- two_stage: (1) temporal: the fine multispectral (MS) image of every date is "
            "predicted STARFM-style from the fine MS dates plus the dense-MS change since then "
            "(change mapped to the fine MS bands by least squares on the fine MS dates, averaged over "
            "spectrally similar neighbours, several fine MS dates weighted by how little changed); "
            "(2) spectral: a ridge regression from MS to each HS band, learned at the HS pixel size "
            "on the HS dates, applied to the predicted fine MS. Needs all three roles.\n"
            "- per_date_regression: only the dates with both an HS and a fine MS image (within "
            "MAX_DAYS_APART): a ridge regression from that date's fine MS to each of its HS bands, "
            "learned at the HS pixel size on that date alone, applied to the fine MS. What one date's "
            "images say on their own. Needs fine MS and HS.\n"
            "Dates (optional): dates to predict, YYYY-MM-DD separated by commas. Empty (default): "
            "every date of the MDD (per_date_regression: every date it can predict).\n"
            "MAX_DAYS_APART (two_stage, per_date_regression; default 10): an HS date takes the fine MS "
            "image at most this many days away as its own; the dense MS is interpolated in time per pixel to every date "
            "it is needed on (the calendar rule of training and fusion).\n"
            "Tile size (advanced, pixels, default 128): the grid is processed in tiles with an "
            "overlap, so results do not depend on it; memory grows with its square.\n"
            "Output folder: where the GeoTIFFs are written, under temporary names renamed at the "
            "end: a failure or cancel leaves no new file.\n\n"
            "Output: the list of written files (for the graphical modeler), loaded into the project in "
            "natural colours (bands nearest 650/560/480 nm) with each file's date as a fixed temporal "
            "range for the Temporal Controller; the same style is written beside each GeoTIFF as a "
            ".qml file."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(
            QgsProcessingParameterFile(
                self.MDD, self.tr("MDD (manifest .json from 'Build MDD stack')"), extension="json"
            )
        )
        method = QgsProcessingParameterEnum(self.METHOD, self.tr("Method"), list(METHODS), defaultValue="two_stage")
        method.setUsesStaticStrings(True)  # METHOD=interpolation on the command line
        self.addParameter(method)
        self.addParameter(
            QgsProcessingParameterString(
                self.DATES, self.tr("Dates (YYYY-MM-DD, comma separated; empty = every date)"), optional=True
            )
        )
        tile = QgsProcessingParameterNumber(
            self.TILE_SIZE,
            self.tr("Tile size (pixels)"),
            QgsProcessingParameterNumber.Integer,
            128,
            minValue=16,
            maxValue=8192,
        )
        tile.setFlags(tile.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(tile)
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MAX_DAYS_APART,
                self.tr("Fine MS and HS paired when at most this many days apart (two_stage)"),
                QgsProcessingParameterNumber.Double,
                MAX_DAYS_APART,
                minValue=0,
                maxValue=366,
            )
        )
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Output folder")))
        self.addOutput(QgsProcessingOutputMultipleLayers(self.OUTPUT_LAYERS, self.tr("Baseline GeoTIFFs")))

    def canceled_outputs(self, parameters, context):
        return {
            self.OUTPUT_LAYERS: [],
            self.OUTPUT_FOLDER: self.parameterAsString(parameters, self.OUTPUT_FOLDER, context),
        }

    def process(self, parameters, context, feedback):
        mdd_path = self.parameterAsFile(parameters, self.MDD, context)
        method = self.parameterAsEnumString(parameters, self.METHOD, context) or "two_stage"
        dates = self.parameterAsString(parameters, self.DATES, context) or None
        tile_size = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        if not mdd_path or not os.path.isfile(mdd_path):
            raise QgsProcessingException(
                f"MDD '{mdd_path}' does not exist: choose the .json written by 'Build MDD stack'."
            )
        feedback.pushInfo(f"MDD: {mdd_path}\nBaseline: {method}\nOutput folder: {folder}")
        paths = run_baseline(
            mdd_path,
            method,
            folder,
            dates=dates,
            tile_size=tile_size,
            callbacks=feedback_callbacks(feedback),
            max_days_apart=self.parameterAsDouble(parameters, self.MAX_DAYS_APART, context),
        )
        styles = style_outputs(paths, feedback)  # the .qml beside each GeoTIFF, now that all exist
        for path in paths:
            feedback.pushInfo(f"Written: {path}")
            load_on_completion(context, path, self.OUTPUT_LAYERS, styles.get(path))
        return {self.OUTPUT_LAYERS: paths, self.OUTPUT_FOLDER: folder}
