from qgis.core import QgsProcessingAlgorithm, QgsProcessingParameterMultipleLayers, QgsProcessing, QgsProcessingParameterFileDestination


class BuildMddAlgorithm(QgsProcessingAlgorithm):
    def name(self):
        return "buildmdd"

    def displayName(self):
        return "Build MDD stack"

    def createInstance(self):
        return BuildMddAlgorithm()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMultipleLayers("HS", "HS", QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "MDD", "JSON (*.json)"))

    def processAlgorithm(self, parameters, context, feedback):
        layers = self.parameterAsLayerList(parameters, "HS", context)
        feedback.pushInfo(str([l.source() for l in layers]))
        return {"OUTPUT": self.parameterAsFileOutput(parameters, "OUTPUT", context)}
