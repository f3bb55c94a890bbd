"""Accuracy metrics of fused images against a reference, and the training report."""
