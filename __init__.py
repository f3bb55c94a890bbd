"""STS Fusion QGIS plugin.

Nothing here imports QGIS, Qt or torch at import time, so `model/` stays importable on its own
(tests, benchmarks) and QGIS starts fast.
"""


def classFactory(iface):
    from .plugin import STSFusionPlugin

    return STSFusionPlugin(iface)
