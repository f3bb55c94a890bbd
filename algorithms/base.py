"""What every STS Fusion algorithm shares: its name and group, a fresh instance, the torch install
hint, the callbacks that connect model/ to QgsProcessingFeedback, and one mapping of model/'s
errors to QgsProcessingException.

A subclass sets ``NAME`` and ``DISPLAY_NAME``, defines ``initAlgorithm`` and ``shortHelpString``,
and implements ``process(parameters, context, feedback)`` instead of ``processAlgorithm``: the
base class turns model/'s ValueErrors (every one carries a message for the user) into
QgsProcessingException, and a cancel (``Canceled``) into a reported message plus
``canceled_outputs()``, so no algorithm prints a traceback or leaves a half-written output.

QGIS conventions, once for all: the Toolbox group from ``ALGORITHM_GROUPS`` (by ``NAME``), the icon
``resources/icons/<NAME>.svg``, ``helpUrl`` to the algorithm's README section on the plugin's
homepage (``metadata.txt``; the anchor GitHub makes of the heading ``HELP_HEADING``, by default
"<DISPLAY_NAME> (`stsfusion:<NAME>`)"), and ``tr()`` for the texts users read.
"""

import importlib
import os
import re

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..model.core.callbacks import Callbacks, Canceled

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICONS_DIR = os.path.join(PLUGIN_DIR, "resources", "icons")
PROVIDER_ID = "stsfusion"
TRANSLATION_CONTEXT = "STSFusion"

# The Toolbox groups (id -> name) and the group of each algorithm (by NAME). New algorithms add a line.
GROUPS = {"prepare": "Prepare", "model": "Model", "evaluate": "Evaluate"}
ALGORITHM_GROUPS = {
    "buildmdd": "prepare",
    "simulate": "prepare",
    "train": "model",
    "fuse": "model",
    "baseline": "model",
    "assess": "evaluate",
    "checkenvironment": "evaluate",
}


def tr(text: str) -> str:
    """``text`` translated into the user's language (context "STSFusion"), or as it is."""
    return QCoreApplication.translate(TRANSLATION_CONTEXT, text)


def _homepage() -> str:
    """The ``homepage`` of metadata.txt, without a trailing slash."""
    try:
        with open(os.path.join(PLUGIN_DIR, "metadata.txt"), encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() == "homepage" and value.strip():
                    return value.strip().rstrip("/")
    except OSError:
        pass
    return "https://github.com/sts-fusion/sts-fusion"


HOMEPAGE = _homepage()


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: its text in lower case, every character other
    than a letter, digit, space, '-' or '_' dropped (backticks, parentheses, colons...), spaces
    turned into '-'."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def icon_path(name: str) -> str:
    """``resources/icons/<name>.svg``."""
    return os.path.join(ICONS_DIR, f"{name}.svg")


INSTALL_HINT = (
    "Install them from QGIS with Plugins ▸ STS Fusion ▸ Install PyTorch… (it finds your GPU and "
    "installs into a folder of the plugin), then restart QGIS. Or by hand, for the Python that QGIS "
    "uses: `python -m pip install torch scikit-learn` from the OSGeo4W shell on Windows, "
    "`/Applications/QGIS.app/Contents/MacOS/bin/python3 -m pip install torch scikit-learn` on macOS, "
    "`python3 -m pip install --user torch scikit-learn` (or your distribution's packages) on Linux; "
    "then restart QGIS. 'Check environment' shows what QGIS finds."
)


def require_torch(algorithm: str, sklearn: bool = True) -> None:
    """Raises a QgsProcessingException that says how to install PyTorch and scikit-learn when
    one it needs is missing; ``algorithm`` is the display name that needs them; ``sklearn`` False:
    it needs PyTorch only (fusion: the PCA is numpy there, and importing scikit-learn costs 0.7 s)."""
    try:  # imported only to say how to install them when they are missing
        if sklearn:
            importlib.import_module("sklearn")
        importlib.import_module("torch")
    except ImportError as e:
        needs = "PyTorch and scikit-learn" if sklearn else "PyTorch"
        raise QgsProcessingException(f"'{algorithm}' needs {needs} ({e}). " + INSTALL_HINT) from None


def feedback_callbacks(feedback, log_progress_messages: bool = False) -> Callbacks:
    """Callbacks that report to a QgsProcessingFeedback: progress as a percentage, cancel from the
    dialog's Cancel button, log lines with pushInfo (and progress messages too when asked)."""

    def progress(fraction: float, message: str) -> None:
        feedback.setProgress(100.0 * fraction)
        if log_progress_messages and message:
            feedback.pushInfo(message)

    def warn(message: str) -> None:
        feedback.pushWarning(message)

    return Callbacks(progress=progress, is_canceled=feedback.isCanceled, log=feedback.pushInfo, warn=warn)


class STSFusionAlgorithm(QgsProcessingAlgorithm):
    """Base class of the provider's algorithms (see the module docstring)."""

    NAME = ""
    DISPLAY_NAME = ""
    HELP_HEADING = ""  # the README heading of the algorithm's section; default "<DISPLAY_NAME> (`stsfusion:<NAME>`)"

    def tr(self, text: str) -> str:
        return tr(text)

    def name(self):
        return self.NAME

    def displayName(self):
        return self.tr(self.DISPLAY_NAME)

    def group(self):
        group_id = self.groupId()
        return self.tr(GROUPS[group_id]) if group_id in GROUPS else ""

    def groupId(self):
        return ALGORITHM_GROUPS.get(self.NAME, "")

    def helpUrl(self):
        heading = self.HELP_HEADING or f"{self.DISPLAY_NAME} (`{PROVIDER_ID}:{self.NAME}`)"
        return f"{HOMEPAGE}#{github_anchor(heading)}"

    def svgIconPath(self):
        path = icon_path(self.NAME)
        return path if os.path.isfile(path) else super().svgIconPath()

    def icon(self):
        path = icon_path(self.NAME)
        return QIcon(path) if os.path.isfile(path) else super().icon()

    def createInstance(self):
        return type(self)()

    def add_device_parameters(self) -> None:
        """DEVICE and THREADS (advanced), alike on every algorithm that runs the network; the
        subclass defines the DEVICE and THREADS keys."""
        from qgis.core import (
            QgsProcessingParameterDefinition,
            QgsProcessingParameterNumber,
            QgsProcessingParameterString,
        )

        from ..model.nn.options import DEFAULT_DEVICE, DEFAULT_THREADS, MAX_THREADS

        self.addParameter(
            QgsProcessingParameterString(
                self.DEVICE, self.tr("Device (auto, cpu, cuda, cuda:N or mps)"), defaultValue=DEFAULT_DEVICE
            )
        )
        threads = QgsProcessingParameterNumber(
            self.THREADS,
            self.tr("CPU threads (0 = all cores)"),
            QgsProcessingParameterNumber.Integer,
            DEFAULT_THREADS,
            minValue=0,
            maxValue=MAX_THREADS,
        )
        threads.setFlags(threads.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(threads)

    def add_dask_scheduler_parameter(self) -> None:
        """DASK_SCHEDULER (advanced), alike on Build MDD stack and Fuse; the subclass defines the key."""
        from qgis.core import QgsProcessingParameterDefinition, QgsProcessingParameterString

        scheduler = QgsProcessingParameterString(
            self.DASK_SCHEDULER,
            self.tr("Dask scheduler (empty = DASK_SCHEDULER variable, else this process; tcp://host:port; none)"),
            defaultValue="",
            optional=True,
        )
        scheduler.setFlags(scheduler.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(scheduler)

    def process(self, parameters, context, feedback) -> dict:
        raise NotImplementedError

    def canceled_outputs(self, parameters, context) -> dict:
        """The outputs returned after a cancel: none by default."""
        return {}

    def processAlgorithm(self, parameters, context, feedback):
        try:
            return self.process(parameters, context, feedback)
        except Canceled as e:
            feedback.reportError(str(e), fatalError=False)
            return self.canceled_outputs(parameters, context)
        except ValueError as e:  # model/'s errors: a message for the user, with the fix
            raise QgsProcessingException(str(e)) from None
