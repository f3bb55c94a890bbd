"""Check environment (`stsfusion:checkenvironment`): what the plugin runs with (QGIS, Python, numpy,
PyTorch and where it was loaded from, CUDA, cuDNN, each GPU, MPS, threads, scikit-learn, the
plugin's dependency folder, the NVIDIA driver), as a text to paste into a bug report."""

from __future__ import annotations

import configparser
import importlib
import os
import platform
import sys

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from .. import deps_folder
from ..model.mdd.geotiff import write_text_atomic
from .base import INSTALL_HINT, PLUGIN_DIR, STSFusionAlgorithm


def _plugin_version() -> str:
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(os.path.join(PLUGIN_DIR, "metadata.txt"), encoding="utf-8")
    return meta.get("general", "version", fallback="unknown")


def _module(name: str):
    """(module, None) or (None, 'why not'): torch can fail with more than ImportError (a DLL that
    does not load on Windows is an OSError), and that message is what a bug report needs."""
    try:
        return importlib.import_module(name), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def _yes(flag) -> str:
    return "yes" if flag else "no"


def _torch_lines(torch) -> list[str]:
    lines = [f"PyTorch: {getattr(torch, '__version__', '?')} ({getattr(torch, '__file__', '?')})"]
    try:
        return lines + _torch_details(torch)
    except Exception as e:  # a half-installed torch: say so, and keep the rest of the report
        return [*lines, f"  cannot be queried ({type(e).__name__}: {e})"]


def _torch_details(torch) -> list[str]:
    lines = []
    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if cuda else None
    lines.append(
        f"  CUDA available: {_yes(cuda)}; torch built for CUDA {torch.version.cuda or 'none (CPU build)'}; "
        f"cuDNN {cudnn or 'n/a'}"
    )
    for i in range(torch.cuda.device_count() if cuda else 0):
        try:
            p = torch.cuda.get_device_properties(i)
            with torch.cuda.device(i):
                try:  # torch >= 2.3 counts emulated bf16 unless told not to
                    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
                except TypeError:
                    bf16 = torch.cuda.is_bf16_supported()
            lines.append(
                f"  GPU cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
                f"{p.major}.{p.minor}, bfloat16: {_yes(bf16)}"
            )
        except Exception as e:  # a broken device must not hide the rest of the report
            lines.append(f"  GPU cuda:{i}: cannot be queried ({type(e).__name__}: {e})")
    mps = getattr(torch.backends, "mps", None)
    lines.append(f"  MPS (Apple GPU) available: {_yes(mps is not None and mps.is_available())}")
    lines.append(f"  CPU threads: torch uses {torch.get_num_threads()}; the machine has {os.cpu_count()}")
    return lines


def environment_report(qgis_version: str, settings_dir: str) -> list[str]:
    """The report's lines; never raises for a missing or broken PyTorch."""
    from ..ui import torch_installer as ti  # Qt-free; imported here so headless loading never touches ui/

    lines = [
        f"STS Fusion {_plugin_version()} ({PLUGIN_DIR})",
        f"QGIS {qgis_version}",
        f"Python {platform.python_version()} ({sys.executable}); pip runs with {ti.qgis_python()}",
        f"OS: {ti.os_description()}; {platform.platform()}",
    ]
    numpy, why = _module("numpy")
    lines.append(f"numpy: {numpy.__version__} ({numpy.__file__})" if numpy else f"numpy: not importable ({why})")
    torch, why = _module("torch")
    if torch is not None:
        lines += _torch_lines(torch)
    else:
        lines.append(f"PyTorch: not importable ({why}). {INSTALL_HINT}")
    sklearn, why = _module("sklearn")
    lines.append(
        f"scikit-learn: {sklearn.__version__} ({sklearn.__file__})"
        if sklearn
        else f"scikit-learn: not importable ({why})"
    )
    deps = deps_folder(settings_dir)
    lines.append(
        f"Dependencies folder: {deps} (exists: {_yes(os.path.isdir(deps))}; on sys.path: {_yes(deps in sys.path)})"
    )
    gpus = ti.detect_nvidia()
    smi = "; ".join(f"{g.name}, driver {g.driver}" for g in gpus) or "no NVIDIA GPU found (no nvidia-smi)"
    lines.append(f"nvidia-smi: {smi}")
    lines.append(f"Install PyTorch… would choose the build: {ti.recommended_build(gpus)}")
    return lines


class CheckEnvironmentAlgorithm(STSFusionAlgorithm):
    NAME = "checkenvironment"
    DISPLAY_NAME = "Check environment"
    HELP_HEADING = "Install PyTorch… and check the environment"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"

    def shortHelpString(self):
        return self.tr(
            "Reports what STS Fusion runs with, to check an installation or to paste into a bug "
            "report: the plugin, QGIS, Python and OS versions; numpy; whether PyTorch loads, its "
            "version and the folder it was loaded from, CUDA and cuDNN versions, each GPU (name, "
            "memory, compute capability, native bfloat16 support), Apple MPS, the CPU thread "
            "count; scikit-learn; the plugin's dependency folder (where 'Install PyTorch…' "
            "installs) and whether it is on sys.path; the NVIDIA driver from nvidia-smi. It never "
            "fails for a missing PyTorch: it says how to install it.\n\n"
            "Report file (optional): the report as a UTF-8 text file.\n\n"
            "Outputs REPORT, the same text, for qgis_process --json."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT, self.tr("Report file"), self.tr("Text files (*.txt)"), optional=True, createByDefault=False
            )
        )
        self.addOutput(QgsProcessingOutputString(self.REPORT, self.tr("Report")))

    def process(self, parameters, context, feedback) -> dict:
        lines = environment_report(Qgis.QGIS_VERSION, QgsApplication.qgisSettingsDirPath())
        for line in lines:
            feedback.pushInfo(line)
        text = "\n".join(lines) + "\n"
        results = {self.REPORT: text}
        path = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if path:
            write_text_atomic(path, text)
            results[self.OUTPUT] = path
        return results
