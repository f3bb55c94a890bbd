"""The "Install PyTorch…" logic (ui/torch_installer.py), headless and offline: real pip runs from a
folder of tiny fake wheels into a temporary target, the plugin's start-up sys.path rule, the
driver → CUDA build table, the pip command lines and the detection of QGIS's Python and GPU."""

import os
import subprocess
import sys
import threading

import numpy
import pytest
from helpers.paths import PLUGINS, subprocess_env
from helpers.wheels import make_wheel

from stsfusion import add_deps_to_sys_path, deps_folder
from stsfusion.ui import torch_installer as ti

NUMPY = numpy.__version__  # the numpy of the Python that runs pip here: "QGIS's numpy"


@pytest.fixture
def wheels(tmp_path):
    """A fake torch that needs numpy and a small dependency; numpy at this Python's version and a
    newer one (pip would take the newer one if the constraint did not pin it)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "torch", "0.0.1", {"torch/__init__.py": '__version__ = "0.0.fake"\n'}, ["numpy", "fakedep"])
    make_wheel(folder, "fakedep", "1.0", {"fakedep.py": "X = 1\n"})
    for version in (NUMPY, "99.0"):
        make_wheel(folder, "numpy", version, {"numpy/__init__.py": f'__version__ = "{version}"\nFAKE = True\n'})
    return str(folder)


def listing(folder):
    """Every path under ``folder`` with its content: what 'left as it was' compares."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


@pytest.fixture
def earlier(tmp_path):
    """A target folder holding an earlier install."""
    target = tmp_path / "profile" / "python" / "stsfusion-deps" / "3.x"
    (target / "torch").mkdir(parents=True)
    (target / "torch" / "__init__.py").write_text('__version__ = "0.0.earlier"\n')
    return str(target)


def _siblings_left(target):
    return [p for p in (target + ".installing", target + ".previous") if os.path.exists(p)]


FIND = """
import sys
from stsfusion import add_deps_to_sys_path
assert add_deps_to_sys_path(sys.argv[1])
import numpy, torch
print(torch.__version__, torch.__file__, numpy.__file__, getattr(numpy, "FAKE", False))
"""


def test_offline_install_is_found_by_the_plugin_and_keeps_qgis_numpy(wheels, earlier):
    lines, progress = [], []
    installer = ti.Installer(
        earlier,
        "cpu",
        python=sys.executable,
        packages=("torch",),
        wheel_folder=wheels,
        numpy_version=NUMPY,
        on_line=lines.append,
        on_progress=lambda f, m: progress.append(f),
    )
    summary = installer.run()
    assert "torch-0.0.1" in summary and f"numpy-{NUMPY}" in summary, lines  # the pin, not numpy 99.0
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert sorted(set(os.listdir(earlier)) - {"__pycache__"}) == [
        "fakedep-1.0.dist-info",
        "fakedep.py",
        "torch",
        "torch-0.0.1.dist-info",
    ]
    assert _siblings_left(earlier) == []

    # A fresh Python with the plugin's start-up rule: torch from the folder (not the venv's real
    # one, in site-packages), numpy still this Python's own. PYTHONPATH holds the plugin only: its
    # entries rightly win over the folder, and scripts/env.sh puts the venv there.
    env = subprocess_env(PYTHONPATH=PLUGINS)
    proc = subprocess.run([sys.executable, "-c", FIND, earlier], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    version, torch_file, numpy_file, fake = proc.stdout.split()
    assert version == "0.0.fake" and torch_file.startswith(earlier)
    assert numpy_file == numpy.__file__ and fake == "False"


def test_cancel_as_soon_as_pip_starts_leaves_the_folder_as_it_was(wheels, earlier):
    before = listing(earlier)
    started = threading.Event()
    installer = ti.Installer(
        earlier,
        "cpu",
        python=sys.executable,
        packages=("torch",),
        wheel_folder=wheels,
        numpy_version=NUMPY,
        on_line=lambda line: line.startswith("$") or started.set(),
    )
    errors = []

    def work():
        try:
            installer.run()
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(60), "pip printed nothing"
    installer.cancel()  # from another thread, as the dialog's Cancel button does
    worker.join(60)
    assert not worker.is_alive() and len(errors) == 1 and isinstance(errors[0], ti.InstallCanceled)
    assert listing(earlier) == before and _siblings_left(earlier) == []


def test_failed_install_reports_pip_error_and_leaves_the_folder_as_it_was(wheels, earlier):
    before = listing(earlier)
    installer = ti.Installer(
        earlier, "cpu", python=sys.executable, packages=("torch", "notthere"), wheel_folder=wheels, numpy_version=NUMPY
    )
    with pytest.raises(ti.InstallFailed, match="notthere"):
        installer.run()
    assert listing(earlier) == before and _siblings_left(earlier) == []


def test_a_folder_in_use_is_restored(wheels, earlier, monkeypatch):
    """Windows refuses to rename a folder whose DLLs QGIS has loaded: the old folder comes back."""
    before = listing(earlier)
    rename = ti._rename

    def refuse_the_new_one(src, dst):
        if src.endswith(".installing"):
            raise PermissionError("in use")
        rename(src, dst)

    monkeypatch.setattr(ti, "_rename", refuse_the_new_one)
    installer = ti.Installer(earlier, "cpu", python=sys.executable, packages=("fakedep",), wheel_folder=wheels)
    with pytest.raises(ti.InstallFailed, match="restart QGIS"):
        installer.run()
    assert listing(earlier) == before and _siblings_left(earlier) == []


def test_cancel_before_start_runs_no_pip(tmp_path, earlier):
    before = listing(earlier)
    installer = ti.Installer(earlier, "cpu", python=str(tmp_path / "no-such-python"), wheel_folder=str(tmp_path))
    installer.cancel()
    with pytest.raises(ti.InstallCanceled):
        installer.run()
    assert listing(earlier) == before and _siblings_left(earlier) == []


def test_missing_python_is_a_clear_failure(tmp_path, earlier):
    installer = ti.Installer(earlier, "cpu", python=str(tmp_path / "no-such-python"), wheel_folder=str(tmp_path))
    with pytest.raises(ti.InstallFailed, match="Could not start"):
        installer.run()
    assert _siblings_left(earlier) == []


# --- the start-up sys.path rule ---------------------------------------------------------------


def test_deps_folder_is_per_python_version():
    assert deps_folder("/p", (3, 9)) == os.path.join("/p", "python", "stsfusion-deps", "3.9")


def test_deps_go_after_the_stdlib_before_site_packages_unless_they_hold_a_numpy(tmp_path):
    deps = tmp_path / "deps"
    stdlib = os.path.dirname(os.__file__)
    # PYTHONPATH entries (a venv's site-packages here) come before the standard library and stay there.
    path = ["/plugins", "/venv/site-packages", stdlib, "/x/site-packages", "/usr/lib/python3/dist-packages"]
    assert not add_deps_to_sys_path(str(deps), list(path))  # absent: nothing changes
    deps.mkdir()
    p = list(path)
    assert add_deps_to_sys_path(str(deps), p) and p[3] == str(deps) and len(p) == 6
    assert add_deps_to_sys_path(str(deps), p) and len(p) == 6  # idempotent
    (deps / "numpy").mkdir()  # put there by hand: it must not shadow QGIS's numpy
    p = list(path)
    assert add_deps_to_sys_path(str(deps), p) and p[-1] == str(deps)


# --- driver → build, command lines, progress --------------------------------------------------


@pytest.mark.parametrize(
    "driver, platform_, build",
    [
        ("535.104.05", "linux", "cu121"),
        ("525.60.13", "linux", "cu121"),
        ("525.53", "linux", "cu118"),
        ("528.24", "win32", "cu118"),
        ("528.33", "win32", "cu121"),
        ("551.61", "win32", "cu124"),
        ("550.54.14", "linux", "cu124"),
        ("560.35.03", "linux", "cu126"),
        ("572.16", "win32", "cu128"),
        ("470.82.01", "linux", None),
        ("", "linux", None),
        ("560.35", "darwin", None),
    ],
)
def test_driver_to_cuda_build(driver, platform_, build):
    assert ti.cuda_build_for_driver(driver, platform_) == build


def test_recommended_build():
    gpu = [ti.Gpu("NVIDIA GeForce RTX 3080", "550.54.14")]
    assert ti.recommended_build(gpu, "linux") == "cu124"
    assert ti.recommended_build([ti.Gpu("Tesla K80", "470.1")], "linux") == "cpu"
    assert ti.recommended_build([], "win32") == "cpu"
    assert ti.recommended_build(gpu, "darwin") == "default"


def _flag(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_pip_commands():
    head = ["py", "-m", "pip", "install", "--target", "T", "--upgrade", "-c", "C"]
    (torch_run, rest_run) = ti.pip_commands("py", "T", "cu124", "C")
    assert torch_run[:9] == head and rest_run[:9] == head
    assert _flag(torch_run, "--index-url") == "https://download.pytorch.org/whl/cu124" and torch_run[-1] == "torch"
    assert "--index-url" not in rest_run and rest_run[-1] == "scikit-learn"  # PyPI, or the user's mirror
    (cpu_torch, _) = ti.pip_commands("py", "T", "cpu", "C")
    assert _flag(cpu_torch, "--index-url") == "https://download.pytorch.org/whl/cpu"
    (mac,) = ti.pip_commands("py", "T", "default", "C")
    assert "--index-url" not in mac and mac[-2:] == ["torch", "scikit-learn"]
    (offline,) = ti.pip_commands("py", "T", "cu124", "C", wheel_folder="W")
    assert "--no-index" in offline and _flag(offline, "--find-links") == "W" and "--index-url" not in offline
    assert all("--only-binary=:all:" in c for c in (torch_run, rest_run, mac, offline))
    assert ti.numpy_pin("1.24.2") == "numpy==1.24.2\n" and ti.numpy_pin("1.26.4+dfsg") == "numpy==1.26.4\n"
    assert ti.numpy_pin(None) == ""
    torch_line, rest_line = ti.download_command("cu124", numpy_version="1.24.2").splitlines()
    assert torch_line.endswith("--index-url https://download.pytorch.org/whl/cu124 torch")
    assert rest_line.endswith("-d wheels scikit-learn numpy==1.24.2")
    assert ti.download_command("default").endswith("-d wheels torch scikit-learn")


def test_pip_progress():
    p = ti.PipProgress()
    seen = [
        p.feed(line) for line in ["Looking in links: /w", "Collecting torch", "  Downloading torch-2.5.1.whl (1 MB)"]
    ]
    assert seen[0] is None and 0 < seen[1][0] == seen[2][0] < 0.8
    assert p.feed("Installing collected packages: torch")[0] == 0.85
    assert p.feed("Successfully installed torch-2.5.1") == (1.0, "Successfully installed torch-2.5.1")


# --- QGIS's Python, the GPU -------------------------------------------------------------------


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
    return str(path)


def test_qgis_python_on_windows(tmp_path):
    root = tmp_path / "OSGeo4W"
    qgis_bin = _touch(root / "bin" / "qgis-bin.exe")
    nowhere = str(tmp_path / "nowhere")
    assert ti.qgis_python(qgis_bin, "win32", nowhere) == qgis_bin  # nothing found: the fallback
    apps = _touch(root / "apps" / "Python39" / "python.exe")
    assert ti.qgis_python(qgis_bin, "win32", nowhere) == apps
    beside = _touch(root / "bin" / "python.exe")
    assert ti.qgis_python(qgis_bin, "win32", nowhere) == beside
    assert ti.qgis_python(qgis_bin, "win32", str(root / "apps" / "Python39")) == apps  # sys.exec_prefix first
    assert ti.qgis_python(str(root / "bin" / "pythonw.exe"), "win32", nowhere) == beside


def test_qgis_python_on_macos_and_linux(tmp_path):
    macos = tmp_path / "QGIS.app" / "Contents" / "MacOS"
    binary = _touch(macos / "QGIS")
    python = _touch(macos / "bin" / "python3")
    assert ti.qgis_python(binary, "darwin", str(tmp_path / "nowhere")) == python
    assert ti.qgis_python("/usr/bin/python3.11", "linux", "/usr") == "/usr/bin/python3.11"
    linux = _touch(tmp_path / "usr" / "bin" / "python3")
    assert ti.qgis_python(str(tmp_path / "usr" / "bin" / "qgis"), "linux", str(tmp_path / "usr")) == linux


@pytest.mark.skipif(sys.platform == "win32", reason="the fake nvidia-smi is a shell script")
def test_detect_nvidia(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ti.detect_nvidia() == []  # absent: no GPU
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 3080, 550.54.14'\necho 'Tesla T4, 550.54.14'\n")
    smi.chmod(0o755)
    assert ti.detect_nvidia() == [ti.Gpu("NVIDIA GeForce RTX 3080", "550.54.14"), ti.Gpu("Tesla T4", "550.54.14")]
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
    assert ti.detect_nvidia() == []
