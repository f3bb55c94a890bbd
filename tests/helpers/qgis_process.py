"""Running the plugin in other processes: `qgis_process.bin` as a batch user runs it, and a fresh
Python that loads a model file (no state shared with the test process)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers.paths import PLUGINS, ROOT, subprocess_env

# qgis_process.bin runs in a QGIS profile of the tests' own: the in-process QgsApplication of the
# tests/qgis tests writes the default profile's settings (plugins enabled or not) when it exits, and
# a user's profile is none of the tests' business.
PROFILE = os.path.join(ROOT, ".build", "qgis_profile_tests")


def qgis_process_env() -> dict:
    """The environment the README gives for qgis_process.bin: plugin path, venv, headless Qt; and
    the tests' own QGIS profile."""
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["QGIS_PLUGINPATH"] = PLUGINS
    os.makedirs(PROFILE, exist_ok=True)
    env["QGIS_CUSTOM_CONFIG_PATH"] = PROFILE
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
        subprocess.run([exe, "plugins", "enable", "stsfusion"], env=env, capture_output=True, text=True, timeout=120)
        _enabled = True
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=timeout)


def run_qgis_process_json(algorithm: str, params: list, timeout=900) -> dict:
    """Runs an algorithm with `--json` and returns the parsed result (fails the test on error)."""
    proc = run_qgis_process("--json", "run", algorithm, "--", *params, timeout=timeout)
    assert proc.returncode == 0, f"qgis_process failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    start = proc.stdout.find("{")
    return json.loads(proc.stdout[start:])


LOAD = (
    "import sys; from stsfusion.model.nn.predictor import load_predictor; "
    "p = load_predictor(sys.argv[1], 'cpu'); print('LOADED', p.kernels, len(p.hs_wavelengths), p.halo)"
)


def load_in_fresh_process(model_path) -> str:
    """Loads ``model_path`` with load_predictor in a new Python; returns its stdout
    ('LOADED <kernels> <HS bands> <halo>')."""
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(model_path)], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
