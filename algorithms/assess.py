"""Assess fusion accuracy (`stsfusion:assess`): CC, SAM, PSNR, SSIM, ERGAS, RMSE of a fused raster
against a reference, per band and overall, as a CSV table and an HTML report."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from ..model.evaluation.metrics import METRICS, assess_rasters
from .base import STSFusionAlgorithm, feedback_callbacks


class AssessAccuracyAlgorithm(STSFusionAlgorithm):
    NAME = "assess"
    DISPLAY_NAME = "Assess fusion accuracy"
    FUSED = "FUSED"
    REFERENCE = "REFERENCE"
    RATIO = "RATIO"
    OUTPUT_TABLE = "OUTPUT_TABLE"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def shortHelpString(self):
        return self.tr(
            "Measures how close a fused (or any predicted) raster is to a reference raster of the "
            "same bands, e.g. a withheld true image of the same date. Only pixels valid (not "
            "nodata) in every band of both rasters count; bands that are nodata everywhere (bad "
            "water-vapour bands) are skipped and listed. Values are compared in physical units: "
            "each raster's band scale and offset are applied.\n\n"
            "Metrics: CC (mean over bands of the Pearson correlation), SAM (mean spectral angle "
            "over pixels, degrees), PSNR (mean over bands of 10·log10(peak²/MSE) in dB, peak = the "
            "reference band's maximum), SSIM (mean over bands, Wang et al. 2004: Gaussian window "
            "σ = 1.5 px, K1 = 0.01, K2 = 0.03, data range = the reference band's max − min, over "
            "pixels whose 11×11 window is fully valid), ERGAS = 100/RATIO·sqrt(mean over bands of "
            "(RMSE/mean)²), and RMSE (all bands and pixels, in the reference's units). Higher is "
            "better for CC, PSNR, SSIM; lower for SAM, ERGAS, RMSE.\n\n"
            "Fused raster: the raster to assess. When its grid (CRS, extent or pixel size) differs "
            "from the reference's, it is warped onto the reference grid (bilinear).\n"
            "Reference raster: the truth, with the same number of bands.\n"
            "ERGAS resolution ratio (default 3): the coarse input's pixel size divided by the "
            "fused pixel size, e.g. 3 for 30 m hyperspectral fused to 10 m. Only ERGAS uses it.\n"
            "Output table: CSV with one row per band (band, wavelength_nm, CC, PSNR_dB, SSIM, "
            "RMSE) and an 'overall' row with every metric.\n"
            "Output report (optional): a self-contained HTML page with the overall metrics, a "
            "plot of CC, PSNR, SSIM and RMSE per band (against wavelength where known) and the "
            "table.\n\n"
            "Outputs also CC, SAM, PSNR, SSIM, ERGAS and RMSE as numbers, for the graphical "
            "modeler and qgis_process --json."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.FUSED, self.tr("Fused raster")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference raster")))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.RATIO,
                self.tr("ERGAS resolution ratio (coarse / fine pixel size)"),
                QgsProcessingParameterNumber.Double,
                3.0,
                minValue=1e-6,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_TABLE, self.tr("Output table"), self.tr("CSV files (*.csv)")
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_REPORT,
                self.tr("Output report"),
                self.tr("HTML files (*.html)"),
                optional=True,
                createByDefault=True,
            )
        )
        for m in METRICS:
            self.addOutput(QgsProcessingOutputNumber(m, m))

    def process(self, parameters, context, feedback):
        fused = self.parameterAsRasterLayer(parameters, self.FUSED, context)
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        if fused is None or reference is None:
            raise QgsProcessingException("Choose both a fused raster and a reference raster.")
        ratio = self.parameterAsDouble(parameters, self.RATIO, context)
        table = self.parameterAsFileOutput(parameters, self.OUTPUT_TABLE, context)
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None
        feedback.pushInfo(f"Fused: {fused.source()}\nReference: {reference.source()}\nERGAS ratio: {ratio:g}")
        result = assess_rasters(
            fused.source(), reference.source(), ratio, table, report, callbacks=feedback_callbacks(feedback)
        )
        o = result["overall"]
        feedback.pushInfo(
            f"{result['valid_pixels']} valid pixels, {len(result['bands'])} bands: "
            + ", ".join(f"{m} {o[m]:.4g}" for m in METRICS)
        )
        if result["skipped_bands"]:
            feedback.pushInfo(f"Skipped bands (no valid pixel): {result['skipped_bands']}")
        out = {self.OUTPUT_TABLE: table, self.OUTPUT_REPORT: report}
        out.update({m: o[m] for m in METRICS})
        return out
