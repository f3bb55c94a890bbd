"""Device, precision and CPU threads, in one place for training and fusion.

- ``select_device(name)``: the torch device for a DEVICE text (``options.DEVICES``): "auto" = the first
  CUDA GPU when torch sees one, else Apple's MPS when available, else the CPU; "cpu"; "cuda" (=
  "cuda:0"); "cuda:N"; "mps". A device that cannot be used here raises ``DeviceError`` saying why and
  what to choose instead.
- ``precision_for(device)``: bfloat16 autocast on a CUDA GPU with native bf16 (compute capability
  8.0 and later), float16 autocast with loss scaling on older CUDA GPUs, float32 on the CPU and MPS.
  ``describe_device`` is the log line that states the choice and why.
- ``configure_threads(n)``: the CPU threads torch uses (THREADS; 0 = torch's default).

torch is imported inside the functions: ``parse_device`` works without it.
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Any

from .options import DEVICES

_CUDA_N = re.compile(r"^cuda\s*:\s*(\d+)$")
CHOICES = ", ".join(DEVICES[:-1]) + " or " + DEVICES[-1]  # "auto, cpu, cuda, cuda:N or mps"
# torch's thread count before configure_threads first changed it (None: never changed).
_THREADS_BEFORE: int | None = None


class DeviceError(ValueError):
    """A device that cannot be used here; the message says what to choose instead."""


def parse_device(name: str | None) -> str:
    """The canonical request for a DEVICE text, without torch: "auto", "cpu", "mps" or "cuda:N"
    ("cuda" is "cuda:0"; case and spaces do not matter). DeviceError for anything else."""
    text = (name or "").strip().lower()
    if text in ("", "auto"):
        return "auto"
    if text in ("cpu", "mps"):
        return text
    if text == "cuda":
        return "cuda:0"
    m = _CUDA_N.match(text)
    if m:
        return f"cuda:{int(m.group(1))}"
    raise DeviceError(f"Unknown device '{name}': choose {CHOICES}.")


def device_index(device: str) -> int:
    """The GPU number of a CUDA device string ("cuda" and "cuda:0" -> 0)."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def is_cuda(device: str) -> bool:
    """True for "cuda" and "cuda:N"."""
    return device == "cuda" or device.startswith("cuda:")


def _cuda_count() -> int:
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except (RuntimeError, AssertionError):  # a broken driver: no usable GPU
        return 0


def _mps_available() -> bool:
    import torch

    mps = getattr(getattr(torch, "backends", None), "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except (RuntimeError, AttributeError):
        return False


def _no_cuda_reason() -> str:
    import torch

    if getattr(torch.version, "cuda", None) is None and not getattr(torch.version, "hip", None):
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} was built for CUDA {torch.version.cuda} but finds no GPU (no driver, or one too old)"


def _no_mps_reason() -> str:
    import torch

    if sys.platform != "darwin":
        return f"this is {sys.platform}, not macOS"
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is None or not mps.is_built():
        return f"torch {torch.__version__} was built without MPS"
    return "torch finds no MPS device (an Intel Mac, or macOS older than 12.3)"


def select_device(name: str = "auto") -> str:
    """The torch device ("cpu", "cuda:0", "cuda:1", "mps") for a DEVICE text (see ``options.DEVICES``).
    DeviceError when the name is unknown or that device is not usable here."""
    request = parse_device(name)
    if request == "cpu":
        return "cpu"
    if request == "auto":
        if _cuda_count() > 0:
            return "cuda:0"
        return "mps" if _mps_available() else "cpu"
    if request == "mps":
        if _mps_available():
            return "mps"
        raise DeviceError(
            f"mps needs macOS with Apple silicon and a torch build with MPS, but {_no_mps_reason()}: "
            "choose auto or cpu."
        )
    index, count = device_index(request), _cuda_count()
    if count == 0:
        raise DeviceError(
            f"DEVICE={name.strip()} was asked for, but torch sees no CUDA GPU ({_no_cuda_reason()}): choose "
            "auto or cpu, or install a CUDA build of torch."
        )
    if index >= count:
        gpus = ", ".join(f"cuda:{i}" for i in range(count))
        which = "cuda:0" if count == 1 else f"one of {gpus}"
        raise DeviceError(
            f"{request} was asked for, but torch sees {count} CUDA GPU{'s' if count > 1 else ''} ({gpus}): "
            f"choose {which}, cuda or auto."
        )
    return request


def _native_bf16(index: int) -> tuple[bool, str]:
    """(native bfloat16 on CUDA GPU ``index``, its compute capability "major.minor")."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (8, 0):  # Ampere and later compute in bf16; older cards only emulate it, slowly
        return False, f"{major}.{minor}"
    try:  # newer torch counts emulated bf16 as supported unless asked not to
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        supported = torch.cuda.is_bf16_supported()
    # is_bf16_supported looks at the current GPU (also the torch build, and ROCm): where several
    # GPUs differ it may say no for a capable one; float16 with loss scaling is then the safe choice.
    return bool(supported), f"{major}.{minor}"


def precision_for(device: str, training: bool = True) -> tuple[Any, bool, str]:
    """(autocast dtype or None for float32, whether training needs a GradScaler, why) on ``device``.

    - CUDA with native bf16 (compute capability >= 8.0): bfloat16 autocast; its range is float32's,
      so no loss scaling.
    - other CUDA GPUs: float16 autocast, with a GradScaler in training (float16 gradients underflow
      without it); inference needs none.
    - CPU: float32 and no autocast. CPU bfloat16 autocast is slower than float32 on most CPUs for
      this network's small convolutions, and it would end the guarantee that the same seed gives
      the same model bit for bit: the CPU path stays exactly the float32 code it always was.
    - MPS: float32. torch's autocast on Apple GPUs is recent (float16 from torch 2.5, bf16 needs
      macOS 14) and partial, so it would fail or fall back on the torch versions QGIS users have.
    """
    import torch

    if is_cuda(device):
        native, capability = _native_bf16(device_index(device))
        if native:
            return torch.bfloat16, False, "bfloat16 mixed precision (native bf16 support)"
        if training:
            return torch.float16, True, f"float16 with loss scaling (no native bf16 on compute capability {capability})"
        return torch.float16, False, f"float16 mixed precision (no native bf16 on compute capability {capability})"
    if device == "mps":
        return None, False, "float32 on MPS: torch's autocast on Apple GPUs is too recent and partial to rely on"
    return None, False, "float32 on CPU: mixed precision would slow it and break bit-for-bit results"


def autocast(device: str, dtype: Any) -> Any:
    """The autocast context for ``precision_for``'s dtype on ``device``; a no-op for float32 (None),
    so the float32 path is exactly the code without autocast."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.split(":", 1)[0], dtype=dtype)


def grad_scaler() -> Any:
    """A CUDA GradScaler for float16 training (torch.amp's where it has one, else torch.cuda.amp's)."""
    import torch

    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        try:
            return amp.GradScaler("cuda")
        except TypeError:
            pass
    return torch.cuda.amp.GradScaler()


def describe_device(device: str, threads: int | None = None, training: bool = True) -> str:
    """The log line with the device and its precision, and why, e.g. "Device cuda:0 (NVIDIA A100,
    40 GiB): bfloat16 mixed precision (native bf16 support)" or "Device cpu (8 threads): float32 on
    CPU: mixed precision would slow it and break bit-for-bit results". ``threads``: the CPU threads
    in use (default: torch's current count)."""
    import torch

    _, _, why = precision_for(device, training)
    if is_cuda(device):
        index = device_index(device)
        parts = [str(torch.cuda.get_device_name(index))]
        with contextlib.suppress(RuntimeError, AssertionError, AttributeError):  # the name alone will do
            parts.append(f"{torch.cuda.get_device_properties(index).total_memory / 2**30:.0f} GiB")
        what = ", ".join(parts)
    elif device == "mps":
        what = "Apple GPU"
    else:
        n = torch.get_num_threads() if threads is None else threads
        what = f"{n} thread{'s' if n != 1 else ''}"
    return f"Device {device} ({what}): {why}"


def configure_threads(threads: int = 0) -> int:
    """Sets the CPU threads torch uses (torch.set_num_threads) and returns the count in use.
    0 keeps torch's default: the count from before an earlier call changed it (so THREADS=0 after
    THREADS=2 in one QGIS session is the default again), else whatever it is. DeviceError below 0."""
    import torch

    global _THREADS_BEFORE
    n = int(threads or 0)
    if n < 0:
        raise DeviceError(f"THREADS must be 0 (torch's default: every core) or a positive number, not {n}.")
    if n > 0:
        if _THREADS_BEFORE is None:
            _THREADS_BEFORE = torch.get_num_threads()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    elif _THREADS_BEFORE is not None:
        if torch.get_num_threads() != _THREADS_BEFORE:
            torch.set_num_threads(_THREADS_BEFORE)
        _THREADS_BEFORE = None
    return torch.get_num_threads()


def is_out_of_memory(error: BaseException) -> bool:
    """True for a GPU out-of-memory error (``torch.cuda.OutOfMemoryError``, or the RuntimeError
    older PyTorch and the MPS backend raise), which a smaller tile or batch may avoid."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_gpu_memory(device: str) -> None:
    """Hands cached GPU blocks back after an out-of-memory error, before the smaller retry."""
    torch = sys.modules.get("torch")
    if torch is not None and is_cuda(device) and torch.cuda.is_available():
        torch.cuda.empty_cache()
