"""Everything Qt-free: the MDD, the network, training, fusion, metrics, simulation, baselines.

Nothing in this package imports `qgis` or Qt, so it is testable with numpy, torch and GDAL alone.
"""
