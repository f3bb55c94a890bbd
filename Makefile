# STS Fusion: set-up, tests, demo and packaging on Debian 12 (run as root, or with sudo available).
# Every target installs what it needs first, and does nothing more when it is already installed.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-venv python3-matplotlib zip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages venv plugin-link lint format test test-fast demo package clean

setup: system-packages venv plugin-link

# Debian's QGIS 3.22 LTR, GDAL and their Python bindings; skipped when dpkg has them all installed.
system-packages:
	@if command -v qgis_process.bin >/dev/null && command -v zip >/dev/null && \
	    st="$$(dpkg-query -W -f='$${db:Status-Abbrev}\n' $(APT_PACKAGES) 2>/dev/null)" && \
	    ! printf '%s\n' "$$st" | grep -qv '^ii'; then \
	  echo "QGIS and GDAL: already installed"; \
	else \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

# The venv sees the system site-packages (qgis, osgeo, numpy 1.24); torch CPU, scikit-learn, pytest on top.
venv: $(STAMP)
$(STAMP): requirements.txt constraints.txt
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) -c "import torch, sklearn, numpy, osgeo.gdal, qgis.core; assert numpy.__version__.startswith('1.')"
	@touch $(STAMP)

# qgis_process finds plugins by folder name: .build/plugins/stsfusion points at this checkout.
plugin-link:
	@mkdir -p .build/plugins && ln -sfn ../.. .build/plugins/stsfusion
	@source scripts/env.sh && bash scripts/enable_plugin.sh

# ruff: lint rules and formatting (pyproject.toml); `make format` rewrites the files.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup
	source scripts/env.sh && $(PY) -m pytest -q tests

# The unit tests without QGIS and without the slow ones: seconds, for the edit-test loop.
test-fast: venv plugin-link
	source scripts/env.sh && $(PY) -m pytest -q -m "not slow and not qgis" tests/unit

demo: setup
	source scripts/env.sh && bash scripts/demo.sh

# A zip for QGIS's "Install from ZIP" and plugins.qgis.org: the plugin folder and its sample data, no tests,
# benchmarks, scripts, venv or caches; checked by scripts/check_package.py: a failed check fails the target
# and removes the zip.
# The files are those of the working tree that git tracks or would track (`git ls-files -co
# --exclude-standard`): on a clean clone exactly `git archive HEAD`, and in a checkout with edits what
# is being tested, new files included; ignored files (caches, .aux.xml, builds) never. DIST=<folder>
# builds elsewhere (tests/cli/test_package.py).
DIST ?= dist
PACKAGE_FILES := metadata.txt __init__.py plugin.py algorithms model ui resources README.md LICENSE CHANGELOG.md \
  requirements-runtime.txt
package: system-packages
	@rm -rf "$(DIST)/stsfusion" "$(DIST)/stsfusion.zip" && mkdir -p "$(DIST)/stsfusion"
	git ls-files -z -co --exclude-standard -- $(PACKAGE_FILES) \
	  | while IFS= read -r -d '' f; do [ -f "$$f" ] && printf '%s\0' "$$f"; done \
	  | tar --null -T - -c | tar -x -C "$(DIST)/stsfusion"
	cd "$(DIST)" && rm -f stsfusion.zip && zip -q -r -X stsfusion.zip stsfusion && rm -rf stsfusion
	python3 scripts/check_package.py --quiet "$(DIST)/stsfusion.zip" || { rm -f "$(DIST)/stsfusion.zip"; exit 1; }

clean:
	rm -rf .build dist .pytest_cache demo_output
