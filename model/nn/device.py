"""Device choice, in one place for training and fusion: "auto" = CUDA when torch sees a GPU, else CPU."""

from __future__ import annotations

from .options import DEVICES


class DeviceError(ValueError):
    """A device that cannot be used here; the message says what to choose instead."""


def select_device(name: str = "auto") -> str:
    """Returns "cpu" or "cuda" for a request of "auto", "cpu" or "cuda"."""
    import torch

    name = (name or "auto").lower()
    if name not in DEVICES:
        raise DeviceError(f"Unknown device '{name}': choose one of {', '.join(DEVICES)}.")
    if name == "cpu":
        return "cpu"
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise DeviceError(
            "DEVICE=cuda was asked for, but torch sees no CUDA GPU (a CPU-only torch build, "
            "or no driver): choose DEVICE=auto or cpu, or install a CUDA build of torch."
        )
    return "cuda" if has_cuda else "cpu"


def use_mixed_precision(device: str) -> bool:
    """bfloat16 autocast helps on CUDA only; on CPU it is slower and breaks bit-for-bit reproducibility."""
    return device == "cuda"
