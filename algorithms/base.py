"""What every STS Fusion algorithm shares: its name and group, a fresh instance, the torch install
hint, the callbacks that connect model/ to QgsProcessingFeedback, and one mapping of model/'s
errors to QgsProcessingException.

A subclass sets ``NAME`` and ``DISPLAY_NAME``, defines ``initAlgorithm`` and ``shortHelpString``,
and implements ``process(parameters, context, feedback)`` instead of ``processAlgorithm``: the
base class turns model/'s ValueErrors (every one carries a message for the user) into
QgsProcessingException, and a cancel (``Canceled``) into a reported message plus
``canceled_outputs()``, so no algorithm prints a traceback or leaves a half-written output.
"""

import importlib

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException

from ..model.core.callbacks import Callbacks, Canceled

INSTALL_HINT = (
    "Install them for the Python that QGIS uses, e.g. `python3 -m pip install torch "
    "scikit-learn` from the OSGeo4W shell on Windows, or `pip3 install --user torch "
    "scikit-learn` (or your distribution's packages) on Linux and macOS, then restart QGIS."
)


def require_torch(algorithm: str) -> None:
    """Raises a QgsProcessingException that says how to install PyTorch and scikit-learn when
    either is missing; ``algorithm`` is the display name that needs them."""
    try:  # imported only to say how to install them when they are missing
        importlib.import_module("sklearn")
        importlib.import_module("torch")
    except ImportError as e:
        raise QgsProcessingException(f"'{algorithm}' needs PyTorch and scikit-learn ({e}). " + INSTALL_HINT) from None


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

    def name(self):
        return self.NAME

    def displayName(self):
        return self.DISPLAY_NAME

    def group(self):
        return ""

    def groupId(self):
        return ""

    def createInstance(self):
        return type(self)()

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
