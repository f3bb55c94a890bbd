"""Shared test set-up.

The plugin is imported as the package `stsfusion` (as QGIS imports it), through the link
`.build/plugins/stsfusion` -> repository root that `make setup` creates. QGIS is started once,
headless, for the tests that need it (`qgis_app` fixture); `tests/unit` never needs it.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, ".build", "plugins")
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

os.makedirs(PLUGINS, exist_ok=True)
if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):
    os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))
if PLUGINS not in sys.path:
    sys.path.insert(0, PLUGINS)
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"  # QGIS's own plugins: `processing`
if os.path.isdir(QGIS_PLUGINS) and QGIS_PLUGINS not in sys.path:
    sys.path.append(QGIS_PLUGINS)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


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


def qgis_process_env() -> dict:
    """The environment the README gives for qgis_process.bin: plugin path, venv, headless Qt."""
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["QGIS_PLUGINPATH"] = PLUGINS
    site = [p for p in sys.path if p.endswith("site-packages") and ".venv" in p]
    env["PYTHONPATH"] = os.pathsep.join(site + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    return env


_enabled = False


def run_qgis_process(*args, timeout=900) -> subprocess.CompletedProcess:
    """Runs `qgis_process.bin ARGS...` with the plugin enabled; returns the completed process."""
    global _enabled
    exe = shutil.which("qgis_process.bin")
    if exe is None:
        pytest.fail("qgis_process.bin is not installed: run `make setup`.")
    env = qgis_process_env()
    if not _enabled:
        subprocess.run([exe, "plugins", "enable", "stsfusion"], env=env, capture_output=True,
                       text=True, timeout=120)
        _enabled = True
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=timeout)


def run_qgis_process_json(algorithm: str, params: list, timeout=900) -> dict:
    """Runs an algorithm with `--json` and returns the parsed result (fails the test on error)."""
    proc = run_qgis_process("--json", "run", algorithm, "--", *params, timeout=timeout)
    assert proc.returncode == 0, f"qgis_process failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    start = proc.stdout.find("{")
    return json.loads(proc.stdout[start:])


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"../shared/data is absent ({SHARED_DATA}): the real-data tests need it beside the checkout")
    return SHARED_DATA
