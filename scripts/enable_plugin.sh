#!/usr/bin/env bash
# Enables the stsfusion plugin for qgis_process (QGIS's default profile) unless the profile already
# has it enabled: qgis_process.bin takes about 2 s to start, and `make demo` would pay it twice.
# Needs scripts/env.sh sourced (QGIS_PLUGINPATH), as every qgis_process call here does.
ini="${XDG_DATA_HOME:-$HOME/.local/share}/QGIS/QGIS3/profiles/default/QGIS/QGIS3.ini"
if ! awk '/^\[/ { s = ($0 == "[PythonPlugins]") } s && $0 == "stsfusion=true" { f = 1 } END { exit !f }' "$ini" 2>/dev/null; then
  qgis_process.bin plugins enable stsfusion >/dev/null 2>&1 || true
fi
