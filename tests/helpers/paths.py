"""Where things are: the checkout, the plugin link QGIS loads it through, the shared real data."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(ROOT, ".build", "plugins")  # PLUGINS/stsfusion -> ROOT (`make setup`)
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def subprocess_env(**extra) -> dict:
    """The environment for a child Python that imports ``stsfusion``: this one's, headless Qt,
    and the plugin folder first on PYTHONPATH (the child's path is set there, not edited)."""
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PLUGINS, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env
