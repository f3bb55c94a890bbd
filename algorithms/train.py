"""stsfusion:train - Train fusion model: the three-branch multi-task network on an MDD."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..model.core.calendar import MAX_DAYS_APART
from ..model.nn.options import DEFAULT_DEVICE, KERNEL_SETS  # no torch import here
from .base import STSFusionAlgorithm, feedback_callbacks, require_torch


class TrainFusionModelAlgorithm(STSFusionAlgorithm):
    NAME = "train"
    DISPLAY_NAME = "Train fusion model"
    MDD = "MDD"
    KERNELS = "KERNELS"
    PCA_COMPONENTS = "PCA_COMPONENTS"
    EPOCHS = "EPOCHS"
    PATCH_SIZE = "PATCH_SIZE"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    DEVICE = "DEVICE"
    THREADS = "THREADS"
    SEED = "SEED"
    MAX_DAYS_APART = "MAX_DAYS_APART"
    SELF_CHECK = "SELF_CHECK"
    RESUME = "RESUME"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def shortHelpString(self):
        return self.tr(
            "Trains the spatio-temporal-spectral fusion network on an MDD built by 'Build MDD stack'. "
            "Three branches learn the spatial detail of the fine MS and the MS-to-HS spectral mapping "
            "(multi-scale residual blocks), and the change between dates (the dense MS change spread over "
            "the fine fields, mapped to the fine bands); a fusion head turns them into the "
            "fine HS (in PCA components of the HS). Every target is an observed image (Wald's protocol "
            "at the HS scale), so no fine HS is needed.\n\n"
            "MDD: the MDD manifest (.json).\n"
            "KERNELS: kernel sizes of the residual blocks' groups (the cardinality): 1, 1/3 or 1/3/5. "
            "Default 1: the paper found it best on real data, larger kernels cost 2-5x the time.\n"
            "PCA_COMPONENTS: principal components of the HS the network predicts (default 12); noisy "
            "bands weigh less in the PCA.\n"
            "EPOCHS: training epochs (default 20); each epoch is 10-60 steps, scaled with the grid. More "
            "is not better: on the development scenes 30 epochs were no better than 20, and 60 fitted the "
            "HS dates at the cost of the others (BENCHMARKS.md, Generality).\n"
            "PATCH_SIZE: training patch side in pixels (default 32; at most the grid's smaller side).\n"
            "BATCH_SIZE: patches per step and task (default 8).\n"
            "LEARNING_RATE: Adam learning rate (default 0.002, cosine decay to a tenth).\n"
            "DEVICE: auto (the first CUDA GPU when torch sees one, else Apple MPS, else the CPU), cpu, cuda "
            "(= cuda:0), cuda:N (CUDA GPU number N) or mps (Apple silicon). A CUDA GPU with native bfloat16 "
            "(compute capability 8.0 and later) trains in bfloat16 mixed precision, an older one in float16 "
            "with loss scaling; the CPU and MPS use float32. The log states the device, the precision and why.\n"
            "THREADS (advanced): CPU threads PyTorch uses; 0 (default) = PyTorch's default, every core.\n"
            "SEED: random seed; the same seed on CPU gives the same model bit for bit (default 0).\n"
            "MAX_DAYS_APART: a fine MS and an HS image at most this many days apart are paired as one "
            "date (default 10). Sensors never image on the same day: the dense MS is interpolated in time "
            "per pixel to every date a task needs, and the log lists each pairing and interpolation.\n"
            "SELF_CHECK: train the EPOCHS with one HS image withheld (the HS date nearest the middle of "
            "the series; with one HS date, a quarter of it), compare the network and the two-stage "
            "baseline with it at the HS pixel size (CC, SAM, PSNR and SSIM in the log, the report and the "
            "model file, and a warning naming every metric on which the network is worse), then train the "
            "same network a fifth more epochs on everything, the withheld image included (default on; "
            "about a third more training time). Over the second half of the EPOCHS the network's CC on a "
            "block of the withheld HS is measured every fifth of them; where it falls more than 0.001 below "
            "the best so far, training stops early and goes on from the best epoch's network.\n"
            "RESUME: every 5 epochs the run is saved beside the model file (<model>.checkpoint); after a "
            "cancel, a crash or a killed batch job, run again with RESUME on and the same MDD and "
            "parameters to continue from the last checkpoint (on the CPU the model is then the same, bit "
            "for bit, as one uninterrupted run; the self-check is not repeated). A checkpoint of another "
            "MDD or other parameters is ignored, and the log says so. The checkpoint is removed once the "
            "model file is written (default off: start from scratch).\n"
            "OUTPUT_MODEL: the model file (.pt) with weights, normalisation, PCA and band lists.\n"
            "OUTPUT_REPORT: optional HTML training report (losses and learned task weights per epoch).\n\n"
            "The log shows each task's loss and its learned weight c per epoch, the time and the peak "
            "memory. Cancel stops within a step and writes no model file (only the checkpoint, if one "
            "was saved)."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.MDD, self.tr("MDD manifest"), extension="json"))
        # Static strings: qgis_process users write KERNELS=1/3 and DEVICE=cpu, not option indices.
        self.addParameter(
            QgsProcessingParameterEnum(
                self.KERNELS,
                self.tr("Kernel set (cardinality)"),
                options=list(KERNEL_SETS),
                defaultValue="1",
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.PCA_COMPONENTS,
                self.tr("HS principal components"),
                QgsProcessingParameterNumber.Integer,
                12,
                minValue=1,
                maxValue=256,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.EPOCHS, self.tr("Epochs"), QgsProcessingParameterNumber.Integer, 20, minValue=1, maxValue=100000
            )
        )
        advanced = [
            QgsProcessingParameterNumber(
                self.PATCH_SIZE,
                self.tr("Patch size (pixels)"),
                QgsProcessingParameterNumber.Integer,
                32,
                minValue=4,
                maxValue=4096,
            ),
            QgsProcessingParameterNumber(
                self.BATCH_SIZE,
                self.tr("Batch size"),
                QgsProcessingParameterNumber.Integer,
                8,
                minValue=1,
                maxValue=4096,
            ),
            QgsProcessingParameterNumber(
                self.LEARNING_RATE,
                self.tr("Learning rate"),
                QgsProcessingParameterNumber.Double,
                0.002,
                minValue=1e-7,
                maxValue=1.0,
            ),
            QgsProcessingParameterNumber(
                self.SEED, self.tr("Random seed"), QgsProcessingParameterNumber.Integer, 0, minValue=0
            ),
        ]
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MAX_DAYS_APART,
                self.tr("Fine MS and HS paired when at most this many days apart"),
                QgsProcessingParameterNumber.Double,
                MAX_DAYS_APART,
                minValue=0,
                maxValue=366,
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.SELF_CHECK,
                self.tr("Self-check on a withheld HS image (about a third more training time)"),
                True,
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.RESUME, self.tr("Resume from the checkpoint of an interrupted run"), False
            )
        )
        self.add_device_parameters()
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_MODEL, self.tr("Model file"), self.tr("STS Fusion model (*.pt)")
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_REPORT,
                self.tr("Training report"),
                self.tr("HTML files (*.html)"),
                optional=True,
                createByDefault=False,
            )
        )

    def process(self, parameters, context, feedback):
        require_torch(self.DISPLAY_NAME)
        from ..model.core.memory import format_mb
        from ..model.fusion.self_check import train_with_self_check

        mdd = self.parameterAsFile(parameters, self.MDD, context)
        if not mdd:
            raise QgsProcessingException("MDD is empty: choose the .json manifest written by 'Build MDD stack'.")
        kernels = self.parameterAsEnumString(parameters, self.KERNELS, context) or "1"
        device = self.parameterAsString(parameters, self.DEVICE, context).strip() or DEFAULT_DEVICE
        from ..model.nn.device import select_device

        select_device(device)  # a wrong DEVICE stops here, with the choices, before any work
        model_path = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        args = dict(
            kernels=kernels,
            pca_components=self.parameterAsInt(parameters, self.PCA_COMPONENTS, context),
            epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
            patch_size=self.parameterAsInt(parameters, self.PATCH_SIZE, context),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            learning_rate=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
            device=device,
            threads=self.parameterAsInt(parameters, self.THREADS, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            max_days_apart=self.parameterAsDouble(parameters, self.MAX_DAYS_APART, context),
            resume=self.parameterAsBoolean(parameters, self.RESUME, context),
        )
        feedback.pushInfo(f"Training on {mdd}: " + ", ".join(f"{k}={v}" for k, v in args.items()))
        summary = train_with_self_check(
            mdd,
            model_path,
            self_check=self.parameterAsBoolean(parameters, self.SELF_CHECK, context),
            callbacks=feedback_callbacks(feedback),
            **args,
        )
        info = summary["info"]
        feedback.pushInfo(
            f"Training took {info['time_s']:.1f} s on {info['device']}; peak memory "
            f"{format_mb(info['peak_memory_mb'])}."
        )
        results = {self.OUTPUT_MODEL: model_path}
        if report:
            from ..model.evaluation.report import write_training_report

            write_training_report(report, summary["history"], info)
            results[self.OUTPUT_REPORT] = report
        return results
