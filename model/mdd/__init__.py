"""The MDD on disk: raster I/O with GDAL (inputs, GeoTIFF writers), the MDD format, and Build MDD stack."""
