"""Simulate sensors (`stsfusion:simulate`): fine MS, dense MS and coarse HS from fine HS layers
(the paper's Dataset I protocol), so users can validate the fusion on their own data."""

import os
import re

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..model.simulation.simulate import simulate_sensors
from ..model.simulation.srf import list_presets
from .base import STSFusionAlgorithm, feedback_callbacks
from .styles import style_outputs


def _dates(text):
    """'' -> None (every date); 'none' -> [] (no date); else the listed dates."""
    text = (text or "").strip()
    if not text:
        return None
    if text.lower() == "none":
        return []
    return [t for t in re.split(r"[,;\s]+", text) if t]


class SimulateSensorsAlgorithm(STSFusionAlgorithm):
    NAME = "simulate"
    DISPLAY_NAME = "Simulate sensors"
    INPUT = "INPUT"
    DATES = "DATES"
    FINE_MS_SENSOR = "FINE_MS_SENSOR"
    FINE_MS_SRF = "FINE_MS_SRF"
    DENSE_MS_SENSOR = "DENSE_MS_SENSOR"
    DENSE_MS_SRF = "DENSE_MS_SRF"
    DENSE_FACTOR = "DENSE_FACTOR"
    HS_FACTOR = "HS_FACTOR"
    PSF_SIGMA = "PSF_SIGMA"
    FINE_MS_DATES = "FINE_MS_DATES"
    DENSE_MS_DATES = "DENSE_MS_DATES"
    HS_DATES = "HS_DATES"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    FINE_MS_LAYERS = "FINE_MS_LAYERS"
    DENSE_MS_LAYERS = "DENSE_MS_LAYERS"
    HS_LAYERS = "HS_LAYERS"
    OUTPUT_LAYERS = "OUTPUT_LAYERS"

    def shortHelpString(self):
        return self.tr(
            "Makes the three inputs of the fusion from fine-resolution hyperspectral (HS) images, "
            "one per date, following the paper's Dataset I protocol: fine multispectral (MS) "
            "images through a fine sensor's spectral responses; dense MS images through GF-6 "
            "WFV-like responses, blurred by a Gaussian point-spread function and decimated; coarse "
            "HS images blurred and decimated the same way. Fuse the results and compare them with "
            "the HS images you started from ('Assess fusion accuracy') to see how well the fusion "
            "works on your own scenes. No noise, clouds or misregistration are added.\n\n"
            "Files: fine_ms_YYYY-MM-DD.tif, dense_ms_YYYY-MM-DD.tif, hs_YYYY-MM-DD.tif in the "
            "output folder; float32 in the input's physical units (band scale/offset applied), "
            "nodata -9999, band metadata 'wavelength'/'fwhm' in nm (for MS: the response-weighted "
            "centre and the FWHM of each band), ACQUISITION_DATE in the dataset metadata. Dense MS "
            "and HS grids have the input's origin and pixels FACTOR times larger (rows and columns "
            "beyond a whole coarse pixel are dropped).\n\n"
            "Fine HS layers: one raster per date with band wavelengths in its metadata (GDAL "
            "'wavelength' band metadata or an ENVI header). Bands flagged bad (ENVI 'bbl' = 0) are "
            "left out of the spectral responses and kept, as they are, in the coarse HS.\n"
            "Dates (optional): one YYYY-MM-DD per layer, in layer order. Empty (default): each "
            "layer's date from its metadata or file name.\n"
            "Fine MS sensor (default zy1_02d_vnic): a preset of Gaussian bands from published band "
            "centres and widths ({presets}).\n"
            "Fine MS spectral response file (optional): a tabulated response file (';; BAND name' "
            "headers followed by 'wavelength_nm response' rows, as in ACOLITE's RSR files); "
            "replaces the preset.\n"
            "Dense MS sensor (default gf6_wfv) and Dense MS spectral response file: the same for "
            "the dense MS.\n"
            "Sensor bands that the HS wavelengths do not cover (e.g. GF-6 WFV's 400–450 nm band "
            "with an HS starting at 420 nm) are left out, and the log says which.\n"
            "Dense MS degradation factor (default 2) and HS degradation factor (default 3): "
            "whole numbers, the coarse pixel size over the input pixel size.\n"
            "PSF sigma (advanced, input pixels, optional): the Gaussian PSF's standard deviation. "
            "Empty (default): FWHM = one coarse pixel (sigma = factor / 2.355); 0: plain block "
            "mean. A coarse pixel is nodata when nodata pixels carry half its PSF weight or more.\n"
            "Fine MS dates, Dense MS dates, HS dates (optional): the dates to make each role for, "
            "YYYY-MM-DD separated by commas. Empty (default): every date; 'none': no image of that "
            "role. The paper uses fine MS and HS on the same 4 of 7 dates and dense MS on all 7.\n"
            "Output folder: where the files are written. Files are written under temporary names "
            "and renamed when all are complete: a failure or cancel leaves no new file. Beside each "
            "file a .qml style shows it in natural colours (bands nearest 650/560/480 nm) with its "
            "date as a fixed temporal range for the Temporal Controller.\n\n"
            "Outputs: the lists of fine MS, dense MS and HS files, and all of them together."
        ).format(presets=", ".join(list_presets()))

    def initAlgorithm(self, config=None):
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.INPUT, self.tr("Fine HS layers (one per date)"), QgsProcessing.TypeRaster
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.DATES,
                self.tr("Dates of the layers (YYYY-MM-DD, in layer order; empty = from metadata/name)"),
                optional=True,
            )
        )
        presets = list_presets()
        for key, label, default in (
            (self.FINE_MS_SENSOR, "Fine MS sensor", "zy1_02d_vnic"),
            (self.DENSE_MS_SENSOR, "Dense MS sensor", "gf6_wfv"),
        ):
            p = QgsProcessingParameterEnum(key, self.tr(label), presets, defaultValue=default)
            p.setUsesStaticStrings(True)  # FINE_MS_SENSOR=sentinel2_msi on the command line
            self.addParameter(p)
        for key, label in (
            (self.FINE_MS_SRF, "Fine MS spectral response file (replaces the preset)"),
            (self.DENSE_MS_SRF, "Dense MS spectral response file (replaces the preset)"),
        ):
            self.addParameter(
                QgsProcessingParameterFile(
                    key,
                    self.tr(label),
                    optional=True,
                    fileFilter=self.tr("Text files (*.txt *.csv);;All files (*.*)"),
                )
            )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.DENSE_FACTOR,
                self.tr("Dense MS degradation factor"),
                QgsProcessingParameterNumber.Integer,
                2,
                minValue=1,
                maxValue=100,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.HS_FACTOR,
                self.tr("HS degradation factor"),
                QgsProcessingParameterNumber.Integer,
                3,
                minValue=1,
                maxValue=100,
            )
        )
        sigma = QgsProcessingParameterNumber(
            self.PSF_SIGMA,
            self.tr("PSF sigma (input pixels; empty = FWHM of one coarse pixel)"),
            QgsProcessingParameterNumber.Double,
            None,
            optional=True,
            minValue=0.0,
        )
        sigma.setFlags(sigma.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(sigma)
        for key, label in (
            (self.FINE_MS_DATES, "Fine MS dates"),
            (self.DENSE_MS_DATES, "Dense MS dates"),
            (self.HS_DATES, "HS dates"),
        ):
            self.addParameter(
                QgsProcessingParameterString(
                    key,
                    self.tr("{role} (YYYY-MM-DD, comma separated; empty = every date; 'none' = none)").format(
                        role=self.tr(label)
                    ),
                    optional=True,
                )
            )
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Output folder")))
        for key, label in (
            (self.FINE_MS_LAYERS, "Fine MS files"),
            (self.DENSE_MS_LAYERS, "Dense MS files"),
            (self.HS_LAYERS, "HS files"),
            (self.OUTPUT_LAYERS, "All simulated files"),
        ):
            self.addOutput(QgsProcessingOutputMultipleLayers(key, self.tr(label)))

    def process(self, parameters, context, feedback):
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException("Choose at least one fine HS layer.")
        sources = [layer.source() for layer in layers]
        dates = _dates(self.parameterAsString(parameters, self.DATES, context))
        if dates is not None and len(dates) != len(sources):
            raise QgsProcessingException(
                f"Give one date per layer: {len(sources)} layer(s) but {len(dates)} date(s); or leave "
                "Dates empty to read them from the layers."
            )
        fine = (
            self.parameterAsFile(parameters, self.FINE_MS_SRF, context)
            or self.parameterAsEnumString(parameters, self.FINE_MS_SENSOR, context)
            or "zy1_02d_vnic"
        )
        dense = (
            self.parameterAsFile(parameters, self.DENSE_MS_SRF, context)
            or self.parameterAsEnumString(parameters, self.DENSE_MS_SENSOR, context)
            or "gf6_wfv"
        )
        sigma = None
        if parameters.get(self.PSF_SIGMA) not in (None, ""):
            sigma = self.parameterAsDouble(parameters, self.PSF_SIGMA, context)
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        feedback.pushInfo(f"{len(sources)} HS layer(s); fine MS: {fine}; dense MS: {dense}; output folder: {folder}")
        files = simulate_sensors(
            sources,
            folder,
            fine_ms_sensor=fine,
            dense_ms_sensor=dense,
            dense_factor=self.parameterAsInt(parameters, self.DENSE_FACTOR, context),
            hs_factor=self.parameterAsInt(parameters, self.HS_FACTOR, context),
            psf_sigma=sigma,
            dates=dates,
            fine_ms_dates=_dates(self.parameterAsString(parameters, self.FINE_MS_DATES, context)),
            dense_ms_dates=_dates(self.parameterAsString(parameters, self.DENSE_MS_DATES, context)),
            hs_dates=_dates(self.parameterAsString(parameters, self.HS_DATES, context)),
            callbacks=feedback_callbacks(feedback),
        )
        everything = files["fine_ms"] + files["dense_ms"] + files["hs"]
        style_outputs(everything, feedback)  # the .qml beside each GeoTIFF, now that all exist
        for path in everything:
            feedback.pushInfo(f"Written: {os.path.basename(path)}")
        return {
            self.FINE_MS_LAYERS: files["fine_ms"],
            self.DENSE_MS_LAYERS: files["dense_ms"],
            self.HS_LAYERS: files["hs"],
            self.OUTPUT_LAYERS: everything,
            self.OUTPUT_FOLDER: folder,
        }
