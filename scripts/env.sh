# Source this file to run QGIS headless with the plugin and the project's venv:
#   source scripts/env.sh && qgis_process.bin list
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export QT_QPA_PLATFORM=offscreen
export QGIS_PLUGINPATH="$_root/.build/plugins"
_site="$(ls -d "$_root"/.venv/lib/python3*/site-packages 2>/dev/null | head -n 1)"
export PYTHONPATH="$_site${PYTHONPATH:+:$PYTHONPATH}"
export STSFUSION_ROOT="$_root"
unset _root _site
