"""Shared test set-up.

The plugin is imported as the package `stsfusion` (as QGIS imports it), through the link
`.build/plugins/stsfusion` -> repository root that `make setup` creates. The import path comes
from pytest.ini (`pythonpath`: the plugin folder, `tests` for the `helpers` package, and QGIS's own
plugins for `processing`); nothing here edits sys.path. QGIS is started once, headless, for the
tests that need it (`qgis_app` fixture); `tests/unit` never needs it.

Markers (registered in pytest.ini): every test under tests/qgis and tests/cli is marked `qgis`
here; tests that train a model (or need one trained) or run a whole chain, seconds each and
minutes on busy cores, are marked `slow` in their modules. The fast subset, well under a minute:
`pytest -m "not slow and not qgis" tests/unit` (`make test-fast`).
"""

import importlib
import os

import pytest
from helpers.paths import PLUGINS, SHARED_DATA

if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):  # `make setup` makes it; a bare checkout may not
    os.makedirs(PLUGINS, exist_ok=True)
    os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))
    importlib.invalidate_caches()  # the folder was on the path (pytest.ini) before it existed
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

_QGIS_DIRS = ("qgis", "cli")  # tests/<dir>/...: need QGIS (qgis_app or qgis_process.bin)


def pytest_collection_modifyitems(config, items):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        rel = os.path.relpath(str(item.path), tests_dir)
        if rel.split(os.sep, 1)[0] in _QGIS_DIRS:
            item.add_marker(pytest.mark.qgis)


_PROVIDERS = []


@pytest.fixture(scope="session")
def qgis_app():
    """A headless QgsApplication with Processing and the STS Fusion provider registered."""
    from qgis.core import QgsApplication
    from qgis.testing import start_app

    app = start_app()
    from processing.core.Processing import Processing

    Processing.initialize()
    from stsfusion.algorithms.provider import STSFusionProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("stsfusion") is None:
        # Keep a Python reference: the registry does not own the wrapper, and a collected
        # provider leaves an empty entry behind.
        _PROVIDERS.append(STSFusionProvider())
        registry.addProvider(_PROVIDERS[-1])
    return app


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"../shared/data is absent ({SHARED_DATA}): the real-data tests need it beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """(manifest, model path): ``helpers.predictor.trained_tiny_model`` (kernel set 1, one epoch) in a
    folder of its own, shared by the tests that only read it."""
    from helpers.predictor import trained_tiny_model

    return trained_tiny_model(tmp_path_factory.mktemp("trained_tiny"))
