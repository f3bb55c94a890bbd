"""Training checkpoints: a cancelled run resumed with RESUME ends bit for bit where an uninterrupted
run ends; a checkpoint of other data or parameters is never resumed; the self-check is not repeated."""

import os

import pytest
import torch
from helpers.mdd import make_tiny_mdd

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.fusion.self_check import train_with_self_check
from stsfusion.model.nn.checkpoint import Checkpointer, checkpoint_path
from stsfusion.model.nn.training import self_checked_epochs, train_fusion_model

torch.set_num_threads(1)
ARGS = dict(epochs=4, patch_size=12, batch_size=2, device="cpu", seed=3, checkpoint_every=1)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _cancel_in_epoch(n, steps_per_epoch=10):
    calls = []

    def canceled():
        calls.append(1)
        return len(calls) > (n - 1) * steps_per_epoch + 2  # a few steps into epoch n

    return canceled


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    manifest = make_tiny_mdd(tmp_path, size=24)
    whole = train_fusion_model(manifest, str(tmp_path / "whole.pt"), **ARGS)
    assert not os.path.exists(checkpoint_path(str(tmp_path / "whole.pt")))  # removed once the model is written
    model = str(tmp_path / "m.pt")
    with pytest.raises(Canceled):
        train_fusion_model(manifest, model, callbacks=Callbacks(is_canceled=_cancel_in_epoch(3)), **ARGS)
    assert not os.path.exists(model) and os.path.isfile(checkpoint_path(model))
    saved = torch.load(checkpoint_path(model), weights_only=True)
    assert saved["epoch"] == 2
    log = []
    resumed = train_fusion_model(manifest, model, resume=True, callbacks=Callbacks(log=log.append), **ARGS)
    assert any("Resumed from" in m and "after epoch 2/4" in m for m in log)
    a, b = _weights(str(tmp_path / "whole.pt")), _weights(model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert not os.path.exists(checkpoint_path(model))


@pytest.mark.slow
def test_a_checkpoint_of_other_parameters_is_not_resumed(tmp_path):
    manifest = make_tiny_mdd(tmp_path, size=24)
    model = str(tmp_path / "m.pt")
    with pytest.raises(Canceled):
        train_fusion_model(manifest, model, callbacks=Callbacks(is_canceled=_cancel_in_epoch(3)), **ARGS)
    log = []
    other = dict(ARGS, seed=4)
    summary = train_fusion_model(manifest, model, resume=True, callbacks=Callbacks(log=log.append), **other)
    assert any("training from the start" in m for m in log) and not any("Resumed" in m for m in log)
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    assert not os.path.exists(checkpoint_path(model))
    with open(checkpoint_path(model), "wb") as f:  # a truncated or foreign file: start afresh, never fail
        f.write(b"garbage")
    assert Checkpointer(checkpoint_path(model), "x", resume=True).load() is None


def test_checkpoints_are_due_every_n_epochs_but_never_after_the_last():
    c = Checkpointer("x", "f", every=2)
    assert [e for e in range(1, 8) if c.due(e, 7)] == [2, 4, 6]
    assert not any(Checkpointer("x", "f", every=0).due(e, 7) for e in range(1, 8))


def _cancel_at_checkpoint(model, checked=False, epoch=0):
    """Cancels a run as soon as its checkpoint holds the self-check (``checked``) or that ``epoch``."""

    def canceled():
        path = checkpoint_path(model)
        if not os.path.exists(path):
            return False
        saved = torch.load(path, weights_only=True)
        return bool(saved.get("checked")) if checked else saved["epoch"] >= epoch

    return canceled


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["before the check", "after the check"])
def test_a_resumed_self_checked_run_equals_an_uninterrupted_one_and_checks_once(tmp_path, stop):
    manifest = make_tiny_mdd(tmp_path, size=48)
    args = dict(ARGS, patch_size=16)  # 4 epochs without the withheld HS, then the check, then 1 more
    whole = train_with_self_check(manifest, str(tmp_path / "whole.pt"), **args)
    first, total = self_checked_epochs(4)
    assert whole["info"]["parameters"]["self_check_epochs"] == first and len(whole["history"]) == total
    model = str(tmp_path / "m.pt")
    cancel = (
        _cancel_at_checkpoint(model, epoch=first - 1)
        if stop == "before the check"
        else _cancel_at_checkpoint(model, True)
    )
    with pytest.raises(Canceled):
        train_with_self_check(manifest, model, callbacks=Callbacks(is_canceled=cancel), **args)
    saved = torch.load(checkpoint_path(model), weights_only=True)
    assert saved["checked"] == (stop == "after the check")
    log = []
    resumed = train_with_self_check(manifest, model, resume=True, callbacks=Callbacks(log=log.append), **args)
    assert any("Resumed from" in m for m in log)
    checks = [m for m in log if m.startswith("Self-check (HS")]
    if stop == "after the check":  # measured once, before the cancel; the resumed run reads it back
        assert any("taken from the checkpoint" in m for m in log) and not checks
    else:
        assert len(checks) == 1
    assert resumed["self_check"] == whole["self_check"] and resumed["info"]["self_check"] == whole["self_check"]
    a, b = _weights(str(tmp_path / "whole.pt")), _weights(model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]


class OutOfMemory(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError (a RuntimeError whose text says "out of memory")."""


def test_gpu_out_of_memory_halves_the_batch_and_training_goes_on(tmp_path, monkeypatch):
    from stsfusion.model.nn import training

    manifest = make_tiny_mdd(tmp_path, size=24)
    real = training.task_losses
    sizes = []

    def small_gpu(net, data, rng, batch_size, device):
        sizes.append(batch_size)
        if batch_size > 2:
            raise OutOfMemory("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(net, data, rng, batch_size, device)

    monkeypatch.setattr(training, "task_losses", small_gpu)
    log = []
    summary = train_fusion_model(
        manifest, str(tmp_path / "m.pt"), epochs=1, patch_size=12, batch_size=8, device="cpu",
        callbacks=Callbacks(log=log.append),
    )  # fmt: skip
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) == {2}
    assert [m for m in log if "halved" in m] == [
        "Out of memory on cpu: batch size halved to 4 for the rest of the run.",
        "Out of memory on cpu: batch size halved to 2 for the rest of the run.",
    ]
    assert os.path.isfile(summary["model_path"])
    monkeypatch.setattr(training, "task_losses", lambda *a: (_ for _ in ()).throw(OutOfMemory("out of memory")))
    with pytest.raises(training.TrainingDataError, match="even with a batch of 1 patch"):
        train_fusion_model(manifest, str(tmp_path / "n.pt"), epochs=1, patch_size=12, batch_size=2, device="cpu")
    assert not os.path.exists(tmp_path / "n.pt")
