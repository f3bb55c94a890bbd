"""Installs PyTorch and scikit-learn with pip into the plugin-owned folder (no Qt here; the dialog is
ui/install_dialog.py): which Python, which OS, which NVIDIA driver, hence which torch build; the pip
command lines; a run that can be canceled and either replaces the folder whole or leaves it as it was.

The folder itself and how it goes on ``sys.path`` are the plugin's start-up rule (``deps_folder``
and ``add_deps_to_sys_path`` in the package's ``__init__.py``); this module takes the folder as a
parameter.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

PACKAGES = ("torch", "scikit-learn")
TORCH_INDEX = "https://download.pytorch.org/whl/"
DEFAULT_BUILD = "default"  # macOS: PyPI's wheel, with Apple's MPS backend

# The newest CUDA builds download.pytorch.org publishes, each with the oldest driver that runs it
# (NVIDIA's CUDA release notes, "minimum required driver" of the GA release: Linux, Windows).
# Conservative on purpose: a build the driver cannot run imports fine and then finds no GPU.
CUDA_BUILDS = (
    ("cu128", (570, 26), (570, 65)),
    ("cu126", (560, 28), (560, 76)),
    ("cu124", (550, 54), (551, 61)),
    ("cu121", (525, 60), (528, 33)),
    ("cu118", (520, 61), (522, 6)),
)

# Windows: no console window flashes up for pip or nvidia-smi (the flag exists on Windows only).
_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000) if sys.platform == "win32" else 0


def os_name(platform_: str = sys.platform) -> str:
    """'windows', 'macos' or 'linux' (anything else counts as Linux: pip's wheels are the same)."""
    if platform_.startswith("win"):
        return "windows"
    return "macos" if platform_ == "darwin" else "linux"


def os_description() -> str:
    return f"{platform.system()} {platform.release()} ({platform.machine()})"


def qgis_python(
    executable: str = sys.executable, platform_: str = sys.platform, exec_prefix: str = sys.exec_prefix
) -> str:
    """The Python interpreter QGIS runs, to start pip with.

    Inside QGIS ``sys.executable`` is often QGIS itself (qgis-bin.exe on Windows, QGIS.app's
    binary on macOS); the interpreter of the same installation is then looked for where the
    installers put it. Fallback: ``executable`` (what pip would use anyway), shown in the dialog."""
    exe_dir = os.path.dirname(executable)
    name = os.path.basename(executable).lower()
    if name.startswith("pythonw") and os.path.isfile(os.path.join(exe_dir, "python.exe")):
        return os.path.join(exe_dir, "python.exe")  # pythonw has no console streams for pip
    if name.startswith("python"):
        return executable
    system = os_name(platform_)
    if system == "windows":
        # OSGeo4W and the standalone installer: <root>\bin\qgis-bin.exe, Python in <root>\apps\Python3x.
        version = f"Python{sys.version_info.major}{sys.version_info.minor}"
        root = os.path.dirname(exe_dir)
        candidates = [
            os.path.join(exec_prefix, "python.exe"),
            os.path.join(exe_dir, "python.exe"),
            os.path.join(exe_dir, "python3.exe"),
            os.path.join(root, "apps", version, "python.exe"),
            *sorted(glob.glob(os.path.join(root, "apps", "Python3*", "python.exe")), reverse=True),
        ]
    elif system == "macos":
        # QGIS.app/Contents/MacOS/QGIS, Python in QGIS.app/Contents/MacOS/bin/python3.
        candidates = [
            os.path.join(exe_dir, "bin", "python3"),
            os.path.join(exec_prefix, "bin", "python3"),
            "/Applications/QGIS.app/Contents/MacOS/bin/python3",
        ]
    else:
        candidates = [os.path.join(exec_prefix, "bin", "python3"), "/usr/bin/python3"]
    return next((c for c in candidates if os.path.isfile(c)), executable)


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str


def detect_nvidia(timeout: float = 10.0) -> list[Gpu]:
    """NVIDIA GPUs and their driver from ``nvidia-smi``; [] when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    old_place = r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe"  # drivers before DCH: not on PATH
    if smi is None and sys.platform == "win32" and os.path.isfile(old_place):
        smi = old_place
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
            creationflags=_NO_WINDOW,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:  # e.g. "NVIDIA-SMI has failed": a driver problem, no usable GPU
        return []
    gpus = []
    for line in out.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if name.strip() and driver.strip():
            gpus.append(Gpu(name.strip(), driver.strip()))
    return gpus


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text))


def cuda_build_for_driver(driver: str | None, platform_: str = sys.platform) -> str | None:
    """The newest CUDA build (e.g. 'cu124') the NVIDIA driver runs; None: none (CPU build)."""
    if not driver or os_name(platform_) == "macos":
        return None
    version = _version_tuple(driver)
    windows = os_name(platform_) == "windows"
    for build, linux_min, windows_min in CUDA_BUILDS:
        if version >= (windows_min if windows else linux_min):
            return build
    return None


def recommended_build(gpus: list[Gpu], platform_: str = sys.platform) -> str:
    """'default' on macOS, the matching CUDA build with an NVIDIA GPU, else 'cpu'."""
    if os_name(platform_) == "macos":
        return DEFAULT_BUILD
    return (cuda_build_for_driver(gpus[0].driver, platform_) if gpus else None) or "cpu"


def numpy_pin(version: str | None) -> str:
    """The constraint that keeps QGIS's numpy: ``numpy==<version>`` (public part, no '+local')."""
    return f"numpy=={version.split('+')[0]}\n" if version else ""


def pip_commands(
    python: str,
    target: str,
    build: str,
    constraints: str,
    packages: tuple[str, ...] = PACKAGES,
    wheel_folder: str | None = None,
) -> list[list[str]]:
    """The pip runs that install ``packages`` into ``target``.

    ``constraints`` is a file pinning numpy to QGIS's version (``numpy_pin``). A constraint, not
    ``--no-deps``: pip still resolves every other dependency (and torch's CUDA libraries, which
    change with each release), but only against that exact numpy, so scikit-learn and scipy come in
    versions built for QGIS's numpy and nothing can upgrade it. (``--target`` ignores what is
    installed, so pip puts a copy of that same numpy in the folder; ``Installer`` deletes it.)

    Online, torch comes from PyTorch's index for ``build`` alone, the way pytorch.org's own
    command does, and the rest in a second run from pip's default index (PyPI, or the mirror the
    user's pip configuration names). One run with ``--extra-index-url`` would take the highest
    version from either index, and PyPI's newer torch (built for another CUDA, or CPU-only on
    Windows) would win over the chosen build. macOS: PyPI's torch is the build. Offline: one run
    from the wheel folder.
    """
    base = [python, "-m", "pip", "install", "--target", target, "--upgrade", "-c", constraints]
    base += ["--only-binary=:all:", "--progress-bar", "off", "--disable-pip-version-check", "--no-input"]
    if wheel_folder:
        return [[*base, "--no-index", "--find-links", wheel_folder, *packages]]
    torch = [p for p in packages if p == "torch"]
    others = [p for p in packages if p != "torch"]
    if build == DEFAULT_BUILD or not torch:
        return [[*base, *packages]]
    runs = [[*base, "--index-url", TORCH_INDEX + build, *torch]]
    if others:
        runs.append([*base, *others])
    return runs


def download_command(build: str, packages: tuple[str, ...] = PACKAGES, numpy_version: str | None = None) -> str:
    """What to run on a connected machine (same OS and Python) to fill a folder for an offline
    install: torch from its build's index, as ``pip_commands`` does, the rest and QGIS's numpy from PyPI."""
    head = "python -m pip download --only-binary=:all: -d wheels"
    numpy = [f"numpy=={numpy_version.split('+')[0]}"] if numpy_version else []
    if build == DEFAULT_BUILD or "torch" not in packages:
        return f"{head} {' '.join([*packages, *numpy])}"
    others = [p for p in packages if p != "torch"]
    return f"{head} --index-url {TORCH_INDEX}{build} torch\n{head} {' '.join([*others, *numpy])}"


class PipProgress:
    """Turns pip's output lines into (fraction of this run 0..1, message), or None for other lines."""

    def __init__(self):
        self.collected = 0

    def feed(self, line: str) -> tuple[float, str] | None:
        text = line.strip()
        if text.startswith(("Collecting ", "Processing ")):
            self.collected += 1
            # The number of packages is unknown up front: creep towards 80 % as they come.
            return 0.8 * self.collected / (self.collected + 4), text
        if text.startswith("Downloading "):
            return 0.8 * self.collected / (self.collected + 4), text
        if text.startswith("Installing collected packages:"):
            return 0.85, text
        if text.startswith("Successfully installed"):
            return 1.0, text
        return None


class InstallCanceled(Exception):
    """The user canceled; the folder is as it was."""


class InstallFailed(RuntimeError):
    """pip failed (the message carries pip's errors); the folder is as it was."""


def _rmtree(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def _drop_numpy(folder: str) -> None:
    """Removes the numpy pip put in the staging folder: QGIS's own (the same version) must be used."""
    for entry in os.listdir(folder):
        low = entry.lower()
        if low in ("numpy", "numpy.libs", "numpy.dylibs") or (low.startswith("numpy-") and low.endswith(".dist-info")):
            _rmtree(os.path.join(folder, entry))
    bin_dir = os.path.join(folder, "bin")  # numpy's f2py scripts
    for script in glob.glob(os.path.join(bin_dir, "f2py*")):
        os.remove(script)


def _rename(src: str, dst: str, tries: int = 5) -> None:
    """os.rename, retried for a few seconds: on Windows a virus scanner often still holds the files
    pip has just written."""
    for attempt in range(tries):
        try:
            os.rename(src, dst)
            return
        except PermissionError:
            if attempt == tries - 1:
                raise
            time.sleep(1.0)


class Installer:
    """One install into ``target``: ``run()`` blocks (call it from a worker thread) and returns
    pip's "Successfully installed" line; ``cancel()`` may be called from any thread.

    pip installs into ``<target>.installing``; only when every run succeeded is it renamed into
    place, and the previous folder removed only then. A failure or a cancel removes the staging
    folder and leaves ``target`` exactly as it was."""

    def __init__(
        self,
        target: str,
        build: str,
        python: str | None = None,
        packages: tuple[str, ...] = PACKAGES,
        wheel_folder: str | None = None,
        numpy_version: str | None = None,
        isolated: bool | None = None,
        on_line: Callable[[str], None] | None = None,
        on_progress: Callable[[float, str], None] | None = None,
    ):
        self.target = os.path.abspath(target)
        self.staging = self.target + ".installing"
        self.previous = self.target + ".previous"
        self.build = build
        self.python = python or qgis_python()
        self.packages = tuple(packages)
        self.wheel_folder = wheel_folder
        self.numpy_version = numpy_version
        # Offline, pip sees nothing but the command line: a pip.conf's index, find-links or
        # constraints must not change what a wheel folder installs. Online the user's pip
        # configuration stays (a proxy, a certificate, a mirror).
        self.isolated = wheel_folder is not None if isolated is None else isolated
        self.on_line = on_line or (lambda line: None)
        self.on_progress = on_progress or (lambda fraction, message: None)
        self._lock = threading.Lock()
        self._canceled = False
        self._process: subprocess.Popen | None = None

    def cancel(self) -> None:
        """Stops pip (kills it: its half-written staging folder is removed anyway)."""
        with self._lock:
            self._canceled = True
            process = self._process
        if process is not None and process.poll() is None:
            process.kill()  # portable: TerminateProcess on Windows, SIGKILL elsewhere

    def run(self) -> str:
        os.makedirs(os.path.dirname(self.target), exist_ok=True)
        _rmtree(self.staging)  # left over by a QGIS that crashed mid-install
        fd, constraints = tempfile.mkstemp(prefix="stsfusion-constraints-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(numpy_pin(self.numpy_version))
        try:
            commands = pip_commands(
                self.python, self.staging, self.build, constraints, self.packages, self.wheel_folder
            )
            summary = ""
            for i, command in enumerate(commands):
                summary = " ".join(s for s in (summary, self._run_pip(command, i, len(commands))) if s)
            with self._lock:  # past this point a cancel comes too late: the install is complete
                if self._canceled:
                    raise InstallCanceled("Canceled: nothing was installed.")
                if self.numpy_version:
                    _drop_numpy(self.staging)
                self._swap()
            self.on_progress(1.0, summary)
            return summary
        except BaseException:
            _rmtree(self.staging)
            raise
        finally:
            os.remove(constraints)

    def _run_pip(self, command: list[str], index: int, count: int) -> str:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        env.pop("PIP_USER", None)  # --user cannot be combined with --target
        if self.isolated:
            env = {k: v for k, v in env.items() if not k.upper().startswith("PIP_")}
            env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file
        self.on_line("$ " + " ".join(command))
        with self._lock:  # a cancel either comes before the start or sees the process to kill
            if self._canceled:
                raise InstallCanceled("Canceled: nothing was installed.")
            try:
                self._process = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    encoding="utf-8",
                    errors="replace",
                    env=env,
                    creationflags=_NO_WINDOW,
                )
            except OSError as e:
                raise InstallFailed(f"Could not start {command[0]}: {e}") from None
        progress, errors, summary = PipProgress(), [], ""
        for raw in self._process.stdout:
            line = raw.rstrip()
            self.on_line(line)
            step = progress.feed(line)
            if step is not None:
                self.on_progress((index + step[0]) / count, step[1])
            if line.startswith("ERROR:") or "No module named pip" in line:
                errors.append(line)
            if line.startswith("Successfully installed"):
                summary = line
        code = self._process.wait()
        self._process.stdout.close()
        if self._canceled:
            raise InstallCanceled("Canceled: nothing was installed.")
        if code != 0:
            hint = ""
            if any("No module named pip" in e for e in errors):
                hint = " This Python has no pip: install it (`python -m ensurepip`, or python3-pip on Debian/Ubuntu)."
            raise InstallFailed(f"pip failed (exit code {code}): " + (" ".join(errors) or "see the log") + hint)
        return summary

    def _swap(self) -> None:
        """Renames the complete staging folder into place, keeping the old one until that worked."""
        _rmtree(self.previous)
        had_previous = os.path.isdir(self.target)
        try:
            if had_previous:
                _rename(self.target, self.previous)
            _rename(self.staging, self.target)
        except OSError as e:
            if had_previous and not os.path.exists(self.target) and os.path.isdir(self.previous):
                os.rename(self.previous, self.target)
            raise InstallFailed(
                f"Could not replace {self.target} ({e}). If PyTorch from it is loaded in this QGIS "
                "session (Windows locks loaded files), restart QGIS and install before running any "
                "STS Fusion algorithm."
            ) from None
        _rmtree(self.previous)
