"""Shared test helpers: fixture data made by code, and qgis_process runners.

Importable as ``helpers`` because pytest.ini puts ``tests`` on the path (``pythonpath``), next to
``.build/plugins`` (the package ``stsfusion``) and QGIS's own plugins (``processing``):

    from helpers.rasters import make_raster
    from helpers.mdd import make_tiny_mdd
    from helpers.paths import ROOT
"""
