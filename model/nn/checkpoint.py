"""Training checkpoints: a long training run that is cancelled or killed continues where it stopped.

Every few epochs ``fit_network`` saves, beside the model file (``<model>.checkpoint``, never ending
in ``.pt``), everything the rest of the run depends on: the network, the task weights, the
optimiser, the learning-rate schedule, the gradient scaler, the random streams (numpy and torch),
the history and the epoch, plus a fingerprint of the MDD and the training parameters. A run with
``resume`` loads it when the fingerprint matches and goes on from the next epoch; the result is
then the same, bit for bit on the CPU, as an uninterrupted run. The checkpoint is removed once the
model file is written. Saved atomically and loaded with ``weights_only=True`` (no code can run).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

CHECKPOINT_SUFFIX = ".checkpoint"
CHECKPOINT_EVERY = 5  # epochs
_FINGERPRINT_IGNORES = ("device", "threads", "resume", "checkpoint_every")  # may change between tries


def checkpoint_path(model_path: str) -> str:
    return model_path + CHECKPOINT_SUFFIX


def training_fingerprint(mdd_path: str, params: dict) -> str:
    """What a checkpoint must match to be resumed: the MDD manifest's bytes (its stacks are written
    once, with it) and every parameter that changes the result."""
    digest = hashlib.sha256()
    with open(mdd_path, "rb") as f:
        digest.update(f.read())
    kept = {k: v for k, v in sorted(params.items()) if k not in _FINGERPRINT_IGNORES}
    digest.update(json.dumps(kept, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


@dataclass
class Checkpointer:
    """Where and how often ``fit_network`` saves, and whether it resumes.

    ``extra``: anything the caller wants back on resume (e.g. the self-check's result, so a resumed
    run does not repeat it: ``fit_network`` reads it from the loaded state's ``extra_json``)."""

    path: str
    fingerprint: str
    resume: bool = False
    every: int = CHECKPOINT_EVERY
    extra: dict = field(default_factory=dict)

    def load(self) -> dict | None:
        """The saved state when resuming and it matches this run; None otherwise (start afresh)."""
        if not self.resume or not os.path.isfile(self.path):
            return None
        import torch

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or foreign file: starting afresh is always safe
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None
        return state

    def due(self, epoch: int, epochs: int) -> bool:
        """Save after this (1-based) epoch? Every ``every`` epochs, never after the last one."""
        return self.every > 0 and epoch < epochs and epoch % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        import torch

        state = dict(state, fingerprint=self.fingerprint, extra_json=json.dumps(self.extra, default=str))
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stsfusion-checkpoint-", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def rng_state(rng: Any) -> str:
    """A numpy Generator's state as JSON text (its 128-bit integers stay exact)."""
    return json.dumps(rng.bit_generator.state)


def restore_rng(rng: Any, state: str) -> None:
    rng.bit_generator.state = json.loads(state)
