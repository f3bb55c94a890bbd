#!/usr/bin/env python3
"""Checks a plugin zip the way plugins.qgis.org does on upload, plus this project's own rules.

    python3 scripts/check_package.py dist/stsfusion.zip

Run by `make package`; exits 1 when a check fails (the problems are listed), 0 otherwise. Standard
library only. The plugin repository's checks (QGIS-Django, qgis-app/plugins/validator.py): size at
most 25 MB; no path information (``..``, absolute names); no ``.pyc``, ``__pycache__``, ``.git`` or
``__MACOSX``; an intact zip; one top-level folder, whose name is a PEP 8 package name; ``__init__.py``
and ``metadata.txt`` (section ``[general]``) in it; the required metadata; valid ``tracker``,
``repository`` and ``homepage`` URLs (their existence online is not checked here); an author without
slashes; ``LICENSE``. This project adds: the folder is named like the plugin package (``stsfusion``),
``classFactory`` in ``__init__.py``, the metadata QGIS's plugin manager shows (tags, category, icon,
changelog, hasProcessingProvider), the icon file, no compiled or hidden files, nothing that belongs
to development (tests, benchmarks, scripts, venvs, caches), and the runtime requirements file.
"""

from __future__ import annotations

import argparse
import configparser
import io
import os
import re
import sys
import zipfile
from urllib.parse import urlparse

MAX_SIZE = 25_000_000  # plugins.qgis.org's PLUGIN_MAX_UPLOAD_SIZE, bytes
PACKAGE = "stsfusion"
REQUIRED = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "tracker", "repository")
RECOMMENDED = ("homepage", "tags", "category", "icon", "hasProcessingProvider", "changelog")
BOOLEANS = ("experimental", "deprecated", "server", "hasProcessingProvider")
PLACEHOLDER_URLS = {"tracker": "http://bugs", "repository": "http://repo", "homepage": "http://homepage"}
CATEGORIES = ("Raster", "Vector", "Database", "Web", "Mesh", "Plugins")
# Compiled code and binaries, which the repository refuses or reviews by hand, and OS droppings.
COMPILED = (".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib", ".exe", ".o", ".a", ".lib")
JUNK_NAMES = ("__pycache__", "__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")
# Top-level folders of the checkout that are development only.
DEVELOPMENT = ("tests", "benchmarks", "scripts", "dist", "demo_output", "docs", "venv", "build")
# What this plugin's zip must contain, under its folder.
CONTENTS = (
    "__init__.py",
    "metadata.txt",
    "plugin.py",
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "requirements-runtime.txt",
    "algorithms/provider.py",
    "model/__init__.py",
    "ui/",
    "resources/",
)
RUNTIME_PACKAGES = ("torch", "scikit-learn")


class Report:
    def __init__(self):
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.passed: list[str] = []

    def check(self, ok: bool, what: str, problem: str | None = None) -> bool:
        """Records ``what`` as passed, or ``problem`` (default: ``what``) as an error."""
        (self.passed if ok else self.errors).append(what if ok else (problem or what))
        return ok

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def _members(names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith("/")]


def check_names(names: list[str], report: Report) -> None:
    unsafe = [n for n in names if ".." in n or n.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", n)]
    report.check(not unsafe, "no path information (.., absolute paths)", f"path information in names: {unsafe[:5]}")
    compiled = [n for n in _members(names) if n.lower().endswith(COMPILED) or ".pyc" in n.lower()]
    report.check(not compiled, "no compiled files (.pyc .pyo .so .dll .exe ...)", f"compiled files: {compiled[:10]}")
    junk = [n for n in names if any(part in JUNK_NAMES for part in n.split("/"))]
    report.check(not junk, "no __pycache__, __MACOSX, .DS_Store", f"caches or OS files: {junk[:10]}")
    hidden = [n for n in names if any(part.startswith(".") for part in n.rstrip("/").split("/"))]
    report.check(not hidden, "no hidden files or folders (.git, .venv, .pytest_cache ...)", f"hidden: {hidden[:10]}")


def check_layout(names: list[str], expected: str, report: Report) -> str | None:
    """The one top-level folder (returned), named ``expected``, a valid package name."""
    tops = sorted({n.split("/")[0] for n in names})
    if not names or "/" not in names[0]:
        report.check(False, "", "no folder inside the zip: a plugin zip holds one folder, the plugin")
        return None
    report.check(len(tops) == 1, "one top-level folder", f"several top-level entries: {tops}")
    package = names[0].split("/")[0]
    report.check(
        re.match(r"^[a-z_][a-z0-9_]*$", package) is not None,
        f"folder name {package!r} is a PEP 8 package name",
        f"folder name {package!r}: plugins.qgis.org wants lower case letters, digits and _ (PEP 8)",
    )
    report.check(package == expected, f"folder named {expected!r}", f"folder named {package!r}, not {expected!r}")
    development = sorted({n.split("/")[1] for n in names if n.count("/") >= 1 and n.split("/")[1] in DEVELOPMENT})
    report.check(
        not development,
        "no development folders (tests, benchmarks, scripts ...)",
        f"development folders: {development}",
    )
    return package


def read_metadata(zf: zipfile.ZipFile, package: str, report: Report) -> dict | None:
    name = f"{package}/metadata.txt"
    if not report.check(name in zf.namelist(), "metadata.txt", f"no {name}"):
        return None
    # As the repository and QGIS parse it: ConfigParser with interpolation ('%' must be '%%').
    parser = configparser.ConfigParser()
    parser.optionxform = str
    try:
        parser.read_file(io.StringIO(zf.read(name).decode("utf-8")))
        if not parser.has_section("general"):
            report.check(False, "", "metadata.txt has no [general] section")
            return None
        return dict(parser.items("general"))
    except (configparser.Error, UnicodeDecodeError) as e:
        report.check(False, "", f"metadata.txt does not parse: {e}")
        return None


def check_metadata(meta: dict, zf: zipfile.ZipFile, package: str, report: Report) -> None:
    missing = [k for k in REQUIRED if not meta.get(k, "").strip()]
    report.check(not missing, "required metadata: " + ", ".join(REQUIRED), f"metadata.txt lacks {missing}")
    missing = [k for k in RECOMMENDED if not meta.get(k, "").strip()]
    report.check(not missing, "metadata: " + ", ".join(RECOMMENDED), f"metadata.txt lacks {missing}")
    version = meta.get("version", "")
    report.check(
        re.match(r"^\d+(\.\d+){1,3}$", version) is not None,
        f"version {version}",
        f"version {version!r} is not numbers separated by dots (e.g. 0.2.0)",
    )
    qmin = meta.get("qgisMinimumVersion", "")
    report.check(
        re.match(r"^3\.\d+(\.\d+)?$", qmin) is not None,
        f"qgisMinimumVersion {qmin}",
        f"qgisMinimumVersion {qmin!r} is not a QGIS 3 version (3.X)",
    )
    report.check("/" not in meta.get("author", ""), "author without slashes", "author contains a slash")
    email = meta.get("email", "")
    report.check(re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email) is not None, "email", f"email {email!r} is no address")
    if re.search(r"@example\.(org|com|net)$", email):
        report.warn(f"email {email} is a placeholder: set a real address before uploading to plugins.qgis.org")
    for key, placeholder in PLACEHOLDER_URLS.items():
        url = meta.get(key, "").strip()
        parsed = urlparse(url)
        report.check(
            url != placeholder and bool(parsed.scheme in ("http", "https") and parsed.netloc),
            f"{key} URL",
            f"{key} {url!r} is not a valid http(s) URL",
        )
    for key in BOOLEANS:
        if key in meta:
            value = meta[key].strip()
            ok = value.lower() in (("yes", "no") if key == "hasProcessingProvider" else ("true", "false", "1", "0"))
            report.check(ok, f"{key}={value}", f"{key}={value!r} is not a yes/no (true/false) value")
    if meta.get("category"):
        report.check(
            meta["category"] in CATEGORIES,
            f"category {meta['category']}",
            f"category {meta['category']!r} not in {CATEGORIES}",
        )
    icon = meta.get("icon", "").strip()
    if icon:
        icon = icon[2:] if icon.startswith("./") else icon
        report.check(f"{package}/{icon}" in zf.namelist(), f"icon {icon}", f"icon {icon} is not in the zip")
    if version and version not in meta.get("changelog", ""):
        report.warn(f"the changelog does not mention version {version}")
    if "\n" in meta.get("description", ""):
        report.warn("description spans several lines: plugins.qgis.org wants one line (details in about)")


def check_contents(zf: zipfile.ZipFile, package: str, report: Report) -> None:
    names = set(zf.namelist())
    missing = [c for c in CONTENTS if not any(n.startswith(f"{package}/{c}") for n in names)]
    report.check(not missing, "LICENSE, README.md, CHANGELOG.md, runtime requirements, code", f"missing: {missing}")
    init = f"{package}/__init__.py"
    if init in names:
        text = zf.read(init).decode("utf-8", "replace")
        report.check(
            re.search(r"^def classFactory\(", text, re.M) is not None,
            "__init__.py defines classFactory",
            "__init__.py has no classFactory(iface): QGIS cannot load the plugin",
        )
    requirements = f"{package}/requirements-runtime.txt"
    if requirements in names:
        listed = []
        for line in zf.read(requirements).decode("utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                listed.append(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower())
        report.check(
            sorted(listed) == sorted(RUNTIME_PACKAGES),
            "runtime requirements: " + ", ".join(RUNTIME_PACKAGES),
            f"requirements-runtime.txt lists {listed}, not {list(RUNTIME_PACKAGES)}",
        )


def check_zip(path: str, expected: str = PACKAGE) -> tuple[Report, dict]:
    """Runs every check on the zip at ``path``; returns the report and facts (size, files, version)."""
    report = Report()
    facts = {"size": os.path.getsize(path) if os.path.isfile(path) else 0}
    if not report.check(zipfile.is_zipfile(path), "a zip file", f"{path} is not a zip file"):
        return report, facts
    size = facts["size"]
    report.check(
        size <= MAX_SIZE,
        f"size {size / 1e6:.2f} MB <= {MAX_SIZE / 1e6:.0f} MB",
        f"size {size / 1e6:.2f} MB is over plugins.qgis.org's limit of {MAX_SIZE / 1e6:.0f} MB",
    )
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        facts["files"] = len(_members(names))
        facts["unpacked"] = sum(i.file_size for i in zf.infolist())
        bad = zf.testzip()
        report.check(bad is None, "zip intact (CRC)", f"corrupt member: {bad}")
        check_names(names, report)
        package = check_layout(names, expected, report)
        if package is None:
            return report, facts
        report.check(f"{package}/__init__.py" in names, "__init__.py", f"no {package}/__init__.py")
        report.check(f"{package}/LICENSE" in names, "LICENSE", f"no {package}/LICENSE (required since June 2024)")
        meta = read_metadata(zf, package, report)
        if meta is not None:
            facts["version"] = meta.get("version", "")
            check_metadata(meta, zf, package, report)
        check_contents(zf, package, report)
    return report, facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zip", help="the plugin zip (dist/stsfusion.zip)")
    ap.add_argument("--package", default=PACKAGE, help=f"expected top-level folder (default {PACKAGE})")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only problems and the summary")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.zip):
        print(f"ERROR   {args.zip}: no such file", file=sys.stderr)
        return 1
    report, facts = check_zip(args.zip, args.package)
    if not args.quiet:
        for line in report.passed:
            print(f"ok      {line}")
    for line in report.warnings:
        print(f"WARNING {line}")
    for line in report.errors:
        print(f"ERROR   {line}")
    summary = (
        f"{args.zip}: {facts['size']:,} bytes ({facts['size'] / 1e6:.2f} MB of {MAX_SIZE / 1e6:.0f} MB allowed), "
        f"{facts.get('files', 0)} files, {facts.get('unpacked', 0) / 1e6:.2f} MB unpacked, version {facts.get('version', '?')}"
    )
    if report.errors:
        print(f"{summary}: FAILS {len(report.errors)} plugin-repository check(s)", file=sys.stderr)
        return 1
    print(
        f"{summary}: passes the plugin-repository checks ({len(report.passed)} checks, {len(report.warnings)} warnings)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
