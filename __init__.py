"""STS Fusion QGIS plugin.

Nothing here imports QGIS, Qt or torch at import time, so `model/` stays importable on its own
(tests, benchmarks) and QGIS starts fast. The one thing done at start is putting the folder that
"Install PyTorch…" (ui/install_dialog.py) installs into on ``sys.path``, before anything imports torch.
"""

from __future__ import annotations

import os
import sys

DEPS_DIRNAME = "stsfusion-deps"


def deps_folder(settings_dir: str, version: tuple[int, int] | None = None) -> str:
    """The plugin-owned folder PyTorch and scikit-learn are installed into:
    ``<QGIS profile>/python/stsfusion-deps/<major.minor>``. One folder per Python version, because
    torch's compiled extensions only load in the Python they were built for (a QGIS upgrade that
    brings a new Python then simply finds no torch, instead of a broken one)."""
    major, minor = version or sys.version_info[:2]
    return os.path.join(settings_dir, "python", DEPS_DIRNAME, f"{major}.{minor}")


def _is_site_dir(entry: str) -> bool:
    return os.path.basename(os.path.normpath(entry)).lower() in ("site-packages", "dist-packages")


def _same(a: str, b: str) -> bool:
    return bool(a) and os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def add_deps_to_sys_path(folder: str, path: list | None = None) -> bool:
    """Puts ``folder`` on ``path`` (default ``sys.path``) if it exists; True if it is on it now.

    It goes after the standard library, before the first site-packages that follows it: what the
    installer put there was resolved by pip as one consistent set (against QGIS's numpy), so it must
    win over older copies QGIS may ship (typing_extensions, scipy...) and over a torch installed by
    hand for another CUDA; PYTHONPATH entries, which come before the standard library, still win
    (the user asked for them). QGIS's own numpy keeps winning because the installer never leaves a
    numpy there; should one be there anyway (put by hand), the folder is appended instead, behind
    everything QGIS has."""
    path = sys.path if path is None else path
    if not os.path.isdir(folder):
        return False
    if folder in path:
        return True
    stdlib = os.path.dirname(os.__file__)
    start = next((i for i, entry in enumerate(path) if _same(entry, stdlib)), -1)
    site = [i for i, entry in enumerate(path) if i > start and _is_site_dir(entry)]
    if site and not os.path.exists(os.path.join(folder, "numpy")):
        path.insert(site[0], folder)
    else:
        path.append(folder)
    return True


def classFactory(iface):
    from qgis.core import QgsApplication

    add_deps_to_sys_path(deps_folder(QgsApplication.qgisSettingsDirPath()))
    from .plugin import STSFusionPlugin

    return STSFusionPlugin(iface)
