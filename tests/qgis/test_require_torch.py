"""Train needs PyTorch and scikit-learn, Fuse PyTorch only: a missing one gets a message that names it
and says how to install it; Fuse does not import scikit-learn at all (0.7 s of every run)."""

import importlib

import pytest
from qgis.core import QgsProcessingException

from stsfusion.algorithms import base


def _without(monkeypatch, missing):
    real = importlib.import_module
    imported = []

    def fake(name, *args, **kwargs):
        imported.append(name)
        if name in missing:
            raise ImportError(f"No module named '{name}'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(base.importlib, "import_module", fake)
    return imported


def test_train_needs_both_and_names_them(monkeypatch):
    _without(monkeypatch, {"sklearn"})
    with pytest.raises(QgsProcessingException, match="needs PyTorch and scikit-learn .*sklearn"):
        base.require_torch("Train fusion model")


def test_fuse_needs_pytorch_only_and_never_imports_scikit_learn(monkeypatch):
    imported = _without(monkeypatch, {"sklearn"})
    base.require_torch("Fuse time series", sklearn=False)
    assert imported == ["torch"]
    _without(monkeypatch, {"torch"})
    with pytest.raises(QgsProcessingException, match=r"needs PyTorch \(No module named 'torch'\)"):
        base.require_torch("Fuse time series", sklearn=False)
