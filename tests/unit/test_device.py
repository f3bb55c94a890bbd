"""DEVICE, THREADS and mixed precision (model/nn/device.py): every name parses, unusable devices are
clear errors, "auto" picks CUDA, then MPS, then the CPU, and the precision (bfloat16 on GPUs with
native bf16, float16 with loss scaling on older ones, float32 on CPU and MPS) is logged with its
reason. GPUs are mocked: this runs on a machine without one."""

import ast
import os
import types
import warnings

import pytest
import torch
from helpers.mdd import make_tiny_mdd

from stsfusion.model.core.callbacks import Callbacks
from stsfusion.model.nn import device as dev
from stsfusion.model.nn import training
from stsfusion.model.nn.device import (
    DeviceError,
    autocast,
    configure_threads,
    describe_device,
    grad_scaler,
    parse_device,
    precision_for,
    select_device,
)
from stsfusion.model.nn.options import DEVICES

GiB = 2**30
A100 = ("NVIDIA A100-SXM4-40GB", (8, 0), 40)
T4 = ("Tesla T4", (7, 5), 15)


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine where torch sees neither a CUDA GPU nor MPS (whatever this one has)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def fake_gpus(monkeypatch, *gpus, mps=False, bf16=None):
    """Mocks torch.cuda as if it saw ``gpus`` ((name, capability, GiB) each) and MPS as ``mps``.
    ``bf16``: what torch.cuda.is_bf16_supported says (default: the first GPU's capability >= 8.0,
    as torch answers for the current device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(gpus))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: gpus[i][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: gpus[i][1])
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i=0: types.SimpleNamespace(total_memory=gpus[i][2] * GiB, major=gpus[i][1][0], minor=gpus[i][1][1]),
    )
    native = bf16 if bf16 is not None else bool(gpus) and gpus[0][1] >= (8, 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_every_documented_name_parses_and_others_list_the_choices():
    for name in DEVICES:
        assert parse_device(name.replace("N", "1")) in ("auto", "cpu", "cuda:0", "cuda:1", "mps")
    assert parse_device(None) == parse_device("") == parse_device(" AUTO ") == "auto"
    assert parse_device("cuda") == "cuda:0" and parse_device("CUDA : 2") == "cuda:2" and parse_device("Mps") == "mps"
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", "tpu", "cpu:0"):
        with pytest.raises(DeviceError, match=r"Unknown device .*choose auto, cpu, cuda, cuda:N or mps"):
            parse_device(bad)
    assert issubclass(DeviceError, ValueError)  # the algorithms turn it into a QgsProcessingException


def test_options_stay_torch_free():
    """The algorithms import options.py at module level, before torch is known to be installed."""
    path = os.path.join(os.path.dirname(training.__file__), "options.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_without_a_gpu_auto_is_the_cpu_and_gpus_are_clear_errors(no_gpu):
    assert select_device("auto") == select_device("") == select_device("cpu") == "cpu"
    for name in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(
            DeviceError, match=rf"DEVICE={name} was asked for, but torch sees no CUDA GPU .*auto or cpu"
        ):
            select_device(name)
    with pytest.raises(DeviceError, match="mps needs macOS with Apple silicon and a torch build with MPS.*auto or cpu"):
        select_device("mps")
    with pytest.raises(DeviceError, match="Unknown device 'gpu'"):
        select_device("gpu")


def test_this_machine_without_mocks():
    assert select_device("cpu") == "cpu"
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert select_device("auto") == "cpu"
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            select_device("cuda")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    fake_gpus(monkeypatch, A100, mps=True)
    assert select_device("auto") == "cuda:0"
    fake_gpus(monkeypatch, mps=True)
    assert select_device("auto") == select_device("mps") == "mps"
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
        select_device("cuda")


def test_cuda_numbers_are_checked_against_the_gpus_torch_sees(monkeypatch):
    fake_gpus(monkeypatch, A100)
    assert select_device("cuda") == select_device("cuda:0") == select_device("CUDA:0") == "cuda:0"
    with pytest.raises(DeviceError) as e:
        select_device("cuda:3")
    assert str(e.value) == "cuda:3 was asked for, but torch sees 1 CUDA GPU (cuda:0): choose cuda:0, cuda or auto."
    fake_gpus(monkeypatch, A100, T4)
    assert select_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match=r"sees 2 CUDA GPUs \(cuda:0, cuda:1\): choose one of cuda:0, cuda:1, cuda"):
        select_device("cuda:2")


def test_precision_bf16_on_native_gpus_fp16_with_scaler_on_older_float32_on_cpu_and_mps(monkeypatch):
    fake_gpus(monkeypatch, A100, T4)
    assert precision_for("cuda:0") == (torch.bfloat16, False, "bfloat16 mixed precision (native bf16 support)")
    assert precision_for("cuda:1") == (
        torch.float16,
        True,
        "float16 with loss scaling (no native bf16 on compute capability 7.5)",
    )
    dtype, scaler, why = precision_for("cuda:1", training=False)  # inference: no loss to scale
    assert (dtype, scaler) == (torch.float16, False) and "no native bf16 on compute capability 7.5" in why
    fake_gpus(monkeypatch, T4, A100)  # torch's is_bf16_supported looks at GPU 0 (a T4): stay safe
    assert precision_for("cuda:1")[:2] == (torch.float16, True)
    fake_gpus(monkeypatch, ("NVIDIA RTX A4000", (8, 6), 16))
    assert precision_for("cuda:0")[0] == torch.bfloat16
    dtype, scaler, why = precision_for("cpu")
    assert (dtype, scaler) == (None, False) and "bit-for-bit" in why
    assert precision_for("mps")[:2] == (None, False)


def test_the_log_line_names_the_device_the_precision_and_why(monkeypatch):
    fake_gpus(monkeypatch, A100, T4)
    assert describe_device("cuda:0") == (
        "Device cuda:0 (NVIDIA A100-SXM4-40GB, 40 GiB): bfloat16 mixed precision (native bf16 support)"
    )
    assert describe_device("cuda:1") == (
        "Device cuda:1 (Tesla T4, 15 GiB): float16 with loss scaling (no native bf16 on compute capability 7.5)"
    )
    assert describe_device("cuda:1", training=False).endswith(
        "float16 mixed precision (no native bf16 on compute capability 7.5)"
    )
    assert describe_device("cpu", 3) == (
        "Device cpu (3 threads): float32 on CPU: mixed precision would slow it and break bit-for-bit results"
    )
    assert describe_device("cpu", 1).startswith("Device cpu (1 thread): float32")
    assert describe_device("mps").startswith("Device mps (Apple GPU): float32 on MPS")


def test_autocast_is_off_for_float32_and_scaler_builds():
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CUDA autocast / GradScaler on a machine without CUDA warn
        assert autocast("cuda:1", torch.float16).device == "cuda"
        scaler = grad_scaler()
    assert all(hasattr(scaler, k) for k in ("scale", "step", "update"))


def test_threads_apply_and_zero_restores_the_default():
    before = torch.get_num_threads()
    try:
        assert configure_threads(0) == before  # untouched
        assert configure_threads(1) == 1 == torch.get_num_threads()
        assert configure_threads(2) == 2 == torch.get_num_threads()
        assert configure_threads(0) == before == torch.get_num_threads()  # the default from before THREADS
        with pytest.raises(DeviceError, match="THREADS must be 0"):
            configure_threads(-1)
    finally:
        dev._THREADS_BEFORE = None
        torch.set_num_threads(before)


class _Stop(Exception):
    pass


def test_train_fusion_model_passes_the_device_and_threads_on(monkeypatch, tmp_path):
    """With two mocked GPUs, DEVICE=cuda:1 reaches fit_network as "cuda:1" (stopped there: no GPU here)."""
    fake_gpus(monkeypatch, A100, T4)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    seen = {}

    def fit(mdd, *args, threads=0, **kwargs):
        seen["device"], seen["threads"] = args[6], threads
        raise _Stop

    monkeypatch.setattr(training, "fit_network", fit)
    manifest = make_tiny_mdd(tmp_path, size=24)
    with pytest.raises(_Stop):
        training.train_fusion_model(
            manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=12, device="cuda:1", threads=3
        )
    assert seen == {"device": "cuda:1", "threads": 3}
    with pytest.raises(DeviceError, match="cuda:2 was asked for"):
        training.train_fusion_model(manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=12, device="cuda:2")


def test_the_self_check_passes_threads_to_fit_network(monkeypatch, tmp_path):
    from stsfusion.model.fusion import self_check
    from stsfusion.model.nn import training

    seen = {}

    def fit(mdd, *args, threads=0, withheld=None, **kwargs):
        seen["device"], seen["threads"], seen["withheld"] = args[6], threads, withheld is not None
        raise _Stop

    monkeypatch.setattr(training, "fit_network", fit)
    manifest = make_tiny_mdd(tmp_path, size=24)
    with pytest.raises(_Stop):
        self_check.train_with_self_check(
            manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=12, device="cpu", threads=2
        )
    assert seen == {"device": "cpu", "threads": 2, "withheld": True}


@pytest.mark.slow
def test_cpu_training_and_fusion_log_the_device_and_use_the_threads(tmp_path):
    from stsfusion.model.fusion.fuse import fuse_time_series

    before = torch.get_num_threads()
    manifest = make_tiny_mdd(tmp_path, size=24)
    logs = []
    try:
        s = training.train_fusion_model(
            manifest,
            str(tmp_path / "m.pt"),
            epochs=1,
            patch_size=12,
            batch_size=2,
            device="auto" if not torch.cuda.is_available() else "cpu",
            threads=1,
            callbacks=Callbacks(log=logs.append),
        )
        assert s["info"]["device"] == "cpu" and s["info"]["threads"] == 1 and s["info"]["precision"] == "float32"
        assert (
            "Device cpu (1 thread): float32 on CPU: mixed precision would slow it and break bit-for-bit results" in logs
        )
        logs.clear()
        fuse_time_series(
            manifest,
            s["model_path"],
            str(tmp_path / "out"),
            "2022-05-15",
            device="cpu",
            threads=1,
            callbacks=Callbacks(log=logs.append),
        )
        assert any(m.startswith("Device cpu (1 thread): float32 on CPU") for m in logs)
        assert torch.get_num_threads() == 1
        assert configure_threads(0) == before
    finally:
        dev._THREADS_BEFORE = None
        torch.set_num_threads(before)
