"""stsfusion:checkenvironment through processing.run (with and without torch) and qgis_process.bin."""

import contextlib
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy
from helpers.qgis_process import qgis_process_env, run_qgis_process_json


def test_report_with_torch(qgis_app, tmp_path):
    import processing
    import torch

    out = tmp_path / "env.txt"
    result = processing.run("stsfusion:checkenvironment", {"OUTPUT": str(out)})
    report = result["REPORT"]
    assert report.startswith("STS Fusion ") and out.read_text(encoding="utf-8") == report
    assert f"numpy: {numpy.__version__} ({numpy.__file__})" in report
    assert f"PyTorch: {torch.__version__} ({torch.__file__})" in report
    assert "CUDA available: " in report and "CPU threads: torch uses " in report
    assert f"Python {sys.version.split()[0]}" in report and "Dependencies folder: " in report
    assert "nvidia-smi: " in report and "scikit-learn: " in report


def test_report_without_torch_says_how_to_install_it(qgis_app, monkeypatch):
    import processing

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if it were absent
    result = processing.run("stsfusion:checkenvironment", {})
    report = result["REPORT"]
    assert "PyTorch: not importable" in report and "Install PyTorch…" in report
    assert "OUTPUT" not in result or not result["OUTPUT"]


def test_qgis_process_json_report():
    result = run_qgis_process_json("stsfusion:checkenvironment", [])
    report = result["results"]["REPORT"]
    assert "PyTorch: " in report and "QGIS 3." in report and "nvidia-smi: " in report


class FakeCuda:
    """torch.cuda on a machine with an Ampere and a Turing GPU (no hardware needed)."""

    PROPS = [
        SimpleNamespace(name="NVIDIA A100", total_memory=40 * 2**30, major=8, minor=0),
        SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30, major=7, minor=5),
    ]

    def __init__(self):
        self.current = 0

    def is_available(self):
        return True

    def device_count(self):
        return len(self.PROPS)

    def get_device_properties(self, i):
        return self.PROPS[i]

    @contextlib.contextmanager
    def device(self, i):
        before, self.current = self.current, i
        yield
        self.current = before

    def is_bf16_supported(self, including_emulation=True):
        return including_emulation or self.PROPS[self.current].major >= 8


def test_gpu_lines_report_each_device_and_its_native_bf16():
    from stsfusion.algorithms.check_environment import _torch_lines

    torch = SimpleNamespace(
        __version__="2.5.1+cu124",
        __file__="/deps/torch/__init__.py",
        cuda=FakeCuda(),
        version=SimpleNamespace(cuda="12.4"),
        backends=SimpleNamespace(cudnn=SimpleNamespace(version=lambda: 90100)),
        get_num_threads=lambda: 8,
    )
    lines = _torch_lines(torch)
    assert lines[0] == "PyTorch: 2.5.1+cu124 (/deps/torch/__init__.py)"
    assert "CUDA available: yes; torch built for CUDA 12.4; cuDNN 90100" in lines[1]
    assert lines[2] == "  GPU cuda:0: NVIDIA A100, 40.0 GiB, compute capability 8.0, bfloat16: yes"
    assert lines[3] == "  GPU cuda:1: Tesla T4, 15.0 GiB, compute capability 7.5, bfloat16: no"
    assert lines[4] == "  MPS (Apple GPU) available: no" and "torch uses 8" in lines[5]


def test_qgis_process_finds_torch_in_the_plugin_deps_folder(tmp_path):
    """The plugin's start (classFactory) puts <profile>/python/stsfusion-deps/<X.Y> on sys.path of a
    plain QGIS: a torch installed there is the one it loads; numpy stays QGIS's own."""
    config = tmp_path / "config"
    deps = config / "profiles" / "default" / "python" / "stsfusion-deps" / "{}.{}".format(*sys.version_info[:2])
    (deps / "torch").mkdir(parents=True)
    (deps / "torch" / "__init__.py").write_text('__version__ = "0.0.fake"\n')
    env = qgis_process_env()
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(config)
    env["PYTHONPATH"] = ""  # a plain QGIS: no venv (whose torch, on PYTHONPATH, would rightly win)
    exe = shutil.which("qgis_process.bin")
    subprocess.run([exe, "plugins", "enable", "stsfusion"], env=env, capture_output=True, timeout=120)
    proc = subprocess.run(
        [exe, "--json", "run", "stsfusion:checkenvironment"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout[proc.stdout.find("{") :])["results"]["REPORT"]
    assert f"PyTorch: 0.0.fake ({deps / 'torch' / '__init__.py'})" in report, report
    assert f"Dependencies folder: {deps} (exists: yes; on sys.path: yes)" in report
    assert f"numpy: {numpy.__version__} ({numpy.__file__})" in report
