"""Every module of the plugin imports where the Unix-only modules do not exist (Windows): a fresh
Python blocks `resource`, `fcntl`, `pwd`, `grp` and `termios`, then imports each module of
`stsfusion` (algorithms/ and ui/ included). The same bootstrap makes a module that imports `fcntl`
fail, so the test can fail."""

import os
import subprocess
import sys

from helpers.paths import subprocess_env

UNIX_ONLY = ("resource", "fcntl", "pwd", "grp", "termios")

# Third-party libraries come in first, as they are: some use these modules themselves (torch,
# scikit-learn and matplotlib import fcntl, pwd, grp here), and they have their own Windows code.
# What is checked is the import of OUR modules afterwards: the names are dropped from sys.modules
# and a meta path finder refuses them, so an `import fcntl` of ours fails as on Windows.
BOOTSTRAP = """
import importlib, pkgutil, sys
import numpy, osgeo.gdal, qgis.core, qgis.gui, qgis.PyQt.QtWidgets, torch, sklearn, matplotlib
import matplotlib.backends.backend_qt5agg
BLOCKED = set(sys.argv[2].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked: not on Windows)")
        return None

for name in BLOCKED:
    sys.modules.pop(name, None)
sys.meta_path.insert(0, Block())

def fail(name):
    raise SystemExit(f"cannot import {name}: {sys.exc_info()[1]}")

package = importlib.import_module(sys.argv[1])
names = [sys.argv[1]]
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + ".", onerror=fail):
    try:
        importlib.import_module(info.name)
    except Exception:
        fail(info.name)
    names.append(info.name)
if sys.argv[1] == "stsfusion":
    from stsfusion.model.core.memory import peak_rss_mb
    print("PEAK", peak_rss_mb())  # `resource` blocked: None here, never an ImportError
print("IMPORTED", " ".join(names))
"""


def _import_all(package, pythonpath=None):
    env = subprocess_env()
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env["PYTHONPATH"]])
    return subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, package, ",".join(UNIX_ONLY)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_plugin_module_imports_without_unix_only_modules():
    proc = _import_all("stsfusion")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PEAK None" in proc.stdout  # the block reaches our own (lazy) `import resource` too
    imported = proc.stdout.split("IMPORTED", 1)[1].split()
    for name in (
        "stsfusion.plugin",
        "stsfusion.algorithms.provider",
        "stsfusion.algorithms.train",
        "stsfusion.algorithms.check_environment",
        "stsfusion.model.core.memory",
        "stsfusion.model.nn.training",
        "stsfusion.ui.install_dialog",
        "stsfusion.ui.torch_installer",
        "stsfusion.ui.profile_dock",
    ):
        assert name in imported, imported


def test_the_bootstrap_catches_a_module_that_imports_fcntl(tmp_path):
    package = tmp_path / "unixonly"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fine.py").write_text("import os\n")
    (package / "locks.py").write_text("import fcntl\n")
    proc = _import_all("unixonly", pythonpath=str(tmp_path))
    assert proc.returncode != 0 and "cannot import unixonly.locks" in proc.stderr and "fcntl" in proc.stderr
