"""Fusion of a whole MDD, tile by tile: the network's (fuse.py) and the two baselines (baselines.py)."""
