"""Desktop-only parts of STS Fusion: the spectral-temporal profile (map tool + dock).

Imported only from ``STSFusionPlugin.initGui``, so ``qgis_process`` and headless use never load Qt
widgets or matplotlib. Nothing is imported here on purpose.
"""
