"""`make package`: the zip passes the plugin-repository checks (scripts/check_package.py) and, unpacked
into a fresh QGIS profile as "Install from ZIP" does, is enabled, lists every algorithm and the model
chain with qgis_process.bin, and runs Check environment, which finds torch.

The plugin is found in the profile only: QGIS_PLUGINPATH points at an empty folder, not at this
checkout, and the child's PYTHONPATH carries the venv's site-packages (torch, scikit-learn) and
nothing of the checkout. (tests/qgis/test_check_environment.py checks the other half of a fresh
profile: a torch in the plugin's deps folder, found without the venv.)
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers.paths import PLUGINS, ROOT
from helpers.qgis_process import qgis_process_env

CHECK = os.path.join(ROOT, "scripts", "check_package.py")
ALGORITHMS = ("buildmdd", "train", "fuse", "assess", "simulate", "baseline", "checkenvironment")
CHAIN = "STS Fusion chain"  # model_name in resources/sts_fusion_chain.model3: id stsfusion:STS Fusion chain
SHIPPED = (
    "metadata.txt",
    "__init__.py",
    "plugin.py",
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "requirements-runtime.txt",
)
SHIPPED_DIRS = ("algorithms", "model", "ui", "resources")
NEVER = ("tests", "benchmarks", "scripts", "docs", ".venv", ".build", "dist", "demo_output")


def check_package(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CHECK, str(path)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """``make package DIST=<tmp>``: (path of the zip, make's output)."""
    if shutil.which("make") is None or shutil.which("zip") is None:
        pytest.fail("make and zip are needed: run `make setup`.")
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["make", "package", f"DIST={dist}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dist / "stsfusion.zip", proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def profile(package, tmp_path_factory):
    """The zip unpacked into a fresh profile, the plugin enabled: (environment, plugin folder)."""
    tmp = tmp_path_factory.mktemp("fresh")
    config = tmp / "profile"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(package[0]) as zf:
        zf.extractall(plugins)
    env = qgis_process_env()
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(config)
    (tmp / "no-plugins").mkdir()
    env["QGIS_PLUGINPATH"] = str(tmp / "no-plugins")  # away from the checkout: only the profile has it
    checkout = (os.path.realpath(ROOT), os.path.realpath(PLUGINS))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.realpath(p) not in checkout
    )
    proc = _qgis_process(env, tmp, "plugins", "enable", "stsfusion")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Enabled stsfusion" in proc.stdout, proc.stdout + proc.stderr
    return env, plugins / "stsfusion", tmp


def _qgis_process(env, cwd, *args) -> subprocess.CompletedProcess:
    exe = shutil.which("qgis_process.bin")
    if exe is None:
        pytest.fail("qgis_process.bin is not installed: run `make setup`.")
    return subprocess.run([exe, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout[proc.stdout.find("{") :])


@pytest.mark.slow
def test_make_package_passes_the_plugin_repository_checks(package):
    zip_path, output = package
    assert "passes the plugin-repository checks" in output, output
    proc = check_package(zip_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout and "size " in proc.stdout
    assert os.path.getsize(zip_path) < 25_000_000


@pytest.mark.slow
def test_the_zip_holds_the_plugin_folder_only(package):
    with zipfile.ZipFile(package[0]) as zf:
        names = zf.namelist()
    assert {n.split("/")[0] for n in names} == {"stsfusion"}
    inside = {n.split("/", 1)[1] for n in names if not n.endswith("/")}
    assert set(SHIPPED) <= inside
    for folder in SHIPPED_DIRS:
        assert any(n.startswith(folder + "/") for n in inside), f"{folder}/ is not in the zip"
    assert not [n for n in inside if n.split("/")[0] in NEVER]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".aux.xml"))]
    # Exactly the working tree's files that git tracks or would track, uncommitted ones included.
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", *SHIPPED, *SHIPPED_DIRS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert inside == {n for n in listed if os.path.isfile(os.path.join(ROOT, n))}


@pytest.mark.slow
def test_the_installed_zip_lists_every_algorithm_and_the_model_chain(profile):
    env, _, cwd = profile
    listing = _json(_qgis_process(env, cwd, "--json", "list"))
    provider = listing["providers"].get("stsfusion")
    assert provider is not None, sorted(listing["providers"])
    ids = set(provider["algorithms"])
    assert {f"stsfusion:{name}" for name in ALGORITHMS} <= ids, sorted(ids)
    assert f"stsfusion:{CHAIN}" in ids, f"the model chain is not registered with the provider: {sorted(ids)}"
    plain = _qgis_process(env, cwd, "list")  # the text listing a user reads
    assert plain.returncode == 0 and "stsfusion:checkenvironment" in plain.stdout


@pytest.mark.slow
def test_the_installed_zip_runs_check_environment_and_finds_torch(profile, tmp_path):
    import torch

    env, plugin_dir, cwd = profile
    out = tmp_path / "environment.txt"
    result = _json(_qgis_process(env, cwd, "--json", "run", "stsfusion:checkenvironment", "--", f"OUTPUT={out}"))
    report = result["results"]["REPORT"]
    with open(plugin_dir / "metadata.txt", encoding="utf-8") as f:
        version = next(line.split("=", 1)[1].strip() for line in f if line.startswith("version="))
    # The copy in the profile is the one QGIS loaded, not this checkout.
    assert report.splitlines()[0] == f"STS Fusion {version} ({plugin_dir})", report
    assert f"PyTorch: {torch.__version__} ({torch.__file__})" in report, report
    assert "scikit-learn: " in report and "not importable" not in report
    assert out.read_text(encoding="utf-8") == report


def test_runtime_requirements_name_what_the_installer_installs():
    from stsfusion.ui.torch_installer import PACKAGES

    names = []
    with open(os.path.join(ROOT, "requirements-runtime.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                assert ">=" in line, f"{line}: give the minimum version the code needs"
                names.append(line.split(">=")[0].strip())
    assert sorted(names) == sorted(PACKAGES)


def _write_zip(path, files: dict):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)


GOOD_METADATA = """[general]
name=X
qgisMinimumVersion=3.22
description=One line.
about=More.
version=0.2.0
author=Someone
email=someone@qgis.org
tracker=https://github.com/a/b/issues
repository=https://github.com/a/b
homepage=https://github.com/a/b
tags=raster
category=Raster
icon=icon.svg
hasProcessingProvider=yes
changelog=0.2.0 Things.
"""


def test_check_package_finds_what_the_repository_refuses(tmp_path):
    good = {
        "stsfusion/__init__.py": "def classFactory(iface):\n    pass\n",
        "stsfusion/metadata.txt": GOOD_METADATA,
        "stsfusion/icon.svg": "<svg/>",
        "stsfusion/LICENSE": "GPL",
    }
    ok = tmp_path / "ok.zip"
    _write_zip(ok, good)
    proc = check_package(ok)
    # A minimal plugin meets the repository's rules; only this project's own contents are missing.
    assert "ERROR   missing:" in proc.stdout and proc.stdout.count("ERROR") == 1, proc.stdout
    bad = dict(good)
    del bad["stsfusion/LICENSE"]
    bad["stsfusion/__pycache__/plugin.cpython-311.pyc"] = "x"
    bad["stsfusion/lib/_ext.so"] = "x"
    bad["stsfusion/tests/test_x.py"] = "x"
    bad["stsfusion/metadata.txt"] = GOOD_METADATA.replace("email=someone@qgis.org\n", "").replace(
        "tracker=https://github.com/a/b/issues", "tracker=http://bugs"
    )
    bad["other/readme.txt"] = "x"
    bad_zip = tmp_path / "bad.zip"
    _write_zip(bad_zip, bad)
    proc = check_package(bad_zip)
    assert proc.returncode == 1
    for problem in (
        "no stsfusion/LICENSE",
        "compiled files",
        "__pycache__",
        "development folders: ['tests']",
        "lacks ['email']",
        "tracker 'http://bugs'",
        "several top-level entries",
    ):
        assert problem in proc.stdout, f"{problem!r} not reported:\n{proc.stdout}"
    assert "FAILS" in proc.stderr
