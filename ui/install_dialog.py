"""The "Install PyTorch…" dialog (Plugins ▸ STS Fusion): shows what was detected, lets the user choose
the CPU or CUDA build and an optional folder of wheels, and runs the installer
(ui/torch_installer.py) in a QThread, with pip's lines in a log, a progress bar and a Cancel
button. The GUI thread never waits on pip."""

from __future__ import annotations

import os

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QThread, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from . import torch_installer as ti

TITLE = "STS Fusion: install PyTorch"


class InstallThread(QThread):
    """Runs one Installer; its callbacks become signals, delivered in the GUI thread."""

    line = pyqtSignal(str)
    progress = pyqtSignal(float, str)
    done = pyqtSignal(str, str)  # "ok" | "canceled" | "failed", message

    def __init__(self, parent, **installer_args):
        super().__init__(parent)
        self.installer = ti.Installer(on_line=self.line.emit, on_progress=self.progress.emit, **installer_args)

    def run(self):
        try:
            self.done.emit("ok", self.installer.run())
        except ti.InstallCanceled as e:
            self.done.emit("canceled", str(e))
        except Exception as e:  # anything else must reach the user, not die with the thread
            self.done.emit("failed", str(e))


class InstallTorchDialog(QDialog):
    """``target``: the plugin-owned folder (``deps_folder``); ``gpus``/``python``: detection results,
    detected here when None."""

    def __init__(self, target: str, parent=None, gpus: list | None = None, python: str | None = None):
        super().__init__(parent)
        self.setWindowTitle(TITLE)
        self.target = target
        self.python = python or ti.qgis_python()
        self.gpus = ti.detect_nvidia() if gpus is None else gpus
        self.worker: InstallThread | None = None
        try:
            import numpy

            self.numpy_version = numpy.__version__
        except ImportError:
            self.numpy_version = None

        form = QFormLayout()
        form.addRow("Python:", QLabel(self.python))
        form.addRow("System:", QLabel(ti.os_description()))
        gpu_text = "; ".join(f"{g.name} (driver {g.driver})" for g in self.gpus) or "none found (no nvidia-smi)"
        form.addRow("NVIDIA GPU:", QLabel(gpu_text))
        form.addRow("Install into:", QLabel(target))

        self.build = QComboBox()
        recommended = ti.recommended_build(self.gpus)
        if recommended == ti.DEFAULT_BUILD:
            self.build.addItem("Default build (Apple GPU through MPS, or CPU)", ti.DEFAULT_BUILD)
        else:
            self.build.addItem("CPU only", "cpu")
            if recommended != "cpu":
                self.build.addItem(f"CUDA {recommended} for {self.gpus[0].name}", recommended)
                self.build.setCurrentIndex(1)
        form.addRow("Build:", self.build)
        if self.gpus and recommended == "cpu":
            form.addRow(
                "",
                QLabel(f"Driver {self.gpus[0].driver} is too old for PyTorch's CUDA builds: update it to use the GPU."),
            )

        self.offline = QCheckBox("Offline: install from a folder of wheels")
        self.wheels = QgsFileWidget()
        self.wheels.setStorageMode(QgsFileWidget.GetDirectory)
        self.wheels.setEnabled(False)
        self.offline.toggled.connect(self.wheels.setEnabled)
        hint = "Fill it on a connected computer with the same system and Python:\n" + ti.download_command(
            recommended, numpy_version=self.numpy_version
        )
        self.offline.setToolTip(hint)
        self.wheels.setToolTip(hint)
        form.addRow(self.offline, self.wheels)

        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.status = QLabel("PyTorch and scikit-learn are installed with pip; QGIS's numpy is kept.")
        self.status.setWordWrap(True)

        self.install_button = QPushButton("Install")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.close_button = QPushButton("Close")
        self.install_button.clicked.connect(self.install)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.install_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.log, 1)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(760, 520)

    def running(self) -> bool:
        return self.worker is not None and self.worker.isRunning()

    def install(self):
        if self.running():
            return
        wheel_folder = self.wheels.filePath().strip() if self.offline.isChecked() else None
        if wheel_folder is not None and not os.path.isdir(wheel_folder):
            self.status.setText("Choose the folder of wheels first (or untick Offline).")
            return
        self.log.clear()
        self.bar.setValue(0)
        self.status.setText("Installing… (PyTorch is large: minutes on a slow connection)")
        self._set_running(True)
        self.worker = InstallThread(
            self,
            target=self.target,
            build=self.build.currentData(),
            python=self.python,
            wheel_folder=wheel_folder,
            numpy_version=self.numpy_version,
        )
        self.worker.line.connect(self.log.appendPlainText)
        self.worker.progress.connect(self._progress)
        self.worker.done.connect(self._done)
        self.worker.start()

    def cancel(self):
        if self.running():
            self.status.setText("Canceling…")
            self.worker.installer.cancel()

    def _progress(self, fraction, message):
        self.bar.setValue(round(100 * fraction))

    def _done(self, status, message):
        self._set_running(False)
        if status == "ok":
            self.bar.setValue(100)
            self.status.setText(f"Installed into {self.target}. Restart QGIS to use PyTorch.")
        elif status == "canceled":
            self.bar.setValue(0)
            self.status.setText("Canceled: nothing was changed.")
        else:
            self.status.setText(f"Installation failed, nothing was changed: {message}")
        self.log.appendPlainText(self.status.text())

    def _set_running(self, running):
        for w in (self.install_button, self.close_button, self.build, self.offline):
            w.setEnabled(not running)
        self.wheels.setEnabled(not running and self.offline.isChecked())
        self.cancel_button.setEnabled(running)

    def wait(self, ms: int = 30000) -> bool:
        """Blocks until the install thread has ended (unload, tests); True if it has."""
        return self.worker is None or self.worker.wait(ms)

    def _stop(self):
        # Closing (Esc, the window's X, unloading the plugin) while pip runs cancels it.
        if self.running():
            self.cancel()
            self.wait()

    def closeEvent(self, event):
        self._stop()
        super().closeEvent(event)

    def reject(self):
        self._stop()
        super().reject()
