"""Simulated data: spectral responses, sensor simulation from the user's fine HS (simulate.py), and the
simulated multi-date series of the demo and the benchmark (synthetic_scene, truth, sensors, writing)."""
